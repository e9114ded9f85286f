"""The ModelVersion kind's ``decide``: a pure function of (facts of ONE model, settings, now) → plan.

The engine key is the model (namespace, ``spec.model``): every version of it is decided together, so the
aliases of a model's versions are computed from one listing and never written by two passes at once.

* Trusted lineage: a version created by the operator from a run (label ``kubetrain.io/run-uid``) is Ready
  at once with ``ArtifactVerified=True/VerifiedByTrainer`` when that TrainingRun still exists with the same
  uid and its ``status.model.sha256`` equals the artifact's (the trainer hashed the file it wrote).
  Otherwise (run gone, sha differs, label copied onto a hand-made object) it is verified by a Job like a
  hand-registered one.
* A version Ready by trusted lineage also gets ``report`` and ``evaluation`` (the summary of evaluation.json)
  from the run's status, in the same patch.
* Hand-registered versions: phase Verifying and one verification Job (deterministic name); the Job's
  completion arrives as a watch event of the Job (routed to its owner), never by polling.
* A version that becomes Ready gets the aliases it wins in the same status patch; other versions follow in
  the same pass. Retention deletes what ``retention.select_for_deletion`` selects.
* ``deletionPolicy: Delete``: such versions carry the finalizer ``kubetrain.io/finalizer``; when one is
  deleted, a cleanup Job removes the artifact directory and the finalizer goes once the Job is done or
  after ``CLEANUP_WAIT_SECONDS`` (best effort, never blocks deletion for long).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from kubetrain_api.models import ModelVersionSpec
from kubetrain_trainer import contract
from pydantic import ValidationError

from .. import k8s
from ..engine import Child, Plan
from ..mlflowmirror import decide as mirror_decide
from ..settings import Settings
from ..trainingrun import promotion
from . import aliases, children, retention
from . import status as mvs

TRUST_WAIT_RETRIES = 5
TRUST_WAIT_SECONDS = 2.0
CLEANUP_WAIT_SECONDS = 60.0
MEM_TRUST_WAITS = "trust_waits"
MEM_WARNED = "warned"


@dataclass
class VersionFacts:
    """One version of the model and what its phase depends on."""

    obj: dict[str, Any]
    run: dict[str, Any] | None = None
    """The TrainingRun its source names (run-created versions still to settle)."""
    job: dict[str, Any] | None = None
    """Its verification Job (its cleanup Job while it is being deleted)."""
    job_message: str | None = None
    """The termination message of the finished Job's last pod."""
    checks: dict[str, tuple[dict[str, Any] | None, str | None]] = field(default_factory=dict)
    """Promotion-time check Jobs by name (``pending_checks``): (the Job or None, its failure message)."""

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def deleting(self) -> bool:
        return bool(self.obj["metadata"].get("deletionTimestamp"))


@dataclass
class ModelFacts:
    namespace: str
    model: str
    versions: list[VersionFacts]
    namespace_versions: list[dict[str, Any]]
    """Every ModelVersion of the namespace (artifact directories shared across models)."""
    memory: Mapping[str, Any] = field(default_factory=dict)
    mirror: mirror_decide.MirrorFacts | None = None
    """The MLflow registry's state of the model (None: nothing of it is mirrored)."""


@dataclass
class ModelPlan(Plan):
    posts: list[tuple[dict[str, Any], k8s.Event]] = field(default_factory=list)
    """Events to post, each on its version."""
    mirror: mirror_decide.MirrorPlan | None = None
    """The MLflow registry writes of this pass (``act`` runs them after the status is written)."""


# ---- what gather must read ------------------------------------------------------------------------------------


