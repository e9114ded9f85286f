"""The TrainingSchedule kind's ``decide``: a pure function of (facts of one schedule, settings, now) → plan.

* Ticks come from ``schedule.due_ticks`` (the ticks in (status.lastScheduleTime, now]); one due tick is
  started, several mean the operator was away: all count as missed and the newest ``catchUp`` are started.
* Each tick's child TrainingRun is ``schedule.run_name(schedule, tick)``: a pass that finds it already there
  (a crash between the creation and the status write) adopts it instead of starting the tick again, and an
  AlreadyExists on creation drops the plan and decides again with the run in the facts.
* ``concurrencyPolicy`` while a child has not finished: Allow starts anyway, Forbid skips the tick,
  Replace deletes the active children and starts the new one. Forbid and Replace start at most one tick
  per pass (the newest; older caught-up ticks are skipped).
* History: succeeded/failed children beyond their limits are deleted, oldest tick first.
* Requeue at the next tick (at most ``MAX_REQUEUE`` seconds ahead, so a wall-clock jump is noticed).
* Gates (``spec.when``, see ``gates``): a due tick starts its gate Job instead of its run and is recorded
  in ``status.gate``; a later pass, once that Job finished, starts the tick's run or skips it
  (DataUnchanged, NoDrift, GateFailed). One gate at a time: a tick due while one runs is skipped
  (GatePending). Finished gate Jobs are deleted once their decision is in the stored status.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetrain_api.models import API_VERSION, TrainingScheduleSpec
from pydantic import ValidationError

from .. import k8s
from ..engine import Child, ObjectFacts, Plan
from ..settings import Settings
from . import gates
from .schedule import DueTicks, Schedule, ScheduleError, due_ticks, parse_schedule, run_name

KIND = "TrainingSchedule"
LABEL_SCHEDULE = "kubetrain.io/schedule"
ANNOTATION_TICK = "kubetrain.io/scheduled-time"
COND_READY = "Ready"
MAX_REQUEUE = 600.0
#: Wake up this long after a tick (timers may fire a little early; the tick must be <= now).
TICK_SLACK = 0.25
FINISHED = ("Succeeded", "Failed")

# Decisions (status.lastDecision.decision) and their reasons.
STARTED, SKIPPED, SUSPENDED, INVALID = "Started", "Skipped", "Suspended", "Invalid"
R_SCHEDULED, R_CAUGHT_UP, R_REPLACED = "Scheduled", "CaughtUp", "Replaced"
R_FORBID, R_DEADLINE, R_NAME_TAKEN = "ConcurrencyForbid", "MissedDeadline", "NameTaken"
R_SUSPENDED, R_INVALID_SCHEDULE, R_INVALID_SPEC = "Suspended", "InvalidSchedule", "InvalidSpec"


@dataclass
class ScheduleFacts(ObjectFacts):
    body: dict[str, Any]
    runs: list[dict[str, Any]]
    """The TrainingRuns this schedule controls (ownerReference uid)."""
    taken: set[str] = field(default_factory=set)
    """Names this pass may create that other TrainingRuns hold (``names_to_check``: such a tick cannot start)."""
    memory: Mapping[str, Any] = field(default_factory=dict)
    gate_jobs: dict[str, gates.GateJob] = field(default_factory=dict)
    """This schedule's gate Jobs by name (spec.when)."""
    versions: list[dict[str, Any]] = field(default_factory=list)
    """The namespace's ModelVersions (read only for spec.when.drift: the reference)."""


@dataclass
class SchedulePlan(Plan):
    decisions: list[dict[str, Any]] = field(default_factory=list)
    """Every tick decided this pass (status.lastDecision shape), oldest first: for metrics and logs."""
    missed: int = 0


@dataclass(frozen=True)
class Invalid:
    """Why a schedule cannot be used: a reason and a message naming the field."""

    reason: str
    message: str


@dataclass
class _Pass:
    """The state one decide pass builds up."""

    facts: ScheduleFacts
    spec: TrainingScheduleSpec
    schedule: Schedule
    now: dt.datetime
    plan: SchedulePlan
    active: list[str]
    missed: dict[str, Any] | None = None
    pending: dict[str, Any] | None = None
    """status.gate after this pass: the tick whose gate Job has not finished."""
    settings: Settings | None = None


