"""MLflow tracking from the trainer CLI, against a real ``mlflow server`` on loopback (tests/mlflowserver.py).

One server for the module (it takes a while to start); each test trains iris with a small, fast estimator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubetrain_trainer import contract

from tests.conftest import free_port
from tests.mlflowserver import credentials_env, mlflow_server, rest
from tests.trainer.conftest import spec_for

# The module-scoped server starts inside the first test's time budget: minutes on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

SEARCH = {"strategy": "grid", "space": {"n_neighbors": [3, 5]}, "cv": 2}


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def _spec(data_dir: Path, tracking: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    spec = spec_for((data_dir / "iris.csv").as_uri(), "species", "knn", {"weights": "distance"}, **extra)
    if tracking is not None:
        spec["tracking"] = {"mlflow": tracking}
    return spec


def _run(
    cli: Any, tmp_path: Path, spec: dict[str, Any], env: dict[str, str] | None = None, name: str = "tracked"
) -> Any:
    doc = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}"},
        "spec": spec,
    }
    doc_path = tmp_path / f"{name}.json"
    doc_path.write_text(json.dumps(doc))
    return cli("run", "--config", str(doc_path), "--output", str(tmp_path / "out"), env=env)


def test_a_tracked_search_run_is_in_mlflow_with_params_metrics_tags_dataset_and_one_child_per_trial(
    cli: Any, tmp_path: Path, data_dir: Path, mlflow_url: str
) -> None:
    spec = _spec(
        data_dir,
        {"trackingUri": mlflow_url, "experiment": "iris-tracking"},
        search=SEARCH,
        evaluation={"cvFolds": 2},
    )
    run = _run(cli, tmp_path, spec, env={**credentials_env(), contract.ENV_IMAGE: "kubetrain/trainer:test"})
    assert run.code == 0, run.stderr
    result = run.result
    tracking = result["tracking"]
    assert tracking["tracked"] is True, tracking
    assert tracking["reason"] == contract.TRACKING_REASON_LOGGED
    run_id = tracking["run_id"]
    assert tracking["url"] == f"{mlflow_url}/#/experiments/{tracking['experiment_id']}/runs/{run_id}"
    assert json.loads(run.termination)["tracking"] == tracking  # the operator reads the termination message

    got = rest(mlflow_url, "runs/get", run_id=run_id)["run"]
    assert got["info"]["status"] == "FINISHED"
    exp = rest(mlflow_url, "experiments/get-by-name", experiment_name="iris-tracking")["experiment"]
    assert got["info"]["experiment_id"] == exp["experiment_id"] == tracking["experiment_id"]
    params = {p["key"]: p["value"] for p in got["data"]["params"]}
    assert params["estimator"] == "knn"
    assert params["task"] == "classification"
    assert params["weights"] == "distance"  # the final estimator's parameters
    assert params["search.strategy"] == "grid"
    assert json.loads(params["search.space"]) == {"n_neighbors": [3, 5]}
    assert int(params["search.best.n_neighbors"]) == result["best_params"]["n_neighbors"] == int(params["n_neighbors"])
    latest = {m["key"]: m["value"] for m in got["data"]["metrics"]}
    for name, value in result["metrics"].items():
        assert latest[name] == pytest.approx(value), name
    assert {"search_best_accuracy", "cv_accuracy_mean", "cv_accuracy_std"} <= set(result["metrics"])
    folds = rest(mlflow_url, "metrics/get-history", run_id=run_id, metric_key="cv_accuracy_fold")["metrics"]
    assert sorted(m["step"] for m in folds) == [0, 1]
    tags = {t["key"]: t["value"] for t in got["data"]["tags"]}
    assert tags["mlflow.runName"] == "tracked"
    assert tags["kubetrain.run.name"] == "tracked"
    assert tags["kubetrain.run.uid"] == "uid-tracked"
    assert tags["kubetrain.namespace"] == "team-a"
    assert tags["kubetrain.image"] == "kubetrain/trainer:test"
    assert tags["kubetrain.dataset.uri"] == spec["dataset"]["uri"]
    fingerprint = result["dataset"]["fingerprint"]
    assert tags["kubetrain.dataset.fingerprint"] == fingerprint
    assert tags["kubetrain.model.uri"] == result["model"]["uri"]
    assert tags["kubetrain.model.sha256"] == result["model"]["sha256"]
    (dataset_input,) = got["inputs"]["dataset_inputs"]
    assert dataset_input["dataset"]["digest"] == fingerprint.removeprefix("sha256:")[:36]
    assert json.loads(dataset_input["dataset"]["source"]) == {"uri": spec["dataset"]["uri"]}
    assert json.loads(dataset_input["dataset"]["profile"])["rows"] == 150

    children = rest(
        mlflow_url,
        "runs/search",
        {"experiment_ids": [exp["experiment_id"]], "filter": f"tags.mlflow.parentRunId = '{run_id}'"},
    ).get("runs", [])
    assert len(children) == 2  # one child run per grid candidate
    neighbours = sorted(
        int(next(p["value"] for p in c["data"]["params"] if p["key"] == "n_neighbors")) for c in children
    )
    assert neighbours == [3, 5]
    for child in children:
        assert {m["key"] for m in child["data"]["metrics"]} == {"cv_accuracy_mean", "cv_accuracy_std"}


def test_mlflow_unreachable_the_run_still_succeeds_fast_with_the_reason(
    cli: Any, tmp_path: Path, data_dir: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = _run(cli, tmp_path, _spec(data_dir, {"trackingUri": dead}), name="untracked")
    assert run.code == 0, run.stderr
    assert run.result["outcome"] == "Succeeded"
    tracking = run.result["tracking"]
    assert tracking["tracked"] is False
    assert tracking["reason"] == contract.TRACKING_REASON_UNREACHABLE
    assert tracking["message"].startswith(f"MLflow at {dead} is unreachable (")
    assert "run_id" not in tracking
    assert run.result["timings"]["tracking"] < 20, run.result["timings"]  # one retry, short timeouts
    assert "tracking:" in run.stderr


def test_required_tracking_with_mlflow_down_fails_before_training(cli: Any, tmp_path: Path, data_dir: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    run = _run(cli, tmp_path, _spec(data_dir, {"trackingUri": dead, "required": True}), name="required")
    assert run.code == contract.EXIT_TRACKING_FAILED
    result = run.result
    assert result["reason"] == contract.REASON_TRACKING_FAILED
    assert result["message"].startswith("spec.tracking.mlflow.required: MLflow at " + dead)
    assert result["tracking"]["tracked"] is False
    assert "train" not in result.get("timings", {})  # failed fast, nothing trained
    assert "model" not in result


def test_the_operator_default_applies_when_the_spec_has_no_tracking(
    cli: Any, tmp_path: Path, data_dir: Path, mlflow_url: str
) -> None:
    env = {**credentials_env(), contract.ENV_MLFLOW_TRACKING_URI: mlflow_url, contract.ENV_MLFLOW_EXPERIMENT: "ops"}
    run = _run(cli, tmp_path, _spec(data_dir, None), env=env, name="defaulted")
    assert run.code == 0, run.stderr
    tracking = run.result["tracking"]
    assert tracking["tracked"] is True, tracking
    exp = rest(mlflow_url, "experiments/get-by-name", experiment_name="ops")["experiment"]
    assert exp["experiment_id"] == tracking["experiment_id"]
    # without any tracking URI there is no tracking at all
    plain = _run(cli, tmp_path, _spec(data_dir, None), env=credentials_env(), name="plain")
    assert plain.code == 0 and "tracking" not in plain.result


def test_refused_credentials_give_a_clear_message(cli: Any, tmp_path: Path, data_dir: Path, mlflow_url: str) -> None:
    env = {**credentials_env(), "MLFLOW_TRACKING_PASSWORD": "wrong"}
    run = _run(cli, tmp_path, _spec(data_dir, {"trackingUri": mlflow_url}), env=env, name="refused")
    assert run.code == 0, run.stderr
    tracking = run.result["tracking"]
    assert tracking["tracked"] is False
    assert tracking["reason"] == contract.TRACKING_REASON_REFUSED
    assert "refused the credentials" in tracking["message"] and "spec.envFrom" in tracking["message"]
    required = _run(
        cli, tmp_path, _spec(data_dir, {"trackingUri": mlflow_url, "required": True}), env=env, name="refused-req"
    )
    assert required.code == contract.EXIT_TRACKING_FAILED
    assert "refused the credentials" in required.result["message"]


def test_a_wrong_tracking_uri_gives_a_clear_message(cli: Any, tmp_path: Path, data_dir: Path, mlflow_url: str) -> None:
    wrong = f"{mlflow_url}/not-mlflow"
    run = _run(cli, tmp_path, _spec(data_dir, {"trackingUri": wrong}), env=credentials_env(), name="wrong")
    assert run.code == 0, run.stderr
    tracking = run.result["tracking"]
    assert tracking["tracked"] is False
    assert tracking["reason"] == contract.TRACKING_REASON_ERROR, tracking
    assert wrong in tracking["message"]