def settled(obj: Mapping[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") in (mvs.PHASE_READY, mvs.PHASE_FAILED)


def run_ref(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(run name, run uid) a run-created version claims, or None."""
    uid = ((obj.get("metadata") or {}).get("labels") or {}).get(k8s.LABEL_RUN_UID)
    ref = ((obj.get("spec") or {}).get("source") or {}).get("trainingRun") or {}
    if not uid or not ref.get("name") or ref.get("uid") not in (None, uid):
        return None
    return str(ref["name"]), str(uid)


def wants_cleanup(obj: Mapping[str, Any]) -> bool:
    return (obj.get("spec") or {}).get("deletionPolicy") == "Delete"


def pending_checks(obj: Mapping[str, Any], protected: AbstractSet[str]) -> list[tuple[str, str, str]]:
    """(alias, claim, Job name) of each recorded protected claim whose promotion-time check has no result yet
    (what gather reads: those Jobs)."""
    view = aliases.VersionView.from_obj(obj)
    if view.phase != mvs.PHASE_READY or view.deleting:
        return []
    out = []
    for claim in view.claims:
        if (
            claim.alias in view.spec_aliases
            and aliases.needs_check(view, claim.alias, claim, protected)
            and aliases.check_of(view, claim.alias, claim) is None
        ):
            out.append((claim.alias, claim.observed, children.check_job_name(obj, claim.alias, claim.observed)))
    return out


def check_patches(v: VersionFacts, settings: Settings, now: str) -> dict[str, Any]:
    """``aliasChecks`` with the result of every finished check Job of ``v`` added ({} when none finished)."""
    recorded = list((v.obj.get("status") or {}).get("aliasChecks") or [])
    added = False
    for alias, claim, name in pending_checks(v.obj, frozenset(settings.protected_aliases)):
        job, message = v.checks.get(name, (None, None))
        state = k8s.job_state(job) if job is not None else k8s.JOB_RUNNING
        if job is not None and not k8s.owned_by(job, v.obj["metadata"]["uid"]):
            state, message = k8s.JOB_FAILED, f"Job {name} exists and is not owned by this ModelVersion"
        if state == k8s.JOB_SUCCEEDED:
            result, text = aliases.CHECK_PASSED, "the artifact is at its location, its sha256 matches and it loads"
        elif state == k8s.JOB_FAILED:
            result, text = aliases.CHECK_FAILED, message or job_failure(job or {})
        else:
            continue
        entry = {"alias": alias, "claim": claim, "job": name, "result": result, "message": text[:1024], "time": now}
        recorded = [c for c in recorded if c.get("alias") != alias] + [entry]  # the newest claim's check only
        added = True
    return {"aliasChecks": recorded[-16:]} if added else {}


# ---- decide ---------------------------------------------------------------------------------------------------


def decide(facts: ModelFacts, settings: Settings, now: dt.datetime) -> ModelPlan:
    """The plan for every version of one model."""
    plan = ModelPlan()
    stamp = k8s.format_time(now)
    live = [v for v in facts.versions if not v.deleting]
    phase_patches = {v.name: settle(v, facts, settings, stamp, plan) for v in live}
    for v in live:
        checked = check_patches(v, settings, stamp)
        if checked:
            phase_patches[v.name] = {**(phase_patches.get(v.name) or {}), **checked}
    for name, record in promotion_patches(live).items():
        phase_patches[name] = {**(phase_patches.get(name) or {}), "promotion": record}
    history = promotion_history([v.obj for v in live], stamp)
    synthetic = [_merged(v.obj, phase_patches.get(v.name) or {}) for v in facts.versions]
    status_patches = alias_patches(
        synthetic, settings, k8s.format_time(now, micro=True), plan, history, {v.name: v.checks for v in live}
    )
    for name, patch in phase_patches.items():
        if patch:
            status_patches[name] = {**patch, **status_patches.get(name, {})}
    pending_mirror = mirror_patches(facts, settings, now, status_patches, plan)
    for name, patch in sorted(status_patches.items()):
        plan.patch.append((Child("ModelVersion", facts.namespace, name), {"status": patch}))
    for v in facts.versions:
        _finalizer(v, facts, settings, now, plan, pending_mirror)
    plan_retention(synthetic, settings, facts.namespace, plan)
    _label_warnings(live, facts.memory, plan)
    return plan


def mirror_patches(
    facts: ModelFacts,
    settings: Settings,
    now: dt.datetime,
    status_patches: dict[str, dict[str, Any]],
    plan: ModelPlan,
) -> set[str]:
    """The MLflow registry mirror (``mlflowmirror.decide``) of the versions as this pass leaves them:
    status.tracking and the Tracked condition merged into ``status_patches``, the registry writes kept in
    ``plan.mirror``. Returns the deleted versions whose mirror is still to be removed."""
    if facts.mirror is None or not facts.mirror.targets:
        return set()
    objs = [_merged(v.obj, status_patches.get(v.name) or {}) for v in facts.versions]
    mplan = mirror_decide.decide(facts.model, objs, facts.mirror, facts.memory, settings, now)
    plan.mirror = mplan
    plan.remember.update(mplan.remember)
    plan.posts.extend(mplan.events)
    if mplan.requeue is not None:
        plan.requeue = mplan.requeue if plan.requeue is None else min(plan.requeue, mplan.requeue)
    stamp = k8s.format_time(now)
    for obj in objs:
        name = obj["metadata"]["name"]
        patch = dict(status_patches.get(name) or {})
        if name in mplan.tracking:
            patch["tracking"] = mplan.tracking[name]
        if name in mplan.conditions:
            status, reason, message = mplan.conditions[name]
            conds = (obj.get("status") or {}).get("conditions") or []
            gen = obj["metadata"].get("generation")
            new = k8s.set_condition(conds, mirror_decide.COND_TRACKED, status, reason, message, gen, stamp)
            if new != conds:
                patch["conditions"] = new
        if patch:
            status_patches[name] = patch
    return mplan.pending_delete


def _merged(obj: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    return {**obj, "status": {**(obj.get("status") or {}), **patch}}


def settle(v: VersionFacts, facts: ModelFacts, settings: Settings, now: str, plan: ModelPlan) -> dict[str, Any]:
    """The phase fields of a version still Pending/Verifying (or with an invalid spec): {} when unchanged."""
    try:
        ModelVersionSpec.model_validate(v.obj.get("spec") or {})
    except ValidationError as exc:
        if (v.obj.get("status") or {}).get("phase") == mvs.PHASE_FAILED:
            return {}
        return phase_fields(v, mvs.PHASE_FAILED, mvs.REASON_INVALID_SPEC, str(exc)[:2000], now, plan)
    if settled(v.obj):
        return {}
    spec = v.obj["spec"]
    holder = version_holder([x.obj for x in facts.versions], int(spec["version"]))
    if holder is not None and holder["metadata"]["uid"] != v.obj["metadata"]["uid"]:
        msg = f"version {spec['version']} of model {spec['model']} is already held by {holder['metadata']['name']}"
        return phase_fields(v, mvs.PHASE_FAILED, mvs.REASON_VERSION_CONFLICT, msg, now, plan)
    trust = trusted_lineage(v)
    waits = dict(facts.memory.get(MEM_TRUST_WAITS) or {})
    if trust == "wait" and waits.get(v.name, 0) < TRUST_WAIT_RETRIES:
        plan.remember[MEM_TRUST_WAITS] = {**waits, v.name: waits.get(v.name, 0) + 1}
        plan.requeue = TRUST_WAIT_SECONDS if plan.requeue is None else min(plan.requeue, TRUST_WAIT_SECONDS)
        return {}
    if trust is True:
        msg = "the trainer computed the sha256 of the file it wrote (TrainingRun status agrees)"
        patch = phase_fields(v, mvs.PHASE_READY, mvs.REASON_VERIFIED_BY_TRAINER, msg, now, plan, passed=True)
        return {**patch, **mvs.report_fields(v.run)}
    return verification(v, settings, now, plan)


def verification(v: VersionFacts, settings: Settings, now: str, plan: ModelPlan) -> dict[str, Any]:
    """Verify by a Job: create it (phase Verifying), wait for its watch event, then Ready or Failed."""
    job_name = children.verify_job_name(v.obj)
    if v.job is None:
        plan.create.append(children.build_verify_job(v.obj, settings))
    elif not k8s.owned_by(v.job, v.obj["metadata"]["uid"]):
        msg = f"Job {job_name} exists and is not owned by this ModelVersion"
        return phase_fields(v, mvs.PHASE_FAILED, mvs.REASON_VERIFY_FAILED, msg, now, plan)
    state = k8s.job_state(v.job) if v.job is not None else k8s.JOB_RUNNING
    if state == k8s.JOB_SUCCEEDED:
        msg = "checksum, load and smoke prediction passed"
        return phase_fields(v, mvs.PHASE_READY, mvs.REASON_VERIFIED, msg, now, plan)
    if state == k8s.JOB_FAILED:
        message = v.job_message or job_failure(v.job or {})
        return phase_fields(v, mvs.PHASE_FAILED, mvs.verify_failure_reason(message), message, now, plan)
    if (v.obj.get("status") or {}).get("phase") == mvs.PHASE_VERIFYING:
        return {}
    msg = f"verification Job {job_name}"
    return phase_fields(v, mvs.PHASE_VERIFYING, mvs.REASON_VERIFYING, msg, now, plan, job=job_name)


def phase_fields(
    v: VersionFacts,
    phase: str,
    reason: str,
    message: str,
    now: str,
    plan: ModelPlan,
    *,
    passed: bool | None = None,
    job: str | None = None,
) -> dict[str, Any]:
    """Phase + ArtifactVerified/Ready conditions + serving hint + primary metric (one status patch)."""
    spec, gen = v.obj.get("spec") or {}, v.obj["metadata"].get("generation")
    conds = (v.obj.get("status") or {}).get("conditions") or []
    verified = {mvs.PHASE_READY: "True", mvs.PHASE_FAILED: "False"}.get(phase, "Unknown")
    conds = k8s.set_condition(conds, mvs.COND_ARTIFACT_VERIFIED, verified, reason, message, gen, now)
    ready = "True" if phase == mvs.PHASE_READY else "False"
    conds = k8s.set_condition(conds, mvs.COND_READY, ready, reason, message, gen, now)
    patch: dict[str, Any] = {"phase": phase, "observedGeneration": gen, "conditions": conds}
    metric = mvs.primary_metric(spec)
    if metric:
        patch["primaryMetric"] = metric
    if phase == mvs.PHASE_READY and spec.get("artifact"):
        patch["serving"] = mvs.serving_hint(spec)
    if passed is not None:
        patch["passedThresholds"] = passed
    if job:
        patch["verificationJob"] = job
    if phase == mvs.PHASE_FAILED:
        plan.posts.append((v.obj, k8s.Event.warning(reason, message)))
    elif phase == mvs.PHASE_READY:
        plan.posts.append((v.obj, k8s.Event.normal(reason, message)))
    return patch


def version_holder(siblings: list[dict[str, Any]], version: int) -> dict[str, Any] | None:
    """The ModelVersion that owns a version number: the oldest object claiming it; within the same second
    (creationTimestamp resolution) the canonical name ``<model>-v<n>`` first, then by name."""
    same = [s for s in siblings if int((s.get("spec") or {}).get("version") or 0) == version]
    same = [s for s in same if not (s["metadata"].get("deletionTimestamp"))]
    if not same:
        return None

    def key(s: dict[str, Any]) -> tuple[str, bool, str]:
        name = s["metadata"]["name"]
        canonical = name == f"{s['spec']['model']}-v{version}"
        return (s["metadata"].get("creationTimestamp", ""), not canonical, name)

    return min(same, key=key)


def trusted_lineage(v: VersionFacts) -> bool | str:
    """True when the producing TrainingRun vouches for the artifact; "wait" while its status lags."""
    ref = run_ref(v.obj)
    if ref is None or v.run is None or v.run["metadata"].get("uid") != ref[1]:
        return False
    model = (v.run.get("status") or {}).get("model") or {}
    if not model.get("sha256"):
        return "wait"
    return bool(model["sha256"] == v.obj["spec"]["artifact"]["sha256"])


def job_failure(job: Mapping[str, Any]) -> str:
    cond = k8s.job_condition(job, "Failed", "FailureTarget")
    if cond:
        return f"verification Job failed: {cond.get('reason', '')} {cond.get('message', '')}".strip()
    return "verification Job failed"


def result_message(text: str) -> str:
    """The trainer's result message in a termination message (or the log tail the kubelet put there)."""
    result = contract.parse_result(text)
    return result.message if result and result.message else text.strip()[-2000:]


# ---- aliases, retention, finalizer ------------------------------------------------------------------------------


def alias_patches(
    objs: list[dict[str, Any]],
    settings: Settings,
    now: str,
    plan: ModelPlan,
    extra_history: Mapping[str, list[dict[str, Any]]] | None = None,
    check_jobs: Mapping[str, Mapping[str, tuple[dict[str, Any] | None, str | None]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The alias fields of every live version whose effective aliases (claims, history) change;
    ``extra_history`` adds aliasHistory entries by version name (promotion decisions). A protected claim
    still to be checked gets its check Job (unless ``check_jobs``, what gather found, already has it)."""
    outcomes = aliases.resolve_aliases([aliases.VersionView.from_obj(o) for o in objs], settings.protected_aliases, now)
    out: dict[str, dict[str, Any]] = {}
    for obj in objs:
        if obj["metadata"].get("deletionTimestamp"):
            continue
        outcome = outcomes[obj["metadata"]["name"]]
        found = (check_jobs or {}).get(obj["metadata"]["name"]) or {}
        for alias, claim in sorted(outcome.check.items()):
            name = children.check_job_name(obj, alias, claim.observed)
            if (found.get(name) or (None, None))[0] is None:
                plan.create.append(children.build_verify_job(obj, settings, name))
        outcome.new_events.extend((extra_history or {}).get(obj["metadata"]["name"], []))
        patch = aliases.alias_status_patch(obj, outcome, now)
        if patch is None:
            continue
        out[obj["metadata"]["name"]] = patch
        for event in outcome.new_events:
            plan.posts.extend(_alias_event(obj, event))
    return out


def _alias_event(obj: dict[str, Any], event: Mapping[str, Any]) -> list[tuple[dict[str, Any], k8s.Event]]:
    if event["action"] == "Refused":
        return [(obj, k8s.Event.warning("AliasRefused", event["message"]))]
    if event["action"] in ("Assigned", "Superseded"):
        return [(obj, k8s.Event.normal(f"Alias{event['action']}", event["message"]))]
    if event["action"] in (promotion.DECISION_PROMOTED, promotion.DECISION_CHAMPION_KEPT):
        return [(obj, k8s.Event.normal(event["action"], event["message"]))]
    return []


# ---- promotion (spec.register.promote of the producing run) --------------------------------------------------


def promotion_patches(live: list[VersionFacts]) -> dict[str, dict[str, Any]]:
    """status.promotion of each run-created version whose annotation records a decision not yet in status."""
    out: dict[str, dict[str, Any]] = {}
    for v in live:
        record = promotion.from_annotation(v.obj)
        if record is not None and (v.obj.get("status") or {}).get("promotion") != record:
            out[v.name] = record
    return out


def promotion_history(objs: list[dict[str, Any]], now: str) -> dict[str, list[dict[str, Any]]]:
    """aliasHistory entries of the decisions being recorded now (once: in the pass that writes status.promotion):
    ``Promoted``/``ChampionKept`` on the new version, ``ChampionKept`` on the champion that kept the alias."""
    names = {o["metadata"]["name"] for o in objs}
    out: dict[str, list[dict[str, Any]]] = {}
    for obj in objs:
        record = promotion.from_annotation(obj)
        if record is None or (obj.get("status") or {}).get("promotion") == record:
            continue
        alias, decision, message = record["alias"], record["decision"], record.get("message", "")
        out.setdefault(obj["metadata"]["name"], []).append(_history(alias, decision, now, message))
        champion = record.get("champion")
        if decision == promotion.DECISION_CHAMPION_KEPT and champion in names and champion != obj["metadata"]["name"]:
            kept = f"{alias} kept over {obj['metadata']['name']}: {message}"
            out.setdefault(str(champion), []).append(_history(alias, decision, now, kept))
    return out


def _history(alias: str, action: str, now: str, message: str) -> dict[str, Any]:
    return {"alias": alias, "action": action, "time": now, "message": message[: k8s.EVENT_MESSAGE_MAX]}


def plan_retention(objs: list[dict[str, Any]], settings: Settings, namespace: str, plan: ModelPlan) -> None:
    """Delete the versions retention selects (keep N newest + aliased + in-progress)."""
    if settings.model_retention <= 0:
        return
    views = [aliases.VersionView.from_obj(o) for o in objs]
    for name in retention.select_for_deletion(views, settings.model_retention):
        plan.delete.append(Child("ModelVersion", namespace, name))


def _finalizer(
    v: VersionFacts,
    facts: ModelFacts,
    settings: Settings,
    now: dt.datetime,
    plan: ModelPlan,
    pending_mirror: AbstractSet[str] = frozenset(),
) -> None:
    """Add the finalizer to versions that want their artifact (and MLflow mirror) removed; on deletion, clean
    up, then release."""
    finalizers = list(v.obj["metadata"].get("finalizers") or [])
    ours = k8s.FINALIZER in finalizers
    if not v.deleting:
        if wants_cleanup(v.obj) != ours:
            wanted = [*finalizers, k8s.FINALIZER] if not ours else [f for f in finalizers if f != k8s.FINALIZER]
            plan.patch.append((Child("ModelVersion", facts.namespace, v.name), {"metadata": {"finalizers": wanted}}))
        return
    if ours and cleanup_done(v, facts, settings, now, plan) and v.name not in pending_mirror:
        rest = [f for f in finalizers if f != k8s.FINALIZER]
        plan.patch.append((Child("ModelVersion", facts.namespace, v.name), {"metadata": {"finalizers": rest}}))


def cleanup_done(v: VersionFacts, facts: ModelFacts, settings: Settings, now: dt.datetime, plan: ModelPlan) -> bool:
    """Whether the deleted version may go: its cleanup Job finished, gave up, or there is nothing to remove."""
    target = children.cleanup_target(v.obj, facts.namespace_versions)
    if target is None:
        plan.posts.append(
            (v.obj, k8s.Event.warning("CleanupSkipped", "artifact is not on a PVC, is a claim root or is shared"))
        )
        return True
    if v.job is None:
        plan.create.append(children.build_cleanup_job(v.obj, settings, target))
    state = k8s.job_state(v.job) if v.job is not None else k8s.JOB_RUNNING
    since = k8s.parse_time(v.obj["metadata"].get("deletionTimestamp")) or now
    waited = (now - since).total_seconds()
    if state == k8s.JOB_SUCCEEDED:
        return True
    if state == k8s.JOB_FAILED or waited > CLEANUP_WAIT_SECONDS:
        name = children.cleanup_job_name(v.obj, target)
        plan.posts.append((v.obj, k8s.Event.warning("CleanupFailed", f"could not remove {target} (Job {name})")))
        return True
    remaining = CLEANUP_WAIT_SECONDS - waited + 0.5
    plan.requeue = remaining if plan.requeue is None else min(plan.requeue, remaining)
    return False


def _label_warnings(live: list[VersionFacts], memory: Mapping[str, Any], plan: ModelPlan) -> None:
    """Once per version: without the model label, `kubectl get mv -l kubetrain.io/model=...` misses it."""
    warned = set(memory.get(MEM_WARNED) or ())
    for v in live:
        model = (v.obj.get("spec") or {}).get("model")
        labels = v.obj["metadata"].get("labels") or {}
        if v.name in warned or labels.get(k8s.LABEL_MODEL) == model:
            continue
        warned.add(v.name)
        message = (
            f"set label {k8s.LABEL_MODEL}={model} so `kubectl get mv -l {k8s.LABEL_MODEL}={model}` "
            "lists this version (the operator does not write labels of your objects)"
        )
        plan.posts.append((v.obj, k8s.Event.warning("ModelLabelMissing", message)))
    plan.remember[MEM_WARNED] = warned
