"""TrainingRun handlers: level-based reconciliation of run → trainer Job → status.

Every trigger (a change of the run, of its Job or of one of the Job's pods, a requeue timer) ends in
``reconcile(namespace, name)``, which reads the CURRENT state from the API (run, Job, pods), creates the
Job when it is absent, and writes the status derived from what it saw — only when it changed.
Reconciles of one run are serialised and coalesced in memory. kopf's change-detecting handlers
(on.create/update/resume) are not used, so kopf writes no annotations and adds no finalizer to runs;
after a restart the initial listing fires ``on.event`` for every run, which re-checks it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubetrain_api.models import GROUP, VERSION, TrainingRun, TrainingRunSpec
from kubetrain_trainer import contract
from pydantic import ValidationError

from .. import jobs, kube, metrics, registration, status
from ..settings import Settings, get_settings

log = logging.getLogger("kubetrain.trainingrun")

#: Exit code of the test hook KUBETRAIN_TEST_EXIT_AFTER_JOB_CREATE.
TEST_EXIT_CODE = 17
#: Unexpected errors are retried with exponential backoff (2, 4, 8, ... s) up to this delay.
MAX_ERROR_DELAY = 300.0
REGISTRATION_RETRY_SECONDS = 30.0


@dataclass
class _RunState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: bool = False
    requeue: asyncio.TimerHandle | None = None
    last_progress_read: float = 0.0
    failures: int = 0
    queued_checks: int = 0


#: A queued run is looked at again to refresh Kueue's reason in its status (nothing on the run, Job or pods
#: changes while Kueue holds it): after 5, 10, 20, 40, 80 s, then every 120 s — fast for the first message,
#: 4 cheap reads per run every 2 minutes at steady state.
QUEUED_RECHECK_FIRST = 5.0
QUEUED_RECHECK_MAX = 120.0


_runs: dict[tuple[str, str], _RunState] = {}
_tasks: set[asyncio.Task[None]] = set()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---- triggers ---------------------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "trainingruns")
async def trainingrun_event(type: str, namespace: str | None, name: str, **_: Any) -> None:
    """Trigger: any event of a TrainingRun (creation, spec change, our own status writes, the initial
    listing after a restart). Effect: reconcile it; a deleted run is forgotten (its Job goes by GC)."""
    if not namespace:
        return
    if type == "DELETED":
        _forget(namespace, name)
        return
    await trigger(namespace, name)


@kopf.on.event("batch", "v1", "jobs")
async def job_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """Trigger: an event of a Job we own (server-side label selector, see handlers.startup). Effect:
    reconcile the owning TrainingRun."""
    owner = _owner_run(body)
    if owner and namespace:
        await trigger(namespace, owner)


@kopf.on.event("", "v1", "pods")
async def pod_event(labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
    """Trigger: an event of a trainer pod (server-side label selector). Effect: reconcile its run, so
    start-up problems (Unschedulable, ImagePullBackOff) and Running show up at once."""
    run = labels.get(jobs.LABEL_RUN)
    if run and namespace:
        await trigger(namespace, run)


def _post_event(body: dict[str, Any], *, type: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the run (kopf posts it in the background)."""
    obj: Any = body
    kopf.event(obj, type=type, reason=reason, message=message)


def _owner_run(body: kopf.Body) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "TrainingRun" and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return str(ref["name"])
    return None


def _forget(namespace: str, name: str) -> None:
    state = _runs.pop((namespace, name), None)
    if state and state.requeue:
        state.requeue.cancel()
    metrics.observe_phase(namespace, name, None)


async def trigger(namespace: str, name: str) -> None:
    """Reconcile now, unless a reconcile is already queued behind the running one (it will see the
    latest state anyway)."""
    state = _runs.setdefault((namespace, name), _RunState())
    if state.pending:
        return
    state.pending = True
    async with state.lock:
        state.pending = False
        try:
            async with metrics.timed("TrainingRun"):
                delay = await reconcile(namespace, name, state, get_settings())
        except kopf.PermanentError as exc:
            log.warning("%s/%s: %s", namespace, name, exc)
            return
        except Exception:
            state.failures += 1
            delay = min(MAX_ERROR_DELAY, 2.0 ** min(state.failures, 10))
            log.exception(
                "%s/%s: reconcile failed (%d in a row); retrying in %.0fs", namespace, name, state.failures, delay
            )
        else:
            state.failures = 0
    if delay is not None:
        _requeue(namespace, name, state, delay)