def tick_of(run: Mapping[str, Any]) -> str:
    """A child's tick (its annotation; its name sorts the same way when the annotation is gone)."""
    meta = run.get("metadata") or {}
    return str((meta.get("annotations") or {}).get(ANNOTATION_TICK) or meta.get("name") or "")


def phase_of(run: Mapping[str, Any]) -> str:
    return str((run.get("status") or {}).get("phase") or "")


def decide(facts: ScheduleFacts, settings: Settings, now: dt.datetime) -> SchedulePlan:
    plan = SchedulePlan()
    parsed = parse(facts.body, now)
    if isinstance(parsed, Invalid):
        _invalid(facts, parsed.reason, parsed.message, now, plan)
        return plan
    spec, schedule = parsed
    runs = sorted((r for r in facts.runs if not r["metadata"].get("deletionTimestamp")), key=tick_of)
    prune(runs, spec, facts.meta["namespace"], plan)
    active = [r["metadata"]["name"] for r in runs if phase_of(r) not in FINISHED]
    state = _Pass(facts, spec, schedule, now, plan, active, settings=settings)
    if spec.suspend:  # a pending gate waits (suspend starts no run); its Job finishes or hits its deadline
        state.pending = facts.current.get("gate") or None
        _suspended(state)
        return plan
    resolve_gate(state)
    due = due_now(facts.body, spec, schedule, now)
    start_ticks(state, due)
    _clean_gate_jobs(state)
    _scheduling_status(state, due)
    if due.next_tick is not None:
        wait = (due.next_tick - now).total_seconds() + TICK_SLACK
        plan.requeue = min(MAX_REQUEUE, max(TICK_SLACK, wait))
    return plan


def due_now(body: Mapping[str, Any], spec: TrainingScheduleSpec, schedule: Schedule, now: dt.datetime) -> DueTicks:
    """The ticks due at ``now`` (from status.lastScheduleTime, else the creation)."""
    meta, current = body["metadata"], body.get("status") or {}
    return due_ticks(
        schedule,
        last_tick=k8s.parse_time(current.get("lastScheduleTime")),
        created=k8s.parse_time(meta.get("creationTimestamp")) or now,
        now=now,
        catch_up=spec.catch_up,
        starting_deadline_seconds=spec.starting_deadline_seconds,
    )


def names_to_check(body: Mapping[str, Any], now: dt.datetime) -> list[str]:
    """The child names a pass at ``now`` may create: its due ticks' and the pending gate's tick's (gather
    looks them up, so a name another run holds is seen without listing every run of the namespace)."""
    parsed = parse(body, now)
    if isinstance(parsed, Invalid):
        return []
    spec, schedule = parsed
    name = body["metadata"]["name"]
    ticks = list(due_now(body, spec, schedule, now).start)
    pending = k8s.parse_time(((body.get("status") or {}).get("gate") or {}).get("tick"))
    if pending is not None:
        ticks.append(pending)
    return [run_name(name, t) for t in ticks]


def parse(body: Mapping[str, Any], now: dt.datetime) -> tuple[TrainingScheduleSpec, Schedule] | Invalid:
    """The validated spec and parsed schedule, or why not (naming the field)."""
    try:
        spec = TrainingScheduleSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return Invalid(R_INVALID_SPEC, f"spec is invalid: {exc}"[:4000])
    try:
        schedule = parse_schedule(spec.schedule, spec.time_zone)
    except ScheduleError as exc:
        return Invalid(R_INVALID_SCHEDULE, f"spec.schedule/spec.timeZone: {exc}")
    if schedule.next_tick(now) is None:
        return Invalid(R_INVALID_SCHEDULE, f"spec.schedule: {spec.schedule!r} never fires")
    return spec, schedule


def prune(runs: list[dict[str, Any]], spec: TrainingScheduleSpec, namespace: str, plan: SchedulePlan) -> None:
    """Delete finished children beyond the history limits, oldest first (``runs`` is sorted by tick)."""
    for phase, limit in (("Succeeded", spec.successful_runs_history_limit), ("Failed", spec.failed_runs_history_limit)):
        done = [r for r in runs if phase_of(r) == phase]
        for run in done[: max(0, len(done) - limit)]:
            plan.delete.append(Child("TrainingRun", namespace, run["metadata"]["name"]))


