"""Every run writes evaluation.json and the model report (PNG plots + report.html) next to its model, and
the result carries the report's URI and a bounded summary; rendering failures never fail a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubetrain_api.models import SUMMARY_MAX_CLASSES, SUMMARY_MAX_FEATURES, EvaluationSummary
from kubetrain_trainer import contract, reporting

from tests.evaluation_checks import (
    CORE_FILES,
    EXPECTED_PLOTS,
    check_evaluation_matches_sklearn,
    check_pngs,
    check_report_in_chromium,
    holdout,
)

from .conftest import spec_for, write_config

RUNS = {
    # name: (file, target, estimator, params)
    "iris": ("iris.csv", "species", "random_forest", {"n_estimators": 15}),
    "wine": ("wine.parquet", "cultivar", "hist_gradient_boosting", {"max_iter": 30}),
    "diabetes": ("diabetes.jsonl", "progression", "ridge", {"alpha": 1.0}),
    "logs": ("logs.json", None, "isolation_forest", {"n_estimators": 25, "contamination": 0.05}),
}


def _train(cli: Any, data_dir: Path, tmp_path: Path, name: str) -> tuple[Any, Path]:
    file, target, estimator, params = RUNS[name]
    cfg = write_config(tmp_path / f"{name}.yaml", spec_for((data_dir / file).as_uri(), target, estimator, params), name)
    run = cli("run", "--config", str(cfg), "--output", str(tmp_path / "out"))
    assert run.code == 0, run.result
    return run, tmp_path / "out" / name


@pytest.mark.parametrize("name", list(RUNS))
def test_run_writes_evaluation_and_report_next_to_the_model(
    cli: Any, data_dir: Path, tmp_path: Path, name: str
) -> None:
    run, run_dir = _train(cli, data_dir, tmp_path, name)
    res = run.result
    meta = json.loads((run_dir / "metadata.json").read_text())
    task = meta["task"]
    names = {p.name for p in run_dir.iterdir()}
    assert names >= CORE_FILES and {n for n in names - CORE_FILES if not n.endswith(".png")} == set(), names
    assert res["report"] == {"uri": (run_dir / "report.html").as_uri()}, res["report"]
    assert res["model"]["uri"].rpartition("/")[0] == res["report"]["uri"].rpartition("/")[0]

    doc = check_evaluation_matches_sklearn(run_dir, *holdout(data_dir / RUNS[name][0], meta))
    assert doc["warnings"] == []
    pngs = check_pngs(run_dir, task)
    assert pngs == EXPECTED_PLOTS[task], pngs  # no labels for the logs: no flags-vs-labels matrix

    summary = EvaluationSummary.model_validate(res["evaluation"])
    assert summary.task == task and summary.rows == doc["nTest"] and summary.incomplete is None
    top = doc["featureImportance"]["features"][:SUMMARY_MAX_FEATURES]
    assert [f.name for f in summary.top_features or []] == [f["name"] for f in top]
    if task == "classification":
        part = doc["classification"]
        assert summary.classes == len(part["perClass"]) and summary.per_class is not None
        aucs = {c["label"]: c["roc"]["auc"] for c in part["curves"]}
        for row, full in zip(summary.per_class, part["perClass"], strict=True):
            assert row.label == str(full["label"]) and row.support == full["support"]
            assert row.f1 == pytest.approx(full["f1"], abs=1e-4)
            assert row.roc_auc == pytest.approx(aucs[full["label"]], abs=1e-4)
    elif task == "regression":
        median = next(q["value"] for q in doc["regression"]["residuals"]["quantiles"] if q["q"] == 0.5)
        assert summary.residuals is not None and summary.residuals.median == pytest.approx(median, abs=1e-4)
    else:
        assert summary.anomaly is not None and summary.anomaly.flagged == doc["anomalyDetection"]["cut"]["flagged"]
        assert summary.anomaly.contamination == 0.05
    assert run.termination is not None and len(run.termination.encode()) <= contract.RESULT_MAX_BYTES
    assert "evaluation" not in (res.get("trimmed") or [])
    assert "report" in res["timings"]


def test_report_of_a_run_renders_in_chromium_with_the_result_metrics(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    run, run_dir = _train(cli, data_dir, tmp_path, "iris")
    pngs = check_pngs(run_dir, "classification")
    dom = check_report_in_chromium(run_dir / "report.html", run.result["metrics"], tmp_path, pngs)
    assert "iris" in dom and "random_forest" in dom  # lineage


def test_a_plot_that_raises_leaves_the_run_succeeded_and_says_so(
    cli: Any, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetrain_trainer import report

    def boom(*_: Any) -> Any:
        raise RuntimeError("the ROC plot broke")

    monkeypatch.setattr(report, "plot_roc", boom)
    run, run_dir = _train(cli, data_dir, tmp_path, "iris")
    assert run.result["reason"] == "Trained"
    assert (run_dir / "report.html").is_file() and not (run_dir / "roc.png").exists()
    assert (run_dir / "pr.png").is_file() and (run_dir / "evaluation.json").is_file()
    problems = run.result["report"]["problems"]
    assert run.result["report"]["uri"].endswith("/report.html")
    assert problems == ["roc.png not rendered: RuntimeError: the ROC plot broke"], problems
    assert "roc.png not rendered" in (run_dir / "report.html").read_text()


def test_a_report_that_cannot_be_rendered_leaves_the_run_succeeded_without_it(
    cli: Any, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetrain_trainer import report

    def boom(*_: Any, **__: Any) -> Any:
        raise MemoryError("no memory left for matplotlib")

    monkeypatch.setattr(report, "render_report", boom)
    run, run_dir = _train(cli, data_dir, tmp_path, "diabetes")
    res = run.result
    assert res["reason"] == "Trained" and res["outcome"] == "Succeeded"
    assert (run_dir / "model.joblib").is_file() and (run_dir / "evaluation.json").is_file()
    assert not (run_dir / "report.html").exists() and not list(run_dir.glob("*.png"))
    assert "uri" not in res["report"]
    assert res["report"]["problems"] == ["report.html not written: MemoryError: no memory left for matplotlib"]
    assert res["evaluation"]["task"] == "regression"  # the summary does not need the report


def test_an_evaluation_that_raises_leaves_the_run_succeeded_without_either(
    cli: Any, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetrain_trainer import evaluation_detail

    def boom(*_: Any, **__: Any) -> Any:
        raise ValueError("cannot describe this model")

    monkeypatch.setattr(evaluation_detail, "evaluation_detail", boom)
    run, run_dir = _train(cli, data_dir, tmp_path, "iris")
    res = run.result
    assert res["reason"] == "Trained"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "metadata.json",
        "model.joblib",
        "model.joblib.sha256",
        "profile.json",
    ]
    assert res["report"] == {"problems": ["evaluation.json not written: ValueError: cannot describe this model"]}
    assert "evaluation" not in res


def _wide_detail(classes: int, features: int) -> dict[str, Any]:
    label = "class-with-a-very-long-label-" + "x" * 80
    return {
        "task": "classification",
        "nTest": 1000,
        "classification": {
            "perClass": [
                {"label": f"{label}{i}", "precision": 1 / 3, "recall": 2 / 3, "f1": 0.123456789, "support": 10}
                for i in range(classes)
            ],
            "curveAveraging": "one-vs-rest",
            "curves": [{"label": f"{label}{i}", "roc": {"auc": 0.987654321}} for i in range(classes)],
        },
        "featureImportance": {
            "scoring": "accuracy",
            "features": [{"name": "f" * 300 + str(i), "mean": 0.1, "std": 0.01} for i in range(features)],
        },
        "warnings": ["no curves for class 'z'"],
    }


def test_the_summary_is_bounded_whatever_the_data() -> None:
    summary = reporting.summary(_wide_detail(classes=500, features=1000))
    assert summary is not None
    parsed = EvaluationSummary.model_validate(summary)
    assert parsed.classes == 500 and len(parsed.per_class or []) == SUMMARY_MAX_CLASSES
    assert len(parsed.top_features or []) == SUMMARY_MAX_FEATURES and parsed.incomplete is True
    assert all(len(c.label) <= 63 for c in parsed.per_class or []) and parsed.per_class[0].f1 == 0.1235  # type: ignore[index]
    size = len(json.dumps(summary, separators=(",", ":")))
    assert size <= 2200, size  # the worst case: about half of the 4 KiB termination message


def test_a_summary_that_does_not_fit_is_trimmed_and_named() -> None:
    big = contract.Result(
        outcome="Succeeded",
        reason="Trained",
        metrics={"accuracy": 0.9},
        model={"uri": "pvc://m/r/model.joblib", "sha256": "a" * 64, "size": 1, "format": "joblib"},
        dataset={"uri": "pvc://d/x.csv", "fingerprint": "sha256:" + "b" * 64},
        best_params={f"p{i}": "v" * 45 for i in range(50)},
        evaluation=reporting.summary(_wide_detail(classes=10, features=5)),
        report={"uri": "pvc://m/r/report.html"},
    )
    text = big.to_json()
    parsed = contract.parse_result(text)
    assert parsed is not None and len(text.encode()) <= contract.RESULT_MAX_BYTES
    assert parsed.evaluation is None and parsed.trimmed == ["evaluation"]
    assert parsed.report == {"uri": "pvc://m/r/report.html"} and parsed.best_params is not None


def test_sibling_uri_keeps_the_scheme() -> None:
    assert reporting.sibling_uri("s3://b/models/r/model.joblib", "report.html") == "s3://b/models/r/report.html"
    assert reporting.sibling_uri("pvc://c/r/model.joblib", "report.html") == "pvc://c/r/report.html"
    assert reporting.sibling_uri("file:///tmp/r/model.joblib", "report.html") == "file:///tmp/r/report.html"
