"""TrainingSchedule gates (``spec.when``) in the pure ``decide`` with a fake clock: one gate Job per tick
(adopted after a crash, never a second), its verdict (DataUnchanged, NoDrift, GateFailed, or the run), the
gate Job's shape, its cleanup only after the decision is stored, and the model's refusals."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from kubetrain_api.models import TrainingScheduleSpec, WhenSpec
from kubetrain_operator import k8s
from kubetrain_operator.engine import Child
from kubetrain_operator.trainingschedule import decide as tsd
from kubetrain_operator.trainingschedule import gates
from kubetrain_operator.trainingschedule.schedule import run_name
from kubetrain_trainer import contract
from pydantic import ValidationError

from tests.unit.test_schedule_decide import SETTINGS, STEP, T0, UID, body, child

TICK = k8s.format_time(T0)
JOB = gates.gate_job_name("nightly", T0)
FP = "sha256:" + "a" * 64 + ";size=4600"
OTHER_FP = "sha256:" + "b" * 64 + ";size=4601"
SHA = "c" * 64
DATA_CHANGED = {"dataChanged": True}
DRIFT = {"drift": {"threshold": 0.2, "against": "production"}}


def version(alias: str = "production") -> dict[str, Any]:
    return {
        "metadata": {"name": "iris-v3", "namespace": "ns"},
        "spec": {"model": "iris", "artifact": {"uri": "pvc://kubetrain-models/iris-1/model.joblib", "sha256": SHA}},
        "status": {"aliases": [alias]},
    }


def succeeded(tick: Any, fingerprint: str | None) -> dict[str, Any]:
    run = child(tick, "Succeeded")
    if fingerprint:
        run["status"]["datasetFingerprint"] = fingerprint
    return run


def result(gate: contract.GateReport | None, reason: str = "GateChecked", exit_code: int = 0) -> str:
    outcome = "Succeeded" if exit_code == 0 else "Failed"
    return contract.Result(outcome, reason, message="m", exit_code=exit_code, gate=gate).to_json()


def finished(state: str = k8s.JOB_SUCCEEDED, message: str = "", name: str = JOB) -> gates.GateJob:
    return gates.GateJob(name, state, message, TICK)


def decide(
    when: dict[str, Any],
    now: Any,
    status: dict[str, Any] | None = None,
    runs: list[dict[str, Any]] = (),  # type: ignore[assignment]
    jobs: list[gates.GateJob] = (),  # type: ignore[assignment]
    versions: list[dict[str, Any]] = (),  # type: ignore[assignment]
    **spec: Any,
) -> tsd.SchedulePlan:
    facts = tsd.ScheduleFacts(
        body=body(status, when=when, **spec),
        runs=list(runs),
        gate_jobs={j.name: j for j in jobs},
        versions=list(versions),
    )
    return tsd.decide(facts, SETTINGS, now)


def pending(started: Any = T0) -> dict[str, Any]:
    """The status after the tick's gate Job was started."""
    return {
        "lastScheduleTime": TICK,
        "gate": {"tick": TICK, "job": JOB, "started": k8s.format_time(started)},
    }


# ---- starting the gate --------------------------------------------------------------------------------------------


def test_a_gated_tick_starts_one_gate_job_not_the_run() -> None:
    plan = decide(DATA_CHANGED, T0 + timedelta(seconds=1))
    assert [m["kind"] for m in plan.create] == ["Job"]
    job = plan.create[0]
    assert job["metadata"]["name"] == JOB == "nightly-1796119200-gate"
    assert plan.status["gate"] == {"tick": TICK, "job": JOB, "started": k8s.format_time(T0 + timedelta(seconds=1))}
    assert plan.status["lastScheduleTime"] == TICK
    assert "lastDecision" not in plan.status and not plan.decisions  # decided once the gate reported
    assert [e.reason for e in plan.events] == ["GateStarted"]


