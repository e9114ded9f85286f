"""The TrainingRun's ``decide``: a pure function of (facts, settings, now) → plan.

The facts are the run as stored, its Job and the Job's pods, and the few reads the run's state asks for
(Kueue's reason while queued, a crashed pod's log tail, the running trainer's progress line, the
namespace's ModelVersions when the model is to be registered). The plan creates the Job when it is absent
(AlreadyExists means adopt: the next pass checks ownership), carries the mutable spec fields to an unfinished
Job, deletes the Job of a run the operator failed, creates the ModelVersion of a succeeded run, and writes
the status derived from what it saw — only when it changed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetrain_api.models import TrainingRun, TrainingRunSpec, TrainingRunStatus
from kubetrain_trainer import contract
from pydantic import ValidationError

from .. import k8s, nodeloss
from ..engine import Child, ObjectFacts, Plan
from ..settings import Settings
from . import children, promotion, registration, status

REGISTRATION_RETRY_SECONDS = 30.0
#: A queued run is looked at again to refresh Kueue's reason in its status (nothing on the run, Job or pods
#: changes while Kueue holds it): after 5, 10, 20, 40, 80 s, then every 120 s — fast for the first message,
#: 4 cheap reads per run every 2 minutes at steady state.
QUEUED_RECHECK_FIRST = 5.0
QUEUED_RECHECK_MAX = 120.0
PROGRESS_LOG_LINES = 50

# memory keys (what a pass remembers for the next one)
MEM_QUEUED_CHECKS = "queued_checks"
MEM_PROGRESS_READ = "progress_read"
MEM_REGISTRATION_ERROR = "registration_error"


@dataclass
class RunFacts(ObjectFacts):
    """What one pass knows about a run."""

    body: dict[str, Any]
    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    queue_detail: str | None = None
    log_tail: str | None = None
    progress_log: str | None = None
    versions: list[dict[str, Any]] | None = None
    """The namespace's ModelVersions (only when the model is to be registered, or when the Job of a promoting
    run is to be created: the alias's holder is its champion)."""
    memory: Mapping[str, Any] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    """The nodes of pods that look lost (``nodeloss.nodes_to_read``); None: the node is gone."""

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation") or 1)


