"""Checks of what a run writes next to its model (evaluation.json, the PNG plots, report.html), shared by
the trainer tests (file and s3 outputs) and the cluster acceptance test (a PVC).

``expected_detail`` recomputes, with scikit-learn only, what evaluation.json must hold for the saved
pipeline on the run's own hold-out split (the split the trainer makes: ``train_test_split`` with the run's
``testFraction`` and ``seed``, stratified for classification).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED_PLOTS = {
    "classification": {"confusion_matrix.png", "roc.png", "pr.png", "feature_importance.png"},
    "regression": {"residuals.png", "feature_importance.png"},
    "anomalyDetection": {"anomaly_scores.png", "feature_importance.png"},
}
CORE_FILES = {"model.joblib", "model.joblib.sha256", "metadata.json", "profile.json", "evaluation.json", "report.html"}


def holdout(data_file: Path, metadata: dict[str, Any]) -> tuple[pd.DataFrame, pd.Series | None]:
    """The run's hold-out split of the local copy ``data_file`` of its dataset: read and typed by the
    trainer's own loader, split by the trainer's own ``stages.split`` (same testFraction and seed)."""
    from kubetrain_trainer import stages
    from kubetrain_trainer.config import parse_config
    from kubetrain_trainer.data import read_table

    cfg = parse_config({"metadata": {"name": metadata["run"]["name"]}, "spec": metadata["config"]})
    fmt = metadata["dataset"]["format"]
    loaded = stages.Loaded(read_table(data_file, fmt, cfg.spec.dataset.records_path), fmt)
    split = stages.split(cfg, stages.prepare(cfg, loaded))
    return split.X_test, split.y_test


def check_evaluation_matches_sklearn(run_dir: Path, X_test: pd.DataFrame, y_test: pd.Series | None) -> dict[str, Any]:
    """evaluation.json against scikit-learn's own numbers for the saved pipeline on the hold-out; returns it."""
    import joblib
    from sklearn import metrics as skm
    from sklearn.inspection import permutation_importance

    doc = json.loads((run_dir / "evaluation.json").read_text())
    meta = json.loads((run_dir / "metadata.json").read_text())
    model = joblib.load(run_dir / "model.joblib")
    task = meta["task"]
    assert doc["task"] == task and doc["nTest"] == len(X_test), (doc["task"], doc["nTest"], len(X_test))
    assert doc["schemaVersion"] == 1
    if task == "classification":
        assert y_test is not None
        part = doc["classification"]
        labels = list(model.classes_)
        pred = model.predict(X_test)
        assert part["confusionMatrix"]["labels"] == labels
        assert part["confusionMatrix"]["matrix"] == skm.confusion_matrix(y_test, pred, labels=labels).tolist()
        p, r, f, s = skm.precision_recall_fscore_support(y_test, pred, labels=labels, zero_division=0)
        for row, pi, ri, fi, si in zip(part["perClass"], p, r, f, s, strict=True):
            assert row["precision"] == pytest.approx(pi) and row["recall"] == pytest.approx(ri)
            assert row["f1"] == pytest.approx(fi) and row["support"] == si
        assert part["accuracy"] == pytest.approx(skm.accuracy_score(y_test, pred))
        proba = model.predict_proba(X_test)
        assert part["curves"], "no ROC/PR curves"
        for curve in part["curves"]:
            column = labels.index(curve["label"])
            truth = (np.asarray(y_test) == curve["label"]).astype(int)
            assert curve["roc"]["auc"] == pytest.approx(skm.roc_auc_score(truth, proba[:, column]))
            assert curve["pr"]["averagePrecision"] == pytest.approx(
                skm.average_precision_score(truth, proba[:, column])
            )
            assert curve["roc"]["fpr"][0] == 0.0 and curve["roc"]["tpr"][-1] == 1.0
            assert len(curve["roc"]["fpr"]) <= 200
        expected_curves = 1 if len(labels) == 2 else len(labels)
        assert len(part["curves"]) == expected_curves
    elif task == "regression":
        assert y_test is not None
        part = doc["regression"]
        residuals = np.asarray(y_test, dtype=float) - model.predict(X_test)
        for q in part["residuals"]["quantiles"]:
            assert q["value"] == pytest.approx(float(np.quantile(residuals, q["q"]))), q
        assert part["residuals"]["meanAbsolute"] == pytest.approx(float(np.abs(residuals).mean()))
        assert part["predictedVsActual"]["r2"] == pytest.approx(skm.r2_score(y_test, model.predict(X_test)))
    else:
        part = doc["anomalyDetection"]
        pred = model.predict(X_test)
        assert part["cut"]["flagged"] == int((pred == -1).sum())
        scores = model.decision_function(X_test)
        median = next(q["value"] for q in part["scores"]["quantiles"] if q["q"] == 0.5)
        assert median == pytest.approx(float(np.median(scores)))
        assert sum(part["scores"]["histogram"]["counts"]) == len(X_test)
        assert part["cut"]["offset"] == pytest.approx(float(model.named_steps["model"].offset_))
    fi = doc["featureImportance"]
    assert fi["method"] == "permutation" and 1 <= len(fi["features"]) <= 20
    assert fi["nFeatures"] == X_test.shape[1]
    from kubetrain_trainer.evaluation_detail import importance_rows

    rows = importance_rows(len(X_test), fi["maxRows"], fi["seed"])
    assert fi["rowsUsed"] == (len(X_test) if rows is None else fi["maxRows"]) and fi["sampled"] == (rows is not None)
    if task != "anomalyDetection":  # the unsupervised anomaly scorer is the trainer's own
        scoring = {"classification": "accuracy", "regression": "r2"}[task]
        X_fi, y_fi = (X_test, y_test) if rows is None else (X_test.iloc[rows], y_test.iloc[rows])  # type: ignore[union-attr]
        ours = permutation_importance(
            model, X_fi, y_fi, scoring=scoring, n_repeats=fi["nRepeats"], random_state=fi["seed"]
        )
        by_name = dict(zip(X_test.columns, ours.importances_mean, strict=True))
        for f in fi["features"]:
            assert f["mean"] == pytest.approx(by_name[f["name"]], abs=1e-9), f
        means = [f["mean"] for f in fi["features"]]
        assert means == sorted(means, reverse=True)
    return dict(doc)


