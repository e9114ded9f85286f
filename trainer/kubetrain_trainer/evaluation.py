"""Per-task metrics, search scorers and threshold gates."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from kubetrain_api.models import DEFAULT_PRIMARY_METRIC, TASK_METRICS
from kubetrain_api.models import LOWER_IS_BETTER as _LOWER_IS_BETTER
from sklearn import metrics as skm
from sklearn.metrics import make_scorer

from .errors import BelowThreshold, ConfigInvalid
from .features import ANOMALY, CLASSIFICATION, REGRESSION

#: Anomaly-detection metrics (of the API's TASK_METRICS) that need labels in spec.dataset.target.
ANOMALY_LABEL_METRICS = ("precision", "recall", "f1")
LOWER_IS_BETTER = frozenset(_LOWER_IS_BETTER)  # one definition, in the API (the operator compares with it)

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
    """The API's TASK_METRICS for the task (without label metrics when there are no labels), checking
    the metrics the spec adds."""
    needs_labels = set(ANOMALY_LABEL_METRICS) if task == ANOMALY and not has_labels else set()
    names = [m for m in TASK_METRICS[task] if m not in needs_labels]
    for m in extra:
        if m not in names:
            if m in needs_labels:
                raise ConfigInvalid(f"spec.evaluation.metrics: {m} needs anomaly labels (spec.dataset.target)")
            raise ConfigInvalid(f"spec.evaluation.metrics: {m} is not computed for {task}")
    return names


def scorer_for(task: str, metric: str | None, n_classes: int, has_labels: bool) -> Any:
    """The scikit-learn scoring for a metric name (search and cv)."""
    metric = metric or DEFAULT_PRIMARY_METRIC[task]
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
    warnings: list[str] = []
    if task == CLASSIFICATION:
        out = _classification_metrics(model, X, y, names, warnings)
    elif task == REGRESSION:
        out = _regression_metrics(model.predict(X), y, names)
    else:
        out = _anomaly_metrics(model.predict(X), y, names)
    clean: dict[str, float] = {}
    for k, v in out.items():
        fv = float(v)
        if math.isfinite(fv):
            clean[k] = round(fv, 6)
        else:
            warnings.append(f"{k} is not finite")
    return clean, warnings


def _probabilities(model: Any, X: Any) -> Any:
    if getattr(model, "classes_", None) is None or not hasattr(model, "predict_proba"):
        return None
    try:
        return model.predict_proba(X)
    except (AttributeError, ValueError):
        return None


_LABEL_METRICS: dict[str, Any] = {
    "accuracy": skm.accuracy_score,
    "balanced_accuracy": skm.balanced_accuracy_score,
    "precision": lambda y, p: skm.precision_score(y, p, average="macro", zero_division=0),
    "recall": lambda y, p: skm.recall_score(y, p, average="macro", zero_division=0),
    "f1": lambda y, p: skm.f1_score(y, p, average="macro", zero_division=0),
}


def _classification_metrics(model: Any, X: Any, y: Any, names: list[str], warnings: list[str]) -> dict[str, Any]:
    classes = getattr(model, "classes_", None)
    proba = _probabilities(model, X)
    # One pass over the test set: the catalogue's classifiers all predict argmax(predict_proba).
    pred = np.asarray(classes).take(np.argmax(proba, axis=1)) if proba is not None else model.predict(X)
    out: dict[str, Any] = {}
    for m in names:
        try:
            if m in _LABEL_METRICS:
                out[m] = _LABEL_METRICS[m](y, pred)
            elif m == "roc_auc" and proba is not None:
                if proba.shape[1] == 2:
                    out[m] = skm.roc_auc_score(y, proba[:, 1])
                else:
                    out[m] = skm.roc_auc_score(y, proba, multi_class="ovr", labels=classes)
            elif m == "log_loss" and proba is not None:
                out[m] = skm.log_loss(y, proba, labels=classes)
        except ValueError as exc:
            warnings.append(f"{m} not computed: {' '.join(str(exc).split())[:200]}")
    return out


_REGRESSION_METRICS: dict[str, Any] = {
    "r2": skm.r2_score,
    "rmse": lambda y, p: math.sqrt(skm.mean_squared_error(y, p)),
    "mae": skm.mean_absolute_error,
}


def _regression_metrics(pred: Any, y: Any, names: list[str]) -> dict[str, Any]:
    return {m: _REGRESSION_METRICS[m](y, pred) for m in names if m in _REGRESSION_METRICS}


def _anomaly_metrics(pred: Any, y: Any, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in names:
        if m == "anomaly_rate":
            out[m] = float(_anomaly_flags(pred).mean())
        elif m in _ANOMALY_SCORERS and y is not None:
            out[m] = _ANOMALY_SCORERS[m](y, pred)
    return out


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


def score_champion(task: str, model: Any, X: Any, y: Any, metric: str) -> tuple[float | None, str | None]:
    """(score, None) of a loaded champion on the hold-out split, or (None, why) when it cannot score it:
    another task's model, columns the hold-out lacks, or a prediction that fails. Never raises."""
    if not hasattr(model, "predict"):
        return None, f"holds a {type(model).__name__}, which has no predict()"
    is_classifier = getattr(model, "classes_", None) is not None
    if task == CLASSIFICATION and not is_classifier:
        return None, "is not a classifier (another task's model)"
    if task == REGRESSION and is_classifier:
        return None, "is a classifier, this run is regression"
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        missing = [str(n) for n in names if n not in X.columns]
        if missing:
            return None, f"reads columns the hold-out lacks: {', '.join(missing[:10])}"
        X = X[list(names)]
    try:
        scores, warnings = compute_metrics(task, model, X, y, [metric])
    except Exception as exc:
        return None, f"cannot score the hold-out: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    if metric not in scores:
        return None, f"{metric} not computed: {'; '.join(warnings) or 'no value'}"
    return scores[metric], None
