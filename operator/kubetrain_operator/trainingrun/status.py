"""TrainingRun status derived from what the cluster shows: pure functions of (run, Job, pods, now).

``observe`` classifies the run (phase, reason, result of the trainer); ``build_status`` turns that into
the full ``status`` object (camelCase, as stored); ``status_patch`` is the merge patch from the stored
status to the desired one (empty when nothing changed, so nothing is written).

Semantics
    phase       Pending → (Queued | Suspended) → Running → Succeeded | Failed. Succeeded and Failed are
                final: once written, the status is never recomputed from the Job (which may be deleted by
                its TTL) again.
    conditions  JobCreated, Running, Succeeded (the summary: Unknown while in progress, True on success,
                False with the failure reason), Registered (a ModelVersion was created). Each carries
                observedGeneration; lastTransitionTime moves only when status flips. Tracked (MLflow):
                True with reason Logged, or False with the trainer's reason (MlflowUnreachable, ...),
                present only when the trainer reported tracking.
    tracking    the MLflow run (mlflowRunId, experimentId, url) from the trainer's result.
    report      on success, the URI of report.html next to the model, and ``evaluation`` the bounded summary
                of evaluation.json; condition Reported: True/ReportWritten, True/ReportIncomplete (a part
                was not rendered; the message says which) or False/ReportFailed (no report.html; the run
                still succeeded). Absent for results of trainers that write no report.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetrain_api.models import EvaluationSummary, TrainingRun
from kubetrain_api.models import primary_metric as headline_metric
from kubetrain_trainer import contract
from pydantic import ValidationError

from .. import k8s
from ..k8s import parse_time, status_patch
from .children import TRAINER_CONTAINER

__all__ = ["parse_time", "status_patch"]

# ---- phases ---------------------------------------------------------------------------------------------
PENDING = "Pending"
QUEUED = "Queued"
SUSPENDED = "Suspended"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TERMINAL_PHASES = (SUCCEEDED, FAILED)

# ---- condition types ------------------------------------------------------------------------------------
COND_JOB_CREATED = "JobCreated"
COND_RUNNING = "Running"
COND_SUCCEEDED = "Succeeded"
COND_REGISTERED = "Registered"
COND_TRACKED = "Tracked"
COND_REPORTED = "Reported"

# ---- reasons (CamelCase) ----------------------------------------------------------------------------------
REASON_JOB_CREATED = "JobCreated"
REASON_JOB_ADOPTED = "JobAdopted"
REASON_POD_PENDING = "PodPending"
REASON_POD_RUNNING = "PodRunning"
REASON_QUEUED = "Queued"
REASON_SUSPENDED = "Suspended"
REASON_UNSCHEDULABLE = "Unschedulable"
REASON_IMAGE_PULL_BACKOFF = "ImagePullBackOff"
REASON_TRAINED = contract.REASON_TRAINED
REASON_CONFIG_INVALID = contract.REASON_CONFIG_INVALID
REASON_DATA_INVALID = contract.REASON_DATA_INVALID
REASON_BELOW_THRESHOLD = contract.REASON_BELOW_THRESHOLD
REASON_INTERNAL_ERROR = contract.REASON_INTERNAL_ERROR
REASON_BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
REASON_DEADLINE_EXCEEDED = "DeadlineExceeded"
REASON_OOM_KILLED = "OOMKilled"
REASON_IMAGE_PULL_FAILED = "ImagePullFailed"
REASON_STARTUP_DEADLINE_EXCEEDED = "StartupDeadlineExceeded"
REASON_JOB_DELETED = "JobDeleted"
REASON_JOB_CONFLICT = "JobConflict"
REASON_JOB_FAILED = "JobFailed"
REASON_COMPLETED = "Completed"
REASON_MODEL_VERSION_CREATED = "ModelVersionCreated"
REASON_REGISTRATION_FAILED = "RegistrationFailed"
REASON_REPORT_WRITTEN = "ReportWritten"
REASON_REPORT_INCOMPLETE = "ReportIncomplete"
REASON_REPORT_FAILED = "ReportFailed"
#: Failures decided by the operator (not by the Job controller): the Job is deleted so nothing lingers.
OPERATOR_DECIDED_FAILURES = (REASON_UNSCHEDULABLE, REASON_IMAGE_PULL_FAILED, REASON_STARTUP_DEADLINE_EXCEEDED)

IMAGE_PULL_WAITING = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
LOG_TAIL_MAX = 4096
MESSAGE_MAX = k8s.MESSAGE_MAX


def format_time(value: dt.datetime) -> str:
    return k8s.format_time(value)


def format_duration(seconds: float) -> str:
    """``1h2m3s`` / ``4m5s`` / ``6s``, like kubectl."""
    total = max(0, round(seconds))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def _job_condition(job: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return k8s.job_condition(job, ctype)


def _trainer_status(pod: dict[str, Any]) -> dict[str, Any]:
    return k8s.container_status(pod, TRAINER_CONTAINER)


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return k8s.terminated(pod, TRAINER_CONTAINER)


_created = k8s.created


def _completion_index(pod: dict[str, Any]) -> str | None:
    meta = pod.get("metadata") or {}
    return (meta.get("annotations") or {}).get("batch.kubernetes.io/job-completion-index") or (
        meta.get("labels") or {}
    ).get("batch.kubernetes.io/job-completion-index")


def pod_ever_started(pod: dict[str, Any]) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Running", "Succeeded", "Failed"):
        return True
    state = _trainer_status(pod).get("state") or {}
    return "running" in state or "terminated" in state


def result_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pod whose termination message is the run's result: index 0 of an Indexed Job, else the latest
    succeeded pod."""
    done = [p for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"]
    indexed = [p for p in done if _completion_index(p) is not None]
    if indexed:
        done = [p for p in indexed if _completion_index(p) == "0"]
    return max(done, key=_created) if done else None


def last_failed_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed" or _terminated(p)]
    failed = [p for p in failed if _terminated(p).get("exitCode", 0) != 0 or p["status"].get("phase") == "Failed"]
    return max(failed, key=_created) if failed else None


def _pending_reason(pods: list[dict[str, Any]]) -> tuple[str, str]:
    """Why the (not yet started) pods wait: (reason, message)."""
    for pod in pods:
        waiting = (_trainer_status(pod).get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_WAITING:
            return (
                REASON_IMAGE_PULL_BACKOFF,
                f"pod {pod['metadata']['name']}: {waiting.get('message') or waiting['reason']}",
            )
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return REASON_UNSCHEDULABLE, f"pod {pod['metadata']['name']}: {cond.get('message') or 'unschedulable'}"
    return REASON_POD_PENDING, "waiting for the trainer pod to start"


@dataclass
class Outcome:
    """What the run is doing, as observed."""

    phase: str
    reason: str
    message: str = ""
    result: contract.Result | None = None
    exit_code: int | None = None
    log_tail: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    attempts: int | None = None
    delete_job: bool = False
    """The operator decided the run failed (startup deadline): the Job must go."""
    recheck_after: float | None = None
    """Seconds after which the run must be looked at again even without events (startup deadline)."""
    failed_pod: str | None = None
    """The last failed pod (to read its log tail from)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


#: Entries of status.disruptions kept (the newest).
DISRUPTIONS_KEPT = 10

#: Longest piece of Kueue's admission message kept in the run's status.
QUEUE_DETAIL_MAX = 600


def observe(
    run: TrainingRun,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    now: dt.datetime,
    queue_detail: str | None = None,
) -> Outcome:
    """Classify the run from its Job and the Job's pods. ``queue_detail``: why Kueue has not admitted the
    Job yet (its Workload's QuotaReserved message), shown while the run is Queued."""
    prev = run.status
    if job is None:
        if prev and prev.job_name:
            return Outcome(
                FAILED,
                REASON_JOB_DELETED,
                f"Job {prev.job_name} was deleted before the run finished; create a new TrainingRun to retry",
                completion_time=format_time(now),
            )
        return Outcome(PENDING, REASON_POD_PENDING, "creating the trainer Job")
    jstatus = job.get("status") or {}
    start_time = jstatus.get("startTime")
    failed = int(jstatus.get("failed") or 0)
    live = int(jstatus.get("active") or 0) + int(jstatus.get("succeeded") or 0)
    attempts = failed + (1 if live else 0) or (1 if pods else None)
    complete = _job_condition(job, "Complete")
    if complete:
        return _succeeded_outcome(complete, jstatus, pods, attempts)
    job_failed = _job_condition(job, "Failed")
    if job_failed:
        return _failed_outcome(job_failed, pods, start_time, attempts)
    if job.get("spec", {}).get("suspend") and not int(jstatus.get("active") or 0):
        return _held_outcome(run, queue_detail, attempts)
    if any(pod_ever_started(p) for p in pods):
        # Also between a pod's end and the Job's verdict, or while a retry waits to start: still running, and
        # said the same way (no status write for a moment that the next event ends).
        return Outcome(RUNNING, REASON_POD_RUNNING, "the trainer is running", start_time=start_time, attempts=attempts)
    return _pending_outcome(run, job, pods, now, attempts)


def _succeeded_outcome(
    complete: dict[str, Any], jstatus: dict[str, Any], pods: list[dict[str, Any]], attempts: int | None
) -> Outcome:
    pod = result_pod(pods)
    result = contract.parse_result(_terminated(pod).get("message") or "") if pod else None
    return Outcome(
        SUCCEEDED,
        REASON_TRAINED,
        (result.message if result and result.message else "the model was trained and saved"),
        result=result,
        exit_code=0,
        start_time=jstatus.get("startTime"),
        completion_time=jstatus.get("completionTime") or complete.get("lastTransitionTime"),
        attempts=attempts,
    )


def _held_outcome(run: TrainingRun, queue_detail: str | None, attempts: int | None) -> Outcome:
    """A suspended Job: by the run (Suspended), by Kueue (Queued), or being resumed (Pending)."""
    if run.spec.suspend:
        return Outcome(SUSPENDED, REASON_SUSPENDED, "spec.suspend is true", attempts=attempts)
    if run.spec.queue_name:
        message = f"waiting for admission by queue {run.spec.queue_name}"
        if queue_detail:
            message += f": {' '.join(queue_detail.split())[:QUEUE_DETAIL_MAX]}"
        return Outcome(QUEUED, REASON_QUEUED, message)
    return Outcome(PENDING, REASON_POD_PENDING, "resuming the trainer Job")


def _pending_outcome(
    run: TrainingRun, job: dict[str, Any], pods: list[dict[str, Any]], now: dt.datetime, attempts: int | None
) -> Outcome:
    """No trainer pod started yet: Pending until the start-up deadline, then Failed (the Job must go)."""
    start_time = (job.get("status") or {}).get("startTime")
    reason, message = _pending_reason(pods)
    ref = parse_time(start_time) or parse_time((job.get("metadata") or {}).get("creationTimestamp")) or now
    waited = (now - ref).total_seconds()
    deadline = run.spec.startup_deadline_seconds
    if waited < deadline:
        recheck = deadline - waited + 0.5
        return Outcome(PENDING, reason, message, start_time=start_time, attempts=attempts, recheck_after=recheck)
    final = {
        REASON_UNSCHEDULABLE: REASON_UNSCHEDULABLE,
        REASON_IMAGE_PULL_BACKOFF: REASON_IMAGE_PULL_FAILED,
    }.get(reason, REASON_STARTUP_DEADLINE_EXCEEDED)
    return Outcome(
        FAILED,
        final,
        f"no trainer pod started within startupDeadlineSeconds={deadline}: {message}",
        start_time=start_time,
        completion_time=format_time(now),
        attempts=attempts,
        delete_job=True,
    )


def _failed_outcome(
    job_failed: dict[str, Any], pods: list[dict[str, Any]], start_time: str | None, attempts: int | None
) -> Outcome:
    pod = last_failed_pod(pods)
    term = _terminated(pod) if pod else {}
    raw_message = str(term.get("message") or "")
    result = contract.parse_result(raw_message) if raw_message else None
    exit_code = term.get("exitCode")
    job_reason = job_failed.get("reason") or REASON_JOB_FAILED
    log_tail = None if result else (raw_message[-LOG_TAIL_MAX:] or None)
    if job_reason == "DeadlineExceeded":
        reason, message = REASON_DEADLINE_EXCEEDED, job_failed.get("message") or "activeDeadlineSeconds exceeded"
    elif term.get("reason") == "OOMKilled" or exit_code == 137:
        reason = REASON_OOM_KILLED
        message = f"the trainer was killed for exceeding its memory limit (exit code {exit_code})"
    elif job_reason == "PodFailurePolicy" and result is not None:
        reason, message = result.reason, result.message
    elif job_reason == "PodFailurePolicy" and exit_code in contract.REASON_BY_EXIT_CODE:
        reason, message = contract.REASON_BY_EXIT_CODE[exit_code], job_failed.get("message") or ""
    elif job_reason == "BackoffLimitExceeded":
        reason = REASON_BACKOFF_LIMIT_EXCEEDED
        detail = f": {result.reason}: {result.message}" if result else ""
        message = f"the trainer failed {attempts or 1} time(s), last exit code {exit_code}{detail}"
    else:
        reason, message = job_reason, job_failed.get("message") or ""
    return Outcome(
        FAILED,
        reason,
        message,
        result=result,
        exit_code=exit_code,
        log_tail=log_tail,
        start_time=start_time,
        completion_time=job_failed.get("lastTransitionTime"),
        attempts=attempts,
        failed_pod=(pod or {}).get("metadata", {}).get("name"),
    )


def primary_metric(run: TrainingRun, result: contract.Result | None) -> str | None:
    """``name=value`` for the printer column."""
    if not result:
        return None
    task = result.task or run.spec.task or "classification"
    return headline_metric(result.metrics, task, result.primary_metric or run.spec.evaluation.primary_metric)


def _condition(
    previous: list[dict[str, Any]], ctype: str, status: str, reason: str, message: str, gen: int, now: dt.datetime
) -> dict[str, Any]:
    return k8s.condition(previous, ctype, status, reason, message, gen, format_time(now))


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def image_digest(pods: list[dict[str, Any]], container: str) -> str | None:
    """The digest of the image ``container`` ran in, from the newest pod that reports one (its
    ``containerStatuses[].imageID``, e.g. ``registry/trainer@sha256:...`` or ``sha256:...``)."""
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""), reverse=True):
        found = _DIGEST.search(str(k8s.container_status(pod, container).get("imageID") or ""))
        if found:
            return found.group(0)
    return None


def _attempt_fields(outcome: Outcome, current: dict[str, Any], disruptions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``disruptions`` (the record, each pod once, the newest kept) and ``attempts``: the Job does not count
    a disrupted pod as failed (its podFailurePolicy ignores disruptions), so they are added to its count."""
    lost: list[dict[str, Any]] = list(current.get("disruptions") or [])
    known = {d.get("pod") for d in lost}
    lost += [d for d in disruptions if d.get("pod") not in known]
    fields: dict[str, Any] = {"disruptions": lost[-DISRUPTIONS_KEPT:]} if lost else {}
    attempts = max(int(current.get("attempts") or 0), int(outcome.attempts or 0) + len(lost))
    if attempts:
        fields["attempts"] = attempts
    return fields


def build_status(
    run: TrainingRun,
    generation: int,
    outcome: Outcome,
    current: dict[str, Any],
    now: dt.datetime,
    *,
    job_name: str | None,
    progress: dict[str, Any] | None = None,
    model_version: str | None = None,
    registration_error: str | None = None,
    promotion: dict[str, Any] | None = None,
    image_digest: str | None = None,
    disruptions: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The desired status (camelCase) for ``outcome``; fields of ``current`` that still hold are kept.
    ``disruptions``: pods the operator just ended because their node was lost (appended to the record)."""
    st: dict[str, Any] = {"phase": outcome.phase, "observedGeneration": generation}
    kept = (("jobName", job_name), ("trainerImageDigest", image_digest or current.get("trainerImageDigest")))
    st.update({key: value for key, value in kept if value})
    st.update(_attempt_fields(outcome, current, disruptions))
    task = (outcome.result.task if outcome.result else None) or run.spec.task or current.get("task")
    if task:
        st["task"] = task
    st.update(_timing_fields(outcome, current, now))
    if outcome.phase == SUCCEEDED:
        st["progress"] = {"step": "done", "percent": 100}
    elif progress or current.get("progress"):
        st["progress"] = progress or current.get("progress")
    st.update(_result_fields(run, outcome))
    for key, value in (("modelVersion", model_version), ("promotion", promotion)):
        if value or current.get(key):
            st[key] = value or current.get(key)
    if outcome.phase == FAILED:
        st["failure"] = _failure(outcome)
    prev_conds: list[dict[str, Any]] = list(current.get("conditions") or [])
    conds = _run_conditions(prev_conds, outcome, job_name, generation, now)
    conds.extend(registered_condition(prev_conds, st.get("modelVersion"), registration_error, generation, now))
    tracking, tracked = tracking_status(outcome.result, current, prev_conds, generation, now)
    if tracking:
        st["tracking"] = tracking
    conds.extend(tracked)
    report, evaluation, reported = report_status(outcome, current, prev_conds, generation, now)
    if report:
        st["report"] = report
    if evaluation:
        st["evaluation"] = evaluation
    conds.extend(reported)
    st["conditions"] = conds
    return st


def evaluation_summary(result: contract.Result | None) -> dict[str, Any] | None:
    """The result's evaluation summary as the API's ``EvaluationSummary`` accepts it, else None."""
    raw = result.evaluation if result else None
    if not isinstance(raw, dict):
        return None
    try:
        summary = EvaluationSummary.model_validate(raw)
    except ValidationError:
        return None
    return summary.model_dump(by_alias=True, exclude_none=True, mode="json")


def report_status(
    outcome: Outcome, current: dict[str, Any], prev: list[dict[str, Any]], gen: int, now: dt.datetime
) -> tuple[str | None, dict[str, Any] | None, list[dict[str, Any]]]:
    """(status.report, status.evaluation, [Reported condition]) of a succeeded run's result; else what was
    there."""
    result = outcome.result
    info = result.report if result and outcome.phase == SUCCEEDED else None
    if not isinstance(info, dict):
        kept = [c for c in prev if c.get("type") == COND_REPORTED]
        return current.get("report"), current.get("evaluation"), kept
    uri = str(info["uri"])[:2048] if info.get("uri") else None
    problems = [str(p) for p in info.get("problems") or []]
    if result is not None and "evaluation" in (result.trimmed or []):
        problems.append("the evaluation summary did not fit in the termination message (evaluation.json has it)")
    if uri is None:
        status, reason = "False", REASON_REPORT_FAILED
        message = "; ".join(problems) or f"the trainer wrote no {contract.REPORT_FILE}"
    elif problems:
        status, reason, message = "True", REASON_REPORT_INCOMPLETE, f"{uri}: " + "; ".join(problems)
    else:
        status, reason, message = "True", REASON_REPORT_WRITTEN, uri
    cond = _condition(prev, COND_REPORTED, status, reason, message[:MESSAGE_MAX], gen, now)
    return uri, evaluation_summary(result), [cond]


def _timing_fields(outcome: Outcome, current: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    st: dict[str, Any] = {}
    start = current.get("startTime") or outcome.start_time
    if start:
        st["startTime"] = start
    if outcome.terminal:
        completion = current.get("completionTime") or outcome.completion_time or format_time(now)
        st["completionTime"] = completion
        t0, t1 = parse_time(start), parse_time(completion)
        if t0 and t1:
            st["duration"] = format_duration((t1 - t0).total_seconds())
    return st


def _result_fields(run: TrainingRun, outcome: Outcome) -> dict[str, Any]:
    """metrics, primaryMetric and (on success) the model, from the trainer's result."""
    st: dict[str, Any] = {}
    result = outcome.result
    if result and result.metrics:
        st["metrics"] = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
        pm = primary_metric(run, result)
        if pm:
            st["primaryMetric"] = pm
    if outcome.phase == SUCCEEDED and result and result.model and result.model.get("sha256"):
        st["model"] = {
            k: result.model[k] for k in ("uri", "sha256", "size", "format") if result.model.get(k) is not None
        }
    source = (result.dataset or {}).get("source") if result else None
    if outcome.phase == SUCCEEDED and source:
        st["datasetFingerprint"] = str(source)[:256]  # a schedule's spec.when.dataChanged compares it
    return st


def _failure(outcome: Outcome) -> dict[str, Any]:
    failure: dict[str, Any] = {"reason": outcome.reason, "message": outcome.message[:MESSAGE_MAX]}
    if outcome.exit_code is not None:
        failure["exitCode"] = outcome.exit_code
    if outcome.log_tail:
        failure["logTail"] = outcome.log_tail[-LOG_TAIL_MAX:]
    return failure


def _run_conditions(
    prev: list[dict[str, Any]], outcome: Outcome, job_name: str | None, generation: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """JobCreated, Running and the summary Succeeded condition."""
    conds = []
    if job_name:
        conds.append(_condition(prev, COND_JOB_CREATED, "True", REASON_JOB_CREATED, f"Job {job_name}", generation, now))
    running = "True" if outcome.phase == RUNNING else "False"
    run_reason = REASON_COMPLETED if outcome.phase == SUCCEEDED else outcome.reason
    conds.append(_condition(prev, COND_RUNNING, running, run_reason, outcome.message, generation, now))
    summary = {SUCCEEDED: "True", FAILED: "False"}.get(outcome.phase, "Unknown")
    conds.append(_condition(prev, COND_SUCCEEDED, summary, outcome.reason, outcome.message, generation, now))
    return conds


def registered_condition(
    prev: list[dict[str, Any]], model_version: str | None, error: str | None, gen: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """The Registered condition: True once a ModelVersion is recorded, False while registration fails."""
    if model_version:
        msg = f"ModelVersion {model_version}"
        return [_condition(prev, COND_REGISTERED, "True", REASON_MODEL_VERSION_CREATED, msg, gen, now)]
    if error:
        return [_condition(prev, COND_REGISTERED, "False", REASON_REGISTRATION_FAILED, error, gen, now)]
    return []


def tracking_status(
    result: contract.Result | None,
    current: dict[str, Any],
    prev: list[dict[str, Any]],
    gen: int,
    now: dt.datetime,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """status.tracking and the Tracked condition from the trainer's result; without one, what was there."""
    info = result.tracking if result else None
    if not isinstance(info, dict) or "tracked" not in info:
        kept = [c for c in prev if c.get("type") == COND_TRACKED]
        return current.get("tracking"), kept
    fields = {"mlflowRunId": info.get("run_id"), "experimentId": info.get("experiment_id"), "url": info.get("url")}
    tracking = {k: str(v) for k, v in fields.items() if v} or None
    tracked = bool(info.get("tracked"))
    reason = str(info.get("reason") or (contract.TRACKING_REASON_LOGGED if tracked else contract.TRACKING_REASON_ERROR))
    message = str(info.get("message") or "")[:MESSAGE_MAX]
    cond = _condition(prev, COND_TRACKED, "True" if tracked else "False", reason, message, gen, now)
    return tracking, [cond]


def invalid_status(generation: int, message: str, current: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """Status of a run whose spec the operator refuses (ConfigInvalid): Failed, no Job."""
    prev = list(current.get("conditions") or [])
    return {
        "phase": FAILED,
        "observedGeneration": generation,
        "completionTime": current.get("completionTime") or format_time(now),
        "failure": {"reason": REASON_CONFIG_INVALID, "message": message[:MESSAGE_MAX]},
        "conditions": [
            _condition(prev, COND_RUNNING, "False", REASON_CONFIG_INVALID, message, generation, now),
            _condition(prev, COND_SUCCEEDED, "False", REASON_CONFIG_INVALID, message, generation, now),
        ],
    }
