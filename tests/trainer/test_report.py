"""The model report: PNGs that are real images of the stated kind, a self-contained report.html that
headless Chromium renders showing the metric values, and rendering failures that are warnings only."""

from __future__ import annotations

import copy
import functools
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubetrain_trainer import evaluation_detail as ed
from kubetrain_trainer.report import render_html, render_report
from PIL import Image

from .test_evaluation_detail import fitted, log_anomaly

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_TITLES = {  # the PNG's Title text chunk: which plot it is
    "confusion_matrix.png": "Confusion matrix",  # "Flags vs labels" for anomaly detection
    "roc.png": "ROC curve",
    "pr.png": "Precision-recall curve",
    "residuals.png": "Residuals and predicted vs actual",
    "feature_importance.png": "Permutation feature importance",
    "anomaly_scores.png": "Anomaly score distribution",
}
EXPECTED_PLOTS = {
    "iris": {"confusion_matrix.png", "roc.png", "pr.png", "feature_importance.png"},
    "wine": {"confusion_matrix.png", "roc.png", "pr.png", "feature_importance.png"},
    "diabetes": {"residuals.png", "feature_importance.png"},
    "log-anomaly": {"anomaly_scores.png", "confusion_matrix.png", "feature_importance.png"},
}


def detail_for(kind: str) -> tuple[dict[str, Any], dict[str, float]]:
    """(evaluation detail, the metrics a run's status would show) for a dataset (a fresh copy each call)."""
    return copy.deepcopy(_detail_for(kind))


@functools.cache
def _detail_for(kind: str) -> tuple[dict[str, Any], dict[str, float]]:
    from sklearn import metrics as skm

    if kind == "log-anomaly":
        model, X, labels = log_anomaly()
        doc = ed.evaluation_detail(model, X, labels, ed.ANOMALY, n_repeats=2)
        return doc, {"anomaly_rate": round(float((model.predict(X) == -1).mean()), 6)}
    model, Xte, yte, task = fitted(kind)
    doc = ed.evaluation_detail(model, Xte, yte, task, n_repeats=2)
    pred = model.predict(Xte)
    if task == ed.CLASSIFICATION:
        return doc, {
            "accuracy": round(skm.accuracy_score(yte, pred), 6),
            "f1": round(skm.f1_score(yte, pred, average="macro"), 6),
        }
    return doc, {"r2": round(skm.r2_score(yte, pred), 6), "mae": round(skm.mean_absolute_error(yte, pred), 6)}


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is needed (Debian's chromium package: `make tools`)"
    return found


def headless(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    cmd = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
        "--enable-logging=stderr", "--v=0", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})


