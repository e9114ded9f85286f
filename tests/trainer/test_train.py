"""Every estimator family trains on real data, meets a sensible threshold, and its artifacts hold up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from kubetrain_trainer import contract
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split

from .conftest import run_subprocess, spec_for, write_config

SMALL = {
    "random_forest": {"n_estimators": 15},
    "extra_trees": {"n_estimators": 15},
    "hist_gradient_boosting": {"max_iter": 30},
    "logistic_regression": {"max_iter": 500},
    "knn": {"n_neighbors": 5},
    "linear_regression": {},
    "ridge": {"alpha": 1.0},
    "isolation_forest": {"n_estimators": 25},
    "xgboost": {"n_estimators": 40, "max_depth": 3, "learning_rate": 0.2},
}

CASES = [
    # (file, target, task, estimator, metric, minimum)
    ("iris.csv", "species", "classification", "logistic_regression", "accuracy", 0.85),
    ("iris.parquet", "species", "classification", "knn", "accuracy", 0.85),
    ("iris.csv", "species", "classification", "random_forest", "accuracy", 0.85),
    ("wine.parquet", "cultivar", "classification", "extra_trees", "accuracy", 0.85),
    ("wine.parquet", "cultivar", "classification", "hist_gradient_boosting", "f1", 0.8),
    ("breast_cancer.json", "malignant", "classification", "hist_gradient_boosting", "roc_auc", 0.95),
    ("breast_cancer.json", "malignant", "classification", "logistic_regression", "accuracy", 0.9),
    ("digits.csv", "digit", "classification", "logistic_regression", "accuracy", 0.9),
    ("diabetes.jsonl", "progression", "regression", "linear_regression", "r2", 0.3),
    ("diabetes.jsonl", "progression", "regression", "ridge", "r2", 0.3),
    ("diabetes.jsonl", "progression", "regression", "random_forest", "r2", 0.25),
    ("diabetes.jsonl", "progression", "regression", "extra_trees", "r2", 0.25),
    ("diabetes.jsonl", "progression", "regression", "hist_gradient_boosting", "r2", 0.2),
    ("diabetes.jsonl", "progression", "regression", "knn", "r2", 0.2),
    # xgboost (the dev extra installs the CPU wheel): string labels, boolean labels, regression.
    ("iris.csv", "species", "classification", "xgboost", "accuracy", 0.85),
    ("breast_cancer.json", "malignant", "classification", "xgboost", "roc_auc", 0.95),
    ("diabetes.jsonl", "progression", "regression", "xgboost", "r2", 0.2),
]


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    return pd.DataFrame(json.loads(path.read_text())["records"])


@pytest.mark.parametrize(("file", "target", "task", "estimator", "metric", "minimum"), CASES)
def test_estimator_trains_on_real_data(
    cli: Any,
    data_dir: Path,
    tmp_path: Path,
    file: str,
    target: str,
    task: str,
    estimator: str,
    metric: str,
    minimum: float,
) -> None:
    spec = spec_for(
        (data_dir / file).as_uri(),
        target,
        estimator,
        SMALL[estimator],
        evaluation={"thresholds": [{"metric": metric, "min": minimum}]},
    )
    cfg = write_config(tmp_path / "run.yaml", spec, name="real-data")
    run = cli("run", "--config", str(cfg), "--output", str(tmp_path / "out"))
    assert run.code == 0, run.result
    res = run.result
    assert res["outcome"] == "Succeeded" and res["reason"] == "Trained"
    assert res["task"] == task  # inferred: the spec names no task
    assert res["metrics"][metric] >= minimum
    assert run.termination == run.stdout.strip().splitlines()[-1]
    assert len(run.termination.encode()) <= contract.RESULT_MAX_BYTES
    steps = [s for s, _ in run.progress]
    assert steps[0] == "config" and steps[-1] == "done" and "train" in steps

    run_dir = tmp_path / "out" / "real-data"
    names = {p.name for p in run_dir.iterdir()}
    core = {"metadata.json", "model.joblib", "model.joblib.sha256", "evaluation.json", "profile.json", "report.html"}
    assert core <= names and all(n.endswith(".png") for n in names - core), names
    assert "feature_importance.png" in names and res["report"] == {"uri": (run_dir / "report.html").as_uri()}
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["model"]["sha256"] == res["model"]["sha256"]
    assert (run_dir / "model.joblib.sha256").read_text().split()[0] == res["model"]["sha256"]
    assert set(meta["versions"]) == {"python", "sklearn", "joblib", "pandas", "numpy"}
    assert meta["signature"]["target"] == target
    assert meta["dataset"]["fingerprint"].startswith("sha256:")

    # The reloaded pipeline predicts the hold-out split exactly as the trainer measured it.
    df = _read(data_dir / file)
    X, y = df.drop(columns=[target]), df[target]
    X = X[[f["name"] for f in meta["signature"]["features"]]]
    stratify = y if task == "classification" else None
    _, X_test, _, y_test = train_test_split(X, y, test_size=0.2, random_state=42, stratify=stratify)
    model = joblib.load(run_dir / "model.joblib")
    pred = model.predict(X_test)
    if task == "classification":
        assert accuracy_score(y_test, pred) == pytest.approx(res["metrics"]["accuracy"], abs=1e-6)
    else:
        assert r2_score(y_test, pred) == pytest.approx(res["metrics"]["r2"], abs=1e-6)
    np.testing.assert_array_equal(pred, joblib.load(run_dir / "model.joblib").predict(X_test))

    ver = cli("verify", "--model", str(run_dir))
    assert ver.code == 0 and ver.result["reason"] == "Verified", ver.result


def test_mixed_columns_are_typed_and_pipeline_takes_raw_rows(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for(
        (data_dir / "mixed.csv").as_uri(),
        "label",
        "logistic_regression",
        evaluation={"cvFolds": 3, "thresholds": [{"metric": "accuracy", "min": 0.75}]},
    )
    cfg = write_config(tmp_path / "run.yaml", spec, name="mixed")
    run = cli("run", "--config", str(cfg), "--output", str(tmp_path / "out"))
    assert run.code == 0, run.result
    assert "cv_accuracy_mean" in run.result["metrics"]
    meta = json.loads((tmp_path / "out" / "mixed" / "metadata.json").read_text())
    kinds = {f["name"]: f["kind"] for f in meta["signature"]["features"]}
    assert kinds == {"x1": "numeric", "x2": "numeric", "color": "categorical", "signup": "datetime"}
    assert "customer_id" in meta["dropped_columns"] and "notes" in meta["dropped_columns"]
    # Raw rows from the file (with an unseen category and gaps) go straight into the pipeline.
    model = joblib.load(tmp_path / "out" / "mixed" / "model.joblib")
    rows = pd.read_csv(data_dir / "mixed.csv").head(5)
    rows.loc[0, "color"] = "purple"
    assert len(model.predict(rows)) == 5


def test_column_types_enable_free_text(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for(
        (data_dir / "mixed.csv").as_uri(),
        "label",
        "random_forest",
        {"n_estimators": 10},
        task="classification",
    )
    spec["dataset"]["columnTypes"] = {"notes": "text", "x2": "ignore"}
    spec["dataset"]["exclude"] = ["customer_id"]
    cfg = write_config(tmp_path / "run.yaml", spec, name="text")
    run = cli("run", "--config", str(cfg), "--output", str(tmp_path / "out"))
    assert run.code == 0, run.result
    meta = json.loads((tmp_path / "out" / "text" / "metadata.json").read_text())
    kinds = {f["name"]: f["kind"] for f in meta["signature"]["features"]}
    assert kinds["notes"] == "text" and "x2" not in kinds and "customer_id" not in kinds
    assert cli("verify", "--model", str(tmp_path / "out" / "text")).code == 0


def test_json_log_export_trains_isolation_forest(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    """The original training service's default: anomaly detection on an exported log document."""
    spec = spec_for(
        (data_dir / "logs.json").as_uri(), None, "isolation_forest", {"n_estimators": 50, "contamination": 0.05}
    )
    spec["evaluation"] = {"thresholds": [{"metric": "anomaly_rate", "max": 0.3}]}
    cfg = write_config(tmp_path / "run.yaml", spec, name="logs")
    run = cli("run", "--config", str(cfg), "--output", str(tmp_path / "out"))
    assert run.code == 0, run.result
    assert run.result["task"] == "anomalyDetection"
    assert 0 < run.result["metrics"]["anomaly_rate"] <= 0.15
    meta = json.loads((tmp_path / "out" / "logs" / "metadata.json").read_text())
    kinds = {f["name"]: f["kind"] for f in meta["signature"]["features"]}
    assert kinds == {
        "timestamp": "datetime",
        "level": "categorical",
        "service": "categorical",
        "latency_ms": "numeric",
        "status": "numeric",
    }
    model = joblib.load(tmp_path / "out" / "logs" / "model.joblib")
    probe = pd.DataFrame(
        [
            {
                "timestamp": "2024-05-01T10:00:00+00:00",
                "level": "INFO",
                "service": "api",
                "latency_ms": 118.0,
                "status": 200,
            },
            {
                "timestamp": "2024-05-01T10:00:05+00:00",
                "level": "ERROR",
                "service": "api",
                "latency_ms": 9000.0,
                "status": 500,
            },
        ]
    )
    assert list(model.predict(probe)) == [1, -1]