def start_ticks(state: _Pass, due: DueTicks) -> None:
    """Start (or skip) the ticks ``due`` says to start; the missed ones are recorded."""
    ticks = list(due.start)
    policy = state.spec.concurrency_policy
    if policy != "Allow" and len(ticks) > 1:
        for tick in ticks[:-1]:
            reason = R_REPLACED if policy == "Replace" else R_FORBID
            _skip(state, tick, reason, f"a newer tick ({k8s.format_time(ticks[-1])}) is started instead")
        ticks = ticks[-1:]
    caught_up = due.missed > 0
    for tick in ticks:
        _start_one(state, tick, R_CAUGHT_UP if caught_up else R_SCHEDULED)
    if due.missed:
        _missed(state, due)


def _start_one(state: _Pass, tick: dt.datetime, reason: str) -> None:
    facts, plan = state.facts, state.plan
    meta = facts.meta
    name = run_name(meta["name"], tick)
    stamp = k8s.format_time(tick)
    if any(r["metadata"]["name"] == name for r in facts.runs):
        # Created by an earlier pass whose status write did not happen: the tick is done, adopt it.
        plan.decisions.append(_decision(STARTED, reason, f"TrainingRun {name} (already created)", stamp, name, state))
        return
    if name in facts.taken:
        message = f"TrainingRun {name} exists and is not owned by this schedule; tick {stamp} skipped"
        _skip(state, tick, R_NAME_TAKEN, message, warning=True)
        return
    if state.active and state.spec.concurrency_policy == "Forbid":
        _skip(state, tick, R_FORBID, f"concurrencyPolicy Forbid: {', '.join(state.active)} still active")
        return
    if gates.has_gates(state.spec.when):
        _start_gate(state, tick, reason)
        return
    _launch(state, tick, reason)


def _launch(state: _Pass, tick: dt.datetime, reason: str, why: str = "", gate: dict[str, Any] | None = None) -> None:
    """Create the tick's run (after concurrencyPolicy), with the decision and its Event."""
    facts, plan = state.facts, state.plan
    meta = facts.meta
    name = run_name(meta["name"], tick)
    stamp = k8s.format_time(tick)
    policy = state.spec.concurrency_policy
    if state.active and policy == "Forbid":
        _skip(state, tick, R_FORBID, f"concurrencyPolicy Forbid: {', '.join(state.active)} still active", gate=gate)
        return
    if state.active and policy == "Replace":
        for old in state.active:
            plan.delete.append(Child("TrainingRun", meta["namespace"], old))
        message = f"concurrencyPolicy Replace: deleted {', '.join(state.active)}"
        plan.events.append(k8s.Event.normal("RunsReplaced", message))
        reason = R_REPLACED
        state.active = []
    plan.create.append(child_run(facts.body, tick))
    state.active.append(name)
    message = f"started TrainingRun {name} for tick {stamp}" + (f": {why}" if why else "")
    plan.decisions.append(_decision(STARTED, reason, message, stamp, name, state, gate))
    plan.events.append(k8s.Event.normal("RunStarted", message))


def _skip(
    state: _Pass,
    tick: dt.datetime,
    reason: str,
    message: str,
    *,
    warning: bool = False,
    gate: dict[str, Any] | None = None,
) -> None:
    stamp = k8s.format_time(tick)
    state.plan.decisions.append(_decision(SKIPPED, reason, message, stamp, None, state, gate))
    text = f"tick {stamp} skipped: {message}"
    if warning:
        event = k8s.Event.warning(reason, text)
    elif reason in (gates.R_DATA_UNCHANGED, gates.R_NO_DRIFT):
        event = k8s.Event.normal(reason, text)
    else:
        event = k8s.Event.normal("TickSkipped", text)
    state.plan.events.append(event)


# ---- gates (spec.when) ----------------------------------------------------------------------------------------


def _reference(state: _Pass) -> Any:
    return gates.reference_of(state.facts.versions, state.spec.run_template.spec.model, state.spec.when)


