"""The model registry's pure core: alias resolution, retention, serving hints and the ModelVersion Jobs.

Nothing here talks to the API; ``handlers/modelversion.py`` reads objects, calls these functions and
writes what they return. Every function is deterministic given its inputs (``now`` is passed in).

Alias rule ("the newest claim wins")
    A version *claims* an alias by listing it in ``spec.aliases``. The operator records each claim once in
    ``status.aliasClaims`` with ``time`` = the API server's ``managedFields`` time of the last write that
    touched ``spec.aliases`` (server clock, whole seconds; the first observation time when no such entry
    exists) and ``observed`` = when the operator first saw it (microseconds). Competing claims of one
    alias are ordered by ``(time, observed, version)``: the latest write wins, the operator's observation
    order breaks same-second ties, the higher version number breaks the rest. A claim keeps its time
    while the alias stays in the spec; removing and re-adding it makes a new claim.

Eligibility
    A version being deleted holds nothing. A ``Failed`` version (checksum mismatch, version conflict) is
    refused every alias. A *protected* alias (settings, default ``production``) additionally needs a
    ``Ready`` (verified) version whose run did not miss its thresholds (``status.passedThresholds`` is not
    false); while a version is still Pending/Verifying its protected claims wait, and the alias stays
    with the previous holder.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetrain_api.models import API_VERSION, DEFAULT_PRIMARY_METRIC
from kubetrain_trainer import contract

from .jobs import service_account_fields
from .settings import Settings

# ---- labels, components, reasons ----------------------------------------------------------------------

MODEL_LABEL = "kubetrain.io/model"
RUN_LABEL = "kubetrain.io/run"
RUN_UID_LABEL = "kubetrain.io/run-uid"
MODEL_VERSION_LABEL = "kubetrain.io/model-version"
COMPONENT_LABEL = "kubetrain.io/component"
COMPONENT_VERIFY = "verify"
COMPONENT_CLEANUP = "cleanup"
MANAGED_BY = {"app.kubernetes.io/name": "kubetrain", "app.kubernetes.io/managed-by": "kubetrain"}

PHASE_PENDING = "Pending"
PHASE_VERIFYING = "Verifying"
PHASE_READY = "Ready"
PHASE_FAILED = "Failed"

COND_ARTIFACT_VERIFIED = "ArtifactVerified"
COND_READY = "Ready"
COND_ALIAS_SUPERSEDED = "AliasSuperseded"
COND_ALIAS_REFUSED = "AliasRefused"

REASON_VERIFIED_BY_TRAINER = "VerifiedByTrainer"
REASON_VERIFIED = "Verified"
REASON_VERIFYING = "Verifying"
REASON_CHECKSUM_MISMATCH = "ChecksumMismatch"
REASON_VERIFY_FAILED = "VerifyFailed"
REASON_VERSION_CONFLICT = "VersionConflict"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_SUPERSEDED = "Superseded"
REASON_NOT_SUPERSEDED = "AllClaimsHeld"
REASON_REFUSED = "ProtectedAliasRefused"
REASON_NOT_REFUSED = "NoneRefused"

HISTORY_LIMIT = 50
VERIFY_DEADLINE_SECONDS = 600
CLEANUP_DEADLINE_SECONDS = 300
JOB_TTL_SECONDS = 24 * 3600
NAME_BUDGET = 63


# ---- a typed view of one ModelVersion -----------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One recorded claim of an alias (status.aliasClaims[])."""

    alias: str
    time: str
    observed: str
    generation: int | None = None

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alias": self.alias, "time": self.time, "observed": self.observed}
        if self.generation is not None:
            out["generation"] = self.generation
        return out


@dataclass(frozen=True)
class VersionView:
    """What the registry needs to know about one ModelVersion object."""

    name: str
    model: str
    version: int
    uid: str = ""
    generation: int = 1
    spec_aliases: tuple[str, ...] = ()
    status_aliases: tuple[str, ...] = ()
    claims: tuple[Claim, ...] = ()
    phase: str | None = None
    passed_thresholds: bool | None = None
    deleting: bool = False
    from_run: bool = False
    history: tuple[dict[str, Any], ...] = ()
    aliases_write_time: str | None = None
    creation_timestamp: str = ""

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any]) -> VersionView:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        labels = meta.get("labels") or {}
        return cls(
            name=meta.get("name", ""),
            model=spec.get("model", ""),
            version=int(spec.get("version") or 0),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 1),
            spec_aliases=tuple(spec.get("aliases") or ()),
            status_aliases=tuple(status.get("aliases") or ()),
            claims=tuple(
                Claim(c["alias"], c.get("time", ""), c.get("observed", ""), c.get("generation"))
                for c in status.get("aliasClaims") or ()
                if c.get("alias")
            ),
            phase=status.get("phase"),
            passed_thresholds=status.get("passedThresholds"),
            deleting=bool(meta.get("deletionTimestamp")),
            from_run=bool(labels.get(RUN_UID_LABEL)),
            history=tuple(status.get("aliasHistory") or ()),
            aliases_write_time=aliases_write_time(meta),
            creation_timestamp=meta.get("creationTimestamp", ""),
        )


