"""The MLflow registry mirror of one model's ModelVersions: pure decisions (gather and act are in ``mirror``).

Each Ready ModelVersion is mirrored as a version of the MLflow registered model of the same name (created
when missing), with its artifact URI as ``source``, the MLflow run of its TrainingRun as ``run_id`` (when
the run was tracked on the same server), and tags: ``kubetrain.uid`` (how an existing mirror is found, so a
retry never registers a duplicate), ``kubetrain.modelversion``, ``.namespace``, ``.version``, ``.sha256``,
``kubetrain.run``, and each metric as ``kubetrain.metric.<name>``.

The cluster is the source of truth for the registered model's aliases: each alias a Ready version holds
(``status.aliases``) is set on its mirror; every other alias of the registered model is removed. An alias
that MLflow has elsewhere than where kubetrain last put it (``status.tracking.aliases``), or that kubetrain
never set, was changed in MLflow by hand: it is put back, ``status.tracking.restored`` says what was found,
the Tracked condition has reason ``AliasRestored`` and a Warning Event is posted.

MLflow failures never fail a version: Tracked=False with the reason, retried with exponential backoff
(2, 4, ... s up to the resync interval), and the mirror catches up when MLflow answers again. A deleted
version's mirror is deleted only with ``deletionPolicy: Delete`` (best effort, like the artifact).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetrain_trainer import contract

from .. import k8s
from ..settings import Settings

TAG_UID = "kubetrain.uid"
TAG_NAME = "kubetrain.modelversion"
TAG_NAMESPACE = "kubetrain.namespace"
TAG_VERSION = "kubetrain.version"
TAG_SHA256 = "kubetrain.sha256"
TAG_RUN = "kubetrain.run"
TAG_METRIC = "kubetrain.metric."

COND_TRACKED = "Tracked"
REASON_MIRRORED = "Mirrored"
REASON_MIRRORING = "Mirroring"
REASON_RESTORED = "AliasRestored"
REASON_WAITING = "WaitingForRun"

MEM_MLFLOW = "mlflow"
#: Seconds between looks at a run whose status does not yet name its MLflow run.
RUN_WAIT_SECONDS = 2.0
#: The pass after a mirror write comes this soon (it reads back what was written).
AFTER_WRITE = 0.5
DELETE_WAIT_SECONDS = 60.0
PHASE_READY = "Ready"


@dataclass(frozen=True)
class Target:
    """Where one version is mirrored and with which credentials."""

    uri: str
    secrets: tuple[tuple[str, str], ...] = ()
    """(namespace, name) of the Secrets to take credentials from, in order."""
    explicit: bool = False
    """The first Secret was named explicitly (a missing one is an error, not skipped)."""


@dataclass(frozen=True)
class RunLink:
    """What the producing TrainingRun says about the MLflow run (None: no run, or not tracked there)."""

    run_id: str | None = None
    name: str | None = None
    waiting: bool = False
    """The run exists but has not finished writing its status (its MLflow run id may come)."""


@dataclass
class MirrorVersion:
    version: str
    source: str = ""
    run_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class TargetState:
    """What the registry of one server holds for the model, or why it could not be read."""

    uri: str
    exists: bool = False
    aliases: dict[str, str] = field(default_factory=dict)
    versions: list[MirrorVersion] = field(default_factory=list)
    error: tuple[str, str] | None = None
    """(reason, message) when MLflow could not be read (or a write of the last pass failed)."""
    skipped: bool = False
    """Not read: backing off after a failure until ``retry_at``."""

    def by_uid(self) -> dict[str, MirrorVersion]:
        out: dict[str, MirrorVersion] = {}
        for mv in sorted(self.versions, key=lambda m: int(m.version) if m.version.isdigit() else 0):
            uid = mv.tags.get(TAG_UID)
            if uid and uid not in out:  # the oldest mirror of a uid is the one (a duplicate is never made)
                out[uid] = mv
        return out


@dataclass
class MirrorFacts:
    targets: dict[str, Target] = field(default_factory=dict)
    """Version name → where it is mirrored (absent: not mirrored)."""
    runs: dict[str, RunLink] = field(default_factory=dict)
    states: dict[str, TargetState] = field(default_factory=dict)
    """uri → the registry's state."""


