"""The runner's stage functions and the context manager that turns exceptions into results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kubetrain_api.models import DEFAULT_PRIMARY_METRIC, TASK_METRICS, Signature
from kubetrain_trainer import contract, evaluation, stages
from kubetrain_trainer.config import parse_config
from kubetrain_trainer.errors import BelowThreshold, ConfigInvalid, DataInvalid, TrainerError, VerifyFailed
from kubetrain_trainer.outcome import RunFacts, result_of
from kubetrain_trainer.search import TrialsIncomplete

from tests.trainer.conftest import spec_for, write_config


def cfg_for(uri: str, target: str | None = "species", estimator: str = "random_forest", **extra: Any) -> Any:
    params = {"n_estimators": 10} if estimator == "random_forest" else {}
    return parse_config(spec_for(uri, target, estimator, params, **extra), name="stage-test")


# ---- result_of: each error class → exit code and reason ------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code", "reason"),
    [
        (ConfigInvalid("spec.x: bad"), 10, "ConfigInvalid"),
        (DataInvalid("column 'a' is missing"), 11, "DataInvalid"),
        (BelowThreshold("thresholds not met: accuracy=0.5 < min 0.9"), 12, "BelowThreshold"),
        (VerifyFailed("checksum mismatch"), 13, "VerifyFailed"),
        (TrialsIncomplete("search shares 1 of 2 did not arrive within 5s"), 1, "InternalError"),
    ],
)
def test_trainer_errors_become_their_reason_and_exit_code(exc: TrainerError, code: int, reason: str) -> None:
    facts = RunFacts(task="classification", estimator="knn", metrics={"accuracy": 0.5})
    with result_of(facts) as outcome:
        raise exc
    result = outcome.final
    assert (result.exit_code, result.reason, result.outcome) == (code, reason, "Failed")
    assert result.message == str(exc)
    # what was known when it failed is reported, read from the facts (not from the exception)
    assert result.task == "classification" and result.metrics == {"accuracy": 0.5}
    assert not hasattr(exc, "state")


def test_unexpected_exception_is_the_generic_retryable_failure(capsys: pytest.CaptureFixture[str]) -> None:
    with result_of(RunFacts(estimator="ridge")) as outcome:
        raise OSError("disk\n   on fire")
    result = outcome.final
    assert (result.exit_code, result.reason) == (contract.EXIT_INTERNAL_ERROR, contract.REASON_INTERNAL_ERROR)
    assert result.message == "OSError: disk on fire" and result.estimator == "ridge"
    assert "Traceback" in capsys.readouterr().err


def test_success_is_the_blocks_result_and_a_missing_result_is_an_internal_error() -> None:
    with result_of() as outcome:
        outcome.result = RunFacts(task="regression").result(contract.REASON_TRAINED, "ok")
    assert outcome.final.reason == "Trained" and outcome.final.exit_code == 0 and outcome.final.task == "regression"
    with result_of() as empty:
        pass
    assert empty.final.reason == "InternalError" and "no result" in empty.final.message


def test_interrupts_are_not_swallowed() -> None:
    with pytest.raises(KeyboardInterrupt), result_of():
        raise KeyboardInterrupt


def test_facts_time_steps_and_report_a_total_only_for_runs() -> None:
    facts = RunFacts()
    with pytest.raises(ValueError), facts.timed("load"):
        raise ValueError("x")
    assert set(facts.timings) == {"load"}  # timed even when the step raised
    assert set(facts.result(contract.REASON_VALID).timings or {}) == {"load"}
    run = RunFacts(started=0.0)
    assert set(run.result(contract.REASON_VALID).timings or {}) == {"total"}
    long_message = "x" * 5000
    with result_of() as outcome:
        raise RuntimeError(long_message)
    assert len(outcome.final.message) == 1000


# ---- the API declares the metrics; the trainer does not --------------------------------------------------


@pytest.mark.parametrize("task", sorted(TASK_METRICS))
def test_metric_names_are_the_apis(task: str) -> None:
    assert evaluation.metric_names(task, [], has_labels=True) == list(TASK_METRICS[task])
    assert not hasattr(evaluation, "DEFAULT_PRIMARY") and not hasattr(evaluation, "DEFAULT_METRICS")


def test_unlabelled_anomaly_metrics_leave_out_label_metrics() -> None:
    assert evaluation.metric_names("anomalyDetection", [], has_labels=False) == ["anomaly_rate"]
    with pytest.raises(ConfigInvalid, match="needs anomaly labels"):
        evaluation.metric_names("anomalyDetection", ["f1"], has_labels=False)
    with pytest.raises(ConfigInvalid, match="r2 is not computed for classification"):
        evaluation.metric_names("classification", ["r2"], has_labels=True)


# ---- stages -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file", ["iris.csv", "iris.parquet"])
def test_load_prepare_and_signature(data_dir: Path, tmp_path: Path, file: str) -> None:
    cfg = cfg_for((data_dir / file).as_uri())
    loaded = stages.load(cfg, tmp_path)
    assert loaded.format == file.split(".")[1] and loaded.frame.shape == (150, 5)
    prepared = stages.prepare(cfg, loaded)
    assert prepared.task == "classification" and list(prepared.X.columns) == list(loaded.frame.columns[:4])
    info = stages.describe(cfg, loaded, prepared)
    assert (info.rows, info.columns, info.features, info.fingerprint) == (150, 5, 4, None)
    assert stages.fingerprint(loaded).startswith("sha256:")
    check = stages.signature(prepared)
    assert check.problem is None and check.signature is not None
    expected = [{"name": c, "dtype": str(loaded.frame[c].dtype)} for c in loaded.frame.columns if c != "species"]
    assert check.signature == {"features": expected, "target": "species"}
    Signature.model_validate(check.signature)


def test_signature_the_api_would_refuse_is_left_out_with_a_reason() -> None:
    long_name = "c" * 300  # FeatureSpec.name allows 253 characters
    frame = pd.DataFrame({long_name: [float(i % 7) for i in range(40)], "y": [i % 2 for i in range(40)]})
    cfg = cfg_for("file:///data/x.csv", target="y")
    prepared = stages.prepare(cfg, stages.Loaded(frame, "csv"))
    check = stages.signature(prepared)
    assert check.signature is None and check.problem is not None and "features.0.name" in check.problem


def test_plan_takes_the_apis_default_primary_metric_and_checks_thresholds(data_dir: Path, tmp_path: Path) -> None:
    cfg = cfg_for((data_dir / "iris.csv").as_uri())
    prepared = stages.prepare(cfg, stages.load(cfg, tmp_path))
    plan = stages.plan(cfg, prepared, n_jobs=1, index=None)
    assert plan.primary == DEFAULT_PRIMARY_METRIC["classification"] and plan.n_classes == 3
    assert plan.metrics == list(TASK_METRICS["classification"]) and not plan.parallel
    bad = cfg_for((data_dir / "iris.csv").as_uri(), evaluation={"thresholds": [{"metric": "r2", "min": 0.1}]})
    with pytest.raises(ConfigInvalid, match="r2 is not computed for classification"):
        stages.plan(bad, prepared, n_jobs=1, index=None)
    searched = cfg_for((data_dir / "iris.csv").as_uri(), search={"space": {"max_depth": [2, 3]}, "parallelism": 2})
    with pytest.raises(ConfigInvalid, match="JOB_COMPLETION_INDEX=2"):
        stages.plan(searched, prepared, n_jobs=1, index=2)
    assert stages.plan(searched, prepared, n_jobs=1, index=1).parallel


def test_split_fit_evaluate_gate_and_save(data_dir: Path, tmp_path: Path) -> None:
    cfg = cfg_for(
        (data_dir / "iris.csv").as_uri(),
        evaluation={"cvFolds": 3, "thresholds": [{"metric": "accuracy", "min": 0.99999}]},
    )
    prepared = stages.prepare(cfg, stages.load(cfg, tmp_path))
    plan = stages.plan(cfg, prepared, n_jobs=1, index=None)
    setup = stages.build(cfg, prepared, plan)
    assert setup.space == {} and setup.scoring is None and setup.cv_scoring == "accuracy"
    data = stages.split(cfg, prepared)
    assert (len(data.X_train), len(data.X_test)) == (120, 30) and data.warnings == ()
    assert data.y_test is not None and data.y_test.value_counts().tolist() == [10, 10, 10]  # stratified
    pipeline = stages.fit(setup.pipeline, data)
    cv = stages.cross_validate(cfg, plan, setup, pipeline, data)
    assert set(cv) == {"cv_accuracy_mean", "cv_accuracy_std"}
    result = stages.evaluate(plan, pipeline, data)
    assert isinstance(result, stages.Evaluation) and set(result.test) == set(plan.metrics)
    assert list(stages.Evaluation(test=result.test, cv=cv).metrics) == [*result.test, *cv]
    if result.test["accuracy"] < 0.99999:
        with pytest.raises(BelowThreshold, match="accuracy="):
            stages.gate(cfg, result)

    run_dir = tmp_path / "out" / "stage-test"
    meta = {"signature": prepared.signature}
    saved = stages.save(run_dir, (run_dir / "model.joblib").as_uri(), None, pipeline, meta)
    assert saved.files == ("model.joblib", "model.joblib.sha256", "metadata.json")
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(saved.files)
    assert json.loads((run_dir / "metadata.json").read_text())["model"] == saved.model


def test_save_writes_extra_documents_before_metadata(tmp_path: Path) -> None:
    from kubetrain_trainer.artifacts import save_artifacts
    from sklearn.dummy import DummyClassifier

    model = DummyClassifier().fit([[0], [1]], [0, 1])
    saved = save_artifacts(tmp_path / "r", model, {}, "file:///r/model.joblib", {"evaluation.json": {"a": 1}})
    assert saved.files == ("model.joblib", "model.joblib.sha256", "evaluation.json", "metadata.json")
    assert json.loads((tmp_path / "r" / "evaluation.json").read_text()) == {"a": 1}
    with pytest.raises(ValueError, match="reserved"):
        save_artifacts(tmp_path / "s", model, {}, "file:///s/model.joblib", {"metadata.json": {}})
    assert not (tmp_path / "s").exists()


# ---- result.signature end to end ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "target"), [("iris.csv", "species"), ("iris.parquet", "species"), ("mixed.csv", "label")]
)
def test_result_signature_is_the_datasets_columns_and_dtypes(
    cli: Any, data_dir: Path, tmp_path: Path, file: str, target: str
) -> None:
    spec = spec_for((data_dir / file).as_uri(), target, "random_forest", {"n_estimators": 5})
    cfg = write_config(tmp_path / "run.yaml", spec)
    run = cli("run", "--config", str(cfg), "--output", str(tmp_path / "out"))
    assert run.code == 0, run.result
    sig = run.result["signature"]
    meta = json.loads((tmp_path / "out" / "test-run" / "metadata.json").read_text())
    used = [f["name"] for f in meta["signature"]["features"]]
    if file == "mixed.csv":
        # identifiers and free text are not inputs of the model; the csv reader types ISO dates
        dtypes = {"x1": "float64", "x2": "float64", "color": "str", "signup": "datetime64[s]"}
    else:
        frame = pd.read_parquet(data_dir / file) if file.endswith(".parquet") else pd.read_csv(data_dir / file)
        dtypes = {c: str(frame[c].dtype) for c in frame.columns if c != target}
    assert sig == {"features": [{"name": c, "dtype": t} for c, t in dtypes.items()], "target": target}
    assert used == list(dtypes)
    assert Signature.model_validate(sig).model_dump(exclude_none=True)["features"] == sig["features"]
    termination = contract.parse_result(run.termination or "")
    assert termination is not None and termination.signature == sig


def test_a_wide_datasets_signature_stays_in_metadata_and_the_result_says_so(cli: Any, tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"feature_with_a_long_name_{i:04d}": rng.normal(size=60) for i in range(400)})
    frame["y"] = ["a", "b"] * 30
    frame.to_csv(tmp_path / "wide.csv", index=False)
    spec = spec_for((tmp_path / "wide.csv").as_uri(), "y", "random_forest", {"n_estimators": 5})
    run = cli("run", "--config", str(write_config(tmp_path / "run.yaml", spec)), "--output", str(tmp_path / "out"))
    assert run.code == 0, run.result
    assert run.termination is not None and len(run.termination.encode()) <= contract.RESULT_MAX_BYTES
    assert "signature" not in run.result and "signature" in run.result["trimmed"]
    assert run.result["model"]["sha256"] and run.result["metrics"]  # what a ModelVersion needs is kept
    meta = json.loads((tmp_path / "out" / "test-run" / "metadata.json").read_text())
    assert len(meta["signature"]["features"]) == 400


# ---- contract: signature size policy and commands -------------------------------------------------------


def _signature(n: int) -> contract.Signature:
    return {"features": [{"name": f"f{i:05d}", "dtype": "float64"} for i in range(n)], "target": "y"}


def test_result_keeps_a_signature_that_fits_whole() -> None:
    res = contract.Result(outcome="Succeeded", reason="Trained", signature=_signature(60), timings={"t": 1.0})
    parsed = contract.parse_result(res.to_json())
    assert parsed is not None and parsed.signature == _signature(60) and parsed.trimmed is None


def test_result_drops_a_signature_too_large_whole_never_partly() -> None:
    res = contract.Result(
        outcome="Succeeded",
        reason="Trained",
        metrics={"accuracy": 0.9},
        model={"uri": "pvc://m/r/model.joblib", "sha256": "a" * 64, "size": 1, "format": "joblib"},
        versions={"python": "3.11"},
        timings={"total": 1.0},
        warnings=["w"],
        signature=_signature(3000),
    )
    text = res.to_json()
    assert len(text.encode()) <= contract.RESULT_MAX_BYTES
    parsed = contract.parse_result(text)
    assert parsed is not None and parsed.signature is None
    assert parsed.trimmed == ["timings", "warnings", "signature"]
    assert parsed.versions == {"python": "3.11"} and parsed.metrics == {"accuracy": 0.9}
    assert json.loads(text)["trimmed"] == ["timings", "warnings", "signature"]


def test_verify_and_cleanup_commands_are_what_the_trainer_image_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    from kubetrain_trainer.__main__ import build_parser

    command = contract.verify_command("/mnt/m/model.joblib", "ab" * 32)
    assert command[:4] == list(contract.VERIFY_COMMAND)
    args = build_parser().parse_args(command[3:])
    assert (args.command, args.model, args.sha256) == ("verify", "/mnt/m/model.joblib", "ab" * 32)
    assert contract.verify_command() == list(contract.VERIFY_COMMAND)
    assert build_parser().parse_args(list(contract.VALIDATE_COMMAND[3:])).command == "validate"
    victim = tmp_path / "artifacts" / "run"
    victim.mkdir(parents=True)
    (victim / "model.joblib").write_bytes(b"x")
    cleanup = contract.cleanup_command(str(victim))
    assert cleanup[:2] == ["python", "-c"]
    subprocess.run([sys.executable, *cleanup[1:]], check=True, capture_output=True)
    assert not victim.exists() and victim.parent.exists()