def _start_gate(state: _Pass, tick: dt.datetime, reason: str) -> None:
    """Start the tick's gate Job (or adopt it: a pass that crashed before its status write made it) and
    remember it in status.gate; a tick due while another gate runs is skipped."""
    facts, plan, when = state.facts, state.plan, state.spec.when
    assert when is not None
    stamp = k8s.format_time(tick)
    name = gates.gate_job_name(facts.meta["name"], tick)
    if state.pending is not None and state.pending.get("job") != name:
        _skip(state, tick, gates.R_GATE_PENDING, f"the gate of tick {state.pending.get('tick')} has not finished")
        return
    reference = _reference(state)
    if reference is None and not when.data_changed:
        assert when.drift is not None
        model = state.spec.run_template.spec.model
        why = f"no version of {model} holds alias {when.drift.against}: nothing to compare with"
        _launch(state, tick, gates.R_NO_BASELINE, why)
        return
    if name not in facts.gate_jobs:
        assert state.settings is not None
        plan.create.append(gates.gate_job(facts.body, tick, state.settings, reference))
        against = f" against {reference.name}" if reference is not None else ""
        plan.events.append(k8s.Event.normal("GateStarted", f"tick {stamp}: gate Job {name} started{against}"))
    state.pending = {"tick": stamp, "job": name, "started": k8s.format_time(state.now), "reason": reason}


def resolve_gate(state: _Pass) -> None:
    """The tick in status.gate: still waiting, or decided now that its gate Job finished (or vanished)."""
    facts = state.facts
    pending = facts.current.get("gate")
    if not pending or not pending.get("tick") or not pending.get("job"):
        return
    tick = k8s.parse_time(pending["tick"])
    if tick is None:
        return
    job = facts.gate_jobs.get(pending["job"])
    if job is not None and job.state == k8s.JOB_RUNNING:
        state.pending = dict(pending)
        return
    name = run_name(facts.meta["name"], tick)
    if any(r["metadata"]["name"] == name for r in facts.runs):  # started by a pass whose status write was lost
        message = f"TrainingRun {name} (already created)"
        state.plan.decisions.append(_decision(STARTED, R_SCHEDULED, message, pending["tick"], name, state))
        return
    if name in facts.taken:
        _skip(state, tick, R_NAME_TAKEN, f"TrainingRun {name} exists and is not owned by this schedule", warning=True)
        return
    when = state.spec.when
    if not gates.has_gates(when):
        _launch(state, tick, R_SCHEDULED, "spec.when was removed while the gate ran")
        return
    assert when is not None
    reference = _reference(state)
    runs = sorted((r for r in facts.runs if not r["metadata"].get("deletionTimestamp")), key=tick_of)
    verdict = gates.verdict(when, job, gates.last_fingerprint(runs), reference.name if reference else None)
    if verdict.train:
        _launch(state, tick, verdict.reason, verdict.message, verdict.gate)
    else:
        _skip(state, tick, verdict.reason, verdict.message, warning=verdict.warning, gate=verdict.gate)


def _clean_gate_jobs(state: _Pass) -> None:
    """Delete finished gate Jobs whose decision the stored status already holds (a Job is never deleted in
    the pass that decides about it: a lost status write must still find its result)."""
    stored = (state.facts.current.get("gate") or {}).get("job")
    keep = {stored, (state.pending or {}).get("job")}
    for name in state.facts.gate_jobs:
        if name not in keep:
            state.plan.delete.append(Child("Job", state.facts.meta["namespace"], name))


def _missed(state: _Pass, due: DueTicks) -> None:
    started = sum(1 for d in state.plan.decisions if d["decision"] == STARTED)
    state.plan.missed = due.missed
    first = k8s.format_time(due.first_due) if due.first_due else None
    last = k8s.format_time(due.last_due) if due.last_due else None
    count = f"at least {due.missed}" if due.missed_capped else str(due.missed)
    message = (
        f"{count} ticks were missed between {first} and {last} (operator away or past "
        f"startingDeadlineSeconds); started {started} (catchUp {state.spec.catch_up})"
    )
    state.plan.events.append(k8s.Event.warning("MissedTicks", message))
    state.missed = {
        "count": due.missed,
        "capped": due.missed_capped,
        "started": started,
        "first": first,
        "last": last,
        "time": k8s.format_time(state.now),
    }


def _decision(
    decision: str,
    reason: str,
    message: str,
    tick: str | None,
    run: str | None,
    state: _Pass,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "decision": decision,
        "reason": reason,
        "message": message[:4096],
        "time": k8s.format_time(state.now),
    }
    if tick:
        out["tick"] = tick
    if run:
        out["run"] = run
    if gate:
        out["gate"] = {k: v for k, v in gate.items() if v is not None}
    return out


