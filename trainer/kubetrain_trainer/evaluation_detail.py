"""Evaluation detail of a fitted model on its hold-out set, as one JSON-able document (``evaluation.json``).

Pure: no I/O, no plotting (``report.py`` draws from this document). Given the fitted pipeline, the
hold-out ``X_test``/``y_test`` and the task it returns

* classification — the confusion matrix with its labels, per-class precision/recall/f1/support, ROC and
  precision-recall curve points (binary: of the positive class; multi-class: one-vs-rest per class), each
  downsampled to at most ``max_points`` points with both ends kept;
* regression — residual quantiles and moments, and a predicted-vs-actual summary (fit statistics, binned
  means by actual-value decile and a downsampled sample of points);
* anomaly detection — the distribution of the decision score (histogram and quantiles) and the
  contamination cut (the estimator's ``offset_``, its contamination, how many points it flags; with labels,
  how the flags meet them);
* for every estimator, permutation feature importance on the hold-out (top ``top_features`` input columns
  by mean drop of the score, with the standard deviation over repeats). Its cost is rows x features x
  repeats predictions, so a hold-out larger than ``max_importance_rows`` is scored on a seeded sample of
  that many rows (``importance_rows``); the cap and the rows used are in the document.

Nothing here raises on a model it cannot fully describe: a part that cannot be computed is left out and
named in ``warnings``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.inspection import permutation_importance

CLASSIFICATION = "classification"
REGRESSION = "regression"
ANOMALY = "anomalyDetection"
TASKS = (CLASSIFICATION, REGRESSION, ANOMALY)

SCHEMA_VERSION = 1
MAX_POINTS = 200
TOP_FEATURES = 20
#: Rows of the hold-out permutation importance scores at most (a seeded sample beyond): its cost is
#: rows x features x repeats predictions, minutes on a large hold-out for something that ranks features.
MAX_IMPORTANCE_ROWS = 2000
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
HISTOGRAM_BINS = 30


# ---- JSON helpers -------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """A finite float, or None (JSON has no inf/nan)."""
    f = float(value)
    return f if math.isfinite(f) else None


def _nums(values: Any) -> list[float | None]:
    return [_num(v) for v in np.asarray(values, dtype=float).ravel()]


def _label(value: Any) -> Any:
    """A class label as a JSON scalar (numpy scalars unwrapped)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def downsample_indices(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """At most ``max_points`` evenly spread indices of ``range(n)``, always with the first and the last."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def _curve(arrays: dict[str, Any], max_points: int) -> dict[str, list[float | None]]:
    n = len(next(iter(arrays.values())))
    idx = downsample_indices(n, max_points)
    return {k: _nums(np.asarray(v, dtype=float)[idx]) for k, v in arrays.items()}


# ---- classification -----------------------------------------------------------------------------------


def _proba(model: Any, X: Any) -> np.ndarray | None:
    if not hasattr(model, "predict_proba"):
        return None
    try:
        return np.asarray(model.predict_proba(X), dtype=float)
    except (AttributeError, ValueError, NotImplementedError):
        return None


def classification_detail(model: Any, X: Any, y: Any, max_points: int = MAX_POINTS) -> tuple[dict[str, Any], list[str]]:
    warnings: list[str] = []
    y = np.asarray(y)
    pred = np.asarray(model.predict(X))
    classes = getattr(model, "classes_", None)
    labels = np.asarray(classes) if classes is not None else np.unique(np.concatenate([y, pred]))
    cm = skm.confusion_matrix(y, pred, labels=labels)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    out: dict[str, Any] = {
        "labels": [_label(c) for c in labels],
        "confusionMatrix": {
            "labels": [_label(c) for c in labels],
            "matrix": cm.astype(int).tolist(),
            "rows": "actual",
            "columns": "predicted",
        },
        "perClass": [
            {"label": _label(c), "precision": _num(p), "recall": _num(r), "f1": _num(f), "support": int(s)}
            for c, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        ],
        "accuracy": _num(skm.accuracy_score(y, pred)),
    }
    proba = _proba(model, X)
    if proba is None:
        warnings.append("no ROC/PR curves: the model has no predict_proba")
        return out, warnings
    if len(labels) == 2:
        out["curveAveraging"] = "binary"
        targets = [(1, labels[1])]
    else:
        out["curveAveraging"] = "one-vs-rest"
        targets = list(enumerate(labels))
    curves = []
    for column, positive in targets:
        truth = (y == positive).astype(int)
        if truth.min() == truth.max():
            warnings.append(f"no curves for class {_label(positive)!r}: the hold-out has only one side of it")
            continue
        score = proba[:, column]
        fpr, tpr, roc_thr = skm.roc_curve(truth, score)
        prec, rec, pr_thr = skm.precision_recall_curve(truth, score)
        curves.append(
            {
                "label": _label(positive),
                "roc": {
                    **_curve({"fpr": fpr, "tpr": tpr, "thresholds": roc_thr}, max_points),
                    "auc": _num(skm.auc(fpr, tpr)),
                    "points": len(fpr),
                },
                # precision_recall_curve has one threshold fewer than points: the last point (recall 0) has none
                "pr": {
                    **_curve({"precision": prec, "recall": rec, "thresholds": np.append(pr_thr, np.nan)}, max_points),
                    "averagePrecision": _num(skm.average_precision_score(truth, score)),
                    "points": len(prec),
                },
            }
        )
    out["curves"] = curves
    return out, warnings


# ---- regression ---------------------------------------------------------------------------------------


def regression_detail(model: Any, X: Any, y: Any, max_points: int = MAX_POINTS) -> tuple[dict[str, Any], list[str]]:
    actual = np.asarray(y, dtype=float)
    pred = np.asarray(model.predict(X), dtype=float)
    residuals = actual - pred
    quantiles = np.quantile(residuals, QUANTILES)
    order = np.argsort(actual, kind="stable")
    bins = [chunk for chunk in np.array_split(order, min(10, len(order))) if len(chunk)]
    sample = order[downsample_indices(len(order), max_points)]
    corr = float(np.corrcoef(actual, pred)[0, 1]) if len(actual) > 1 and pred.std() > 0 and actual.std() > 0 else None
    detail = {
        "residuals": {
            "definition": "actual - predicted",
            "quantiles": [{"q": q, "value": _num(v)} for q, v in zip(QUANTILES, quantiles, strict=True)],
            "mean": _num(residuals.mean()),
            "std": _num(residuals.std()),
            "meanAbsolute": _num(np.abs(residuals).mean()),
        },
        "predictedVsActual": {
            "n": len(actual),
            "r2": _num(skm.r2_score(actual, pred)),
            "pearson": _num(corr) if corr is not None else None,
            "mae": _num(skm.mean_absolute_error(actual, pred)),
            "rmse": _num(math.sqrt(skm.mean_squared_error(actual, pred))),
            "actual": {"min": _num(actual.min()), "max": _num(actual.max()), "mean": _num(actual.mean())},
            "predicted": {"min": _num(pred.min()), "max": _num(pred.max()), "mean": _num(pred.mean())},
            "bins": [
                {"actualMean": _num(actual[b].mean()), "predictedMean": _num(pred[b].mean()), "count": len(b)}
                for b in bins
            ],
            "sample": {"actual": _nums(actual[sample]), "predicted": _nums(pred[sample])},
        },
    }
    return detail, []


# ---- anomaly detection --------------------------------------------------------------------------------


def _final_estimator(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def _anomaly_score(model: Any, X: Any) -> np.ndarray:
    """decision_function (negative = anomaly, 0 = the cut) or, failing that, score_samples."""
    for method in ("decision_function", "score_samples"):
        if hasattr(model, method):
            try:
                return np.asarray(getattr(model, method)(X), dtype=float)
            except (AttributeError, NotImplementedError):
                continue
    raise AttributeError("the model has neither decision_function nor score_samples")


def anomaly_detail(model: Any, X: Any, y: Any | None) -> tuple[dict[str, Any], list[str]]:
    warnings: list[str] = []
    pred = np.asarray(model.predict(X))
    flags = (pred == -1).astype(int)
    est = _final_estimator(model)
    score_name = "decision_function" if hasattr(model, "decision_function") else "score_samples"
    cut: dict[str, Any] = {
        "flagged": int(flags.sum()),
        "flaggedFraction": _num(flags.mean()),
        "rule": "predict() == -1, i.e. decision_function < 0"
        if score_name == "decision_function"
        else "predict() == -1",
    }
    contamination = getattr(est, "contamination", None)
    cut["contamination"] = (
        contamination
        if isinstance(contamination, str)
        else (_num(contamination) if contamination is not None else None)
    )
    if hasattr(est, "offset_"):
        cut["offset"] = _num(est.offset_)
        cut["offsetMeaning"] = "decision_function = score_samples - offset"
    detail: dict[str, Any] = {"cut": cut}
    try:
        scores = _anomaly_score(model, X)
        counts, edges = np.histogram(scores, bins=HISTOGRAM_BINS)
        detail["scores"] = {
            "name": score_name,
            "quantiles": [
                {"q": q, "value": _num(v)} for q, v in zip(QUANTILES, np.quantile(scores, QUANTILES), strict=True)
            ],
            "mean": _num(scores.mean()),
            "std": _num(scores.std()),
            "histogram": {"edges": _nums(edges), "counts": counts.astype(int).tolist()},
            "threshold": 0.0 if score_name == "decision_function" else cut.get("offset"),
        }
    except AttributeError as exc:
        warnings.append(f"no score distribution: {exc}")
    if y is not None:
        truth = np.asarray(y).astype(int)
        cm = skm.confusion_matrix(truth, flags, labels=[0, 1])
        detail["labels"] = {
            "confusionMatrix": {
                "labels": ["normal", "anomaly"],
                "matrix": cm.astype(int).tolist(),
                "rows": "actual",
                "columns": "flagged",
            },
            "precision": _num(skm.precision_score(truth, flags, zero_division=0)),
            "recall": _num(skm.recall_score(truth, flags, zero_division=0)),
            "f1": _num(skm.f1_score(truth, flags, zero_division=0)),
        }
    return detail, warnings


# ---- permutation importance ---------------------------------------------------------------------------


def _anomaly_scorer(estimator: Any, X: Any, y: Any = None) -> float:
    """Unsupervised: the mean anomaly score (higher = more normal); permuting an informative column makes
    points look stranger, so its importance is the drop of this mean."""
    return float(np.mean(_anomaly_score(estimator, X)))


def _anomaly_f1_scorer(estimator: Any, X: Any, y: Any) -> float:
    return float(
        skm.f1_score(np.asarray(y).astype(int), (np.asarray(estimator.predict(X)) == -1).astype(int), zero_division=0)
    )


def default_scoring(task: str, has_labels: bool) -> tuple[str | Callable[..., float], str]:
    """(scoring for permutation_importance, its name)."""
    if task == CLASSIFICATION:
        return "accuracy", "accuracy"
    if task == REGRESSION:
        return "r2", "r2"
    if has_labels:
        return _anomaly_f1_scorer, "f1 of the anomaly flags"
    return _anomaly_scorer, "mean anomaly score (unsupervised)"


def feature_names(X: Any) -> list[str]:
    columns = getattr(X, "columns", None)
    if columns is not None:
        return [str(c) for c in columns]
    return [f"x{i}" for i in range(np.asarray(X).shape[1])]


def importance_rows(n_rows: int, max_rows: int, seed: int) -> np.ndarray | None:
    """The sorted positions of the hold-out rows permutation importance scores: None (all of them) when
    there are at most ``max_rows``, else a sample of ``max_rows`` without replacement drawn with ``seed``."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, not {max_rows}")
    if n_rows <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_rows, replace=False))


