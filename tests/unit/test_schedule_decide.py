"""TrainingSchedule ``decide(facts, settings, now)`` with a fake clock: ticks started and adopted, catch-up
after downtime, concurrency policies, history limits, suspend, invalid specs, the child run's shape."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetrain_api.models import TrainingSchedule, TrainingScheduleSpec
from kubetrain_operator import k8s
from kubetrain_operator.engine import Child
from kubetrain_operator.settings import Settings
from kubetrain_operator.trainingschedule import decide as tsd
from kubetrain_operator.trainingschedule.schedule import run_name
from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[2]
SETTINGS = Settings()
UID = "0000-schedule-uid"
T0 = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)  # a multiple of 15 s: an @every 15s tick
STEP = timedelta(seconds=15)


def example() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "examples" / "iris-nightly-schedule.yaml").read_text()))


def body(status: dict[str, Any] | None = None, created: datetime = T0 - timedelta(seconds=3), **spec: Any) -> Any:
    doc = example()
    doc["metadata"] = {
        "name": "nightly",
        "namespace": "ns",
        "uid": UID,
        "generation": 1,
        "creationTimestamp": k8s.format_time(created),
    }
    doc["spec"] = {**doc["spec"], "schedule": "@every 15s", "timeZone": "UTC", "concurrencyPolicy": "Allow", **spec}
    doc["spec"].pop("startingDeadlineSeconds", None) if "startingDeadlineSeconds" not in spec else None
    if status is not None:
        doc["status"] = status
    return doc


def child(tick: datetime, phase: str | None = None, owner: str = UID) -> dict[str, Any]:
    run = tsd.child_run(body(), tick)
    run["metadata"]["ownerReferences"][0]["uid"] = owner
    if phase:
        run["status"] = {"phase": phase}
    return run


def facts(b: dict[str, Any], runs: list[dict[str, Any]] = (), taken: set[str] = frozenset()) -> tsd.ScheduleFacts:  # type: ignore[assignment]
    return tsd.ScheduleFacts(body=b, runs=list(runs), taken=set(taken))


def decide(b: dict[str, Any], now: datetime, runs: list[dict[str, Any]] = (), **kw: Any) -> tsd.SchedulePlan:  # type: ignore[assignment]
    return tsd.decide(facts(b, runs, **kw), SETTINGS, now)


def names(plan: tsd.SchedulePlan) -> list[str]:
    return [m["metadata"]["name"] for m in plan.create]


def reasons(plan: tsd.SchedulePlan) -> list[str]:
    return [e.reason for e in plan.events]


# ---- ticks ------------------------------------------------------------------------------------------------------


def test_the_first_tick_starts_one_owned_run_and_requeues_at_the_next() -> None:
    plan = decide(body(), T0 + timedelta(seconds=1))
    assert names(plan) == [run_name("nightly", T0)] == ["nightly-1796119200"]
    run = plan.create[0]
    assert run["metadata"]["ownerReferences"] == [
        {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingSchedule", "name": "nightly", "uid": UID,
         "controller": True, "blockOwnerDeletion": False}
    ]  # fmt: skip
    assert run["metadata"]["labels"] == {"team": "flowers", tsd.LABEL_SCHEDULE: "nightly"}
    assert run["metadata"]["annotations"] == {tsd.ANNOTATION_TICK: "2026-12-01T10:00:00Z"}
    assert run["spec"] == example()["spec"]["runTemplate"]["spec"]
    assert plan.status["lastScheduleTime"] == "2026-12-01T10:00:00Z"
    assert plan.status["nextScheduleTime"] == "2026-12-01T10:00:15Z"
    assert plan.status["active"] == ["nightly-1796119200"]
    assert plan.status["lastDecision"]["decision"] == "Started"
    assert plan.status["lastDecision"]["reason"] == "Scheduled"
    assert plan.status["conditions"][0]["type"] == "Ready" and plan.status["conditions"][0]["status"] == "True"
    assert reasons(plan) == ["RunStarted"]
    assert plan.requeue == pytest.approx(14 + tsd.TICK_SLACK)
    assert "missed" not in plan.status


def test_nothing_due_creates_nothing_and_waits_for_the_tick() -> None:
    status = {"lastScheduleTime": k8s.format_time(T0)}
    plan = decide(body(status), T0 + timedelta(seconds=10))
    assert not plan.create and not plan.events
    assert plan.requeue == pytest.approx(5 + tsd.TICK_SLACK)


def test_the_same_facts_give_the_same_plan() -> None:
    now = T0 + timedelta(seconds=1)
    assert decide(body(), now) == decide(body(), now)


def test_a_run_created_before_a_crash_is_adopted_not_started_again() -> None:
    plan = decide(body(), T0 + timedelta(seconds=1), [child(T0)])
    assert not plan.create
    assert plan.status["lastScheduleTime"] == "2026-12-01T10:00:00Z"
    assert plan.status["lastDecision"]["run"] == "nightly-1796119200"
    assert "RunStarted" not in reasons(plan)


def test_a_name_held_by_someone_else_skips_the_tick_with_a_warning() -> None:
    plan = decide(body(), T0 + timedelta(seconds=1), taken={run_name("nightly", T0)})
    assert not plan.create
    assert plan.status["lastDecision"]["reason"] == "NameTaken"
    assert plan.events[0].type == "Warning"


@pytest.mark.parametrize(("catch_up", "started"), [(1, 1), (2, 2), (5, 3), (0, 0)])
def test_three_missed_ticks_start_exactly_catch_up_and_report_three(catch_up: int, started: int) -> None:
    status = {"lastScheduleTime": k8s.format_time(T0)}
    now = T0 + 3 * STEP + timedelta(seconds=2)
    plan = decide(body(status, catchUp=catch_up), now)
    expected = [run_name("nightly", T0 + i * STEP) for i in (1, 2, 3)][3 - started :] if started else []
    assert names(plan) == expected
    assert plan.status["missed"] == {
        "count": 3, "capped": False, "started": started, "first": "2026-12-01T10:00:15Z",
        "last": "2026-12-01T10:00:45Z", "time": k8s.format_time(now),
    }  # fmt: skip
    assert plan.status["lastScheduleTime"] == "2026-12-01T10:00:45Z"
    assert plan.missed == 3 and "MissedTicks" in reasons(plan)
    if started:
        assert plan.status["lastDecision"]["reason"] == "CaughtUp"


def test_catching_up_twice_never_duplicates_a_tick() -> None:
    """The pass after a catch-up (its runs exist, its status written) starts nothing more."""
    status = {"lastScheduleTime": k8s.format_time(T0)}
    now = T0 + 3 * STEP + timedelta(seconds=2)
    first = decide(body(status, catchUp=2), now)
    after = {**status, **first.status}
    runs = [copy.deepcopy(m) for m in first.create]
    second = decide(body(after, catchUp=2), now + timedelta(seconds=1), runs)
    assert not second.create and not second.delete
    assert second.status.get("missed") is None  # unchanged: not in the patch


def test_starting_deadline_drops_a_late_tick_and_counts_it_missed() -> None:
    status = {"lastScheduleTime": k8s.format_time(T0)}
    plan = decide(body(status, startingDeadlineSeconds=5), T0 + STEP + timedelta(seconds=8))
    assert not plan.create
    assert plan.status["missed"]["count"] == 1 and plan.status["missed"]["started"] == 0
    assert plan.status["lastScheduleTime"] == "2026-12-01T10:00:15Z"  # decided: not considered again


# ---- concurrency ----------------------------------------------------------------------------------------------


def test_forbid_skips_a_tick_while_a_run_is_active() -> None:
    status = {"lastScheduleTime": k8s.format_time(T0)}
    plan = decide(body(status, concurrencyPolicy="Forbid"), T0 + STEP, [child(T0, "Running")])
    assert not plan.create
    assert plan.status["lastDecision"]["decision"] == "Skipped"
    assert plan.status["lastDecision"]["reason"] == "ConcurrencyForbid"
    assert plan.status["lastScheduleTime"] == "2026-12-01T10:00:15Z"
    assert reasons(plan) == ["TickSkipped"]


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_forbid_starts_once_the_run_finished(phase: str) -> None:
    status = {"lastScheduleTime": k8s.format_time(T0)}
    plan = decide(body(status, concurrencyPolicy="Forbid"), T0 + STEP, [child(T0, phase)])
    assert names(plan) == [run_name("nightly", T0 + STEP)]


def test_a_suspended_or_brand_new_run_counts_as_active_for_forbid() -> None:
    status = {"lastScheduleTime": k8s.format_time(T0)}
    for phase in ("Suspended", None):
        plan = decide(body(status, concurrencyPolicy="Forbid"), T0 + STEP, [child(T0, phase)])
        assert not plan.create, phase


def test_replace_deletes_the_active_run_and_starts_the_new_one() -> None:
    status = {"lastScheduleTime": k8s.format_time(T0)}
    plan = decide(body(status, concurrencyPolicy="Replace"), T0 + STEP, [child(T0, "Running")])
    assert names(plan) == [run_name("nightly", T0 + STEP)]
    assert plan.delete == [Child("TrainingRun", "ns", run_name("nightly", T0))]
    assert plan.status["active"] == [run_name("nightly", T0 + STEP)]
    assert plan.status["lastDecision"]["reason"] == "Replaced"
    assert reasons(plan) == ["RunsReplaced", "RunStarted"]


@pytest.mark.parametrize("policy", ["Forbid", "Replace"])
def test_forbid_and_replace_catch_up_only_the_newest_tick(policy: str) -> None:
    status = {"lastScheduleTime": k8s.format_time(T0)}
    plan = decide(body(status, concurrencyPolicy=policy, catchUp=3), T0 + 3 * STEP)
    assert names(plan) == [run_name("nightly", T0 + 3 * STEP)]
    skipped = [d for d in plan.decisions if d["decision"] == "Skipped"]
    assert len(skipped) == 2 and plan.status["missed"]["started"] == 1


def test_allow_starts_while_another_run_is_active() -> None:
    status = {"lastScheduleTime": k8s.format_time(T0)}
    plan = decide(body(status), T0 + STEP, [child(T0, "Running")])
    assert names(plan) == [run_name("nightly", T0 + STEP)]
    assert plan.status["active"] == [run_name("nightly", T0), run_name("nightly", T0 + STEP)]


# ---- history, suspend ----------------------------------------------------------------------------------------


def test_history_limits_delete_the_oldest_finished_runs() -> None:
    phases = ["Succeeded", "Failed", "Succeeded", "Failed", "Succeeded", "Running", "Succeeded"]
    runs = [child(T0 + i * STEP, p) for i, p in enumerate(phases)]
    status = {"lastScheduleTime": k8s.format_time(T0 + 6 * STEP)}
    plan = decide(body(status, successfulRunsHistoryLimit=2, failedRunsHistoryLimit=1), T0 + 6 * STEP, runs[::-1])
    deleted = [c.name for c in plan.delete]
    assert deleted == [run_name("nightly", T0), run_name("nightly", T0 + 2 * STEP), run_name("nightly", T0 + STEP)]
    assert plan.status["active"] == [run_name("nightly", T0 + 5 * STEP)]


def test_suspend_starts_nothing_and_clears_the_next_tick() -> None:
    status = {"lastScheduleTime": k8s.format_time(T0), "nextScheduleTime": k8s.format_time(T0 + STEP)}
    plan = decide(body(status, suspend=True), T0 + 4 * STEP)
    assert not plan.create and plan.requeue is None
    assert plan.status["nextScheduleTime"] is None
    assert plan.status["lastDecision"]["decision"] == "Suspended"
    again = decide(body({**status, **plan.status}, suspend=True), T0 + 5 * STEP)
    assert not again.events and "lastDecision" not in again.status


def test_resume_after_suspend_catches_up_like_downtime() -> None:
    status = {"lastScheduleTime": k8s.format_time(T0), "lastDecision": {"decision": "Suspended"}}
    plan = decide(body(status, catchUp=1), T0 + 4 * STEP + timedelta(seconds=1))
    assert names(plan) == [run_name("nightly", T0 + 4 * STEP)]
    assert plan.status["missed"]["count"] == 4


# ---- invalid specs --------------------------------------------------------------------------------------------


def test_an_unknown_time_zone_is_an_invalid_schedule_with_one_warning() -> None:
    plan = decide(body(timeZone="Mars/Olympus"), T0)
    assert not plan.create and plan.requeue is None
    ready = plan.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSchedule")
    assert "Mars/Olympus" in ready["message"] and "spec.timeZone" in ready["message"]
    assert [e.type for e in plan.events] == ["Warning"]
    again = decide(body({**plan.status}, timeZone="Mars/Olympus"), T0 + STEP)
    assert not again.events and not again.status


def test_a_cron_that_never_fires_is_refused() -> None:
    plan = decide(body(schedule="0 0 30 2 *"), T0)
    assert plan.status["lastDecision"]["reason"] == "InvalidSchedule"
    assert "never fires" in plan.status["lastDecision"]["message"]


def test_a_template_the_trainingrun_model_refuses_is_an_invalid_spec() -> None:
    """Rules only the models check (the API server's CEL cannot) still stop the schedule."""
    b = body()
    b["spec"]["runTemplate"]["spec"]["search"] = {
        "strategy": "grid", "parallelism": 4, "space": {"n_estimators": [10, 20]},
    }  # fmt: skip
    plan = decide(b, T0 + timedelta(seconds=1))
    assert not plan.create
    assert plan.status["conditions"][0]["reason"] == "InvalidSpec"
    assert "parallelism" in plan.status["conditions"][0]["message"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"schedule": "61 * * * *"}, "schedule"),
        ({"schedule": "* * *"}, "schedule"),
        ({"schedule": "@every 1s"}, "at least 10s"),
        ({"schedule": "@every 9s"}, "at least 10s"),
        ({"schedule": "@every 5 minutes"}, "schedule"),
        ({"timeZone": "not a zone"}, "timeZone"),
        ({"concurrencyPolicy": "Sometimes"}, "concurrencyPolicy"),
        ({"catchUp": -1}, "catchUp"),
    ],
)
def test_bad_schedule_specs_are_refused_by_the_model_naming_the_field(changes: dict[str, Any], field: str) -> None:
    spec = {**example()["spec"], **changes}
    with pytest.raises(ValidationError) as err:
        TrainingScheduleSpec.model_validate(spec)
    assert field in str(err.value)


def test_a_template_that_is_not_a_trainingrun_spec_is_refused_by_the_model() -> None:
    doc = example()
    doc["spec"]["runTemplate"]["spec"]["estimator"]["name"] = "nope"
    with pytest.raises(ValidationError) as err:
        TrainingSchedule.model_validate(doc)
    assert "runTemplate.spec.estimator.name" in ".".join(str(p) for p in err.value.errors()[0]["loc"]).replace(
        "run_template", "runTemplate"
    )


def test_the_example_and_the_kueue_queue_carry_into_the_child_run() -> None:
    doc = example()
    TrainingSchedule.model_validate(doc)
    b = body()
    b["spec"]["runTemplate"]["metadata"]["labels"][k8s.LABEL_QUEUE] = "team-a"
    b["spec"]["runTemplate"]["spec"]["queueName"] = "team-a"
    run = tsd.child_run(b, T0)
    assert run["metadata"]["labels"][k8s.LABEL_QUEUE] == "team-a"
    assert run["spec"]["queueName"] == "team-a"
