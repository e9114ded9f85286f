"""The operator end to end on the real control plane: TrainingRun → Job → pod → status → ModelVersion."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import REPO, wait_until

from .conftest import DATA_CLAIM, MODELS_CLAIM, Operator, Workspace, iris_frame, iris_run

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def _cond(run: dict, ctype: str) -> dict:
    return next(c for c in run["status"]["conditions"] if c["type"] == ctype)


def _event_reasons(ws: Workspace, name: str, until: str, timeout: float = 20) -> dict[str, str]:
    """Event reason → type of the run's Events, polled until ``until`` is among them (Events are async)."""
    deadline = time.monotonic() + timeout
    while True:
        selector = f"involvedObject.kind=TrainingRun,involvedObject.name={name}"
        reasons = {e["reason"]: e["type"] for e in ws.get("events", "--field-selector", selector)["items"]}
        if until in reasons or time.monotonic() > deadline:
            return reasons
        time.sleep(0.5)


def _quiet(ws: Workspace, name: str, seconds: float = 4) -> None:
    """No storm: the finished run is not written again."""
    rv = ws.run(name)["metadata"]["resourceVersion"]
    time.sleep(seconds)
    assert ws.run(name)["metadata"]["resourceVersion"] == rv, "the finished run is still being written"


# The write budgets below count the transitions; progress updates (one per KUBETRAIN_PROGRESS_INTERVAL while a
# real container trains, so as many as the machine is slow) are switched off for them.
NO_PROGRESS = {"KUBETRAIN_PROGRESS_INTERVAL": "3600"}


def test_iris_succeeds_in_restricted_namespace(workspace: Workspace, operator_factory: Callable[..., Operator]) -> None:
    ws = workspace
    operator = operator_factory(**NO_PROGRESS)
    ws.cluster.kubectl("label", "namespace", ws.namespace, "pod-security.kubernetes.io/enforce=restricted")
    t0 = time.monotonic()
    ws.kubectl("apply", "-f", str(REPO / "examples" / "iris-classification.yaml"))
    ws.wait_phase("iris", ("Running", "Succeeded"), timeout=60)
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/iris", "--timeout=90s")
    elapsed = time.monotonic() - t0
    print(f"iris: apply → Succeeded in {elapsed:.1f}s")
    run = ws.run("iris")
    st = run["status"]
    assert st["phase"] == "Succeeded"
    assert st["observedGeneration"] == run["metadata"]["generation"]
    assert _cond(run, "Succeeded")["status"] == "True" and _cond(run, "Succeeded")["reason"] == "Trained"
    assert st["primaryMetric"].startswith("accuracy=")
    assert st["metrics"]["accuracy"] >= 0.85
    assert st["attempts"] == 1 and st["jobName"].startswith("iris-") and st["duration"]
    # kubectl get tr shows phase and metric
    table = ws.kubectl("get", "tr", "iris").stdout
    assert "Succeeded" in table and "accuracy=" in table
    # the model file exists with the recorded sha256
    assert st["model"]["uri"] == "pvc://kubetrain-models/iris/model.joblib"
    model = ws.claim_dir(MODELS_CLAIM) / "iris" / "model.joblib"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == st["model"]["sha256"]
    # the ModelVersion exists, no ownerReference, lineage recorded
    mv = ws.get("modelversion", st["modelVersion"])
    assert mv["spec"]["model"] == "iris" and mv["spec"]["version"] == 1
    assert mv["spec"]["artifact"]["sha256"] == st["model"]["sha256"]
    assert mv["spec"]["source"]["trainingRun"] == {"name": "iris", "uid": run["metadata"]["uid"]}
    assert mv["spec"]["aliases"] == ["candidate"]
    assert mv["metadata"]["labels"]["kubetrain.io/run-uid"] == run["metadata"]["uid"]
    assert not mv["metadata"].get("ownerReferences")
    # admitted under the restricted Pod Security profile: one pod, no FailedCreate
    assert len(ws.pods("iris")) == 1
    job = ws.jobs("iris")[0]
    assert not [c for c in job["status"].get("conditions", []) if c["type"] == "FailedCreate"]
    events = ws.kubectl("get", "events", "--field-selector", "reason=FailedCreate").stdout
    assert "FailedCreate" not in events
    # Events on the run for each transition: Pending (which names the Job it created), ..., Trained (Normal)
    reasons = _event_reasons(ws, "iris", until="Trained")
    assert reasons.get("PodPending") == "Normal" and reasons.get("Trained") == "Normal", reasons
    selector = "involvedObject.kind=TrainingRun,involvedObject.name=iris,reason=PodPending"
    (first,) = ws.get("events", "--field-selector", selector)["items"]
    assert first["message"].startswith(f"created trainer Job {st['jobName']}; Pending: "), first["message"]
    assert "JobCreated" not in reasons, reasons  # one Event for the Job and the first phase, not two
    # no kopf annotations / finalizers on the run; few status writes
    assert not run["metadata"].get("finalizers")
    assert not [a for a in run["metadata"].get("annotations", {}) if "kopf" in a]
    writes = operator.metric("kubetrain_status_writes_total", kind="TrainingRun")
    print(f"iris: {writes:.0f} status writes")
    assert writes <= 5
    _quiet(ws, "iris")