@dataclass(frozen=True)
class Action:
    """One registry write: ``op`` is a ``Registry`` method name."""

    uri: str
    op: str
    args: tuple[Any, ...]


@dataclass
class MirrorPlan:
    actions: list[Action] = field(default_factory=list)
    tracking: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Version name → its status.tracking (only when it changes)."""
    conditions: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """Version name → Tracked (status, reason, message)."""
    events: list[tuple[dict[str, Any], k8s.Event]] = field(default_factory=list)
    pending_delete: set[str] = field(default_factory=set)
    """Deleted versions whose mirror is not removed yet (their finalizer stays)."""
    requeue: float | None = None
    remember: dict[str, Any] = field(default_factory=dict)

    def again_in(self, seconds: float) -> None:
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)


# ---- where a version is mirrored ---------------------------------------------------------------------------


def target_of(obj: Mapping[str, Any], run: Mapping[str, Any] | None, settings: Settings) -> Target | None:
    """The mirror of a version: spec.tracking.mlflow, else the producing run's server, else the operator's;
    None when mirroring is off or no server is named anywhere."""
    if not settings.mlflow_mirror:
        return None
    spec = obj.get("spec") or {}
    own = (spec.get("tracking") or {}).get("mlflow") or {}
    if own.get("mirror") is False:
        return None
    recorded = ((obj.get("status") or {}).get("tracking") or {}).get("trackingUri")
    uri = own.get("trackingUri") or run_tracking_uri(run, settings) or recorded or settings.mlflow_tracking_uri
    if not uri:
        return None
    namespace = str(obj["metadata"].get("namespace") or "")
    secrets: list[tuple[str, str]] = []
    explicit = bool(own.get("credentialsSecret"))
    if explicit:
        secrets.append((namespace, str(own["credentialsSecret"])))
    for source in spec.get("envFrom") or []:
        ref = source.get("secretRef") or {}
        if ref.get("name"):
            secrets.append((namespace, str(ref["name"])))
    if settings.mlflow_credentials_secret:
        ns, _, name = settings.mlflow_credentials_secret.partition("/")
        secrets.append((ns, name))
    return Target(str(uri).rstrip("/"), tuple(secrets), explicit)


def run_tracking_uri(run: Mapping[str, Any] | None, settings: Settings) -> str | None:
    """The server a TrainingRun was tracked on (its spec, else the operator's default)."""
    if run is None:
        return None
    mlflow = ((run.get("spec") or {}).get("tracking") or {}).get("mlflow") or {}
    uri = mlflow.get("trackingUri") or settings.mlflow_tracking_uri
    return str(uri).rstrip("/") if uri else None


def run_link(obj: Mapping[str, Any], run: Mapping[str, Any] | None, target: Target, settings: Settings) -> RunLink:
    """The MLflow run of the version's TrainingRun, when that run was tracked on the mirror's server."""
    ref = ((obj.get("spec") or {}).get("source") or {}).get("trainingRun") or {}
    if run is None or (ref.get("uid") and run["metadata"].get("uid") != ref.get("uid")):
        return RunLink(name=ref.get("name"))
    status = run.get("status") or {}
    if status.get("phase") not in ("Succeeded", "Failed"):
        return RunLink(name=ref.get("name"), waiting=True)
    run_id = (status.get("tracking") or {}).get("mlflowRunId")
    same_server = run_tracking_uri(run, settings) == target.uri
    return RunLink(run_id=str(run_id) if run_id and same_server else None, name=ref.get("name"))


def wanted_tags(obj: Mapping[str, Any]) -> dict[str, str]:
    """The tags kubetrain keeps on a mirror version (MLflow tag values are strings)."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    tags = {
        TAG_UID: str(meta["uid"]),
        TAG_NAME: str(meta["name"]),
        TAG_NAMESPACE: str(meta.get("namespace") or ""),
        TAG_VERSION: str(spec.get("version")),
        TAG_SHA256: str((spec.get("artifact") or {}).get("sha256") or ""),
    }
    run = ((spec.get("source") or {}).get("trainingRun") or {}).get("name")
    if run:
        tags[TAG_RUN] = str(run)
    for name, value in sorted((spec.get("metrics") or {}).items()):
        if isinstance(value, int | float) and not isinstance(value, bool):
            tags[TAG_METRIC + str(name)] = repr(float(value))
    return tags


def version_url(uri: str, model: str, version: str) -> str:
    return f"{uri}/#/models/{model}/versions/{version}"


# ---- backoff -----------------------------------------------------------------------------------------------


def retry_delay(failures: int, settings: Settings) -> float:
    return float(min(settings.mlflow_resync_seconds, 2.0 ** max(1, min(failures, 10))))


def failure_memory(
    memory: Mapping[str, Any], uri: str, reason: str, message: str, settings: Settings, now: dt.datetime
) -> dict[str, Any]:
    """The MEM_MLFLOW memory after a failure on ``uri``: failures counted, the next try pushed back."""
    mem = {k: dict(v) for k, v in (memory.get(MEM_MLFLOW) or {}).items()}
    failures = int((mem.get(uri) or {}).get("failures", 0)) + 1
    retry_at = now + dt.timedelta(seconds=retry_delay(failures, settings))
    mem[uri] = {"failures": failures, "retry_at": k8s.format_time(retry_at, micro=True), "error": [reason, message]}
    return mem


def backing_off(memory: Mapping[str, Any], uri: str, now: dt.datetime) -> tuple[str, str] | None:
    """The remembered error while ``uri`` is backed off (None: try MLflow now)."""
    entry = (memory.get(MEM_MLFLOW) or {}).get(uri) or {}
    retry_at = k8s.parse_time(entry.get("retry_at"))
    if retry_at is None or retry_at <= now or not entry.get("error"):
        return None
    reason, message = entry["error"]
    return str(reason), str(message)


# ---- decide ------------------------------------------------------------------------------------------------


def decide(
    model: str,
    objs: list[dict[str, Any]],
    facts: MirrorFacts,
    memory: Mapping[str, Any],
    settings: Settings,
    now: dt.datetime,
) -> MirrorPlan:
    """The registry writes and status of the mirror of every version of ``model``. ``objs`` are the versions
    as this pass leaves them (phase and aliases already decided), deleted ones included."""
    plan = MirrorPlan()
    stamp = k8s.format_time(now)
    mem = {k: dict(v) for k, v in (memory.get(MEM_MLFLOW) or {}).items()}
    for uri in sorted({t.uri for t in facts.targets.values()}):
        group = [o for o in objs if (t := facts.targets.get(o["metadata"]["name"])) is not None and t.uri == uri]
        state = facts.states.get(uri) or TargetState(uri, error=(contract.TRACKING_REASON_ERROR, "not read"))
        if state.error is not None:
            _failed(model, group, state, mem, settings, now, plan)
            continue
        before = len(plan.actions)
        _mirror(model, uri, group, state, facts, stamp, now, plan)
        if len(plan.actions) == before:
            mem.pop(uri, None)  # read and in sync: MLflow is fine again
        elif uri in mem:
            mem[uri] = {"failures": mem[uri].get("failures", 0)}  # try the writes now; ``act`` clears it
        plan.again_in(float(settings.mlflow_resync_seconds))
    plan.remember[MEM_MLFLOW] = mem
    return plan


def _failed(
    model: str,
    group: list[dict[str, Any]],
    state: TargetState,
    mem: dict[str, Any],
    settings: Settings,
    now: dt.datetime,
    plan: MirrorPlan,
) -> None:
    """MLflow could not be read: Tracked=False with the reason on each Ready version; retry with backoff."""
    assert state.error is not None
    reason, message = state.error
    if not state.skipped:
        mem.update(failure_memory({MEM_MLFLOW: mem}, state.uri, reason, message, settings, now))
    retry_at = k8s.parse_time((mem.get(state.uri) or {}).get("retry_at")) or now
    plan.again_in(max(0.05, (retry_at - now).total_seconds()))
    text = f"MLflow registry at {state.uri} not in sync (retrying): {message}"
    for obj in group:
        name = obj["metadata"]["name"]
        if obj["metadata"].get("deletionTimestamp"):
            if _mirror_cleanup_wanted(obj) and not _delete_given_up(obj, now, plan, message):
                plan.pending_delete.add(name)
            continue
        if (obj.get("status") or {}).get("phase") != PHASE_READY:
            continue
        if _condition(obj) != ("False", reason):
            plan.events.append((obj, k8s.Event.warning(reason, text)))
        plan.conditions[name] = ("False", reason, text)


def _mirror(
    model: str,
    uri: str,
    group: list[dict[str, Any]],
    state: TargetState,
    facts: MirrorFacts,
    stamp: str,
    now: dt.datetime,
    plan: MirrorPlan,
) -> None:
    by_uid = state.by_uid()
    live = [o for o in group if not o["metadata"].get("deletionTimestamp")]
    ready = [o for o in live if (o.get("status") or {}).get("phase") == PHASE_READY]
    if ready and not state.exists:
        plan.actions.append(Action(uri, "create_registered_model", (model, "mirrored from kubetrain ModelVersions")))
    mirrors: dict[str, MirrorVersion] = {}
    for obj in ready:
        name, uid = obj["metadata"]["name"], str(obj["metadata"]["uid"])
        found = by_uid.get(uid)
        if found is None:
            link = facts.runs.get(name) or RunLink()
            if link.waiting:
                plan.conditions[name] = ("Unknown", REASON_WAITING, f"waiting for TrainingRun {link.name} to finish")
                plan.again_in(RUN_WAIT_SECONDS)
                continue
            source = str(obj["spec"]["artifact"]["uri"])
            description = f"kubetrain ModelVersion {obj['metadata'].get('namespace')}/{name}"
            plan.actions.append(
                Action(uri, "create_version", (model, source, link.run_id, wanted_tags(obj), description))
            )
            plan.conditions[name] = ("Unknown", REASON_MIRRORING, f"registering in MLflow at {uri}")
            plan.again_in(AFTER_WRITE)
            continue
        mirrors[name] = found
        for key, value in wanted_tags(obj).items():
            if found.tags.get(key) != value:
                plan.actions.append(Action(uri, "set_version_tag", (model, found.version, key, value)))
    restored = _aliases(model, uri, ready, mirrors, state, plan)
    for obj in ready:
        name = obj["metadata"]["name"]
        if name not in mirrors:
            continue
        _version_status(obj, uri, model, mirrors[name], restored.get(name), stamp, plan)
    _deletions(model, uri, group, by_uid, plan)


def _deletions(
    model: str, uri: str, group: list[dict[str, Any]], by_uid: Mapping[str, MirrorVersion], plan: MirrorPlan
) -> None:
    """Deleted versions with ``deletionPolicy: Delete``: their MLflow version goes, then their finalizer."""
    for obj in group:
        if obj["metadata"].get("deletionTimestamp") and _mirror_cleanup_wanted(obj):
            found = by_uid.get(str(obj["metadata"]["uid"]))
            if found is not None:
                plan.actions.append(Action(uri, "delete_version", (model, found.version)))
                plan.pending_delete.add(obj["metadata"]["name"])
                plan.again_in(AFTER_WRITE)


def _aliases(
    model: str,
    uri: str,
    ready: list[dict[str, Any]],
    mirrors: dict[str, MirrorVersion],
    state: TargetState,
    plan: MirrorPlan,
) -> dict[str, str]:
    """Set/remove aliases so MLflow's equal the cluster's; what was changed by hand, by version name."""
    desired: dict[str, tuple[str, dict[str, Any]]] = {}  # alias → (mlflow version, holder)
    pending: set[str] = set()
    for obj in ready:
        held = (obj.get("status") or {}).get("aliases") or []
        name = obj["metadata"]["name"]
        for alias in held:
            if name in mirrors:
                desired[alias] = (mirrors[name].version, obj)
            else:
                pending.add(alias)  # its holder is being registered: the next pass sets it
    recorded: dict[str, str] = {}  # alias → MLflow version kubetrain last set it on
    by_version = {m.version: n for n, m in mirrors.items()}
    for obj in ready:
        name = obj["metadata"]["name"]
        tracking = (obj.get("status") or {}).get("tracking") or {}
        if name in mirrors and tracking.get("version") == mirrors[name].version:
            for alias in tracking.get("aliases") or []:
                recorded[alias] = mirrors[name].version
    restored: dict[str, str] = {}
    for alias, (version, holder) in sorted(desired.items()):
        found = state.aliases.get(alias)
        if found == version:
            continue
        plan.actions.append(Action(uri, "set_alias", (model, alias, version)))
        if recorded.get(alias) == version:  # kubetrain had put it there: someone moved or removed it in MLflow
            where = f"was on MLflow version {found}" if found else "had been removed"
            note = f"alias {alias} {where} (changed in MLflow, not on the cluster); put back on version {version}"
            restored[holder["metadata"]["name"]] = note
            plan.events.append((holder, k8s.Event.warning(REASON_RESTORED, note)))
    for alias, found in sorted(state.aliases.items()):
        if alias not in desired and alias not in pending:
            plan.actions.append(Action(uri, "delete_alias", (model, alias)))
            if recorded.get(alias) is None and not _was_ours(alias, ready):
                _report_unknown(alias, found, ready, by_version, restored, plan)
    return restored


def _report_unknown(
    alias: str,
    found: str,
    ready: list[dict[str, Any]],
    by_version: Mapping[str, str],
    restored: dict[str, str],
    plan: MirrorPlan,
) -> None:
    """An alias set in MLflow that no ModelVersion holds (and kubetrain never set): reported on the version it
    was on (else the first Ready one) as it is removed."""
    note = f"alias {alias} was set in MLflow on version {found} but no ModelVersion holds it; removed"
    holder_name = by_version.get(found)
    holder = next((o for o in ready if o["metadata"]["name"] == holder_name), ready[0] if ready else None)
    if holder is not None:
        restored.setdefault(holder["metadata"]["name"], note)
        plan.events.append((holder, k8s.Event.warning(REASON_RESTORED, note)))


def _was_ours(alias: str, objs: list[dict[str, Any]]) -> bool:
    """Whether kubetrain had set ``alias`` on some version (it moved or went on the cluster since)."""
    return any(alias in (((o.get("status") or {}).get("tracking") or {}).get("aliases") or []) for o in objs)


def _version_status(
    obj: dict[str, Any],
    uri: str,
    model: str,
    found: MirrorVersion,
    restored: str | None,
    stamp: str,
    plan: MirrorPlan,
) -> None:
    name = obj["metadata"]["name"]
    current = (obj.get("status") or {}).get("tracking") or {}
    tracking: dict[str, Any] = {
        "trackingUri": uri,
        "registeredModel": model,
        "version": found.version,
        "url": version_url(uri, model, found.version),
        "aliases": sorted((obj.get("status") or {}).get("aliases") or []),
    }
    if found.run_id:
        tracking["mlflowRunId"] = found.run_id
    if restored:
        tracking["restored"] = f"{stamp}: {restored}"
    elif current.get("restored"):
        tracking["restored"] = current["restored"]
    unchanged = {k: v for k, v in current.items() if k != "lastSyncTime"} == tracking
    tracking["lastSyncTime"] = current.get("lastSyncTime") if unchanged else stamp
    if not unchanged:
        plan.tracking[name] = tracking
    if current.get("version") != found.version:
        plan.events.append((obj, k8s.Event.normal(REASON_MIRRORED, f"MLflow model {model} version {found.version}")))
    if restored:
        plan.conditions[name] = ("True", REASON_RESTORED, restored)
    else:
        message = f"MLflow model {model} version {found.version} at {uri}"
        plan.conditions[name] = ("True", REASON_MIRRORED, message)


def _mirror_cleanup_wanted(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("spec") or {}).get("deletionPolicy") == "Delete") and k8s.FINALIZER in (
        obj["metadata"].get("finalizers") or ()
    )


def _delete_given_up(obj: Mapping[str, Any], now: dt.datetime, plan: MirrorPlan, message: str) -> bool:
    """A deleted version waits for its mirror's removal at most DELETE_WAIT_SECONDS (best effort)."""
    since = k8s.parse_time(obj["metadata"].get("deletionTimestamp")) or now
    if (now - since).total_seconds() <= DELETE_WAIT_SECONDS:
        return False
    note = f"could not remove the MLflow mirror: {message}"
    plan.events.append((dict(obj), k8s.Event.warning("MirrorCleanupFailed", note)))
    return True


def _condition(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == COND_TRACKED:
            return str(cond.get("status")), str(cond.get("reason"))
    return None
