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
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetrain_api.models import API_VERSION, TrainingScheduleSpec
from pydantic import ValidationError

from .. import k8s
from ..engine import Child, Plan
from ..settings import Settings
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
class ScheduleFacts:
    body: dict[str, Any]
    runs: list[dict[str, Any]]
    """The TrainingRuns this schedule controls (ownerReference uid)."""
    taken: set[str] = field(default_factory=set)
    """Names of the namespace's other TrainingRuns (a tick whose name is taken cannot start)."""
    memory: Mapping[str, Any] = field(default_factory=dict)

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.body["metadata"])

    @property
    def current(self) -> dict[str, Any]:
        return dict(self.body.get("status") or {})


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
    state = _Pass(facts, spec, schedule, now, plan, active)
    if spec.suspend:
        _suspended(state)
        return plan
    due = due_ticks(
        schedule,
        last_tick=k8s.parse_time(facts.current.get("lastScheduleTime")),
        created=k8s.parse_time(facts.meta.get("creationTimestamp")) or now,
        now=now,
        catch_up=spec.catch_up,
        starting_deadline_seconds=spec.starting_deadline_seconds,
    )
    start_ticks(state, due)
    _scheduling_status(state, due)
    if due.next_tick is not None:
        wait = (due.next_tick - now).total_seconds() + TICK_SLACK
        plan.requeue = min(MAX_REQUEUE, max(TICK_SLACK, wait))
    return plan


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
    policy = state.spec.concurrency_policy
    if state.active and policy == "Forbid":
        _skip(state, tick, R_FORBID, f"concurrencyPolicy Forbid: {', '.join(state.active)} still active")
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
    message = f"started TrainingRun {name} for tick {stamp}"
    plan.decisions.append(_decision(STARTED, reason, message, stamp, name, state))
    plan.events.append(k8s.Event.normal("RunStarted", message))


def _skip(state: _Pass, tick: dt.datetime, reason: str, message: str, *, warning: bool = False) -> None:
    stamp = k8s.format_time(tick)
    state.plan.decisions.append(_decision(SKIPPED, reason, message, stamp, None, state))
    text = f"tick {stamp} skipped: {message}"
    state.plan.events.append(k8s.Event.warning(reason, text) if warning else k8s.Event.normal("TickSkipped", text))


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
    decision: str, reason: str, message: str, tick: str | None, run: str | None, state: _Pass
) -> dict[str, Any]:
    out = {"decision": decision, "reason": reason, "message": message, "time": k8s.format_time(state.now)}
    if tick:
        out["tick"] = tick
    if run:
        out["run"] = run
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


def _set(desired: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        desired.pop(key, None)
    else:
        desired[key] = value


def _s(now: dt.datetime) -> str:
    return k8s.format_time(now)