def test_run_created_model_version_carries_the_datasets_signature(workspace: Workspace, operator: Operator) -> None:
    """spec.signature of a run-created ModelVersion: the feature columns with their pandas dtypes, the target."""
    import pandas as pd

    ws = workspace
    ws.apply(iris_run("signed"))
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/signed", "--timeout=90s")
    mv = ws.get("modelversion", ws.run("signed")["status"]["modelVersion"])
    frame = pd.read_csv(ws.claim_dir(DATA_CLAIM) / "iris.csv")
    features = [{"name": c, "dtype": str(frame[c].dtype)} for c in frame.columns if c != "species"]
    assert mv["spec"]["signature"] == {"features": features, "target": "species"}


def test_xgboost_run_trains_and_registers(workspace: Workspace, operator: Operator) -> None:
    """The optional xgboost estimator through the whole path (Job → pod → status → ModelVersion), on CPU."""
    ws = workspace
    ws.apply(iris_run("iris-xgb", estimator={"name": "xgboost", "params": {"n_estimators": 30, "max_depth": 3}}))
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/iris-xgb", "--timeout=90s")
    st = ws.run("iris-xgb")["status"]
    assert st["metrics"]["accuracy"] >= 0.85
    mv = ws.get("modelversion", st["modelVersion"])
    assert mv["spec"]["source"]["estimator"] == "xgboost"


def test_bad_dataset_fails_data_invalid_with_one_pod(
    workspace: Workspace, operator_factory: Callable[..., Operator]
) -> None:
    ws = workspace
    operator = operator_factory(**NO_PROGRESS)
    ws.write_csv("small.csv", iris_frame().head(20))
    ws.apply(iris_run("bad-data", dataset={"uri": "pvc://kubetrain-data/small.csv", "target": "species"}))
    run = ws.wait_phase("bad-data", ("Failed", "Succeeded"))
    failure = run["status"]["failure"]
    assert run["status"]["phase"] == "Failed" and failure["reason"] == "DataInvalid", failure
    assert failure["exitCode"] == 11 and failure["message"]
    assert _cond(run, "Succeeded")["status"] == "False"
    assert len(ws.pods("bad-data")) == 1
    reasons = _event_reasons(ws, "bad-data", until="DataInvalid")
    assert reasons.get("DataInvalid") == "Warning", reasons
    _quiet(ws, "bad-data")
    assert len(ws.pods("bad-data")) == 1
    assert operator.metric("kubetrain_status_writes_total", kind="TrainingRun") <= 5