def _rows(data: Any, positions: np.ndarray) -> Any:
    return data.iloc[positions] if hasattr(data, "iloc") else np.asarray(data)[positions]


def permutation_detail(
    model: Any,
    X: Any,
    y: Any,
    task: str,
    *,
    scoring: str | Callable[..., float] | None = None,
    n_repeats: int = 5,
    seed: int = 0,
    top: int = TOP_FEATURES,
    max_rows: int = MAX_IMPORTANCE_ROWS,
) -> dict[str, Any]:
    has_labels = y is not None
    n_rows = len(X)
    positions = importance_rows(n_rows, max_rows, seed)
    if positions is not None:
        X = _rows(X, positions)
        y = _rows(y, positions) if has_labels else None
    default, scoring_name = default_scoring(task, has_labels)
    if scoring is not None:
        scoring_name = scoring if isinstance(scoring, str) else getattr(scoring, "__name__", "custom")
    result = permutation_importance(
        model, X, y, scoring=scoring or default, n_repeats=n_repeats, random_state=seed, n_jobs=None
    )
    names = feature_names(X)
    order = sorted(range(len(names)), key=lambda i: (-float(result.importances_mean[i]), names[i]))
    return {
        "method": "permutation",
        "scoring": scoring_name,
        "nRepeats": n_repeats,
        "seed": seed,
        "nFeatures": len(names),
        "maxRows": max_rows,
        "rowsUsed": len(X),
        "sampled": positions is not None,
        "features": [
            {"name": names[i], "mean": _num(result.importances_mean[i]), "std": _num(result.importances_std[i])}
            for i in order[:top]
        ],
    }