def _requeue(namespace: str, name: str, state: _RunState, delay: float) -> None:
    """Look at the run again after ``delay`` seconds even if nothing happens (like RequeueAfter)."""
    if state.requeue:
        state.requeue.cancel()

    def fire() -> None:
        state.requeue = None
        task = asyncio.ensure_future(trigger(namespace, name))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    state.requeue = asyncio.get_running_loop().call_later(max(0.5, delay), fire)


# ---- reconcile ---------------------------------------------------------------------------------------------


def _parse(body: dict[str, Any], settings: Settings) -> TrainingRun:
    """The typed run; ValueError with field paths when the spec is not acceptable."""
    spec = TrainingRunSpec.model_validate(body.get("spec") or {})
    if spec.resources.gpus > settings.max_gpus:
        raise ValueError(
            f"spec.resources.gpus ({spec.resources.gpus}) exceeds the operator's maximum {settings.max_gpus}"
        )
    meta = body.get("metadata") or {}
    return TrainingRun(
        metadata={k: meta.get(k) for k in ("name", "namespace", "uid", "generation")}, spec=spec
    ).model_copy(update={"status": _safe_status(body)})


def _safe_status(body: dict[str, Any]) -> Any:
    from kubetrain_api.models import TrainingRunStatus

    try:
        return TrainingRunStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return None


async def _write_status(body: dict[str, Any], current: dict[str, Any], desired: dict[str, Any]) -> bool:
    patch = status.status_patch(current, desired)
    if not patch:
        return False
    meta = body["metadata"]
    await kube.patch_training_run_status(meta["namespace"], meta["name"], patch)
    metrics.STATUS_WRITES.labels("TrainingRun").inc()
    old, new = current.get("phase"), desired.get("phase")
    if new and new != old:
        metrics.RUN_TRANSITIONS.labels(meta["namespace"], new).inc()
        cond: dict[str, Any] = next(
            (c for c in desired.get("conditions", []) if c["type"] == status.COND_SUCCEEDED), {}
        )
        kind = "Warning" if new == status.FAILED else "Normal"
        message = f"{new}: {cond.get('message', '')}"[:1000]
        _post_event(body, type=kind, reason=cond.get("reason") or new, message=message)
        if new == status.FAILED:
            metrics.RUN_FAILURES.labels(meta["namespace"], (desired.get("failure") or {}).get("reason", "")).inc()
        if new in status.TERMINAL_PHASES and desired.get("startTime") and desired.get("completionTime"):
            t0, t1 = status.parse_time(desired["startTime"]), status.parse_time(desired["completionTime"])
            if t0 and t1:
                metrics.RUN_DURATION.labels(meta["namespace"], new).observe((t1 - t0).total_seconds())
    return True