def aliases_write_time(meta: Mapping[str, Any]) -> str | None:
    """The API server's time of the last write that owns ``spec.aliases`` (managedFields), or None."""
    best: str | None = None
    for entry in meta.get("managedFields") or ():
        if entry.get("subresource"):
            continue
        spec_fields = ((entry.get("fieldsV1") or {}).get("f:spec")) or {}
        if "f:aliases" in spec_fields and entry.get("time") and (best is None or entry["time"] > best):
            best = entry["time"]
    return best


def current_claims(view: VersionView, now: str) -> tuple[Claim, ...]:
    """The claims of ``view.spec_aliases``: recorded ones kept, new ones stamped now (see module doc)."""
    recorded = {c.alias: c for c in view.claims}
    out = []
    for alias in view.spec_aliases:
        claim = recorded.get(alias)
        if claim is None:
            claim = Claim(alias, view.aliases_write_time or now, now, view.generation)
        out.append(claim)
    return tuple(out)


# ---- alias resolution ---------------------------------------------------------------------------------


@dataclass
class AliasOutcome:
    """What one version should show after resolution."""

    aliases: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    superseded: dict[str, str] = field(default_factory=dict)
    """alias → name of the version holding it."""
    refused: dict[str, str] = field(default_factory=dict)
    """alias → why."""
    waiting: dict[str, str] = field(default_factory=dict)
    """alias → why (protected claim of a version not yet verified)."""
    new_events: list[dict[str, Any]] = field(default_factory=list)
    """aliasHistory entries to append (Assigned, Removed, Superseded, Refused)."""


def _refusal(view: VersionView, alias: str, protected: Iterable[str]) -> tuple[str | None, str | None]:
    """(refused reason, waiting reason) of ``view`` claiming ``alias``; both None when it may hold it."""
    if view.phase == PHASE_FAILED:
        return f"{view.name} failed (phase Failed); a failed version holds no alias", None
    if alias in protected:
        if view.passed_thresholds is False:
            return f"{alias} is protected and {view.name} missed its run's thresholds", None
        if view.phase != PHASE_READY:
            return None, f"{alias} is protected: waits until {view.name} is verified (phase {view.phase or 'Pending'})"
    return None, None


def _last_action(history: Sequence[Mapping[str, Any]], alias: str) -> str | None:
    for event in reversed(history):
        if event.get("alias") == alias:
            return str(event.get("action"))
    return None


def resolve_aliases(views: Sequence[VersionView], protected: Iterable[str], now: str) -> dict[str, AliasOutcome]:
    """Effective aliases of every version of ONE model, keyed by version name.

    Idempotent: applied to its own output (recorded claims, status aliases, history) it adds no events.
    """
    protected = frozenset(protected)
    claims = {v.name: current_claims(v, now) for v in views}
    out = {v.name: AliasOutcome(claims=list(claims[v.name])) for v in views}
    by_alias: dict[str, list[tuple[VersionView, Claim]]] = {}
    for v in views:
        if v.deleting:
            continue
        for c in claims[v.name]:
            by_alias.setdefault(c.alias, []).append((v, c))

    holder: dict[str, VersionView] = {}
    for alias, claimants in by_alias.items():
        eligible = []
        for v, c in claimants:
            refused, waiting = _refusal(v, alias, protected)
            if refused:
                out[v.name].refused[alias] = refused
            elif waiting:
                out[v.name].waiting[alias] = waiting
            else:
                eligible.append((v, c))
        if eligible:
            winner, _ = max(eligible, key=lambda vc: (vc[1].time, vc[1].observed, vc[0].version))
            holder[alias] = winner
            out[winner.name].aliases.append(alias)
            for v, _c in eligible:
                if v is not winner:
                    out[v.name].superseded[alias] = winner.name

    for v in views:
        o = out[v.name]
        o.aliases.sort()
        before = set(v.status_aliases)
        after = set(o.aliases)
        for alias in sorted(before | set(v.spec_aliases) | set(o.refused)):
            last = _last_action(v.history, alias)
            if alias in after and alias not in before:
                o.new_events.append(_event(alias, "Assigned", now, f"{v.name} (version {v.version}) holds {alias}"))
            elif alias in o.superseded and (alias in before or last not in ("Superseded",)):
                w = holder[alias]
                o.new_events.append(
                    _event(alias, "Superseded", now, f"{alias} moved to {w.name} (version {w.version}), a newer claim")
                )
            elif alias in o.refused and (alias in before or last != "Refused"):
                o.new_events.append(_event(alias, "Refused", now, o.refused[alias]))
            elif alias in before and alias not in after:
                why = "being deleted" if v.deleting else "no longer in spec.aliases"
                if alias in o.waiting:
                    why = o.waiting[alias]
                o.new_events.append(_event(alias, "Removed", now, f"{alias} removed from {v.name}: {why}"))
    return out


