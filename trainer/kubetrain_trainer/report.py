"""The model report: PNG plots drawn from the evaluation detail and a self-contained ``report.html``.

``render_report(detail, out_dir, ...)`` writes, as far as the detail allows,

* ``confusion_matrix.png`` (classification; the flags-vs-labels matrix for labelled anomaly detection),
* ``roc.png`` and ``pr.png`` (classification, binary or one-vs-rest),
* ``feature_importance.png`` (every task: permutation importance with its spread),
* ``residuals.png`` (regression: residual distribution and predicted vs actual),
* ``anomaly_scores.png`` (anomaly detection: the score distribution with the contamination cut),
* ``report.html`` embedding them (data: URIs, no external resource) with the params, metrics, dataset
  fingerprint, library versions and lineage.

Rendering never raises: each plot that fails, or a missing matplotlib, becomes a warning in the returned
``Report`` and the rest is still written. matplotlib is used headless through the object-oriented API
(``Figure`` on the Agg canvas; no pyplot state, safe in threads).
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLOT_DPI = 100
REPORT_FILE = "report.html"


@dataclass
class Report:
    """What was written: file names (relative to ``out_dir``) and warnings for what was not."""

    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def html(self) -> str | None:
        return REPORT_FILE if REPORT_FILE in self.files else None


# ---- plots --------------------------------------------------------------------------------------------


def _figure(width: float = 6.0, height: float = 4.5) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=PLOT_DPI, layout="constrained")


def plot_confusion_matrix(cm: Mapping[str, Any], title: str) -> Any:
    import numpy as np

    matrix = np.asarray(cm["matrix"], dtype=float)
    labels = [str(x) for x in cm["labels"]]
    n = len(labels)
    fig = _figure(max(4.0, 1.0 + 0.6 * n), max(3.5, 0.8 + 0.55 * n))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel(str(cm.get("columns", "predicted")))
    ax.set_ylabel(str(cm.get("rows", "actual")))
    ax.set_title(title)
    top = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{int(matrix[i, j])}",
                ha="center",
                va="center",
                color="white" if top and matrix[i, j] > top / 2 else "black",
            )
    return fig


def plot_roc(curves: list[Mapping[str, Any]]) -> Any:
    fig = _figure()
    ax = fig.add_subplot()
    for c in curves:
        ax.plot(c["roc"]["fpr"], c["roc"]["tpr"], label=f"{c['label']} (AUC {c['roc']['auc']:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC" + (" (one-vs-rest)" if len(curves) > 1 else ""))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_pr(curves: list[Mapping[str, Any]]) -> Any:
    fig = _figure()
    ax = fig.add_subplot()
    for c in curves:
        ax.step(
            c["pr"]["recall"],
            c["pr"]["precision"],
            where="post",
            label=f"{c['label']} (AP {c['pr']['averagePrecision']:.3f})",
        )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall" + (" (one-vs-rest)" if len(curves) > 1 else ""))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize="small")
    return fig


def plot_feature_importance(fi: Mapping[str, Any]) -> Any:
    features = list(fi["features"])[::-1]  # largest on top
    fig = _figure(7.0, max(2.5, 0.8 + 0.32 * len(features)))
    ax = fig.add_subplot()
    ax.barh(
        [f["name"] for f in features],
        [f["mean"] or 0.0 for f in features],
        xerr=[f["std"] or 0.0 for f in features],
        color="#4c72b0",
        ecolor="#333333",
        capsize=3,
    )
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_xlabel(f"mean drop of {fi.get('scoring', 'the score')} when permuted (± std, {fi.get('nRepeats')} repeats)")
    ax.set_title("Permutation feature importance (hold-out)")
    return fig


def plot_residuals(reg: Mapping[str, Any]) -> Any:
    pva = reg["predictedVsActual"]
    actual, predicted = pva["sample"]["actual"], pva["sample"]["predicted"]
    residuals = [a - p for a, p in zip(actual, predicted, strict=True)]
    fig = _figure(10.0, 4.2)
    left, right = fig.subplots(1, 2)
    left.hist(residuals, bins=min(30, max(5, len(residuals) // 4)), color="#4c72b0")
    median = next(q["value"] for q in reg["residuals"]["quantiles"] if q["q"] == 0.5)
    left.axvline(median, color="#c44e52", linestyle="--", label=f"median {median:.3g}")
    left.set_xlabel("residual (actual - predicted)")
    left.set_ylabel("count")
    left.set_title("Residuals")
    left.legend(fontsize="small")
    right.scatter(actual, predicted, s=12, alpha=0.7, color="#4c72b0")
    lo, hi = min(actual + predicted), max(actual + predicted)
    right.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=1)
    right.set_xlabel("actual")
    right.set_ylabel("predicted")
    right.set_title(f"Predicted vs actual (R² {pva['r2']:.3f})")
    return fig


def plot_anomaly_scores(anom: Mapping[str, Any]) -> Any:
    scores = anom["scores"]
    edges, counts = scores["histogram"]["edges"], scores["histogram"]["counts"]
    fig = _figure()
    ax = fig.add_subplot()
    widths = [b - a for a, b in itertools.pairwise(edges)]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="#4c72b0", edgecolor="white")
    threshold = scores.get("threshold")
    cut = anom["cut"]
    if threshold is not None:
        ax.axvline(
            threshold,
            color="#c44e52",
            linestyle="--",
            label=f"cut: {cut['flagged']} flagged ({100 * (cut['flaggedFraction'] or 0):.1f}%)",
        )
        ax.legend(fontsize="small")
    ax.set_xlabel(f"{scores['name']} (lower = more anomalous)")
    ax.set_ylabel("count")
    ax.set_title("Anomaly score distribution")
    return fig


def _plots(detail: Mapping[str, Any]) -> list[tuple[str, str, Callable[[], Any]]]:
    """(file name, caption, drawing function) of every plot the detail supports."""
    task = detail.get("task")
    part = detail.get(str(task)) or {}
    plots: list[tuple[str, str, Callable[[], Any]]] = []
    if task == "classification" and part:
        plots.append(
            (
                "confusion_matrix.png",
                "Confusion matrix",
                lambda: plot_confusion_matrix(part["confusionMatrix"], "Confusion matrix (hold-out)"),
            )
        )
        if part.get("curves"):
            plots.append(("roc.png", "ROC curve", lambda: plot_roc(part["curves"])))
            plots.append(("pr.png", "Precision-recall curve", lambda: plot_pr(part["curves"])))
    elif task == "regression" and part:
        plots.append(("residuals.png", "Residuals and predicted vs actual", lambda: plot_residuals(part)))
    elif task == "anomalyDetection" and part:
        if part.get("scores"):
            plots.append(("anomaly_scores.png", "Anomaly score distribution", lambda: plot_anomaly_scores(part)))
        if part.get("labels"):
            plots.append(
                (
                    "confusion_matrix.png",
                    "Flags vs labels",
                    lambda: plot_confusion_matrix(part["labels"]["confusionMatrix"], "Flags vs labels"),
                )
            )
    fi = detail.get("featureImportance")
    if fi and fi.get("features"):
        plots.append(("feature_importance.png", "Permutation feature importance", lambda: plot_feature_importance(fi)))
    return plots


# ---- HTML ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.5rem 1rem .5rem 0}figcaption{font-size:.9rem;color:#555}
img{max-width:100%;border:1px solid #eee}.warn{color:#8a5300}code{font-size:.9em}
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def _table(rows: list[tuple[Any, ...]], headers: tuple[str, ...], css_id: str = "") -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{e(_fmt(c))}</td>'
            if isinstance(c, int | float) and not isinstance(c, bool)
            else f"<td>{e(_fmt(c))}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    ident = f' id="{e(css_id)}"' if css_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _mapping_table(data: Mapping[str, Any] | None, css_id: str, key: str = "name", value: str = "value") -> str:
    if not data:
        return "<p>(none)</p>"
    return _table([(k, data[k]) for k in sorted(data)], (key, value), css_id)


def render_html(
    detail: Mapping[str, Any],
    images: list[tuple[str, str, bytes]],
    *,
    title: str,
    params: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
    dataset: Mapping[str, Any] | None,
    library_versions: Mapping[str, Any] | None,
    lineage: Mapping[str, Any] | None,
    warnings: list[str],
) -> str:
    """The self-contained report page (pure: the PNG bytes are embedded as data: URIs)."""
    e = html.escape
    task = detail.get("task")
    part = detail.get(str(task)) or {}
    sections = [
        f"<h1>{e(title)}</h1>",
        f"<p>Task <code>{e(str(task))}</code>, {e(str(detail.get('nTest', '?')))} hold-out rows.</p>",
        "<h2>Metrics</h2>",
        _mapping_table(metrics, "metrics", "metric", "value"),
        "<h2>Parameters</h2>",
        _mapping_table(params, "params", "parameter", "value"),
        "<h2>Dataset</h2>",
        _mapping_table(dataset, "dataset", "field", "value"),
    ]
    if task == "classification" and part.get("perClass"):
        sections += [
            "<h2>Per class</h2>",
            _table(
                [(c["label"], c["precision"], c["recall"], c["f1"], c["support"]) for c in part["perClass"]],
                ("class", "precision", "recall", "f1", "support"),
                "per-class",
            ),
        ]
    if task == "regression" and part:
        sections += [
            "<h2>Residual quantiles</h2>",
            _table(
                [(q["q"], q["value"]) for q in part["residuals"]["quantiles"]], ("quantile", "residual"), "residuals"
            ),
        ]
    if task == "anomalyDetection" and part:
        sections += ["<h2>Contamination cut</h2>", _mapping_table(part["cut"], "cut", "field", "value")]
    fi = detail.get("featureImportance")
    if fi and fi.get("features"):
        sections += [
            f"<h2>Feature importance</h2><p>Permutation importance on the hold-out, scored by "
            f"{e(str(fi.get('scoring')))}, {e(str(fi.get('nRepeats')))} repeats (top {len(fi['features'])} of "
            f"{e(str(fi.get('nFeatures')))})"
            + (
                f", on a seeded sample of {e(str(fi.get('rowsUsed')))} hold-out rows (cap {e(str(fi.get('maxRows')))})"
                if fi.get("sampled")
                else ""
            )
            + ".</p>",
            _table(
                [(f["name"], f["mean"], f["std"]) for f in fi["features"]], ("feature", "mean", "std"), "importance"
            ),
        ]
    if images:
        sections.append("<h2>Plots</h2>")
        for name, caption, data in images:
            uri = "data:image/png;base64," + base64.b64encode(data).decode()
            sections.append(
                f'<figure><img src="{uri}" alt="{e(caption)}" data-file="{e(name)}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
    sections += [
        "<h2>Lineage</h2>",
        _mapping_table(lineage, "lineage", "field", "value"),
        "<h2>Library versions</h2>",
        _mapping_table(library_versions, "versions", "library", "version"),
    ]
    all_warnings = list(detail.get("warnings") or []) + warnings
    if all_warnings:
        sections.append(
            "<h2>Warnings</h2><ul>" + "".join(f'<li class="warn">{e(w)}</li>' for w in all_warnings) + "</ul>"
        )
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{e(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


# ---- the entry point ----------------------------------------------------------------------------------


def render_report(
    detail: Mapping[str, Any],
    out_dir: Path,
    *,
    title: str = "Model report",
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
    library_versions: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> Report:
    """Write the plots and ``report.html`` into ``out_dir``. Never raises: failures are warnings."""
    report = Report()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        images: list[tuple[str, str, bytes]] = []
        try:
            import matplotlib.figure  # noqa: F401  (Figure.savefig draws PNGs on the Agg canvas; no pyplot)

            plots = _plots(detail)
        except Exception as exc:  # matplotlib missing or broken: the HTML still gets written
            report.warnings.append(f"no plots: {type(exc).__name__}: {exc}")
            plots = []
        for name, caption, draw in plots:
            try:
                fig = draw()
                path = out_dir / name
                fig.savefig(path, format="png", metadata={"Title": caption})  # the PNG names its plot
                images.append((name, caption, path.read_bytes()))
                report.files.append(name)
            except Exception as exc:
                report.warnings.append(f"{name} not rendered: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        page = render_html(
            detail,
            images,
            title=title,
            params=params,
            metrics=metrics,
            dataset=dataset,
            library_versions=library_versions,
            lineage=lineage,
            warnings=report.warnings,
        )
        (out_dir / REPORT_FILE).write_text(page, encoding="utf-8")
        report.files.append(REPORT_FILE)
    except Exception as exc:
        report.warnings.append(f"{REPORT_FILE} not written: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    return report
