"""ModelVersion controller: verification, phase, aliases, retention and deletion policy.

Everything is level-based: each handler reads the current objects from the API and calls the pure core
(``registry``), so an operator killed at any point recomputes the same state on resume. The operator
writes ModelVersion ``status`` only — never ``spec`` and never metadata of a user's object.

* Trusted lineage: a version created by the operator from a run (label ``kubetrain.io/run-uid``) is Ready
  at once with ``ArtifactVerified=True/VerifiedByTrainer`` when that TrainingRun still exists with the same
  uid and its ``status.model.sha256`` equals the artifact's (the trainer hashed the file it wrote).
  Otherwise (run gone, sha differs, label copied onto a hand-made object) it is verified by a Job like a
  hand-registered one.
* Hand-registered versions: phase Verifying, one verification Job (deterministic name, create-if-absent,
  AlreadyExists = adopt), followed by retrying this handler until the Job finishes (kopf's Job watch is
  restricted server-side to trainer Jobs, so the controller polls its own Job instead of watching all).
* Aliases: recomputed for all versions of the model (``registry.resolve_aliases``) on create/resume, on
  every change of ``spec.aliases``, on phase changes and when a version is deleted; status only.
* Retention: after a version becomes Ready, ``registry.select_for_deletion`` versions are deleted.
* ``deletionPolicy: Delete``: only such objects get kopf's finalizer; the deletion handler runs a cleanup
  Job and gives up after ``CLEANUP_WAIT_SECONDS`` (best effort, never blocks deletion for long).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
from kubetrain_api.models import GROUP, VERSION, ModelVersionSpec
from kubetrain_trainer import contract
from pydantic import ValidationError

from .. import kube, registry
from ..registry import (
    COND_ARTIFACT_VERIFIED,
    COND_READY,
    PHASE_FAILED,
    PHASE_READY,
    PHASE_VERIFYING,
    REASON_VERIFIED,
    REASON_VERIFIED_BY_TRAINER,
    REASON_VERIFYING,
    REASON_VERSION_CONFLICT,
)
from ..settings import get_settings

RESOURCE = (GROUP, VERSION, "modelversions")
Log = logging.Logger | logging.LoggerAdapter[Any]
VERIFY_POLL_SECONDS = 3.0
TRUST_WAIT_RETRIES = 5
CLEANUP_WAIT_SECONDS = 60.0

_locks: dict[tuple[str, str], asyncio.Lock] = {}


def _lock(namespace: str, model: str) -> asyncio.Lock:
    """One lock per model: alias and phase writes of a model's versions never interleave."""
    return _locks.setdefault((namespace, model), asyncio.Lock())


def _now(micro: bool = False) -> str:
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ"
    return dt.datetime.now(dt.UTC).strftime(fmt)


def _warn(obj: Mapping[str, Any], *, reason: str, message: str) -> None:
    body: Any = obj
    kopf.event(body, type="Warning", reason=reason, message=message[:1024])


def _info(obj: Mapping[str, Any], *, reason: str, message: str) -> None:
    body: Any = obj
    kopf.event(body, type="Normal", reason=reason, message=message[:1024])


# ---- handlers -----------------------------------------------------------------------------------------


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
async def reconcile_version(
    body: kopf.Body, namespace: str | None, name: str, retry: int, logger: Log, **_: Any
) -> None:
    """Trigger: a ModelVersion is created, or the operator (re)starts. Effect: phase (Ready via trusted
    lineage or a verification Job, Failed on conflict or mismatch), serving hint, primary metric, then the
    model's aliases and retention. Raises TemporaryError while verification runs."""
    if not namespace:
        return
    mv = await kube.get_model_version(namespace, name)
    if mv is None or (mv.get("metadata") or {}).get("deletionTimestamp"):
        return
    try:
        spec = ModelVersionSpec.model_validate(mv.get("spec") or {})
    except ValidationError as exc:
        await _write_phase(mv, PHASE_FAILED, registry.REASON_INVALID_SPEC, str(exc)[:2000], logger)
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc
    model = spec.model
    labels = (mv.get("metadata") or {}).get("labels") or {}
    if labels.get(registry.MODEL_LABEL) != model:
        _warn(
            dict(body),
            reason="ModelLabelMissing",
            message=f"set label {registry.MODEL_LABEL}={model} so `kubectl get mv -l {registry.MODEL_LABEL}={model}` "
            "lists this version (the operator does not write labels of your objects)",
        )

    phase = (mv.get("status") or {}).get("phase")
    if phase not in (PHASE_READY, PHASE_FAILED):
        phase = await _settle_phase(mv, retry, logger)
    await sync_model(namespace, model, logger)
    if phase == PHASE_READY:
        await apply_retention(namespace, model, logger)