@dataclass
class RunPlan(Plan):
    """A Plan plus the run's own actions."""

    register: dict[str, Any] | None = None
    """The ModelVersion to create (before the status that names it is written)."""
    transition: tuple[str | None, str | None] = (None, None)
    """(old, new) phase when the status write changes it."""
    desired: dict[str, Any] = field(default_factory=dict)
    """The full desired status (for metrics)."""
    fail_pods: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Pods of a lost node to end (name, status patch), before the status that records them is written."""


# ---- parsing ------------------------------------------------------------------------------------------------


def parse(body: Mapping[str, Any], settings: Settings) -> TrainingRun:
    """The typed run; ValueError with field paths when the spec is not acceptable."""
    spec = TrainingRunSpec.model_validate(body.get("spec") or {})
    if spec.resources.gpus > settings.max_gpus:
        raise ValueError(
            f"spec.resources.gpus ({spec.resources.gpus}) exceeds the operator's maximum {settings.max_gpus}"
        )
    problem = (
        children.output_problem(spec.output.uri)
        if spec.output
        else children.output_problem(
            settings.default_output, "the operator's default output (KUBETRAIN_DEFAULT_OUTPUT)"
        )
    )
    if problem:  # refused before any Job: a run that cannot keep its model must not look successful
        raise ValueError(problem)
    meta = body.get("metadata") or {}
    return TrainingRun(
        metadata={k: meta.get(k) for k in ("name", "namespace", "uid", "generation")}, spec=spec
    ).model_copy(update={"status": _safe_status(body)})


def try_parse(body: Mapping[str, Any], settings: Settings) -> TrainingRun | str:
    """The typed run, or the message saying why the spec is refused."""
    try:
        return parse(body, settings)
    except (ValidationError, ValueError) as exc:
        return str(exc).replace("\n", " ")[:4000]


def _safe_status(body: Mapping[str, Any]) -> TrainingRunStatus | None:
    try:
        return TrainingRunStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return None


# ---- what gather must read (pure predicates, shared by gather and decide) -------------------------------------


def needs_registration(current: Mapping[str, Any], run: TrainingRun) -> bool:
    """A succeeded run whose model is not registered yet (and should be)."""
    return bool(
        run.spec.registration.enabled
        and current.get("phase") == status.SUCCEEDED
        and not current.get("modelVersion")
        and (current.get("model") or {}).get("sha256")
    )


def wants_log_tail(outcome: status.Outcome) -> bool:
    """A crashed trainer (no result of its own): its log tail tells why."""
    crashed = outcome.exit_code not in contract.TERMINAL_EXIT_CODES
    return outcome.phase == status.FAILED and bool(outcome.failed_pod) and not outcome.log_tail and crashed


def progress_pod(
    outcome: status.Outcome,
    pods: list[dict[str, Any]],
    memory: Mapping[str, Any],
    settings: Settings,
    now: dt.datetime,
) -> str | None:
    """The running pod whose log to read for progress, at most every progress_interval seconds."""
    if outcome.phase != status.RUNNING or settings.progress_interval <= 0:
        return None
    if now.timestamp() - float(memory.get(MEM_PROGRESS_READ) or 0.0) < settings.progress_interval * 0.8:
        return None
    running = [p for p in pods if "running" in (k8s.container_status(p, children.TRAINER_CONTAINER).get("state") or {})]
    if not running:
        return None
    return str(max(running, key=k8s.created)["metadata"]["name"])


def parse_progress(text: str | None) -> dict[str, Any] | None:
    """The latest progress line of a trainer log."""
    for line in reversed((text or "").splitlines()):
        parsed = contract.parse_progress_line(line)
        if parsed:
            return {"step": parsed[0][:64], "percent": max(0, min(100, parsed[1]))}
    return None


# ---- decide ------------------------------------------------------------------------------------------------------


def decide(facts: RunFacts, settings: Settings, now: dt.datetime) -> RunPlan:
    """The plan for one pass over a run."""
    current = facts.current
    if current.get("phase") in status.TERMINAL_PHASES:
        return decide_finished(facts, settings, now)
    run = try_parse(facts.body, settings)
    if isinstance(run, str):
        desired = status.invalid_status(facts.generation, run, current, now)
        return _with_status(RunPlan(), facts, desired)
    plan = RunPlan()
    job = sync_job(facts, run, settings, plan)
    if job is not None and not k8s.owned_by(job, facts.meta["uid"]):
        return _conflict(facts, run, job, now)
    outcome = status.observe(run, job, facts.pods, now, facts.queue_detail)
    if wants_log_tail(outcome):
        outcome.log_tail = facts.log_tail
    digest = status.image_digest(facts.pods, children.TRAINER_CONTAINER) or current.get("trainerImageDigest")
    model_version, error, promoted = plan_registration(facts, run, outcome.result, settings, now, plan, digest)
    job_name = children.job_name(facts.meta["name"], facts.meta["uid"])
    lost, lost_recheck = ([], None) if outcome.terminal else plan_lost_pods(facts, settings, now, plan)
    desired = status.build_status(
        run,
        facts.generation,
        outcome,
        current,
        now,
        job_name=job_name if job is not None or current.get("jobName") else None,
        progress=parse_progress(facts.progress_log),
        model_version=model_version,
        registration_error=error,
        promotion=promoted,
        image_digest=digest,
        disruptions=lost,
    )
    if outcome.delete_job and job is not None:
        # The operator decided the run failed (start-up deadline): nothing may linger.
        plan.delete.append(Child("Job", facts.meta["namespace"], job_name))
    plan.requeue = requeue_after(outcome, facts.memory, settings, error, plan)
    if lost_recheck is not None:
        plan.requeue = lost_recheck if plan.requeue is None else min(plan.requeue, lost_recheck)
    if facts.progress_log is not None:
        plan.remember[MEM_PROGRESS_READ] = now.timestamp()
    return _with_status(plan, facts, desired)


def plan_lost_pods(
    facts: RunFacts, settings: Settings, now: dt.datetime, plan: RunPlan
) -> tuple[list[dict[str, Any]], float | None]:
    """End the pods whose node has been lost for node_lost_seconds (see ``nodeloss``): their status patch,
    a Warning Event each, and the status.disruptions entries; plus when to look again for the others."""
    lost, recheck = nodeloss.lost_pods(facts.pods, facts.nodes, settings.node_lost_seconds, now)
    by_name = {p["metadata"]["name"]: p for p in facts.pods}
    stamp = k8s.format_time(now)
    entries: list[dict[str, Any]] = []
    for item in lost:
        plan.fail_pods.append((item.pod, nodeloss.failed_status(by_name[item.pod], item, stamp)))
        plan.events.append(k8s.Event.warning(nodeloss.REASON_NODE_LOST, item.message))
        reason = nodeloss.REASON_NODE_LOST
        entries.append({"pod": item.pod, "node": item.node, "reason": reason, "message": item.message, "time": stamp})
    return entries, recheck


def sync_job(facts: RunFacts, run: TrainingRun, settings: Settings, plan: RunPlan) -> dict[str, Any] | None:
    """The Job as it will be after the plan: created when absent (never re-created once the status names
    one), its mutable spec fields carried over while it runs."""
    job = facts.job
    if job is None and not facts.current.get("jobName"):
        job = children.build_trainer_job(run, facts.meta["uid"], settings, champion(facts, run))
        plan.create.append(job)
        name = job["metadata"]["name"]
        plan.events.append(k8s.Event.normal(status.REASON_JOB_CREATED, f"created trainer Job {name}"))
        return job
    if job is None or not k8s.owned_by(job, facts.meta["uid"]):
        return job
    patch = job_spec_patch(job, run)
    if not patch:
        return job
    meta = job["metadata"]
    plan.patch.append((Child("Job", meta["namespace"], meta["name"]), {"spec": patch}))
    return {**job, "spec": {**(job.get("spec") or {}), **patch}}


def wants_champion(current: Mapping[str, Any], job: Mapping[str, Any] | None, run: TrainingRun) -> bool:
    """The Job of a promoting run is about to be created: gather lists the versions for its champion."""
    return run.spec.registration.promote is not None and job is None and not current.get("jobName")


def champion(facts: RunFacts, run: TrainingRun) -> promotion.Champion | None:
    """The version holding the alias of spec.register.promote now (None: no promotion, or no holder)."""
    promote = run.spec.registration.promote
    if promote is None:
        return None
    return promotion.champion_of(facts.versions or [], run.spec.model, promote.alias)


def job_spec_patch(job: Mapping[str, Any], run: TrainingRun) -> dict[str, Any]:
    """Carry the mutable spec fields (suspend, ttlSecondsAfterFinished, activeDeadlineSeconds, backoffLimit)
    to an unfinished Job; a null in the merge patch removes a field the run no longer sets."""
    if k8s.job_condition(job, "Complete", "Failed"):
        return {}
    jspec = job.get("spec") or {}
    patch: dict[str, Any] = {}
    want_suspend = children.desired_suspend(run)
    if want_suspend is not None and bool(jspec.get("suspend")) != want_suspend:
        patch["suspend"] = want_suspend
    for key, want in (
        ("ttlSecondsAfterFinished", run.spec.ttl_seconds_after_finished),
        ("activeDeadlineSeconds", run.spec.active_deadline_seconds),
        ("backoffLimit", run.spec.backoff_limit),
    ):
        if jspec.get(key) != want:
            patch[key] = want
    return patch


def _conflict(facts: RunFacts, run: TrainingRun, job: Mapping[str, Any], now: dt.datetime) -> RunPlan:
    uid = facts.meta["uid"]
    message = f"Job {job['metadata']['name']} exists but is not controlled by this TrainingRun (uid {uid})"
    outcome = status.Outcome(status.FAILED, status.REASON_JOB_CONFLICT, message, completion_time=None)
    desired = status.build_status(run, facts.generation, outcome, facts.current, now, job_name=None)
    return _with_status(RunPlan(), facts, desired)


def requeue_after(
    outcome: status.Outcome, memory: Mapping[str, Any], settings: Settings, error: str | None, plan: RunPlan
) -> float | None:
    """When to look again without an event: registration retry, Kueue's reason, start-up deadline, progress."""
    checks = int(memory.get(MEM_QUEUED_CHECKS) or 0)
    plan.remember[MEM_QUEUED_CHECKS] = min(checks + 1, 16) if outcome.phase == status.QUEUED else 0
    if error:
        return REGISTRATION_RETRY_SECONDS
    if outcome.phase == status.QUEUED:
        return min(QUEUED_RECHECK_MAX, QUEUED_RECHECK_FIRST * 2.0**checks)
    if outcome.recheck_after is not None:
        return outcome.recheck_after
    if outcome.phase == status.RUNNING and settings.progress_interval > 0:
        return settings.progress_interval
    return None