def check_pngs(run_dir: Path, task: str) -> set[str]:
    """Every expected plot is a real, non-blank PNG (checked with Pillow); returns the PNG names."""
    from PIL import Image

    pngs = {p.name for p in run_dir.glob("*.png")}
    assert EXPECTED_PLOTS[task] <= pngs, pngs
    for name in pngs:
        data = (run_dir / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 200, (name, image.size)
            lo, hi = image.convert("L").getextrema()
            assert hi - lo > 100, f"{name} looks blank"
    return pngs


def check_report_in_chromium(report: Path, metrics: dict[str, float], tmp_path: Path, pngs: set[str]) -> str:
    """report.html renders in headless Chromium without errors and shows each of ``metrics`` (the values
    status shows) in its metrics table; returns the rendered DOM."""
    from tests.trainer.test_report import headless

    dom = headless(tmp_path, "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr and "ERR_FILE_NOT_FOUND" not in dom.stderr, dom.stderr[-2000:]
    table = re.search(r'<table id="metrics">(.*?)</table>', dom.stdout, re.S)
    assert table, dom.stdout[:2000]
    for name, value in metrics.items():
        cell = rf"<td>{re.escape(name)}</td><td class=\"num\">{re.escape(f'{value:.6g}')}</td>"
        assert re.search(cell, table.group(1)), (name, value, table.group(1)[:2000])
    assert dom.stdout.count("<img ") == len(pngs)
    assert not re.search(r'(src|href)="(https?:)?//', report.read_text()), "report.html must be self-contained"
    return dom.stdout