async def reconcile(namespace: str, name: str, state: _RunState, settings: Settings) -> float | None:
    """One level-based pass over a run. Returns seconds until the next forced look, or None."""
    body = await kube.get_training_run(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    meta = body["metadata"]
    uid, generation = meta["uid"], int(meta.get("generation") or 1)
    current: dict[str, Any] = body.get("status") or {}
    now = _now()

    if current.get("phase") in status.TERMINAL_PHASES:
        metrics.observe_phase(namespace, name, current["phase"])
        return await _finish_terminal(body, current, settings)

    try:
        run = _parse(body, settings)
    except (ValidationError, ValueError) as exc:
        message = str(exc).replace("\n", " ")[:4000]
        await _write_status(body, current, status.invalid_status(generation, message, current, now))
        metrics.observe_phase(namespace, name, status.FAILED)
        raise kopf.PermanentError(f"invalid spec: {message}") from None

    jname = jobs.job_name(name, uid)
    job = await kube.get_job(namespace, jname)
    if job is None and not current.get("jobName"):
        job = await _create_job(body, run, uid, settings)
    if job is not None and not jobs.owned_by(job, uid):
        message = f"Job {jname} exists but is not controlled by this TrainingRun (uid {uid})"
        outcome = status.Outcome(status.FAILED, status.REASON_JOB_CONFLICT, message, completion_time=None)
        await _write_status(body, current, status.build_status(run, generation, outcome, current, now, job_name=None))
        raise kopf.PermanentError(message)
    if job is not None:
        job = await _sync_job(job, run)

    pods = await kube.list_job_pods(namespace, jname) if job is not None else []
    outcome = status.observe(run, job, pods, now)
    if outcome.phase == status.QUEUED and job is not None:
        queue_detail = await kube.kueue_admission_message(namespace, job["metadata"]["uid"])
        if queue_detail:
            outcome = status.observe(run, job, pods, now, queue_detail)

    crashed = outcome.exit_code not in contract.TERMINAL_EXIT_CODES
    if outcome.phase == status.FAILED and outcome.failed_pod and not outcome.log_tail and crashed:
        outcome.log_tail = await kube.pod_log_tail(
            namespace, outcome.failed_pod, jobs.TRAINER_CONTAINER, settings.log_tail_lines
        )
    progress = await _progress(namespace, pods, state, settings) if outcome.phase == status.RUNNING else None

    model_version, registration_error = None, None
    if (
        outcome.phase == status.SUCCEEDED
        and run.spec.registration.enabled
        and outcome.result is not None
        and (outcome.result.model or {}).get("sha256")
    ):
        model_version, registration_error = await _register(body, run, uid, outcome.result, settings)

    desired = status.build_status(
        run,
        generation,
        outcome,
        current,
        now,
        job_name=jname if job is not None or current.get("jobName") else None,
        progress=progress,
        model_version=model_version,
        registration_error=registration_error,
    )
    await _write_status(body, current, desired)
    metrics.observe_phase(namespace, name, outcome.phase)

    if outcome.delete_job and job is not None:
        # The operator decided the run failed (start-up deadline): nothing may linger.
        await kube.delete_job(namespace, jname)
    if registration_error:
        return REGISTRATION_RETRY_SECONDS
    if outcome.phase == status.QUEUED:
        state.queued_checks = min(state.queued_checks + 1, 16)  # bounded exponent: no float overflow
        return min(QUEUED_RECHECK_MAX, QUEUED_RECHECK_FIRST * 2 ** (state.queued_checks - 1))
    state.queued_checks = 0
    if outcome.recheck_after is not None:
        return outcome.recheck_after
    if outcome.phase == status.RUNNING and settings.progress_interval > 0:
        return settings.progress_interval
    return None


async def _create_job(body: dict[str, Any], run: TrainingRun, uid: str, settings: Settings) -> dict[str, Any]:
    """Create the trainer Job; AlreadyExists means adopt (ownership is checked by the caller)."""
    manifest = jobs.build_trainer_job(run, uid, settings)
    namespace, jname = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        job = await kube.create_job(manifest)
    except Exception as exc:
        if not kube.is_already_exists(exc):
            raise
        found = await kube.get_job(namespace, jname)
        if found is None:
            raise kopf.TemporaryError(f"Job {jname} exists and vanished; retrying", delay=2) from exc
        log.info("%s/%s: adopting existing Job %s", namespace, run.metadata["name"], jname)
        return found
    metrics.JOBS_CREATED.labels(namespace).inc()
    _post_event(body, type="Normal", reason=status.REASON_JOB_CREATED, message=f"created trainer Job {jname}")
    log.info("%s/%s: created Job %s", namespace, run.metadata["name"], jname)
    if settings.test_exit_after_job_create:
        log.warning("KUBETRAIN_TEST_EXIT_AFTER_JOB_CREATE: exiting before status is written")
        logging.shutdown()
        os._exit(TEST_EXIT_CODE)
    return job


def _job_finished(job: dict[str, Any]) -> bool:
    conds = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conds)


async def _sync_job(job: dict[str, Any], run: TrainingRun) -> dict[str, Any]:
    """Carry the mutable spec fields (suspend, ttlSecondsAfterFinished, activeDeadlineSeconds, backoffLimit)
    to an unfinished Job; a null in the merge patch removes a field the run no longer sets."""
    if _job_finished(job):
        return job
    jspec = job.get("spec") or {}
    patch: dict[str, Any] = {}
    want_suspend = jobs.desired_suspend(run)
    if want_suspend is not None and bool(jspec.get("suspend")) != want_suspend:
        patch["suspend"] = want_suspend
    for key, want in (
        ("ttlSecondsAfterFinished", run.spec.ttl_seconds_after_finished),
        ("activeDeadlineSeconds", run.spec.active_deadline_seconds),
        ("backoffLimit", run.spec.backoff_limit),
    ):
        if jspec.get(key) != want:
            patch[key] = want
    if not patch:
        return job
    meta = job["metadata"]
    await kube.patch_job(meta["namespace"], meta["name"], {"spec": patch})
    job = {**job, "spec": {**jspec, **patch}}
    return job


