"""status.observe / build_status / status_patch: table-driven, no cluster."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from kubetrain_api.models import TrainingRun, TrainingRunStatus
from kubetrain_operator.trainingrun import status as st

from tests.unit.test_operator_jobs import make_run

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
T0 = "2026-01-01T11:59:00Z"


def job(*, conds: list[tuple[str, str]] | None = None, suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "iris-a151", "namespace": "ml", "creationTimestamp": T0},
        "spec": {"suspend": suspend},
        "status": {
            "startTime": T0,
            **status,
            "conditions": [
                {
                    "type": t,
                    "status": "True",
                    "reason": r,
                    "message": f"{t} {r}",
                    "lastTransitionTime": "2026-01-01T11:59:40Z",
                }
                for t, r in (conds or [])
            ],
        },
    }


def pod(
    phase: str = "Running",
    *,
    name: str = "iris-a151-abcde",
    exit_code: int | None = None,
    message: str = "",
    term_reason: str = "Error",
    waiting: str | None = None,
    unschedulable: bool = False,
    created: str = T0,
    index: str | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": term_reason, "message": message}}
    elif waiting:
        state = {"waiting": {"reason": waiting, "message": f"{waiting}: cannot pull"}}
    elif phase == "Running":
        state = {"running": {"startedAt": T0}}
    conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes"}]
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if index is not None:
        meta["annotations"] = {"batch.kubernetes.io/job-completion-index": index}
    return {
        "metadata": meta,
        "status": {
            "phase": phase,
            "conditions": conditions if unschedulable else [],
            "containerStatuses": [{"name": "trainer", "state": state}] if state else [],
        },
    }


OK_RESULT = json.dumps(
    {
        "outcome": "Succeeded",
        "reason": "Trained",
        "message": "trained",
        "exit_code": 0,
        "task": "classification",
        "primary_metric": "accuracy",
        "metrics": {"accuracy": 0.973684, "f1": 0.97},
        "model": {
            "uri": "pvc://kubetrain-models/iris/model.joblib",
            "sha256": "a" * 64,
            "size": 10,
            "format": "joblib",
        },
    }
)


def result(reason: str, code: int, message: str = "bad") -> str:
    return json.dumps({"outcome": "Failed", "reason": reason, "message": message, "exit_code": code})


def with_status(run: TrainingRun, **fields: Any) -> TrainingRun:
    return run.model_copy(update={"status": TrainingRunStatus.model_validate(fields)})


CASES: list[tuple[str, dict[str, Any], tuple[str, str]]] = [
    ("no job yet", {"job": None, "pods": []}, ("Pending", "PodPending")),
    ("pod pending", {"job": job(active=1), "pods": [pod("Pending")]}, ("Pending", "PodPending")),
    ("running", {"job": job(active=1), "pods": [pod("Running")]}, ("Running", "PodRunning")),
    (
        "pod done, job verdict not yet",
        {"job": job(active=0), "pods": [pod("Succeeded", exit_code=0, message=OK_RESULT)]},
        ("Running", "PodRunning"),
    ),
    (
        "succeeded",
        {"job": job(conds=[("Complete", "")], succeeded=1), "pods": [pod("Succeeded", exit_code=0, message=OK_RESULT)]},
        ("Succeeded", "Trained"),
    ),
    (
        "data invalid",
        {
            "job": job(conds=[("Failed", "PodFailurePolicy")], failed=1),
            "pods": [pod("Failed", exit_code=11, message=result("DataInvalid", 11))],
        },
        ("Failed", "DataInvalid"),
    ),
    (
        "below threshold, exit code only",
        {"job": job(conds=[("Failed", "PodFailurePolicy")], failed=1), "pods": [pod("Failed", exit_code=12)]},
        ("Failed", "BelowThreshold"),
    ),
    (
        "crash retried",
        {
            "job": job(conds=[("Failed", "BackoffLimitExceeded")], failed=2),
            "pods": [pod("Failed", exit_code=1, message="Traceback\nBoom")],
        },
        ("Failed", "BackoffLimitExceeded"),
    ),
    (
        "oom",
        {
            "job": job(conds=[("Failed", "BackoffLimitExceeded")], failed=1),
            "pods": [pod("Failed", exit_code=137, term_reason="OOMKilled")],
        },
        ("Failed", "OOMKilled"),
    ),
    (
        "deadline",
        {"job": job(conds=[("Failed", "DeadlineExceeded")], failed=1), "pods": []},
        ("Failed", "DeadlineExceeded"),
    ),
    ("suspended", {"job": job(suspend=True), "pods": [], "spec": {"suspend": True}}, ("Suspended", "Suspended")),
    ("queued", {"job": job(suspend=True), "pods": [], "spec": {"queueName": "team-a"}}, ("Queued", "Queued")),
    (
        "unschedulable before the deadline",
        {"job": job(active=1), "pods": [pod("Pending", unschedulable=True)], "spec": {"startupDeadlineSeconds": 600}},
        ("Pending", "Unschedulable"),
    ),
    (
        "unschedulable after the deadline",
        {"job": job(active=1), "pods": [pod("Pending", unschedulable=True)], "spec": {"startupDeadlineSeconds": 30}},
        ("Failed", "Unschedulable"),
    ),
    (
        "image pull after the deadline",
        {
            "job": job(active=1),
            "pods": [pod("Pending", waiting="ImagePullBackOff")],
            "spec": {"startupDeadlineSeconds": 30},
        },
        ("Failed", "ImagePullFailed"),
    ),
    (
        "nothing started after the deadline",
        {"job": job(active=1), "pods": [], "spec": {"startupDeadlineSeconds": 30}},
        ("Failed", "StartupDeadlineExceeded"),
    ),
    ("job deleted mid-run", {"job": None, "pods": [], "prev": {"jobName": "iris-a151"}}, ("Failed", "JobDeleted")),
]


@pytest.mark.parametrize(("case", "given", "expected"), CASES, ids=[c[0] for c in CASES])
def test_observe(case: str, given: dict[str, Any], expected: tuple[str, str]) -> None:
    run = make_run(**given.get("spec", {}))
    if "prev" in given:
        run = with_status(run, **given["prev"])
    outcome = st.observe(run, given["job"], given["pods"], NOW)
    assert (outcome.phase, outcome.reason) == expected, outcome.message


def test_queued_message_carries_kueues_reason_and_no_deadline_runs() -> None:
    run = make_run(queueName="team-a", startupDeadlineSeconds=30)
    later = NOW + dt.timedelta(hours=3)  # far past the start-up deadline: queue waits are not start-up failures
    plain = st.observe(run, job(suspend=True), [], later)
    assert (plain.phase, plain.message) == ("Queued", "waiting for admission by queue team-a")
    why = "couldn't assign flavors to pod set main:\n insufficient quota for cpu in flavor default, " + "x" * 2000
    detailed = st.observe(run, job(suspend=True), [], later, why)
    assert detailed.phase == "Queued" and not detailed.delete_job
    assert detailed.message.startswith("waiting for admission by queue team-a: couldn't assign flavors")
    assert "\n" not in detailed.message and len(detailed.message) < 700
    # A run the user suspended is Suspended, whatever Kueue says.
    suspended = st.observe(make_run(queueName="team-a", suspend=True), job(suspend=True), [], later, why)
    assert suspended.phase == "Suspended"


def test_startup_deadline_asks_for_a_recheck_and_deletion() -> None:
    run = make_run(startupDeadlineSeconds=100)
    waiting = st.observe(run, job(active=1), [pod("Pending", unschedulable=True)], NOW)
    assert waiting.recheck_after == pytest.approx(40.5) and not waiting.delete_job
    failed = st.observe(run, job(active=1), [pod("Pending", unschedulable=True)], NOW + dt.timedelta(seconds=41))
    assert failed.phase == "Failed" and failed.delete_job


def test_indexed_job_reads_result_of_index_zero() -> None:
    other = json.dumps({"outcome": "Succeeded", "reason": "TrialsCompleted", "message": "share"})
    pods = [
        pod("Succeeded", name="a", exit_code=0, message=other, index="1", created="2026-01-01T11:59:30Z"),
        pod("Succeeded", name="b", exit_code=0, message=OK_RESULT, index="0"),
    ]
    outcome = st.observe(make_run(), job(conds=[("Complete", "")], succeeded=2), pods, NOW)
    assert outcome.result is not None and outcome.result.reason == "Trained"


def build(run: TrainingRun, given: dict[str, Any], current: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    outcome = st.observe(run, given["job"], given["pods"], NOW)
    return st.build_status(run, 3, outcome, current or {}, NOW, job_name="iris-a151", **kw)


def test_succeeded_status() -> None:
    given = dict(CASES[4][1])
    s = build(make_run(), given, model_version="iris-v1")
    assert s["phase"] == "Succeeded" and s["observedGeneration"] == 3
    assert s["primaryMetric"] == "accuracy=0.9737"
    assert s["model"]["sha256"] == "a" * 64 and s["modelVersion"] == "iris-v1"
    assert s["startTime"] == T0 and s["completionTime"] == "2026-01-01T11:59:40Z" and s["duration"] == "40s"
    assert s["progress"] == {"step": "done", "percent": 100}
    conds = {c["type"]: c for c in s["conditions"]}
    assert conds["Succeeded"]["status"] == "True" and conds["Succeeded"]["observedGeneration"] == 3
    assert conds["Running"]["status"] == "False" and conds["Registered"]["status"] == "True"
    assert "failure" not in s


def test_failed_status_carries_exit_code_and_log_tail() -> None:
    s = build(make_run(), dict(CASES[7][1]))
    assert s["phase"] == "Failed"
    assert s["failure"]["reason"] == "BackoffLimitExceeded" and s["failure"]["exitCode"] == 1
    assert "Boom" in s["failure"]["logTail"]
    conds = {c["type"]: c for c in s["conditions"]}
    assert conds["Succeeded"]["status"] == "False" and conds["Succeeded"]["reason"] == "BackoffLimitExceeded"


def test_in_progress_summary_is_unknown() -> None:
    s = build(make_run(), dict(CASES[2][1]), progress={"step": "train", "percent": 40})
    conds = {c["type"]: c for c in s["conditions"]}
    assert conds["Succeeded"]["status"] == "Unknown" and conds["Running"]["status"] == "True"
    assert s["progress"] == {"step": "train", "percent": 40}


def test_status_is_stable_so_nothing_is_rewritten() -> None:
    given = dict(CASES[2][1])
    first = build(make_run(), given)
    later = st.build_status(
        make_run(),
        3,
        st.observe(make_run(), given["job"], given["pods"], NOW + dt.timedelta(minutes=5)),
        first,
        NOW + dt.timedelta(minutes=5),
        job_name="iris-a151",
    )
    assert st.status_patch(first, later) == {}


def test_transition_time_moves_only_on_flip() -> None:
    running = build(make_run(), dict(CASES[2][1]))
    done_outcome = st.observe(make_run(), CASES[4][1]["job"], CASES[4][1]["pods"], NOW)
    done = st.build_status(make_run(), 3, done_outcome, running, NOW + dt.timedelta(minutes=1), job_name="iris-a151")
    before = {c["type"]: c["lastTransitionTime"] for c in running["conditions"]}
    after = {c["type"]: c["lastTransitionTime"] for c in done["conditions"]}
    assert after["JobCreated"] == before["JobCreated"]
    assert after["Succeeded"] != before["Succeeded"]


@pytest.mark.parametrize(
    ("current", "desired", "patch"),
    [
        ({}, {"phase": "Pending"}, {"phase": "Pending"}),
        ({"phase": "Pending"}, {"phase": "Pending"}, {}),
        (
            {"phase": "Running", "progress": {"step": "x", "percent": 1}},
            {"phase": "Failed"},
            {"phase": "Failed", "progress": None},
        ),
    ],
)
def test_status_patch(current: dict[str, Any], desired: dict[str, Any], patch: dict[str, Any]) -> None:
    assert st.status_patch(current, desired) == patch


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.6, "1m0s"), (61, "1m1s"), (3725, "1h2m5s")])
def test_format_duration(seconds: float, text: str) -> None:
    assert st.format_duration(seconds) == text


def test_invalid_status() -> None:
    s = st.invalid_status(2, "spec.resources.gpus (20) exceeds the maximum 16", {}, NOW)
    assert s["phase"] == "Failed" and s["failure"]["reason"] == "ConfigInvalid"
    assert {c["type"]: c["status"] for c in s["conditions"]} == {"Running": "False", "Succeeded": "False"}
    TrainingRunStatus.model_validate(s)


def test_built_status_fits_the_typed_api() -> None:
    """Every derived status parses through the typed API (so the CRD keeps every field) unchanged."""
    for label, given, _ in CASES:
        run = make_run(**given.get("spec", {}))
        built = build(run, given, model_version="iris-v1")
        parsed = TrainingRunStatus.model_validate(built)
        assert parsed.phase == built["phase"], label
        assert parsed.dump() == built, label


def test_registration_failure_is_visible_but_the_run_succeeded() -> None:
    s = build(make_run(), dict(CASES[4][1]), registration_error="creating the ModelVersion failed: boom")
    conds = {c["type"]: c for c in s["conditions"]}
    assert s["phase"] == "Succeeded" and conds["Succeeded"]["status"] == "True"
    assert conds["Registered"]["status"] == "False" and conds["Registered"]["reason"] == "RegistrationFailed"


def _tracked_pods(tracking: dict[str, Any], reason: str = "Trained", exit_code: int = 0) -> dict[str, Any]:
    result = {"outcome": "Succeeded" if exit_code == 0 else "Failed", "reason": reason, "exit_code": exit_code}
    result |= {"metrics": {"accuracy": 0.97}, "tracking": tracking}
    phase = "Succeeded" if exit_code == 0 else "Failed"
    return {"pods": [pod(phase, exit_code=exit_code, message=json.dumps(result))]}


def test_tracked_run_carries_status_tracking_and_a_true_tracked_condition() -> None:
    info = {"tracked": True, "run_id": "ab" * 16, "experiment_id": "7", "url": "http://mlflow:5000/#/x"}
    given = {"job": job(conds=[("Complete", "")], succeeded=1), **_tracked_pods(info | {"reason": "Logged"})}
    s = build(make_run(), given)
    assert s["phase"] == "Succeeded"
    assert s["tracking"] == {"mlflowRunId": "ab" * 16, "experimentId": "7", "url": "http://mlflow:5000/#/x"}
    tracked = {c["type"]: c for c in s["conditions"]}["Tracked"]
    assert tracked["status"] == "True" and tracked["reason"] == "Logged"
    TrainingRunStatus.model_validate(s)  # every field is declared in the CRD's status schema
    # the status is kept when a later reconcile has no result (the Job is gone)
    again = st.build_status(make_run(), 3, st.observe(make_run(), None, [], NOW), s, NOW, job_name=None)
    assert again.get("tracking") == s["tracking"]
    assert [c for c in again["conditions"] if c["type"] == "Tracked"] == [tracked]


def test_mlflow_down_leaves_the_run_succeeded_with_tracked_false_and_the_reason() -> None:
    info = {"tracked": False, "reason": "MlflowUnreachable", "message": "MLflow at http://mlflow:5000 is unreachable"}
    given = {"job": job(conds=[("Complete", "")], succeeded=1), **_tracked_pods(info)}
    s = build(make_run(), given)
    assert s["phase"] == "Succeeded" and "tracking" not in s
    tracked = {c["type"]: c for c in s["conditions"]}["Tracked"]
    assert tracked["status"] == "False" and tracked["reason"] == "MlflowUnreachable"
    assert "unreachable" in tracked["message"]


def test_untracked_run_has_no_tracked_condition() -> None:
    s = build(make_run(), dict(CASES[4][1]))
    assert "tracking" not in s and "Tracked" not in {c["type"] for c in s["conditions"]}