def _event(alias: str, action: str, now: str, message: str) -> dict[str, Any]:
    return {"alias": alias, "action": action, "time": now, "message": message[:1024]}


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """Conditions with ``type_`` set; lastTransitionTime changes only when the status does."""
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        ltt = cond.get("lastTransitionTime") if cond.get("status") == status else now
        out.append(_cond(type_, status, reason, message, generation, ltt or now))
    if not found:
        out.append(_cond(type_, status, reason, message, generation, now))
    return out


def _cond(type_: str, status: str, reason: str, message: str, generation: int | None, ltt: str) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": ltt,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def alias_status_patch(obj: Mapping[str, Any], outcome: AliasOutcome, now: str) -> dict[str, Any] | None:
    """The status fields to patch for ``outcome`` on ``obj`` (aliases, aliasClaims, aliasHistory,
    AliasSuperseded/AliasRefused conditions), or None when nothing changes."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    conditions: list[dict[str, Any]] = [dict(c) for c in status.get("conditions") or ()]
    has = {c.get("type") for c in conditions}
    if outcome.superseded:
        msg = "; ".join(f"{a} is held by {w}" for a, w in sorted(outcome.superseded.items()))
        conditions = set_condition(conditions, COND_ALIAS_SUPERSEDED, "True", REASON_SUPERSEDED, msg, generation, now)
    elif COND_ALIAS_SUPERSEDED in has:
        conditions = set_condition(
            conditions, COND_ALIAS_SUPERSEDED, "False", REASON_NOT_SUPERSEDED, "", generation, now
        )
    if outcome.refused:
        msg = "; ".join(outcome.refused[a] for a in sorted(outcome.refused))
        conditions = set_condition(conditions, COND_ALIAS_REFUSED, "True", REASON_REFUSED, msg, generation, now)
    elif COND_ALIAS_REFUSED in has:
        conditions = set_condition(conditions, COND_ALIAS_REFUSED, "False", REASON_NOT_REFUSED, "", generation, now)
    history = [*list(status.get("aliasHistory") or ()), *outcome.new_events][-HISTORY_LIMIT:]
    desired = {
        "observedGeneration": generation,
        "aliases": outcome.aliases,
        "aliasClaims": [c.dump() for c in outcome.claims],
        "aliasHistory": history,
        "conditions": conditions,
    }
    current = {
        "observedGeneration": status.get("observedGeneration"),
        "aliases": list(status.get("aliases") or []),
        "aliasClaims": list(status.get("aliasClaims") or []),
        "aliasHistory": list(status.get("aliasHistory") or []),
        "conditions": list(status.get("conditions") or []),
    }
    return None if desired == current else desired


# ---- retention ----------------------------------------------------------------------------------------


def select_for_deletion(views: Sequence[VersionView], keep: int) -> list[str]:
    """Names of versions of ONE model that retention deletes: beyond the ``keep`` highest version numbers,
    created by the operator from a run (hand-registered versions belong to their author / Argo CD), not
    holding or claiming an alias, not Pending/Verifying, not already being deleted."""
    keep = max(1, keep)
    ordered = sorted(views, key=lambda v: v.version, reverse=True)
    doomed = []
    for v in ordered[keep:]:
        if v.deleting or not v.from_run or v.status_aliases or v.spec_aliases:
            continue
        if v.phase not in (PHASE_READY, PHASE_FAILED):
            continue
        doomed.append(v.name)
    return sorted(doomed)


# ---- status pieces ------------------------------------------------------------------------------------


def primary_metric(spec: Mapping[str, Any]) -> str | None:
    """``name=value`` of the headline metric: the task's default when present, else the first by name."""
    metrics = spec.get("metrics") or {}
    if not metrics:
        return None
    task = (spec.get("signature") or {}).get("task")
    candidates = [DEFAULT_PRIMARY_METRIC[task]] if task in DEFAULT_PRIMARY_METRIC else []
    candidates += ["accuracy", "r2", "anomaly_rate", *sorted(metrics)]
    name = next(n for n in candidates if n in metrics)
    return f"{name}={float(metrics[name]):.4g}"