def _with_status(plan: RunPlan, facts: RunFacts, desired: dict[str, Any]) -> RunPlan:
    """The plan with the status patch towards ``desired`` and the transition Event, if any."""
    current = facts.current
    plan.status = k8s.status_patch(current, desired)
    plan.desired = desired
    old, new = current.get("phase"), desired.get("phase")
    if plan.status and new and new != old:
        plan.transition = (old, new)
        cond: dict[str, Any] = next(
            (c for c in desired.get("conditions", []) if c["type"] == status.COND_SUCCEEDED), {}
        )
        event = k8s.Event.warning if new == status.FAILED else k8s.Event.normal
        message = f"{new}: {cond.get('message', '')}"
        created = [e for e in plan.events if e.reason == status.REASON_JOB_CREATED]
        if created and old is None:
            # The pass that creates the Job also gives the run its first phase: one Event says both (an Event
            # is an API write; the JobCreated condition still records the Job).
            plan.events.remove(created[0])
            message = f"{created[0].message}; {message}"
        plan.events.append(event(cond.get("reason") or new, message))
    return plan


# ---- registration ------------------------------------------------------------------------------------------------


def plan_registration(
    facts: RunFacts,
    run: TrainingRun,
    result: contract.Result | None,
    settings: Settings,
    now: dt.datetime,
    plan: RunPlan,
    image_digest: str | None = None,
) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """(ModelVersion name, registration error, promotion record) of a succeeded run; plans the creation when
    it is due. A failure never hides the trained model: it is retried after REGISTRATION_RETRY_SECONDS."""
    model = (result.model if result else None) or {}
    if not (run.spec.registration.enabled and result and model.get("sha256") and facts.versions is not None):
        return None, None, None
    found = registration.adopted(facts.versions, facts.meta["uid"])
    if found:
        record = facts.current.get("promotion") or promotion.from_annotation(_named(facts.versions, found))
        return found, None, _announce(facts, record, plan)
    error, since = facts.memory.get(MEM_REGISTRATION_ERROR) or (None, None)
    if error and since is not None and (now - since).total_seconds() < REGISTRATION_RETRY_SECONDS:
        return None, str(error), None
    version = registration.next_version(facts.versions, run.spec.model)
    image = run.spec.image or settings.trainer_image
    record = promotion_record(facts, run, result, registration.model_version_name(run.spec.model, version), now)
    try:
        manifest = registration.build_model_version(
            run, facts.meta["uid"], result, version, image, record, image_digest=image_digest
        )
    except ValidationError as exc:
        return None, f"creating the ModelVersion failed: {exc}"[:1000], None
    manifest.pop("status", None)
    plan.register = manifest
    return str(manifest["metadata"]["name"]), None, _announce(facts, record, plan)