def test_below_threshold(workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    frame = iris_frame()
    frame["species"] = frame["species"].sample(frac=1.0, random_state=1).to_numpy()  # labels carry no signal
    ws.write_csv("noise.csv", frame)
    ws.apply(iris_run("noise", dataset={"uri": "pvc://kubetrain-data/noise.csv", "target": "species"}))
    run = ws.wait_phase("noise", ("Failed", "Succeeded"))
    st = run["status"]
    assert st["phase"] == "Failed" and st["failure"]["reason"] == "BelowThreshold", st["failure"]
    assert st["failure"]["exitCode"] == 12 and "accuracy" in st["metrics"]
    assert len(ws.pods("noise")) == 1
    assert not ws.get("modelversions")["items"]


def test_trainer_crash_is_retried_then_fails_with_log_tail(workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    # A plain file where the run's output directory must go: saving fails with an unexpected OSError,
    # the trainer exits 1 (InternalError, retryable).
    ws.claim_dir(MODELS_CLAIM).joinpath("crash").write_text("not a directory")
    ws.apply(iris_run("crash", backoffLimit=1))
    run = ws.wait_phase("crash", ("Failed", "Succeeded"), timeout=120)
    failure = run["status"]["failure"]
    assert failure["reason"] == "BackoffLimitExceeded", failure
    assert failure["exitCode"] == 1
    assert "InternalError" in failure["message"]
    assert failure.get("logTail") and "Error" in failure["logTail"]
    assert len(ws.pods("crash")) == 2  # 1 + backoffLimit
    assert run["status"]["attempts"] == 2
    _quiet(ws, "crash")


def test_gpus_the_cluster_cannot_offer_fail_unschedulable(workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    ws.apply(iris_run("greedy", resources={"gpus": 16}, startupDeadlineSeconds=10))
    pending = ws.wait_phase("greedy", ("Pending", "Failed"), timeout=30)
    assert pending["status"]["phase"] == "Pending"
    run = ws.wait_phase("greedy", ("Failed",), timeout=40)
    failure = run["status"]["failure"]
    assert failure["reason"] == "Unschedulable", failure
    assert "startupDeadlineSeconds=10" in failure["message"]
    deadline = time.monotonic() + 20
    while ws.jobs("greedy") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ws.jobs("greedy"), "the Job of an unschedulable run must not linger"
    _quiet(ws, "greedy")


def test_image_that_cannot_be_pulled_fails_image_pull_failed(workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    ws.apply(iris_run("nopull", image="registry.invalid/kubetrain/trainer:0.0.0", startupDeadlineSeconds=10))
    run = ws.wait_phase("nopull", ("Failed",), timeout=45)
    assert run["status"]["failure"]["reason"] == "ImagePullFailed", run["status"]["failure"]


def test_active_deadline_exceeded(workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    ws.apply(iris_run("slow", activeDeadlineSeconds=2, backoffLimit=0))
    run = ws.wait_phase("slow", ("Failed", "Succeeded"), timeout=60)
    assert run["status"]["failure"]["reason"] == "DeadlineExceeded", run["status"]["failure"]


def test_oom_killed(workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    ws.apply(
        iris_run(
            "tiny",
            backoffLimit=0,
            resources={"requests": {"cpu": "100m", "memory": "60Mi"}, "limits": {"cpu": "1", "memory": "60Mi"}},
        )
    )
    run = ws.wait_phase("tiny", ("Failed", "Succeeded"), timeout=60)
    failure = run["status"]["failure"]
    assert failure["reason"] == "OOMKilled", failure
    assert failure["exitCode"] == 137
    assert len(ws.pods("tiny")) == 1


def test_spec_the_operator_refuses_is_config_invalid_without_job(
    workspace: Workspace, operator_factory: Callable[..., Operator]
) -> None:
    ws = workspace
    operator_factory(KUBETRAIN_MAX_GPUS="1")
    ws.apply(iris_run("too-many-gpus", resources={"gpus": 2}))
    run = ws.wait_phase("too-many-gpus", ("Failed",), timeout=30)
    assert run["status"]["failure"]["reason"] == "ConfigInvalid"
    assert "spec.resources.gpus" in run["status"]["failure"]["message"]
    assert not ws.jobs("too-many-gpus")
    _quiet(ws, "too-many-gpus")


def _refuse_status_writes(ws: Workspace, name: str) -> Callable[[], None]:
    """A ValidatingAdmissionPolicy (the API server's own CEL admission) that refuses every write of
    trainingruns/status in the workspace: the operator can create a Job but never record it. Returns the
    function that lifts it."""
    policy = f"refuse-run-status-{ws.namespace}"
    ws.cluster.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": policy},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["kubetrain.io"],
                            "apiVersions": ["*"],
                            "operations": ["UPDATE", "CREATE"],
                            "resources": ["trainingruns/status"],
                        }
                    ]
                },
                "validations": [{"expression": "false", "message": "test: status writes refused"}],
            },
        }
    )
    ws.cluster.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": policy},
            "spec": {
                "policyName": policy,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ws.namespace}}},
            },
        }
    )

    def lift() -> None:
        ws.cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", policy)

    # The policy is enforced once the API server has loaded it: a status write of a probe run is refused.
    probe = f"{name}-probe"
    ws.apply(iris_run(probe, suspend=True))

    def refused() -> bool:
        patch = '{"status":{"phase":"Pending"}}'
        proc = ws.kubectl(
            "patch", "trainingrun", probe, "--subresource=status", "--type=merge", "-p", patch, check=False
        )
        return proc.returncode != 0 and "status writes refused" in proc.stderr

    wait_until("the admission policy refuses status writes", refused, 30, 0.5)
    ws.kubectl("delete", "trainingrun", probe, "--wait=false")
    return lift