def child_run(body: Mapping[str, Any], tick: dt.datetime) -> dict[str, Any]:
    """The TrainingRun of one tick: the template's labels (a Kueue queue label included), annotations and
    spec as stored, owned by the schedule (controller), named after the tick."""
    meta, template = body["metadata"], body["spec"]["runTemplate"]
    tmeta = template.get("metadata") or {}
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingRun",
        "metadata": {
            "name": run_name(meta["name"], tick),
            "namespace": meta["namespace"],
            "labels": {**(tmeta.get("labels") or {}), LABEL_SCHEDULE: meta["name"]},
            "annotations": {**(tmeta.get("annotations") or {}), ANNOTATION_TICK: k8s.format_time(tick)},
            "ownerReferences": [k8s.owner_reference(KIND, meta, block_deletion=False)],
        },
        "spec": dict(template["spec"]),
    }


# ---- status -------------------------------------------------------------------------------------------------


def _base_status(facts: ScheduleFacts, status: str, reason: str, message: str, now: dt.datetime) -> dict[str, Any]:
    current = facts.current
    gen = facts.meta.get("generation")
    conds = k8s.set_condition(current.get("conditions") or [], COND_READY, status, reason, message, gen, _s(now))
    desired = {k: v for k, v in current.items() if k not in ("conditions", "observedGeneration")}
    desired.update(conditions=conds, observedGeneration=gen)
    return desired


def _scheduling_status(state: _Pass, due: DueTicks) -> None:
    facts, plan = state.facts, state.plan
    desired = _base_status(facts, "True", R_SCHEDULED, "the operator starts a TrainingRun at each tick", state.now)
    if due.last_due is not None:
        desired["lastScheduleTime"] = k8s.format_time(due.last_due)
    _set(desired, "nextScheduleTime", k8s.format_time(due.next_tick) if due.next_tick else None)
    desired["active"] = list(state.active)
    _set(desired, "gate", _pending_status(state.pending))
    if plan.decisions:
        desired["lastDecision"] = plan.decisions[-1]
    if state.missed is not None:
        desired["missed"] = state.missed
    plan.status = k8s.status_patch(facts.current, desired)


def _suspended(state: _Pass) -> None:
    facts, plan = state.facts, state.plan
    desired = _base_status(facts, "True", R_SUSPENDED, "spec.suspend is true: no ticks are started", state.now)
    desired.pop("nextScheduleTime", None)
    desired["active"] = list(state.active)
    _set(desired, "gate", _pending_status(state.pending))
    last = facts.current.get("lastDecision") or {}
    if last.get("decision") != SUSPENDED:
        desired["lastDecision"] = _decision(SUSPENDED, R_SUSPENDED, "spec.suspend is true", None, None, state)
        plan.events.append(k8s.Event.normal(R_SUSPENDED, "spec.suspend is true: no ticks are started"))
    plan.status = k8s.status_patch(facts.current, desired)


def _invalid(facts: ScheduleFacts, reason: str, message: str, now: dt.datetime, plan: SchedulePlan) -> None:
    """An unusable spec: Ready=False naming the field, one Warning Event (not again while unchanged)."""
    conds: list[dict[str, Any]] = facts.current.get("conditions") or []
    old: dict[str, Any] = next((c for c in conds if c.get("type") == COND_READY), {})
    desired = _base_status(facts, "False", reason, message, now)
    desired.pop("nextScheduleTime", None)
    desired["lastDecision"] = {"decision": INVALID, "reason": reason, "message": message[:4096], "time": _s(now)}
    if (old.get("reason"), old.get("message")) != (reason, message[: k8s.MESSAGE_MAX]):
        plan.events.append(k8s.Event.warning(reason, message))
    else:
        desired["lastDecision"] = facts.current.get("lastDecision") or desired["lastDecision"]
    plan.status = k8s.status_patch(facts.current, desired)


def _pending_status(pending: dict[str, Any] | None) -> dict[str, Any] | None:
    """status.gate (PendingGate) of the tick waiting for its gate."""
    if pending is None:
        return None
    return {k: pending[k] for k in ("tick", "job", "started") if pending.get(k)}


def _set(desired: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        desired.pop(key, None)
    else:
        desired[key] = value


def _s(now: dt.datetime) -> str:
    return k8s.format_time(now)