# ---- the document -------------------------------------------------------------------------------------


def evaluation_detail(
    model: Any,
    X_test: Any,
    y_test: Any | None,
    task: str,
    *,
    seed: int = 0,
    scoring: str | Callable[..., float] | None = None,
    n_repeats: int = 5,
    max_points: int = MAX_POINTS,
    top_features: int = TOP_FEATURES,
    importance: bool = True,
    max_importance_rows: int = MAX_IMPORTANCE_ROWS,
) -> dict[str, Any]:
    """The evaluation detail of ``model`` on the hold-out (see the module doc). ``y_test`` may be None only
    for anomaly detection without labels. Raises ValueError only for an unknown task or missing labels."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (one of {', '.join(TASKS)})")
    if y_test is None and task != ANOMALY:
        raise ValueError(f"{task} needs y_test")
    warnings: list[str] = []
    doc: dict[str, Any] = {"schemaVersion": SCHEMA_VERSION, "task": task, "nTest": len(X_test)}
    builders: dict[str, Callable[[], tuple[dict[str, Any], list[str]]]] = {
        CLASSIFICATION: lambda: classification_detail(model, X_test, y_test, max_points),
        REGRESSION: lambda: regression_detail(model, X_test, y_test, max_points),
        ANOMALY: lambda: anomaly_detail(model, X_test, y_test),
    }
    try:
        part, more = builders[task]()
        doc[task] = part
        warnings += more
    except Exception as exc:  # a model we cannot describe must not fail the run
        warnings.append(f"{task} detail not computed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    if importance:
        try:
            doc["featureImportance"] = permutation_detail(
                model,
                X_test,
                y_test,
                task,
                scoring=scoring,
                n_repeats=n_repeats,
                seed=seed,
                top=top_features,
                max_rows=max_importance_rows,
            )
        except Exception as exc:
            warnings.append(
                f"feature importance not computed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            )
    doc["warnings"] = warnings
    return doc


def summary(doc: dict[str, Any], top: int = 3) -> dict[str, Any]:
    """A small summary for a ModelVersion's status (the lead wires it): top features and the headline
    numbers of the task's detail."""
    out: dict[str, Any] = {"task": doc.get("task")}
    features: Sequence[dict[str, Any]] = (doc.get("featureImportance") or {}).get("features") or ()
    if features:
        out["topFeatures"] = [f["name"] for f in features[:top]]
    part = doc.get(str(doc.get("task"))) or {}
    if doc.get("task") == CLASSIFICATION and part.get("curves"):
        out["rocAuc"] = {str(c["label"]): c["roc"]["auc"] for c in part["curves"]}
    elif doc.get("task") == REGRESSION and part:
        out["residualMedian"] = next(q["value"] for q in part["residuals"]["quantiles"] if q["q"] == 0.5)
    elif doc.get("task") == ANOMALY and part:
        out["flaggedFraction"] = part["cut"]["flaggedFraction"]
    return out
