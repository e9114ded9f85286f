"""The estimator catalogue: names from the spec to scikit-learn classes, with checked parameters.

Nothing in a spec can import or execute code: the name picks a class from this table, and parameters
must be JSON scalars or lists of scalars that the class's ``get_params()`` knows.
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
from collections.abc import Callable
from typing import Any

from sklearn.base import BaseEstimator

from .errors import ConfigInvalid
from .features import ANOMALY, CLASSIFICATION, REGRESSION


def _cls(path: str) -> Callable[[], type]:
    module, _, name = path.rpartition(".")
    return lambda: getattr(importlib.import_module(module), name)


CATALOGUE: dict[str, dict[str, Callable[[], type]]] = {
    "logistic_regression": {CLASSIFICATION: _cls("sklearn.linear_model.LogisticRegression")},
    "linear_regression": {REGRESSION: _cls("sklearn.linear_model.LinearRegression")},
    "ridge": {REGRESSION: _cls("sklearn.linear_model.Ridge")},
    "random_forest": {
        CLASSIFICATION: _cls("sklearn.ensemble.RandomForestClassifier"),
        REGRESSION: _cls("sklearn.ensemble.RandomForestRegressor"),
    },
    "extra_trees": {
        CLASSIFICATION: _cls("sklearn.ensemble.ExtraTreesClassifier"),
        REGRESSION: _cls("sklearn.ensemble.ExtraTreesRegressor"),
    },
    "hist_gradient_boosting": {
        CLASSIFICATION: _cls("sklearn.ensemble.HistGradientBoostingClassifier"),
        REGRESSION: _cls("sklearn.ensemble.HistGradientBoostingRegressor"),
    },
    "knn": {
        CLASSIFICATION: _cls("sklearn.neighbors.KNeighborsClassifier"),
        REGRESSION: _cls("sklearn.neighbors.KNeighborsRegressor"),
    },
    "isolation_forest": {ANOMALY: _cls("sklearn.ensemble.IsolationForest")},
    "xgboost": {
        CLASSIFICATION: _cls("kubetrain_trainer.xgb.XGBLabelClassifier"),
        REGRESSION: _cls("xgboost.XGBRegressor"),
    },
}

#: Estimators whose inputs should be standardised (distance- or penalty-based).
NEEDS_SCALING = {"logistic_regression", "linear_regression", "ridge", "knn"}
#: Estimators that handle missing values themselves (numeric columns skip imputation).
NATIVE_MISSING = {"hist_gradient_boosting", "xgboost"}
#: n_jobs is deprecated (no effect) for these since scikit-learn 1.8.
NO_N_JOBS = {"logistic_regression"}
#: Parameters the trainer owns: seeds come from spec.seed, parallelism from the CPU limit.
RESERVED = {"random_state", "n_jobs", "nthread", "device", "verbose", "warm_start"}

_Scalar = str | int | float | bool | None


def check_value(key: str, value: Any, where: str) -> Any:
    """A JSON scalar or a list of scalars (lists become tuples, which sklearn takes for sizes)."""
    if isinstance(value, bool | int | float | str) or value is None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigInvalid(f"{where}.{key}: {value} is not a finite number")
        return value
    if isinstance(value, list) and all(isinstance(v, bool | int | float | str) or v is None for v in value):
        return tuple(value)
    raise ConfigInvalid(f"{where}.{key}: values must be JSON scalars or lists of scalars, got {type(value).__name__}")


def estimator_class(name: str, task: str) -> type:
    tasks = CATALOGUE.get(name)
    if tasks is None:
        raise ConfigInvalid(f"spec.estimator.name: unknown estimator {name!r} (choose from {', '.join(CATALOGUE)})")
    if task not in tasks:
        raise ConfigInvalid(f"spec.estimator.name: {name} does not support task {task} (supports {', '.join(tasks)})")
    try:
        return tasks[task]()
    except ImportError:
        raise ConfigInvalid(
            f"spec.estimator.name: {name} is not installed in this trainer image (pip install {name})"
        ) from None


def cuda_available() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def build_estimator(
    name: str,
    task: str,
    params: dict[str, Any],
    seed: int,
    n_jobs: int,
    gpus: int = 0,
) -> BaseEstimator:
    """An unfitted estimator with checked params, the seed and the parallelism the pod may use."""
    cls = estimator_class(name, task)
    est = cls()
    known = set(est.get_params(deep=False))
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigInvalid(
            f"spec.estimator.params: unknown parameter(s) {', '.join(unknown)} for {name} "
            f"(valid: {', '.join(sorted(known - RESERVED))})"
        )
    reserved = sorted(set(params) & RESERVED)
    if reserved:
        raise ConfigInvalid(
            f"spec.estimator.params: set by the trainer, not the spec: {', '.join(reserved)} "
            "(use spec.seed, spec.resources, spec.resources.gpus)"
        )
    values = {k: check_value(k, v, "spec.estimator.params") for k, v in params.items()}
    owned: dict[str, Any] = {}
    if "random_state" in known:
        owned["random_state"] = seed
    if "n_jobs" in known and name not in NO_N_JOBS:
        owned["n_jobs"] = n_jobs
    if name == "xgboost":
        if gpus > 0:
            if not cuda_available():
                raise ConfigInvalid("spec.resources.gpus > 0 but no CUDA device is visible to the trainer")
            owned["device"] = "cuda"
        else:
            owned["device"] = "cpu"
    try:
        est.set_params(**owned, **values)
    except (ValueError, TypeError) as exc:
        raise ConfigInvalid(f"spec.estimator.params: {exc}") from None
    validate_params(est, "spec.estimator.params")
    return est


def validate_params(est: BaseEstimator, where: str) -> None:
    """scikit-learn's own parameter constraints, checked before any data is touched."""
    check = getattr(est, "_validate_params", None)
    # Only estimators that declare constraints can be checked (xgboost inherits the method from
    # BaseEstimator without the table it reads).
    if check is None or not hasattr(est, "_parameter_constraints"):
        return
    try:
        check()
    except (ValueError, TypeError) as exc:
        raise ConfigInvalid(f"{where}: {' '.join(str(exc).split())}") from None