def test_anomaly_with_labels_reports_precision_recall(cli: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    normal = rng.normal(size=(300, 3))
    outliers = rng.normal(loc=6, size=(15, 3))
    df = pd.DataFrame(np.vstack([normal, outliers]), columns=["a", "b", "c"])
    df["is_anomaly"] = [0] * 300 + [1] * 15
    path = tmp_path / "labelled.parquet"
    df.to_parquet(path)
    spec = spec_for(path.as_uri(), "is_anomaly", "isolation_forest", {"n_estimators": 50, "contamination": 0.05})
    spec["task"] = "anomalyDetection"
    spec["evaluation"] = {"thresholds": [{"metric": "recall", "min": 0.6}]}
    run = cli("run", "--config", str(write_config(tmp_path / "r.yaml", spec)), "--output", str(tmp_path / "out"))
    assert run.code == 0, run.result
    assert {"anomaly_rate", "precision", "recall", "f1"} <= set(run.result["metrics"])


def test_same_config_and_data_give_same_metrics_and_model_bytes(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for((data_dir / "wine.parquet").as_uri(), "cultivar", "random_forest", {"n_estimators": 10})
    cfg = write_config(tmp_path / "run.yaml", spec, name="repro")
    a = cli("run", "--config", str(cfg), "--output", str(tmp_path / "a"))
    b = cli("run", "--config", str(cfg), "--output", str(tmp_path / "b"))
    assert a.code == b.code == 0
    assert a.result["metrics"] == b.result["metrics"]
    assert a.result["model"]["sha256"] == b.result["model"]["sha256"]
    assert a.result["dataset"]["fingerprint"] == b.result["dataset"]["fingerprint"]


def test_xgboost_is_reproducible_and_keeps_the_labels(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for((data_dir / "wine.parquet").as_uri(), "cultivar", "xgboost", SMALL["xgboost"])
    cfg = write_config(tmp_path / "run.yaml", spec, name="xgb")
    a = cli("run", "--config", str(cfg), "--output", str(tmp_path / "a"))
    b = cli("run", "--config", str(cfg), "--output", str(tmp_path / "b"))
    assert a.code == b.code == 0, a.result
    assert a.result["metrics"] == b.result["metrics"]
    assert a.result["model"]["sha256"] == b.result["model"]["sha256"]
    model = joblib.load(tmp_path / "a" / "xgb" / "model.joblib")
    labels = sorted(pd.read_parquet(data_dir / "wine.parquet")["cultivar"].unique())
    assert list(model.classes_) == labels
    X = pd.read_parquet(data_dir / "wine.parquet").drop(columns=["cultivar"]).head(5)
    assert set(model.predict(X)) <= set(labels) and model.predict_proba(X).shape == (5, len(labels))


def test_threshold_miss_is_exit_12_with_metrics_and_no_artifact(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for(
        (data_dir / "diabetes.jsonl").as_uri(),
        "progression",
        "ridge",
        evaluation={"thresholds": [{"metric": "r2", "min": 0.99}, {"metric": "mae", "max": 1.0}]},
    )
    run = cli("run", "--config", str(write_config(tmp_path / "r.yaml", spec)), "--output", str(tmp_path / "out"))
    assert run.code == contract.EXIT_BELOW_THRESHOLD
    assert run.result["reason"] == "BelowThreshold" and run.result["outcome"] == "Failed"
    assert "r2=" in run.result["message"] and "mae=" in run.result["message"]
    assert "r2" in run.result["metrics"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_verify_catches_tampering_and_wrong_checksum(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for((data_dir / "iris.csv").as_uri(), "species", "knn")
    run = cli("run", "--config", str(write_config(tmp_path / "r.yaml", spec, name="v")), "--output", str(tmp_path))
    assert run.code == 0
    model_dir = tmp_path / "v"
    sha = run.result["model"]["sha256"]
    assert cli("verify", "--model", str(model_dir / "model.joblib"), "--sha256", sha).code == 0
    wrong = cli("verify", "--model", str(model_dir), "--sha256", "0" * 64)
    assert wrong.code == contract.EXIT_VERIFY_FAILED and "checksum mismatch" in wrong.result["message"]

    with open(model_dir / "model.joblib", "r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    tampered = cli("verify", "--model", str(model_dir))
    assert tampered.code == contract.EXIT_VERIFY_FAILED
    assert tampered.result["reason"] == "VerifyFailed" and "checksum mismatch" in tampered.result["message"]


def test_verify_rejects_unloadable_file_even_with_matching_checksum(cli: Any, tmp_path: Path) -> None:
    from kubetrain_trainer.artifacts import sha256_file

    (tmp_path / "model.joblib").write_bytes(b"not a pickle at all")
    sha = sha256_file(tmp_path / "model.joblib")
    run = cli("verify", "--model", str(tmp_path), "--sha256", sha)
    assert run.code == contract.EXIT_VERIFY_FAILED and "cannot load" in run.result["message"]
    missing = cli("verify", "--model", str(tmp_path / "nope"))
    assert missing.code == contract.EXIT_VERIFY_FAILED and "not found" in missing.result["message"]


def test_verify_from_env_for_hand_registered_model(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    """The operator's verification Job: no flags, KUBETRAIN_VERIFY_URI (pvc://) and _SHA256."""
    from sklearn.linear_model import LogisticRegression

    df = pd.read_csv(data_dir / "iris.csv")
    model = LogisticRegression(max_iter=300).fit(df.drop(columns="species"), df["species"])
    pvc = tmp_path / "pvc" / "models" / "hand"
    pvc.mkdir(parents=True)
    joblib.dump(model, pvc / "model.joblib")
    from kubetrain_trainer.artifacts import sha256_file

    sha = sha256_file(pvc / "model.joblib")
    env = {
        contract.ENV_PVC_ROOT: str(tmp_path / "pvc"),
        contract.ENV_VERIFY_URI: "pvc://models/hand/model.joblib",
        contract.ENV_VERIFY_SHA256: sha,
    }
    ok = cli("verify", env=env)
    assert ok.code == 0, ok.result
    assert ok.result["model"]["uri"] == "pvc://models/hand/model.joblib"
    env[contract.ENV_VERIFY_SHA256] = "f" * 64
    assert cli("verify", env=env).code == contract.EXIT_VERIFY_FAILED


def test_operator_mode_env_config_paths_and_termination_log(data_dir: Path, tmp_path: Path) -> None:
    """Exactly how the Job runs it: `python -m kubetrain_trainer run`, everything through env vars."""
    manifest = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "iris-job", "namespace": "ml", "uid": "1234-abcd"},
        "spec": spec_for(
            "pvc://datasets/iris/iris.csv",
            "species",
            "hist_gradient_boosting",
            {"max_iter": 20},
            output={"uri": "pvc://models/runs"},
        ),
    }
    out_dir = tmp_path / "mounted-output"
    term = tmp_path / "termination-log"
    env = {
        contract.ENV_CONFIG: json.dumps(manifest),
        contract.ENV_DATASET_PATH: str(data_dir / "iris.csv"),
        contract.ENV_OUTPUT_DIR: str(out_dir),
        contract.ENV_TERMINATION_LOG: str(term),
        contract.ENV_CPU_LIMIT: "500m",
    }
    run = run_subprocess("run", env=env, cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert term.read_text() == run.stdout.strip().splitlines()[-1]
    result = contract.parse_result(term.read_text())
    assert result is not None and result.reason == "Trained"
    assert result.model is not None and result.model["uri"] == "pvc://models/runs/iris-job/model.joblib"
    assert (out_dir / "model.joblib").is_file()
    meta = json.loads((out_dir / "metadata.json").read_text())
    assert meta["run"] == {"name": "iris-job", "namespace": "ml", "uid": "1234-abcd"}
    assert meta["estimator"]["params"]["random_state"] == 42


def test_pvc_uri_resolves_under_pvc_root(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    (root / "data").mkdir(parents=True)
    (root / "data" / "iris.csv").write_bytes((data_dir / "iris.csv").read_bytes())
    spec = spec_for("pvc://data/iris.csv", "species", "knn", output={"uri": "pvc://models/base"})
    run = cli(
        "run",
        "--config",
        str(write_config(tmp_path / "r.json", spec, name="p", as_yaml=False)),
        env={contract.ENV_PVC_ROOT: str(root)},
    )
    assert run.code == 0, run.result
    assert (root / "models" / "base" / "p" / "model.joblib").is_file()
    assert run.result["model"]["uri"] == "pvc://models/base/p/model.joblib"


def test_validate_checks_without_training(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for((data_dir / "iris.csv").as_uri(), "species", "random_forest")
    cfg = write_config(tmp_path / "r.yaml", spec)
    run = cli("validate", "--config", str(cfg))
    assert run.code == 0 and run.result["reason"] == "Valid"
    assert run.result["dataset"]["rows"] == 150
    assert not (tmp_path / "kubetrain-runs").exists()
    spec["dataset"]["target"] = "nope"
    bad = cli("validate", "--config", str(write_config(tmp_path / "r.yaml", spec)))
    assert bad.code == contract.EXIT_DATA_INVALID and "nope" in bad.result["message"]


def test_json_records_with_mixed_value_types_train(cli: Any, tmp_path: Path) -> None:
    rows = [
        {"code": (i % 3) if i % 2 else str(i % 3), "x": float(i % 7), "nested": {"depth": i % 5}, "y": i % 2}
        for i in range(80)
    ]
    (tmp_path / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = spec_for((tmp_path / "mixed.jsonl").as_uri(), "y", "random_forest", {"n_estimators": 5})
    spec["dataset"]["columnTypes"] = {"code": "categorical"}
    run = cli("run", "--config", str(write_config(tmp_path / "r.yaml", spec)), "--output", str(tmp_path / "out"))
    assert run.code == 0, run.result
    meta = json.loads((tmp_path / "out" / "test-run" / "metadata.json").read_text())
    assert {f["name"] for f in meta["signature"]["features"]} == {"code", "x", "nested.depth"}