@kopf.on.update(*RESOURCE, field="spec.aliases")
async def aliases_changed(spec: kopf.Spec, namespace: str | None, logger: Log, **_: Any) -> None:
    """Trigger: a user edits spec.aliases of any version. Effect: the effective aliases of ALL versions of
    that model are recomputed and written to their status (spec untouched)."""
    if not namespace:
        return
    await sync_model(namespace, str(spec["model"]), logger)


@kopf.on.event(*RESOURCE)
async def version_deleted(event: kopf.RawEvent, body: kopf.Body, namespace: str | None, logger: Log, **_: Any) -> None:
    """Trigger: a ModelVersion disappears (DELETED watch event). Effect: its aliases pass to the next
    claimants (recompute of the model's aliases)."""
    if not namespace:
        return
    if event.get("type") != "DELETED":
        return
    model = (body.get("spec") or {}).get("model")
    if model:
        await sync_model(namespace, str(model), logger)


def _wants_cleanup(spec: kopf.Spec, **_: Any) -> bool:
    return spec.get("deletionPolicy") == "Delete"


@kopf.on.delete(*RESOURCE, when=_wants_cleanup)
async def cleanup_artifact(
    body: kopf.Body, namespace: str | None, name: str, runtime: dt.timedelta, logger: Log, **_: Any
) -> None:
    """Trigger: deletion of a ModelVersion with ``deletionPolicy: Delete`` (only those carry the finalizer).
    Effect: a cleanup Job removes the artifact directory; waits at most CLEANUP_WAIT_SECONDS, then releases
    the object anyway with a Warning event (best effort)."""
    if not namespace:
        return
    mv = dict(body)
    # Any version of any model in the namespace could point into the same directory: check them all.
    target = registry.cleanup_target(mv, await kube.list_model_versions(namespace, {}))
    if target is None:
        _warn(mv, reason="CleanupSkipped", message="artifact is not on a PVC, is a claim root or is shared")
        return
    manifest = registry.build_cleanup_job(mv, get_settings(), target)
    job = await _create_or_adopt(manifest, mv)
    state = _job_state(job)
    if state == "succeeded":
        logger.info("artifact %s removed", target)
        return
    if state == "failed" or runtime.total_seconds() > CLEANUP_WAIT_SECONDS:
        _warn(mv, reason="CleanupFailed", message=f"could not remove {target} (Job {manifest['metadata']['name']})")
        return
    raise kopf.TemporaryError(f"waiting for cleanup Job {manifest['metadata']['name']}", delay=2)


# ---- phase --------------------------------------------------------------------------------------------


async def _settle_phase(mv: dict[str, Any], retry: int, logger: Log) -> str:
    """Move a Pending/Verifying version to Ready or Failed (the phase written is returned), or raise
    TemporaryError while waiting."""
    meta, spec = mv["metadata"], mv["spec"]
    namespace = meta["namespace"]
    siblings = await kube.list_versions_of_model(namespace, spec["model"])
    holder = _version_holder(siblings, int(spec["version"]))
    if holder is not None and holder["metadata"]["uid"] != meta["uid"]:
        msg = f"version {spec['version']} of model {spec['model']} is already held by {holder['metadata']['name']}"
        await _write_phase(mv, PHASE_FAILED, REASON_VERSION_CONFLICT, msg, logger)
        return PHASE_FAILED

    trust = await _trusted_lineage(mv)
    if trust == "wait" and retry < TRUST_WAIT_RETRIES:
        raise kopf.TemporaryError("waiting for the TrainingRun's status to name the model", delay=2)
    if trust is True:
        msg = "the trainer computed the sha256 of the file it wrote (TrainingRun status agrees)"
        await _write_phase(mv, PHASE_READY, REASON_VERIFIED_BY_TRAINER, msg, logger, passed=True)
        return PHASE_READY

    manifest = registry.build_verify_job(mv, get_settings())
    job_name = manifest["metadata"]["name"]
    if (mv.get("status") or {}).get("phase") != PHASE_VERIFYING:
        await _write_phase(mv, PHASE_VERIFYING, REASON_VERIFYING, f"verification Job {job_name}", logger, job=job_name)
    job = await _create_or_adopt(manifest, mv)
    state = _job_state(job)
    if state == "running":
        raise kopf.TemporaryError(f"verification Job {job_name} is running", delay=VERIFY_POLL_SECONDS)
    if state == "succeeded":
        await _write_phase(mv, PHASE_READY, REASON_VERIFIED, "checksum, load and smoke prediction passed", logger)
        return PHASE_READY
    message = await _termination_message(namespace, job_name) or _job_failure(job)
    reason = registry.verify_failure_reason(message)
    await _write_phase(mv, PHASE_FAILED, reason, message, logger)
    return PHASE_FAILED