def test_the_gate_job_runs_the_gate_command_in_the_templates_pod() -> None:
    plan = decide(DRIFT, T0 + timedelta(seconds=1), versions=[version()])
    job = plan.create[0]
    meta, spec = job["metadata"], job["spec"]
    assert meta["labels"][k8s.LABEL_COMPONENT] == k8s.COMPONENT_GATE in k8s.CHILD_COMPONENTS
    assert meta["labels"][gates.LABEL_SCHEDULE] == "nightly"
    assert meta["ownerReferences"][0]["kind"] == "TrainingSchedule" and meta["ownerReferences"][0]["uid"] == UID
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, gates.GATE_DEADLINE_SECONDS)
    assert "suspend" not in spec  # never queued: a gate is one short pod
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == gates.GATE_CONTAINER and container["command"] == list(contract.GATE_COMMAND)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[contract.ENV_DRIFT_REFERENCE_NAME] == "iris-v3"
    assert env[contract.ENV_DRIFT_REFERENCE_SHA256] == SHA
    assert env[contract.ENV_DRIFT_REFERENCE_URI] == "pvc://kubetrain-models/iris-1/model.joblib"
    assert env[contract.ENV_DATASET_PATH].endswith("/kubetrain-data/iris.csv")
    assert not any(k.startswith("KUBETRAIN_CHAMPION_") for k in env)
    config = json.loads(env[contract.ENV_CONFIG] or "{}")
    assert config["metadata"]["name"] == run_name("nightly", T0) and config["spec"]["dataset"]["target"] == "species"
    cpu = next(e for e in container["env"] if e["name"] == contract.ENV_CPU_LIMIT)
    assert cpu["valueFrom"]["resourceFieldRef"]["containerName"] == gates.GATE_CONTAINER
    claims = sorted(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claims == ["kubetrain-data", "kubetrain-models"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_a_gate_job_made_before_a_crash_is_adopted_not_started_again() -> None:
    running = finished(k8s.JOB_RUNNING)
    plan = decide(DATA_CHANGED, T0 + timedelta(seconds=2), jobs=[running])
    assert not plan.create and plan.status["gate"]["job"] == JOB and not plan.delete


def test_a_tick_due_while_a_gate_runs_is_skipped_gate_pending() -> None:
    plan = decide(DATA_CHANGED, T0 + STEP + timedelta(seconds=1), pending(), jobs=[finished(k8s.JOB_RUNNING)])
    assert not plan.create
    assert plan.status["lastDecision"]["reason"] == gates.R_GATE_PENDING
    assert "gate" not in plan.status  # unchanged: still waiting for the first tick's gate


def test_drift_alone_without_a_version_holding_the_alias_trains_without_a_gate_pod() -> None:
    plan = decide(DRIFT, T0 + timedelta(seconds=1), versions=[version("candidate")])
    assert [m["kind"] for m in plan.create] == ["TrainingRun"]
    assert plan.status["lastDecision"]["reason"] == gates.R_NO_BASELINE
    assert "holds alias production" in plan.status["lastDecision"]["message"]


def test_forbid_skips_before_any_gate_pod() -> None:
    plan = decide(
        DATA_CHANGED, T0 + timedelta(seconds=1), runs=[child(T0 - STEP, "Running")], concurrencyPolicy="Forbid"
    )
    assert not plan.create and plan.status["lastDecision"]["reason"] == tsd.R_FORBID


# ---- the verdict --------------------------------------------------------------------------------------------------


def test_an_unchanged_dataset_skips_with_data_unchanged() -> None:
    job = finished(message=result({"fingerprint": FP}))
    plan = decide(DATA_CHANGED, T0 + timedelta(seconds=5), pending(), [succeeded(T0 - STEP, FP)], [job])
    assert not plan.create
    last = plan.status["lastDecision"]
    assert (last["decision"], last["reason"], last["tick"]) == ("Skipped", "DataUnchanged", TICK)
    assert last["gate"] == {
        "job": JOB, "fingerprint": FP, "previousFingerprint": FP, "previousRun": run_name("nightly", T0 - STEP),
    }  # fmt: skip
    assert plan.status["gate"] is None  # the merge patch removes status.gate
    assert [e.reason for e in plan.events] == ["DataUnchanged"] and plan.events[0].type == "Normal"
    assert not plan.delete  # the Job goes once this decision is stored
    assert plan.decisions[-1]["reason"] == "DataUnchanged"


def test_a_changed_dataset_starts_the_ticks_run() -> None:
    job = finished(message=result({"fingerprint": OTHER_FP}))
    plan = decide(DATA_CHANGED, T0 + timedelta(seconds=5), pending(), [succeeded(T0 - STEP, FP)], [job])
    assert [m["metadata"]["name"] for m in plan.create] == [run_name("nightly", T0)]
    last = plan.status["lastDecision"]
    assert (last["decision"], last["reason"], last["run"]) == ("Started", "DataChanged", run_name("nightly", T0))
    assert last["gate"]["fingerprint"] == OTHER_FP and "differs" in last["message"]


def test_the_newest_successful_run_with_a_fingerprint_is_the_baseline() -> None:
    runs = [succeeded(T0 - 3 * STEP, OTHER_FP), succeeded(T0 - 2 * STEP, FP), child(T0 - STEP, "Failed")]
    assert gates.last_fingerprint(sorted(runs, key=tsd.tick_of)) == (FP, run_name("nightly", T0 - 2 * STEP))
    assert gates.last_fingerprint([child(T0, "Succeeded")]) == (None, None)


def test_no_successful_run_yet_trains_no_baseline() -> None:
    job = finished(message=result({"fingerprint": FP}))
    plan = decide(DATA_CHANGED, T0 + timedelta(seconds=5), pending(), [child(T0 - STEP, "Failed")], [job])
    assert len(plan.create) == 1 and plan.status["lastDecision"]["reason"] == gates.R_NO_BASELINE


def drift_report(max_psi: float) -> contract.GateReport:
    return {
        "fingerprint": FP,
        "drift": {
            "against": "iris-v3", "max_psi": max_psi, "rows": 150,
            "top": [{"feature": "petal_length", "psi": max_psi}, {"feature": "sepal_width", "psi": 0.01}],
        },
    }  # fmt: skip


def test_no_drift_skips_with_the_psi_and_top_features() -> None:
    job = finished(message=result(drift_report(0.05)))
    plan = decide(DRIFT, T0 + timedelta(seconds=5), pending(), jobs=[job], versions=[version()])
    last = plan.status["lastDecision"]
    assert (last["decision"], last["reason"]) == ("Skipped", "NoDrift")
    gate = last["gate"]
    assert (gate["maxPsi"], gate["threshold"], gate["against"]) == (0.05, 0.2, "iris-v3")
    assert gate["top"][0] == {"feature": "petal_length", "psi": 0.05}
    assert "below the threshold 0.2" in last["message"] and "petal_length=0.05" in last["message"]


def test_drift_above_the_threshold_trains() -> None:
    job = finished(message=result(drift_report(1.7)))
    plan = decide(DRIFT, T0 + timedelta(seconds=5), pending(), jobs=[job], versions=[version()])
    assert len(plan.create) == 1
    last = plan.status["lastDecision"]
    assert (last["decision"], last["reason"], last["gate"]["maxPsi"]) == ("Started", "Drifted", 1.7)


def test_both_gates_must_pass() -> None:
    both = {**DATA_CHANGED, **DRIFT}
    runs = [succeeded(T0 - STEP, OTHER_FP)]
    no_drift = finished(message=result(drift_report(0.01)))
    plan = decide(both, T0 + timedelta(seconds=5), pending(), runs, [no_drift], [version()])
    assert not plan.create and plan.status["lastDecision"]["reason"] == "NoDrift"
    drifted = finished(message=result(drift_report(0.9)))
    plan = decide(both, T0 + timedelta(seconds=5), pending(), runs, [drifted], [version()])
    assert len(plan.create) == 1 and plan.status["lastDecision"]["reason"] == "Drifted"


def test_a_reference_without_a_profile_trains_and_says_why() -> None:
    job = finished(message=result({"fingerprint": FP, "problem": "reference iris-v3 has no feature profile"}))
    plan = decide(DRIFT, T0 + timedelta(seconds=5), pending(), jobs=[job], versions=[version()])
    assert len(plan.create) == 1
    assert plan.status["lastDecision"]["reason"] == gates.R_NO_BASELINE
    assert "no feature profile" in plan.status["lastDecision"]["message"]


@pytest.mark.parametrize(
    "job",
    [
        finished(k8s.JOB_FAILED, result(None, "DataInvalid", 11).replace('"message":"m"', '"message":"column x"')),
        finished(k8s.JOB_FAILED, "Traceback: boom"),
        finished(k8s.JOB_SUCCEEDED, ""),
        None,
    ],
    ids=["data-invalid", "crash", "no-result", "job-gone"],
)
def test_a_failed_gate_skips_with_a_warning_and_does_not_train(job: gates.GateJob | None) -> None:
    plan = decide(DATA_CHANGED, T0 + timedelta(seconds=5), pending(), jobs=[job] if job else [])
    assert not plan.create
    last = plan.status["lastDecision"]
    assert (last["decision"], last["reason"]) == ("Skipped", "GateFailed")
    assert plan.events[-1].type == "Warning" and plan.status["gate"] is None
    if job is not None and job.state == k8s.JOB_FAILED and "11" in job.message:
        assert "DataInvalid: column x" in last["message"]


def test_a_run_already_created_for_the_pending_tick_is_adopted() -> None:
    job = finished(message=result({"fingerprint": OTHER_FP}))
    plan = decide(DATA_CHANGED, T0 + timedelta(seconds=5), pending(), [child(T0)], [job])
    assert not plan.create and plan.status["gate"] is None
    assert plan.status["lastDecision"]["run"] == run_name("nightly", T0)


def test_a_still_running_gate_keeps_waiting() -> None:
    plan = decide(DATA_CHANGED, T0 + timedelta(seconds=5), pending(), jobs=[finished(k8s.JOB_RUNNING)])
    assert not plan.create and not plan.delete and "gate" not in plan.status  # unchanged


def test_finished_gate_jobs_are_deleted_once_their_decision_is_stored() -> None:
    status = {"lastScheduleTime": TICK}  # decided: status.gate is gone
    plan = decide(DATA_CHANGED, T0 + timedelta(seconds=6), status, jobs=[finished()])
    assert plan.delete == [Child("Job", "ns", JOB)]


def test_suspend_keeps_a_pending_gate_and_starts_no_run() -> None:
    job = finished(message=result({"fingerprint": OTHER_FP}))
    plan = decide(DATA_CHANGED, T0 + timedelta(seconds=5), pending(), jobs=[job], suspend=True)
    assert not plan.create and "gate" not in plan.status


# ---- the API model --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "field"),
    [
        ({"drift": {"threshold": 0, "against": "production"}}, "threshold"),
        ({"drift": {"threshold": -0.1, "against": "production"}}, "threshold"),
        ({"drift": {"threshold": 0.2}}, "against"),
        ({"drift": {"threshold": 0.2, "against": "Prod_1"}}, "against"),
        ({"dataChanged": "sometimes"}, "dataChanged"),
        ({"dataChange": True}, "dataChange"),
    ],
)
def test_bad_gates_are_refused_by_the_model_naming_the_field(when: dict[str, Any], field: str) -> None:
    spec = body(when=when)["spec"]
    with pytest.raises(ValidationError) as err:
        TrainingScheduleSpec.model_validate(spec)
    assert field in str(err.value)


def test_gates_parse() -> None:
    when = WhenSpec.model_validate({"dataChanged": True, "drift": {"threshold": 0.25, "against": "production"}})
    assert when.data_changed and when.drift is not None and when.drift.threshold == 0.25
    assert gates.has_gates(when) and not gates.has_gates(WhenSpec()) and not gates.has_gates(None)


# ---- what gather looks up, what the run records, the gauge ----------------------------------------------------


def test_gather_looks_up_the_due_ticks_and_the_pending_ticks_names() -> None:
    b = body(pending(), when=DATA_CHANGED)
    assert tsd.names_to_check(b, T0 + STEP + timedelta(seconds=1)) == [
        run_name("nightly", T0 + STEP), run_name("nightly", T0),
    ]  # fmt: skip
    assert tsd.names_to_check(body(), T0 - timedelta(seconds=1)) == []
    assert tsd.names_to_check(body(schedule="@every 1s"), T0) == []  # invalid: nothing is created


def test_a_pending_tick_whose_name_someone_else_holds_is_skipped() -> None:
    job = finished(message=result({"fingerprint": OTHER_FP}))
    b = body(pending(), when=DATA_CHANGED)
    facts = tsd.ScheduleFacts(body=b, runs=[], taken={run_name("nightly", T0)}, gate_jobs={JOB: job})
    plan = tsd.decide(facts, SETTINGS, T0 + timedelta(seconds=5))
    assert not plan.create and plan.status["lastDecision"]["reason"] == tsd.R_NAME_TAKEN


def test_a_succeeded_run_records_the_dataset_source_fingerprint() -> None:
    from kubetrain_operator.trainingrun import status as st

    from tests.unit.test_operator_jobs import make_run
    from tests.unit.test_operator_status import NOW, OK_RESULT, job, pod

    trained = json.loads(OK_RESULT) | {"dataset": {"uri": "pvc://kubetrain-data/iris.csv", "source": FP}}
    given = {"job": job(conds=[("Complete", "")], succeeded=1),
             "pods": [pod("Succeeded", exit_code=0, message=json.dumps(trained))]}  # fmt: skip
    run = make_run()
    s = st.build_status(run, 3, st.observe(run, given["job"], given["pods"], NOW), {}, NOW, job_name="iris-a151")
    assert s["phase"] == "Succeeded" and s["datasetFingerprint"] == FP
    failed = json.loads(OK_RESULT) | {"outcome": "Failed", "reason": "BelowThreshold", "exit_code": 12}
    failed["dataset"] = trained["dataset"]
    given = {"job": job(conds=[("Failed", "PodFailurePolicy")], failed=1),
             "pods": [pod("Failed", exit_code=12, message=json.dumps(failed))]}  # fmt: skip
    s = st.build_status(run, 3, st.observe(run, given["job"], given["pods"], NOW), {}, NOW, job_name="iris-a151")
    assert s["phase"] == "Failed" and "datasetFingerprint" not in s  # only a successful run is a baseline


def test_the_drift_gauge_holds_max_and_the_top_features_only() -> None:
    from kubetrain_operator.trainingschedule import handlers
    from prometheus_client import REGISTRY

    def series() -> dict[str, float]:
        out = {}
        for metric in REGISTRY.collect():
            if metric.name == "kubetrain_model_drift_psi":
                for sample in metric.samples:
                    if sample.labels["schedule"] == "gauge-test":
                        out[sample.labels["feature"]] = sample.value
        return out

    top = [{"feature": f"f{i}", "psi": 1.0 - i / 10} for i in range(6)]
    handlers._set_drift("ns", "gauge-test", {"maxPsi": 1.0, "top": top})
    assert series() == {"max": 1.0, "f0": 1.0, "f1": 0.9, "f2": 0.8}
    handlers._set_drift("ns", "gauge-test", {"maxPsi": 0.05, "top": [{"feature": "g", "psi": 0.05}]})
    assert series() == {"max": 0.05, "g": 0.05}  # the older features' series are gone
    handlers.TrainingScheduleReconciler().forget("ns", "gauge-test")
    assert series() == {}
