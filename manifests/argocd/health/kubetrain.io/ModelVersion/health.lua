-- Argo CD health check for kubetrain.io/ModelVersion (Lua 5.1, as Argo CD's gopher-lua runs it).
-- Pending/Verifying -> Progressing, Ready -> Healthy (naming the aliases it holds and any refused claim),
-- Failed -> Degraded (with the Ready condition's reason); a status older than the spec -> Progressing.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe the version"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. generation
  return hs
end

local phase = status.phase
local ready = condition(status, "Ready") or {}
if phase == "Ready" then
  hs.status = "Healthy"
  local parts = {}
  if status.primaryMetric ~= nil then
    table.insert(parts, status.primaryMetric)
  end
  if status.aliases ~= nil and #status.aliases > 0 then
    table.insert(parts, "aliases: " .. table.concat(status.aliases, ", "))
  end
  local refused = condition(status, "AliasRefused")
  if refused ~= nil and refused.status == "True" then
    table.insert(parts, "refused: " .. (refused.message or refused.reason or ""))
  end
  if #parts == 0 then
    hs.message = "verified"
  else
    hs.message = table.concat(parts, "; ")
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  local reason = ready.reason or "Failed"
  if ready.message ~= nil and ready.message ~= "" then
    hs.message = reason .. ": " .. ready.message
  else
    hs.message = reason
  end
elseif phase == "Pending" or phase == "Verifying" then
  hs.status = "Progressing"
  if ready.message ~= nil and ready.message ~= "" then
    hs.message = ready.message
  else
    hs.message = "waiting for the artifact to be verified"
  end
else
  hs.status = "Unknown"
  hs.message = "unknown phase " .. tostring(phase)
end
return hs