@pytest.mark.parametrize("kind", list(EXPECTED_PLOTS))
def test_report_plots_are_valid_pngs_and_the_html_embeds_them(kind: str, tmp_path: Path) -> None:
    doc, metrics = detail_for(kind)
    report = render_report(
        doc, tmp_path / "report", title=f"{kind} version 1", params={"n_estimators": 50},
        metrics=metrics, dataset={"uri": f"pvc://data/{kind}.csv", "fingerprint": "sha256:abc123"},
        library_versions={"scikit-learn": "1.x"}, lineage={"trainingRun": kind, "image": "trainer:dev"},
    )  # fmt: skip
    assert report.warnings == [] and report.html == "report.html"
    pngs = {f for f in report.files if f.endswith(".png")}
    assert pngs == EXPECTED_PLOTS[kind]
    for name in pngs:
        data = (tmp_path / "report" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 200, (name, image.size)
            title = "Flags vs labels" if (kind, name) == ("log-anomaly", "confusion_matrix.png") else PLOT_TITLES[name]
            assert image.text.get("Title") == title, (name, image.text)
            lo, hi = image.convert("L").getextrema()
            assert hi - lo > 100, f"{name} looks blank"
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert not re.search(r'(src|href)="(https?:)?//', page), "report.html must be self-contained"
    for value in metrics.values():
        assert f"{value:.6g}" in page
    # the params, the dataset's fingerprint, the library versions and the lineage, each in its own table
    for css_id, cell in (
        ("params", '<td>n_estimators</td><td class="num">50</td>'),
        ("dataset", "<td>fingerprint</td><td>sha256:abc123</td>"),
        ("dataset", f"<td>uri</td><td>pvc://data/{kind}.csv</td>"),
        ("versions", "<td>scikit-learn</td><td>1.x</td>"),
        ("lineage", f"<td>trainingRun</td><td>{kind}</td>"),
        ("lineage", "<td>image</td><td>trainer:dev</td>"),
    ):
        table = re.search(rf'<table id="{css_id}">(.*?)</table>', page, re.S)
        assert table and cell in table.group(1), (css_id, cell, table and table.group(1)[:500])


@pytest.mark.parametrize("kind", ["iris", "diabetes", "log-anomaly"])
def test_report_renders_in_headless_chromium_with_the_metric_values(kind: str, tmp_path: Path) -> None:
    doc, metrics = detail_for(kind)
    out = tmp_path / "report"
    report = render_report(doc, out, title=f"{kind} v1", metrics=metrics, params={"seed": 42},
                           dataset={"fingerprint": "sha256:abc123"})  # fmt: skip
    assert report.warnings == []
    url = (out / "report.html").as_uri()
    dom = headless(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<h1>" in dom.stdout and f"{kind} v1" in dom.stdout
    metrics_table = re.search(r'<table id="metrics">(.*?)</table>', dom.stdout, re.S)
    assert metrics_table, dom.stdout[:2000]
    for name, value in metrics.items():
        assert re.search(rf"<td>{re.escape(name)}</td><td class=\"num\">{re.escape(f'{value:.6g}')}</td>",
                         metrics_table.group(1)), (name, value)  # fmt: skip
    assert dom.stdout.count("<img ") == len([f for f in report.files if f.endswith(".png")])
    assert "Uncaught" not in dom.stderr and "ERR_FILE_NOT_FOUND" not in dom.stderr
    shot = tmp_path / "shot.png"
    proc = headless(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", url)
    assert proc.returncode == 0 and shot.read_bytes().startswith(PNG_SIGNATURE), proc.stderr[-2000:]
    if os.environ.get("KUBETRAIN_KEEP_REPORTS"):
        keep = Path(os.environ["KUBETRAIN_KEEP_REPORTS"]) / kind
        shutil.copytree(out, keep, dirs_exist_ok=True)
        shutil.copy(shot, keep / "screenshot.png")


def test_a_plot_that_fails_is_a_warning_and_the_report_is_still_written(tmp_path: Path) -> None:
    doc, metrics = detail_for("iris")
    doc["classification"]["confusionMatrix"]["matrix"] = "not a matrix"
    report = render_report(doc, tmp_path / "r", metrics=metrics)
    assert any(w.startswith("confusion_matrix.png not rendered") for w in report.warnings), report.warnings
    assert "confusion_matrix.png" not in report.files and "roc.png" in report.files
    page = (tmp_path / "r" / "report.html").read_text()
    assert "confusion_matrix.png not rendered" in page  # the warning is in the page too


def test_an_unwritable_output_is_a_warning_not_an_exception(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    report = render_report({"task": "classification", "warnings": []}, blocker / "sub")
    assert report.files == [] and report.html is None
    assert report.warnings and "not written" in report.warnings[-1]


def test_without_matplotlib_the_html_is_still_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc, metrics = detail_for("diabetes")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if it were not installed
    report = render_report(doc, tmp_path / "r", metrics=metrics)
    assert report.files == ["report.html"] and report.warnings[0].startswith("no plots: ModuleNotFoundError")


def test_html_escapes_what_it_embeds() -> None:
    page = render_html(
        {"task": "regression", "warnings": []}, [], title="<script>alert(1)</script>",
        params={"name": "<b>x</b>"}, metrics={"r2": 0.5}, dataset=None, library_versions=None, lineage=None,
        warnings=[],
    )  # fmt: skip
    assert "<script>alert" not in page and "&lt;script&gt;" in page and "&lt;b&gt;x&lt;/b&gt;" in page