async def _progress(
    namespace: str, pods: list[dict[str, Any]], state: _RunState, settings: Settings
) -> dict[str, Any] | None:
    """Latest progress line of the running trainer's log, read at most every progress_interval seconds."""
    if settings.progress_interval <= 0:
        return None
    loop = asyncio.get_running_loop()
    if loop.time() - state.last_progress_read < settings.progress_interval * 0.8:
        return None
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if not running:
        return None
    state.last_progress_read = loop.time()
    pod = sorted(running, key=lambda p: p["metadata"].get("creationTimestamp") or "")[-1]
    text = await kube.pod_log_tail(namespace, pod["metadata"]["name"], jobs.TRAINER_CONTAINER, 50)
    for line in reversed((text or "").splitlines()):
        parsed = contract.parse_progress_line(line)
        if parsed:
            return {"step": parsed[0][:64], "percent": max(0, min(100, parsed[1]))}
    return None


async def _register(
    body: dict[str, Any], run: TrainingRun, uid: str, result: contract.Result, settings: Settings
) -> tuple[str | None, str | None]:
    """(ModelVersion name, None) or (None, error message); a failure never hides the trained model."""
    try:
        return await registration.register(run, uid, result, run.spec.image or settings.trainer_image), None
    except Exception as exc:
        log.exception("%s/%s: registering the model failed", run.metadata["namespace"], run.metadata["name"])
        message = f"creating the ModelVersion failed: {type(exc).__name__}: {exc}"[:1000]
        _post_event(body, type="Warning", reason=status.REASON_REGISTRATION_FAILED, message=message)
        return None, message


async def _finish_terminal(body: dict[str, Any], current: dict[str, Any], settings: Settings) -> float | None:
    """A finished run: only loose ends — the Job of a run the operator failed (start-up deadline) when the
    operator died between writing the status and deleting the Job; a registration that failed before."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    failure = current.get("failure") or {}
    if current.get("phase") == status.FAILED and failure.get("reason") in status.OPERATOR_DECIDED_FAILURES:
        jname = current.get("jobName")
        if jname and await kube.get_job(namespace, jname) is not None:
            await kube.delete_job(namespace, jname)
        return None
    needs_registration = (
        current.get("phase") == status.SUCCEEDED
        and not current.get("modelVersion")
        and (current.get("model") or {}).get("sha256")
    )
    if not needs_registration:
        return None
    try:
        run = _parse(body, settings)
    except (ValidationError, ValueError):
        return None
    if not run.spec.registration.enabled:
        return None
    result = await _result_of(run, current)
    model_version, error = await _register(body, run, meta["uid"], result, settings)
    gen = int(meta.get("generation") or 1)
    conds = [c for c in current.get("conditions") or [] if c.get("type") != status.COND_REGISTERED]
    conds += status.registered_condition(current.get("conditions") or [], model_version, error, gen, _now())
    desired = {**current, "conditions": conds}
    if model_version:
        desired["modelVersion"] = model_version
    await _write_status(body, current, desired)
    return REGISTRATION_RETRY_SECONDS if error else None


async def _result_of(run: TrainingRun, current: dict[str, Any]) -> contract.Result:
    """The trainer's result from the Job's pods, or (the Job is gone) what the status recorded."""
    namespace, jname = run.metadata["namespace"], current.get("jobName")
    job = await kube.get_job(namespace, jname) if jname else None
    if job is not None and jname:
        outcome = status.observe(run, job, await kube.list_job_pods(namespace, jname), _now())
        if outcome.result is not None and outcome.result.model:
            return outcome.result
    return contract.Result(
        outcome=contract.OUTCOME_SUCCEEDED,
        reason=contract.REASON_TRAINED,
        task=current.get("task"),
        metrics=current.get("metrics"),
        model=current.get("model"),
    )