def _version_holder(siblings: list[dict[str, Any]], version: int) -> dict[str, Any] | None:
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


async def _trusted_lineage(mv: dict[str, Any]) -> bool | str:
    """True when the producing TrainingRun vouches for the artifact; "wait" while its status lags."""
    meta, spec = mv["metadata"], mv["spec"]
    uid = (meta.get("labels") or {}).get(registry.RUN_UID_LABEL)
    run_ref = (spec.get("source") or {}).get("trainingRun") or {}
    if not uid or not run_ref.get("name") or run_ref.get("uid") not in (None, uid):
        return False
    run = await kube.get_training_run(meta["namespace"], run_ref["name"])
    if run is None or run["metadata"].get("uid") != uid:
        return False
    model = (run.get("status") or {}).get("model") or {}
    if not model.get("sha256"):
        return "wait"
    return bool(model["sha256"] == spec["artifact"]["sha256"])


async def _write_phase(
    mv: dict[str, Any],
    phase: str,
    reason: str,
    message: str,
    logger: Log,
    *,
    passed: bool | None = None,
    job: str | None = None,
) -> None:
    """Phase + ArtifactVerified/Ready conditions + serving hint + primary metric, in one status patch."""
    meta, spec = mv["metadata"], mv["spec"]
    now = _now()
    gen = meta.get("generation")
    async with _lock(meta["namespace"], spec.get("model", "")):
        fresh = await kube.get_model_version(meta["namespace"], meta["name"]) or mv
        status = fresh.get("status") or {}
        conds = status.get("conditions") or []
        verified = {PHASE_READY: "True", PHASE_FAILED: "False"}.get(phase, "Unknown")
        conds = registry.set_condition(conds, COND_ARTIFACT_VERIFIED, verified, reason, message, gen, now)
        ready = "True" if phase == PHASE_READY else "False"
        conds = registry.set_condition(conds, COND_READY, ready, reason, message, gen, now)
        patch: dict[str, Any] = {"phase": phase, "observedGeneration": gen, "conditions": conds}
        metric = registry.primary_metric(spec)
        if metric:
            patch["primaryMetric"] = metric
        if phase == PHASE_READY and spec.get("artifact"):
            patch["serving"] = registry.serving_hint(spec)
        if passed is not None:
            patch["passedThresholds"] = passed
        if job:
            patch["verificationJob"] = job
        alias_events: list[dict[str, Any]] = []
        if phase == PHASE_READY:
            # The aliases this version wins go out in the same write as Ready, so no reader ever sees a
            # Ready version without them; other versions that lose an alias follow in sync_model.
            alias_patch, alias_events = await _aliases_when_ready(fresh, patch)
            patch.update(alias_patch)
        await kube.patch_model_version_status(meta["namespace"], meta["name"], patch)
    logger.info("phase %s (%s): %s", phase, reason, message)
    _alias_events(mv, alias_events, logger)
    if phase == PHASE_FAILED:
        _warn(mv, reason=reason, message=message[:1024])
    elif phase == PHASE_READY:
        _info(mv, reason=reason, message=message[:1024])


# ---- verification Job ---------------------------------------------------------------------------------


async def _create_or_adopt(manifest: dict[str, Any], mv: Mapping[str, Any]) -> dict[str, Any]:
    meta = manifest["metadata"]
    try:
        return await kube.create_job(manifest)
    except Exception as exc:
        if not kube.is_already_exists(exc):
            raise
    job = await kube.get_job(meta["namespace"], meta["name"])
    if job is None:
        raise kopf.TemporaryError(f"Job {meta['name']} exists and vanished; retrying", delay=1)
    owners = {o.get("uid") for o in (job.get("metadata") or {}).get("ownerReferences") or ()}
    if mv["metadata"]["uid"] not in owners:
        raise kopf.PermanentError(f"Job {meta['name']} exists and is not owned by this ModelVersion")
    return job


