-- Argo CD health check for kubetrain.io/TrainingRun (Lua 5.1, as Argo CD's gopher-lua runs it).
-- Pending/Queued/Running -> Progressing, Succeeded -> Healthy, Failed -> Degraded (with the failure's
-- reason), Suspended -> Suspended; a status older than the spec -> Progressing until the operator catches up.
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

local function detail(status, fallback)
  local c = condition(status, "Succeeded")
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe the run"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. generation
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  local parts = {}
  if status.primaryMetric ~= nil then
    table.insert(parts, status.primaryMetric)
  end
  if status.modelVersion ~= nil then
    table.insert(parts, "registered as ModelVersion " .. status.modelVersion)
  end
  local registered = condition(status, "Registered")
  if registered ~= nil and registered.status == "False" then
    table.insert(parts, "registration failing: " .. (registered.message or registered.reason or ""))
  end
  if #parts == 0 then
    hs.message = "trained"
  else
    hs.message = table.concat(parts, "; ")
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  local failure = status.failure or {}
  local reason = failure.reason
  local message = failure.message
  if reason == nil then
    local c = condition(status, "Succeeded") or {}
    reason = c.reason or "Failed"
    message = c.message
  end
  if message ~= nil and message ~= "" then
    hs.message = reason .. ": " .. message
  else
    hs.message = reason
  end
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = detail(status, "spec.suspend is true")
elseif phase == "Queued" then
  hs.status = "Progressing"
  hs.message = detail(status, "waiting for admission by the queue")
elseif phase == "Pending" then
  hs.status = "Progressing"
  hs.message = detail(status, "waiting for the trainer pod to start")
elseif phase == "Running" then
  hs.status = "Progressing"
  local msg = "training"
  if status.progress ~= nil and status.progress.step ~= nil then
    msg = "training: " .. status.progress.step
    if status.progress.percent ~= nil then
      msg = msg .. " (" .. status.progress.percent .. "%)"
    end
  end
  hs.message = msg
else
  hs.status = "Unknown"
  hs.message = "unknown phase " .. tostring(phase)
end
return hs
