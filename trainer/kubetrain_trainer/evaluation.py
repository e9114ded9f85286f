"""Per-task metrics, search scorers and threshold gates."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.metrics import make_scorer

from .errors import BelowThreshold, ConfigInvalid
from .features import ANOMALY, CLASSIFICATION, REGRESSION

DEFAULT_METRICS = {
    CLASSIFICATION: ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"),
    REGRESSION: ("r2", "rmse", "mae"),
    ANOMALY: ("anomaly_rate",),
}
ANOMALY_LABEL_METRICS = ("precision", "recall", "f1")
DEFAULT_PRIMARY = {CLASSIFICATION: "accuracy", REGRESSION: "r2", ANOMALY: "anomaly_rate"}
LOWER_IS_BETTER = {"rmse", "mae", "log_loss"}

_CLASSIFICATION_SCORING = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced_accuracy",
    "precision": "precision_macro",
    "recall": "recall_macro",
    "f1": "f1_macro",
    "log_loss": "neg_log_loss",
}
_REGRESSION_SCORING = {"r2": "r2", "rmse": "neg_root_mean_squared_error", "mae": "neg_mean_absolute_error"}


def _anomaly_flags(pred: Any) -> np.ndarray:
    return (np.asarray(pred) == -1).astype(int)


def _anomaly_precision(y: Any, pred: Any) -> float:
    return float(skm.precision_score(y, _anomaly_flags(pred), zero_division=0))


def _anomaly_recall(y: Any, pred: Any) -> float:
    return float(skm.recall_score(y, _anomaly_flags(pred), zero_division=0))


def _anomaly_f1(y: Any, pred: Any) -> float:
    return float(skm.f1_score(y, _anomaly_flags(pred), zero_division=0))


_ANOMALY_SCORERS = {"precision": _anomaly_precision, "recall": _anomaly_recall, "f1": _anomaly_f1}


def metric_names(task: str, extra: list[str], has_labels: bool) -> list[str]:
    names = list(DEFAULT_METRICS[task])
    if task == ANOMALY and has_labels:
        names += list(ANOMALY_LABEL_METRICS)
    for m in extra:
        if m not in names:
            if task == ANOMALY and m in ANOMALY_LABEL_METRICS and not has_labels:
                raise ConfigInvalid(f"spec.evaluation.metrics: {m} needs anomaly labels (spec.dataset.target)")
            if m not in DEFAULT_METRICS[task] and not (task == ANOMALY and m in ANOMALY_LABEL_METRICS):
                raise ConfigInvalid(f"spec.evaluation.metrics: {m} is not computed for {task}")
            names.append(m)
    return names


def scorer_for(task: str, metric: str | None, n_classes: int, has_labels: bool) -> Any:
    """The scikit-learn scoring for a metric name (search and cv)."""
    metric = metric or DEFAULT_PRIMARY[task]
    if task == CLASSIFICATION:
        if metric == "roc_auc":
            return "roc_auc" if n_classes == 2 else "roc_auc_ovr"
        if metric in _CLASSIFICATION_SCORING:
            return _CLASSIFICATION_SCORING[metric]
    elif task == REGRESSION:
        if metric in _REGRESSION_SCORING:
            return _REGRESSION_SCORING[metric]
    elif task == ANOMALY:
        if metric in _ANOMALY_SCORERS:
            if not has_labels:
                raise ConfigInvalid(f"scoring by {metric} needs anomaly labels (spec.dataset.target)")
            return make_scorer(_ANOMALY_SCORERS[metric])
        raise ConfigInvalid(
            "search and cv for anomalyDetection need labels (spec.dataset.target) and scoring precision/recall/f1"
        )
    raise ConfigInvalid(f"metric {metric!r} cannot score a {task} model")


def score_sign(metric: str) -> float:
    """scikit-learn scorers negate loss metrics; this undoes that for reporting."""
    return -1.0 if metric in LOWER_IS_BETTER else 1.0


def compute_metrics(task: str, model: Any, X: Any, y: Any, names: list[str]) -> tuple[dict[str, float], list[str]]:
    """Metrics on a hold-out set; metrics that cannot be computed are reported as warnings."""
    out: dict[str, float] = {}
    warnings: list[str] = []
    if task == CLASSIFICATION:
        proba = None
        classes = getattr(model, "classes_", None)
        if classes is not None and hasattr(model, "predict_proba"):
            try:
                proba = model.predict_proba(X)
            except (AttributeError, ValueError):
                proba = None
        # One pass over the test set: the catalogue's classifiers all predict argmax(predict_proba).
        pred = np.asarray(classes).take(np.argmax(proba, axis=1)) if proba is not None else model.predict(X)
        for m in names:
            try:
                if m == "accuracy":
                    out[m] = skm.accuracy_score(y, pred)
                elif m == "balanced_accuracy":
                    out[m] = skm.balanced_accuracy_score(y, pred)
                elif m == "precision":
                    out[m] = skm.precision_score(y, pred, average="macro", zero_division=0)
                elif m == "recall":
                    out[m] = skm.recall_score(y, pred, average="macro", zero_division=0)
                elif m == "f1":
                    out[m] = skm.f1_score(y, pred, average="macro", zero_division=0)
                elif m in ("roc_auc", "log_loss") and proba is not None:
                    if m == "roc_auc":
                        if proba.shape[1] == 2:
                            out[m] = skm.roc_auc_score(y, proba[:, 1])
                        else:
                            out[m] = skm.roc_auc_score(y, proba, multi_class="ovr", labels=classes)
                    else:
                        out[m] = skm.log_loss(y, proba, labels=classes)
            except ValueError as exc:
                warnings.append(f"{m} not computed: {' '.join(str(exc).split())[:200]}")
    elif task == REGRESSION:
        pred = model.predict(X)
        for m in names:
            if m == "r2":
                out[m] = skm.r2_score(y, pred)
            elif m == "rmse":
                out[m] = math.sqrt(skm.mean_squared_error(y, pred))
            elif m == "mae":
                out[m] = skm.mean_absolute_error(y, pred)
    else:
        pred = model.predict(X)
        flags = _anomaly_flags(pred)
        for m in names:
            if m == "anomaly_rate":
                out[m] = float(flags.mean())
            elif m in _ANOMALY_SCORERS and y is not None:
                out[m] = _ANOMALY_SCORERS[m](y, pred)
    clean: dict[str, float] = {}
    for k, v in out.items():
        fv = float(v)
        if math.isfinite(fv):
            clean[k] = round(fv, 6)
        else:
            warnings.append(f"{k} is not finite")
    return clean, warnings


def check_thresholds(thresholds: list[Any], metrics: dict[str, float]) -> None:
    failed = []
    for th in thresholds:
        value = metrics.get(th.metric)
        if value is None:
            failed.append(f"{th.metric} was not computed")
            continue
        if th.min is not None and value < th.min:
            failed.append(f"{th.metric}={value:.4g} < min {th.min:g}")
        if th.max is not None and value > th.max:
            failed.append(f"{th.metric}={value:.4g} > max {th.max:g}")
    if failed:
        raise BelowThreshold("thresholds not met: " + "; ".join(failed))