def _job_state(job: Mapping[str, Any]) -> str:
    status = job.get("status") or {}
    for cond in status.get("conditions") or ():
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded"
        if cond.get("type") in ("Failed", "FailureTarget"):
            return "failed"
    return "running"


def _job_failure(job: Mapping[str, Any]) -> str:
    for cond in (job.get("status") or {}).get("conditions") or ():
        if cond.get("type") in ("Failed", "FailureTarget") and cond.get("status") == "True":
            return f"verification Job failed: {cond.get('reason', '')} {cond.get('message', '')}".strip()
    return "verification Job failed"


async def _termination_message(namespace: str, job_name: str) -> str | None:
    """The trainer's result message (or the log tail the kubelet put there) of the Job's last pod."""
    pods = await kube.list_job_pods(namespace, job_name)
    pods.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""))
    for pod in reversed(pods):
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            term = (cs.get("state") or {}).get("terminated") or {}
            text = term.get("message") or ""
            if not text:
                continue
            result = contract.parse_result(text)
            return result.message if result and result.message else text.strip()[-2000:]
    return None


# ---- aliases and retention ----------------------------------------------------------------------------


async def _aliases_when_ready(
    fresh: dict[str, Any], phase_patch: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The alias fields of ``fresh`` as if ``phase_patch`` (phase Ready) were written, computed over all
    versions of its model like ``sync_model``. Call under the model's lock."""
    meta = fresh["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    synthetic = {**fresh, "status": {**(fresh.get("status") or {}), **phase_patch}}
    objs = [
        o for o in await kube.list_versions_of_model(namespace, fresh["spec"]["model"]) if o["metadata"]["name"] != name
    ]
    objs.append(synthetic)
    now = _now(micro=True)
    outcomes = registry.resolve_aliases(
        [registry.VersionView.from_obj(o) for o in objs], get_settings().protected_aliases, now
    )
    outcome = outcomes[name]
    return registry.alias_status_patch(synthetic, outcome, now) or {}, list(outcome.new_events)


def _alias_events(obj: Mapping[str, Any], events: Iterable[Mapping[str, Any]], logger: Log) -> None:
    """Log and post the alias moves written to ``obj``'s status."""
    name = obj["metadata"]["name"]
    for event in events:
        logger.info("alias %s %s on %s: %s", event["alias"], event["action"], name, event["message"])
        if event["action"] == "Refused":
            _warn(obj, reason="AliasRefused", message=event["message"])
        elif event["action"] in ("Assigned", "Superseded"):
            _info(obj, reason=f"Alias{event['action']}", message=event["message"])


async def sync_model(namespace: str, model: str, logger: Log) -> None:
    """Recompute the effective aliases of every version of ``model``; patch only the statuses that change."""
    settings = get_settings()
    async with _lock(namespace, model):
        objs = await kube.list_versions_of_model(namespace, model)
        views = [registry.VersionView.from_obj(o) for o in objs]
        now = _now(micro=True)
        outcomes = registry.resolve_aliases(views, settings.protected_aliases, now)
        for obj in objs:
            name = obj["metadata"]["name"]
            if obj["metadata"].get("deletionTimestamp"):
                continue
            outcome = outcomes[name]
            patch = registry.alias_status_patch(obj, outcome, now)
            if patch is None:
                continue
            try:
                await kube.patch_model_version_status(namespace, name, patch)
            except Exception as exc:
                if kube.is_not_found(exc):
                    continue
                raise
            _alias_events(obj, outcome.new_events, logger)


async def apply_retention(namespace: str, model: str, logger: Log) -> None:
    """Delete the versions of ``model`` that retention selects (keep N newest + aliased + in-progress)."""
    keep = get_settings().model_retention
    if keep <= 0:
        return
    async with _lock(namespace, model):
        objs = await kube.list_versions_of_model(namespace, model)
        doomed = registry.select_for_deletion([registry.VersionView.from_obj(o) for o in objs], keep)
        for name in doomed:
            logger.info("retention: deleting %s (model %s keeps %d versions)", name, model, keep)
            await kube.delete_model_version(namespace, name)