def artifact_dir(uri: str) -> str:
    """The directory of the model file an artifact URI names (the URI itself when it names a directory:
    a last path segment without a dot)."""
    scheme, sep, rest = uri.rstrip("/").partition("://")
    head, slash, last = rest.rpartition("/")
    if slash and head.strip("/") and "." in last:
        return f"{scheme}{sep}{head}"
    return uri.rstrip("/")


def serving_hint(spec: Mapping[str, Any]) -> dict[str, Any]:
    """KServe hint: ``modelFormat: {name: sklearn, version: <major>}``, ``storageUri`` = the artifact's
    directory (it holds exactly one model file, model.joblib), and the runtime versions to match."""
    runtime = spec.get("runtime") or {}
    model_format = {"name": "sklearn"}
    sk = runtime.get("scikitLearn")
    if sk:
        model_format["version"] = str(sk).split(".")[0]
    hint: dict[str, Any] = {"modelFormat": model_format, "storageUri": artifact_dir(spec["artifact"]["uri"])}
    if runtime:
        hint["runtime"] = dict(runtime)
    return hint


def verify_failure_reason(message: str) -> str:
    """Status reason for a failed verification, from the trainer's result message."""
    return REASON_CHECKSUM_MISMATCH if "checksum mismatch" in message.lower() else REASON_VERIFY_FAILED


# ---- Jobs ---------------------------------------------------------------------------------------------


def child_job_name(mv_name: str, component: str, *parts: str) -> str:
    """``<mv name>-<component>-<hash>`` within 63 characters; the hash covers ``parts``."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]
    suffix = f"-{component}-{digest}"
    return mv_name[: NAME_BUDGET - len(suffix)].rstrip("-") + suffix


def _owner_ref(mv: Mapping[str, Any]) -> dict[str, Any]:
    meta = mv["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _pvc_location(uri: str, mount_root: str) -> tuple[str, str, str] | None:
    """(claim, mount path, local path of the URI) of a pvc:// URI; None for other schemes."""
    if not uri.startswith("pvc://"):
        return None
    claim, _, rest = uri.removeprefix("pvc://").partition("/")
    mount = f"{mount_root.rstrip('/')}/{claim}"
    return claim, mount, posixpath.join(mount, rest) if rest else mount


def _restricted_pod(
    mv: Mapping[str, Any], settings: Settings, component: str, command: list[str], env: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, str]]:
    name = mv["metadata"]["name"]
    labels = {
        **MANAGED_BY,
        # Not "trainer": the TrainingRun controller's server-side Job/pod selector must not match these.
        "app.kubernetes.io/component": f"model-{component}",
        COMPONENT_LABEL: component,
        MODEL_LABEL: mv["spec"]["model"],
        MODEL_VERSION_LABEL: name,
    }
    container = {
        "name": component,
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": env,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": contract.DEFAULT_TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = {
        "metadata": {"labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
        },
    }
    return pod, labels


def _job(
    mv: Mapping[str, Any], job_name: str, pod: dict[str, Any], labels: dict[str, str], deadline: int
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name,
            "namespace": mv["metadata"].get("namespace"),
            "labels": dict(labels),
            "ownerReferences": [_owner_ref(mv)],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"operator": "In", "values": list(contract.TERMINAL_EXIT_CODES)},
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": pod,
        },
    }


def verify_job_name(mv: Mapping[str, Any]) -> str:
    """Deterministic: one verification Job per ModelVersion object (uid) and artifact."""
    art = mv["spec"]["artifact"]
    return child_job_name(mv["metadata"]["name"], COMPONENT_VERIFY, mv["metadata"]["uid"], art["uri"], art["sha256"])