def promotion_record(
    facts: RunFacts, run: TrainingRun, result: contract.Result, challenger: str, now: dt.datetime
) -> dict[str, Any] | None:
    """The decision of spec.register.promote for the new version ``challenger`` (None without promote)."""
    promote = run.spec.registration.promote
    if promote is None:
        return None
    holder = promotion.champion_of(facts.versions or [], run.spec.model, promote.alias)
    scores = getattr(result, "promotion", None)
    return promotion.decide_promotion(promote, scores, holder, challenger, k8s.format_time(now))


def _announce(facts: RunFacts, record: dict[str, Any] | None, plan: RunPlan) -> dict[str, Any] | None:
    """The record, with its Event (Promoted / ChampionKept) the first time the status gets it."""
    if record and not facts.current.get("promotion"):
        plan.events.append(promotion.event(record))
    return record


def _named(versions: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next((mv for mv in versions if (mv.get("metadata") or {}).get("name") == name), {})


def decide_finished(facts: RunFacts, settings: Settings, now: dt.datetime) -> RunPlan:
    """A finished run: only loose ends — the Job of a run the operator failed (start-up deadline) when the
    operator died between writing the status and deleting the Job; a registration still to do."""
    current, plan = facts.current, RunPlan()
    failure = current.get("failure") or {}
    if current.get("phase") == status.FAILED and failure.get("reason") in status.OPERATOR_DECIDED_FAILURES:
        if facts.job is not None:
            plan.delete.append(Child("Job", facts.meta["namespace"], facts.job["metadata"]["name"]))
        return plan
    run = try_parse(facts.body, settings)
    if isinstance(run, str) or not needs_registration(current, run):
        return plan
    model_version, error, promoted = plan_registration(facts, run, result_of(facts, run, now), settings, now, plan)
    conds = [c for c in current.get("conditions") or [] if c.get("type") != status.COND_REGISTERED]
    conds += status.registered_condition(current.get("conditions") or [], model_version, error, facts.generation, now)
    desired = {**current, "conditions": conds}
    if model_version:
        desired["modelVersion"] = model_version
    if promoted:
        desired["promotion"] = promoted
    plan.requeue = REGISTRATION_RETRY_SECONDS if error else None
    return _with_status(plan, facts, desired)


def result_of(facts: RunFacts, run: TrainingRun, now: dt.datetime) -> contract.Result:
    """The trainer's result from the Job's pods, or (the Job is gone) what the status recorded."""
    if facts.job is not None:
        outcome = status.observe(run, facts.job, facts.pods, now)
        if outcome.result is not None and outcome.result.model:
            return outcome.result
    current = facts.current
    return contract.Result(
        outcome=contract.OUTCOME_SUCCEEDED,
        reason=contract.REASON_TRAINED,
        task=current.get("task"),
        metrics=current.get("metrics"),
        model=current.get("model"),
    )