def test_operator_killed_after_job_create_restarts_to_one_job(
    workspace: Workspace, operator_factory: Callable[..., Operator]
) -> None:
    """The operator dies between creating the Job and writing any status (killed from outside: the API
    server refuses its status writes, the test SIGKILLs it when the Job appears), then starts again."""
    ws = workspace
    lift = _refuse_status_writes(ws, "crashy-operator")
    op = operator_factory()
    try:
        ws.apply(iris_run("crashy-operator"))
        wait_until("the Job appears", lambda: ws.jobs("crashy-operator"), 60, 0.1)
        op.kill()  # died right after creating the Job, before any status write
    finally:
        lift()
    run = ws.run("crashy-operator")
    assert not (run.get("status") or {}).get("jobName")
    assert len(ws.jobs("crashy-operator")) == 1
    op.start()
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/crashy-operator", "--timeout=90s")
    assert len(ws.jobs("crashy-operator")) == 1
    assert len(ws.pods("crashy-operator")) == 1
    assert len(ws.get("modelversions")["items"]) == 1


def test_operator_sigkilled_mid_run_resumes(workspace: Workspace, operator_factory: Callable[..., Operator]) -> None:
    ws = workspace
    op = operator_factory()
    ws.apply(iris_run("resume"))
    ws.wait_phase("resume", ("Running", "Succeeded"), timeout=60)
    op.kill()
    time.sleep(8)  # the trainer finishes while nobody watches
    op.start()
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/resume", "--timeout=90s")
    assert len(ws.jobs("resume")) == 1
    mvs = ws.get("modelversions")["items"]
    assert [m["metadata"]["name"] for m in mvs] == ["iris-v1"]


