"""The run's evaluation detail and model report, written next to the model (the ``report`` stage).

``describe`` computes ``evaluation.json`` (``evaluation_detail``) and renders the plots and ``report.html``
(``report``) into a scratch directory; ``save`` then places those files next to the model with the rest of
the artifacts. ``summary`` is the bounded digest of the detail that the result carries to the operator
(``kubetrain_api.models.EvaluationSummary``, a ModelVersion's ``status.evaluation``).

Nothing here fails a run: every failure, expected or not, becomes a problem in ``Described.problems``
(``Result.report.problems``) and the run goes on without the part that failed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetrain_api.models import (
    SUMMARY_MAX_CLASSES,
    SUMMARY_MAX_FEATURES,
    SUMMARY_MAX_NAME,
    EvaluationSummary,
)
from pydantic import ValidationError

from . import contract

SUMMARY_DIGITS = 4


@dataclass
class Described:
    """What ``describe`` produced: files to place next to the model (name → local path), the summary
    for the result, and what is missing."""

    files: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def report_info(self, model_uri: str) -> contract.ReportInfo:
        """``Result.report``: the URI of report.html (a sibling of the model file) and the problems."""
        info: contract.ReportInfo = {}
        if contract.REPORT_FILE in self.files:
            info["uri"] = sibling_uri(model_uri, contract.REPORT_FILE)
        if self.problems:
            info["problems"] = [p[: contract.REPORT_PROBLEM_MAX] for p in self.problems[: contract.REPORT_PROBLEMS_MAX]]
        return info


def sibling_uri(model_uri: str, name: str) -> str:
    """The URI of ``name`` in the directory of the model file ``model_uri`` (any scheme)."""
    return f"{model_uri.rstrip('/').rpartition('/')[0]}/{name}"


def _problem(what: str, exc: BaseException) -> str:
    return f"{what}: {type(exc).__name__}: {' '.join(str(exc).split())}"[: contract.REPORT_PROBLEM_MAX]


def describe(
    pipeline: Any,
    X_test: Any,
    y_test: Any,
    task: str,
    out_dir: Path,
    *,
    seed: int,
    title: str,
    params: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
    dataset: Mapping[str, Any] | None,
    library_versions: Mapping[str, Any] | None,
    lineage: Mapping[str, Any] | None,
) -> Described:
    """evaluation.json, the PNG plots and report.html in ``out_dir``; never raises."""
    out = Described()
    try:
        from . import evaluation_detail

        detail = evaluation_detail.evaluation_detail(pipeline, X_test, y_test, task, seed=seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / contract.EVALUATION_FILE
        path.write_text(json.dumps(detail, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
        out.files[contract.EVALUATION_FILE] = path
    except Exception as exc:
        out.problems.append(_problem(f"{contract.EVALUATION_FILE} not written", exc))
        return out
    out.problems += [f"{contract.EVALUATION_FILE}: {w}"[: contract.REPORT_PROBLEM_MAX] for w in detail["warnings"]]
    try:
        out.summary = summary(detail)
    except Exception as exc:
        out.problems.append(_problem("no evaluation summary", exc))
    try:
        from .report import render_report

        report = render_report(
            detail,
            out_dir,
            title=title,
            params=params,
            metrics=metrics,
            dataset=dataset,
            library_versions=library_versions,
            lineage=lineage,
        )
        out.problems += report.warnings
        for name in report.files:
            out.files[name] = out_dir / name
    except Exception as exc:
        out.problems.append(_problem(f"{contract.REPORT_FILE} not written", exc))
    return out


# ---- the summary ----------------------------------------------------------------------------------------


def _r(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return round(f, SUMMARY_DIGITS) if math.isfinite(f) else None


def _name(value: Any) -> str:
    return str(value)[:SUMMARY_MAX_NAME]


def summary(detail: Mapping[str, Any]) -> dict[str, Any] | None:
    """The bounded summary of an evaluation detail (``EvaluationSummary``, camelCase), or None when the
    detail has no known task."""
    task = detail.get("task")
    part = detail.get(str(task)) or {}
    out: dict[str, Any] = {"task": task, "rows": detail.get("nTest")}
    if task == "classification" and part.get("perClass"):
        auc = {str(c["label"]): c["roc"]["auc"] for c in part.get("curves") or []}
        if part.get("curveAveraging") == "binary" and len(part["perClass"]) == 2:
            # the binary curve is the positive class's; its AUC is the other class's too
            auc.setdefault(str(part["perClass"][0]["label"]), next(iter(auc.values()), None))
        out["classes"] = len(part["perClass"])
        out["perClass"] = [
            {
                "label": _name(c["label"]),
                "precision": _r(c["precision"]),
                "recall": _r(c["recall"]),
                "f1": _r(c["f1"]),
                "support": int(c["support"]),
                "rocAuc": _r(auc.get(str(c["label"]))),
            }
            for c in part["perClass"][:SUMMARY_MAX_CLASSES]
        ]
    elif task == "regression" and part:
        quantiles = {q["q"]: q["value"] for q in part["residuals"]["quantiles"]}
        out["residuals"] = {
            "p05": _r(quantiles.get(0.05)),
            "median": _r(quantiles.get(0.5)),
            "p95": _r(quantiles.get(0.95)),
            "meanAbsolute": _r(part["residuals"]["meanAbsolute"]),
        }
    elif task == "anomalyDetection" and part:
        cut = part["cut"]
        contamination = cut.get("contamination")
        out["anomaly"] = {
            "flagged": int(cut["flagged"]),
            "flaggedFraction": _r(cut.get("flaggedFraction")),
            "contamination": None if isinstance(contamination, str) else _r(contamination),  # "auto": absent
            "offset": _r(cut.get("offset")),
        }
    importance = detail.get("featureImportance") or {}
    if importance.get("features"):
        out["topFeatures"] = [
            {"name": _name(f["name"]), "mean": _r(f["mean"]), "std": _r(f["std"])}
            for f in importance["features"][:SUMMARY_MAX_FEATURES]
        ]
        out["importanceScoring"] = str(importance.get("scoring") or "")[:64] or None
    if detail.get("warnings"):
        out["incomplete"] = True
    try:
        model = EvaluationSummary.model_validate(_without_none(out))
    except ValidationError:
        return None
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