def build_verify_job(mv: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The Job that runs ``python -m kubetrain_trainer verify`` on a hand-registered artifact.

    pvc:// artifacts: the claim is mounted read-only at ``<pvc mount root>/<claim>`` and
    ``KUBETRAIN_VERIFY_URI`` is ``file://`` + the mounted path of the file. The same path and checksum
    also go as ``--model``/``--sha256`` arguments, because a process-based node (the dev cluster's agent)
    rewrites only values that *start* with a mount path. Other schemes pass the URI unchanged; their
    credentials come from ``spec.envFrom`` / ``spec.serviceAccountName`` (as for a trainer: the explicit
    ``KUBETRAIN_*`` variables win over envFrom keys, and the token is mounted only with a ServiceAccount).
    """
    art = mv["spec"]["artifact"]
    uri, sha = art["uri"], art["sha256"]
    command = ["python", "-m", "kubetrain_trainer", "verify"]
    env: list[dict[str, Any]] = [{"name": contract.ENV_VERIFY_SHA256, "value": sha}]
    pod, labels = _restricted_pod(mv, settings, COMPONENT_VERIFY, command, env)
    env_from = mv["spec"].get("envFrom")
    if env_from:
        pod["spec"]["containers"][0]["envFrom"] = [dict(e) for e in env_from]
    pod["spec"].update(service_account_fields(mv["spec"].get("serviceAccountName")))
    pvc = _pvc_location(uri, settings.pvc_mount_root)
    if pvc:
        claim, mount, path = pvc
        env.insert(0, {"name": contract.ENV_VERIFY_URI, "value": f"file://{path}"})
        command += ["--model", path, "--sha256", sha]
        pod["spec"]["volumes"].append(
            {"name": "artifact", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        pod["spec"]["containers"][0]["volumeMounts"].append({"name": "artifact", "mountPath": mount, "readOnly": True})
    else:
        env.insert(0, {"name": contract.ENV_VERIFY_URI, "value": uri})
    return _job(mv, verify_job_name(mv), pod, labels, VERIFY_DEADLINE_SECONDS)


CLEANUP_SCRIPT = "import shutil, sys\nshutil.rmtree(sys.argv[1], ignore_errors=True)\nprint('removed', sys.argv[1])\n"


def cleanup_target(mv: Mapping[str, Any], others: Iterable[Mapping[str, Any]] = ()) -> str | None:
    """The artifact directory a ``deletionPolicy: Delete`` cleanup removes, or None when it must not:
    not a pvc:// artifact, the claim's root, or a directory another ModelVersion still uses."""
    uri = mv["spec"]["artifact"]["uri"]
    if not uri.startswith("pvc://"):
        return None
    directory = artifact_dir(uri)
    if "/" not in directory.removeprefix("pvc://").strip("/"):
        return None
    for other in others:
        if (other.get("metadata") or {}).get("uid") == mv["metadata"].get("uid"):
            continue
        other_uri = ((other.get("spec") or {}).get("artifact") or {}).get("uri", "")
        if other_uri and (artifact_dir(other_uri) == directory or other_uri.startswith(directory + "/")):
            return None
    return directory


def build_cleanup_job(mv: Mapping[str, Any], settings: Settings, directory: str) -> dict[str, Any]:
    """The Job that removes a pvc:// artifact directory (``cleanup_target``) — no shell: the path is an
    argument of a fixed Python snippet."""
    claim, mount, path = _pvc_location(directory, settings.pvc_mount_root) or ("", "", "")
    command = ["python", "-c", CLEANUP_SCRIPT, path]
    pod, labels = _restricted_pod(mv, settings, COMPONENT_CLEANUP, command, [])
    pod["spec"]["volumes"].append({"name": "artifact", "persistentVolumeClaim": {"claimName": claim}})
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "artifact", "mountPath": mount})
    name = child_job_name(mv["metadata"]["name"], COMPONENT_CLEANUP, mv["metadata"]["uid"], directory)
    job = _job(mv, name, pod, labels, CLEANUP_DEADLINE_SECONDS)
    # The ModelVersion is being deleted: a blocking ownerReference would only add a foreground-deletion
    # dependency. The reference still lets the garbage collector remove the Job after the ModelVersion.
    job["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = False
    return job