def test_job_deleted_by_hand_fails_the_run(workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    # An image that never pulls keeps the run in progress for as long as the test needs (no race with
    # a fast trainer); the start-up deadline is far away.
    ws.apply(iris_run("orphaned", image="registry.invalid/kubetrain/trainer:0.0.0", startupDeadlineSeconds=600))
    ws.wait_phase("orphaned", ("Pending", "Running"), timeout=30)
    job = ws.run("orphaned")["status"]["jobName"]
    ws.kubectl("delete", "job", job, "--wait=false")
    run = ws.wait_phase("orphaned", ("Failed", "Succeeded"), timeout=30)
    assert run["status"]["phase"] == "Failed" and run["status"]["failure"]["reason"] == "JobDeleted"
    time.sleep(3)
    assert not ws.jobs("orphaned"), "no replacement Job is created"
    _quiet(ws, "orphaned")


def test_suspend_and_quick_toggles_make_one_job(workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    ws.apply(iris_run("toggle", suspend=True))
    run = ws.wait_phase("toggle", ("Suspended",), timeout=30)
    assert _cond(run, "Succeeded")["status"] == "Unknown"
    assert ws.jobs("toggle")[0]["spec"]["suspend"] is True and not ws.pods("toggle")
    for value in ("false", "true", "false"):
        ws.kubectl("patch", "tr", "toggle", "--type=merge", "-p", f'{{"spec":{{"suspend":{value}}}}}')
    ws.kubectl("annotate", "tr", "toggle", "example.com/touched=1")
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/toggle", "--timeout=90s")
    assert len(ws.jobs("toggle")) == 1


def test_mutable_fields_reach_the_unfinished_job(workspace: Workspace, operator: Operator) -> None:
    """activeDeadlineSeconds, backoffLimit and ttlSecondsAfterFinished edited on a run (here while it waits
    suspended, e.g. for a queue) are carried to its Job; a removed field is removed from the Job."""
    ws = workspace
    ws.apply(iris_run("tunable", suspend=True, activeDeadlineSeconds=900, backoffLimit=1))
    ws.wait_phase("tunable", ("Suspended",), timeout=30)
    job_name = ws.jobs("tunable")[0]["metadata"]["name"]
    patch = '{"spec":{"activeDeadlineSeconds":600,"backoffLimit":3,"ttlSecondsAfterFinished":3600}}'
    ws.kubectl("patch", "tr", "tunable", "--type=merge", "-p", patch)

    def job_fields() -> tuple[Any, ...]:
        spec = ws.get("job", job_name)["spec"]
        return spec.get("activeDeadlineSeconds"), spec.get("backoffLimit"), spec.get("ttlSecondsAfterFinished")

    wait_until("the edited fields on the Job", lambda: job_fields() == (600, 3, 3600), timeout=30)
    ws.kubectl("patch", "tr", "tunable", "--type=merge", "-p", '{"spec":{"activeDeadlineSeconds":null}}')
    wait_until("activeDeadlineSeconds removed from the Job", lambda: job_fields() == (None, 3, 3600), timeout=30)
    ws.kubectl("patch", "tr", "tunable", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/tunable", "--timeout=90s")
    assert [j["metadata"]["name"] for j in ws.jobs("tunable")] == [job_name]


def test_ttl_deletes_the_job_but_the_status_survives(workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    ws.apply(iris_run("short-lived", ttlSecondsAfterFinished=1))
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/short-lived", "--timeout=90s")
    deadline = time.monotonic() + 30
    while ws.jobs("short-lived") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ws.jobs("short-lived"), "the TTL controller should have deleted the Job"
    time.sleep(2)
    run = ws.run("short-lived")
    assert run["status"]["phase"] == "Succeeded" and "failure" not in run["status"]


def test_operator_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kubetrain_operator", "--help"],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        check=True,
    ).stdout
    assert "--namespace" in out and "--all-namespaces" in out


def test_bad_runs_beside_a_good_one_lose_nothing(workspace: Workspace, operator: Operator) -> None:
    """Several ways to get a run wrong, applied at once next to a good run: each bad run fails with a
    message naming the problem after one pod, and the good run trains and registers as if alone."""
    ws = workspace
    bad = {
        "missing-file": (
            {"dataset": {"uri": "pvc://kubetrain-data/nope.csv", "target": "species"}},
            "DataInvalid",
            "nope.csv",
        ),
        "wrong-target": (
            {"dataset": {"uri": "pvc://kubetrain-data/iris.csv", "target": "colour"}},
            "DataInvalid",
            "colour",
        ),
        "unknown-param": (
            {"estimator": {"name": "random_forest", "params": {"n_trees": 10}}},
            "ConfigInvalid",
            "n_trees",
        ),
        "missing-column": (
            {
                "dataset": {
                    "uri": "pvc://kubetrain-data/iris.csv",
                    "target": "species",
                    "validation": {"requiredColumns": ["petal_colour"]},
                }
            },
            "DataInvalid",
            "petal_colour",
        ),
    }
    for name, (overrides, _, _) in bad.items():
        ws.apply(iris_run(name, **overrides))
    ws.apply(iris_run("good"))
    good = ws.wait_phase("good", ("Succeeded", "Failed"), timeout=120)
    assert good["status"]["phase"] == "Succeeded", good["status"]
    for name, (_, reason, needle) in bad.items():
        run = ws.wait_phase(name, ("Failed", "Succeeded"), timeout=120)
        failure = run["status"].get("failure") or {}
        assert run["status"]["phase"] == "Failed" and failure.get("reason") == reason, (name, run["status"])
        assert needle in failure.get("message", ""), (name, failure)
        assert len(ws.pods(name)) == 1, name
        assert not run["status"].get("modelVersion"), name
    versions = ws.get("modelversions")["items"]
    assert [v["metadata"]["name"] for v in versions] == [good["status"]["modelVersion"]]
    model = ws.claim_dir(MODELS_CLAIM) / "good" / "model.joblib"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == good["status"]["model"]["sha256"]
    for name in bad:
        assert not (ws.claim_dir(MODELS_CLAIM) / name / "model.joblib").exists(), name
    assert operator.metric("kubetrain_reconcile_total", result="error") == 0
