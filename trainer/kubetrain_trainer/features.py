"""Data validation, column typing and the preprocessing half of the pipeline."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from .errors import DataInvalid

CLASSIFICATION = "classification"
REGRESSION = "regression"
ANOMALY = "anomalyDetection"

MAX_CLASSIFICATION_INTEGER_CLASSES = 20
MAX_ONE_HOT_CATEGORIES = 50
TEXT_MAX_FEATURES = 200
_ID_NAME = re.compile(r"^(id|.*_id|.*Id|uuid|guid|index|unnamed: ?\d+)$", re.IGNORECASE)
_DATE_CHARS = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")
_ANOMALY_TRUE = {"1", "true", "yes", "anomaly", "outlier", "-1"}


@dataclass
class Column:
    """How one input column is used: ``kind`` is numeric, categorical, datetime or text."""

    name: str
    kind: str
    dtype: str


@dataclass
class Prepared:
    """Validated data ready for splitting: features, target and what was decided about each column."""

    X: pd.DataFrame
    y: pd.Series | None
    task: str
    columns: list[Column]
    dropped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def signature(self) -> dict[str, Any]:
        return {
            "features": [{"name": c.name, "dtype": c.dtype, "kind": c.kind} for c in self.columns],
            "target": self.y.name if self.y is not None else None,
            "task": self.task,
        }


def _is_string(s: pd.Series) -> bool:
    return bool(pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype))


def _is_numeric(s: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(s.dtype))


def infer_task(y: pd.Series | None) -> str:
    """No target → anomaly detection; non-numeric or few distinct integers → classification."""
    if y is None:
        return ANOMALY
    if pd.api.types.is_bool_dtype(y.dtype) or not _is_numeric(y):
        return CLASSIFICATION
    values = y.to_numpy(dtype=float, na_value=np.nan)
    values = values[~np.isnan(values)]
    integral = bool(np.all(np.mod(values, 1) == 0))
    if integral and len(np.unique(values)) <= MAX_CLASSIFICATION_INTEGER_CLASSES:
        return CLASSIFICATION
    return REGRESSION


def _bad_numeric_example(s: pd.Series) -> tuple[int, Any] | None:
    """(count, example) of non-null values that do not parse as numbers."""
    parsed = pd.to_numeric(s, errors="coerce")
    bad = s.notna() & parsed.isna()
    if not bad.any():
        return None
    return int(bad.sum()), s[bad].iloc[0]


def _looks_datetime(s: pd.Series) -> bool:
    sample = s.dropna().astype(str).head(200)
    if sample.empty or not sample.map(lambda v: bool(_DATE_CHARS.match(v.strip()))).all():
        return False
    parsed = pd.to_datetime(sample, errors="coerce", utc=True, format="ISO8601")
    return bool(parsed.notna().all())


def _infer_kind(name: str, s: pd.Series, n_rows: int) -> tuple[str, str]:
    """(kind, why) for a column without a columnTypes override; kind 'skip' leaves it out."""
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return "datetime", ""
    if pd.api.types.is_bool_dtype(s.dtype):
        return "numeric", ""
    if _is_numeric(s):
        # Only integer columns can be identifiers; floats skip the (costly) uniqueness check.
        if pd.api.types.is_integer_dtype(s.dtype) and len(s) >= 20:
            values = s.dropna().to_numpy()
            diffs = np.diff(values)
            consecutive = len(diffs) > 0 and bool(np.all(diffs == 1))
            if consecutive or (_ID_NAME.match(name) and s.is_unique):
                return "skip", "identifier-like (unique integers)"
        return "numeric", ""
    nonnull = s.dropna()
    n = len(nonnull)
    if not _is_string(s):
        return "skip", f"unsupported dtype {s.dtype}"
    if n and isinstance(nonnull.iloc[0], dict | list):
        return "skip", "nested values"
    if n >= 5:
        bad = _bad_numeric_example(nonnull)
        if bad is None:
            return "numeric-text", ""
        if bad[0] <= 0.1 * n:
            raise DataInvalid(
                f"column {name!r} looks numeric but has {bad[0]} non-numeric value(s), e.g. {bad[1]!r}; "
                f"fix the data or set spec.dataset.columnTypes.{name} to categorical"
            )
    if _looks_datetime(nonnull):
        return "datetime", ""
    n_unique = nonnull.nunique()
    strings = nonnull.astype(str)
    if n >= 20 and n_unique >= 0.95 * n:
        mean_len = float(strings.str.len().mean())
        has_spaces = float(strings.str.contains(" ", regex=False).mean()) > 0.5
        if mean_len > 30 or has_spaces:
            return "skip", "free text (set columnTypes to text to use it)"
        return "skip", "identifier-like (unique values; set columnTypes to use it)"
    return "categorical", ""


def prepare(df: pd.DataFrame, dataset: Any, task: str | None, min_rows: int | None = None) -> Prepared:
    """Validate the frame against ``spec.dataset`` and decide how each column is used.

    Raises DataInvalid naming the column or rule at the first problem.
    """
    validation = dataset.validation
    columns = list(df.columns)
    _check_columns(df, dataset)
    df, y, warnings = _target_rows(df, dataset.target, validation.max_missing_fraction)
    need = min_rows if min_rows is not None else validation.min_rows
    if len(df) < need:
        raise DataInvalid(f"dataset has {len(df)} usable rows, fewer than minRows {need}")
    if task is None:
        task = infer_task(y)
    y = _check_target(y, task) if y is not None else None
    unknown_typed = [c for c in dataset.column_types if c not in set(columns)]
    if unknown_typed:
        raise DataInvalid(f"columnTypes name column(s) not in the dataset: {', '.join(unknown_typed)}")

    exclude = set(dataset.exclude)
    candidates = (
        list(dataset.features)
        if dataset.features is not None
        else [c for c in columns if c != dataset.target and c not in exclude]
    )
    choices = {
        name: _type_column(name, df[name], dataset.column_types.get(name), validation.max_missing_fraction)
        for name in candidates
    }
    warnings += [f"column {name!r} is constant and was left out" for name, c in choices.items() if c.constant]
    return _prepared(df, y, task, choices, warnings)


def _check_columns(df: pd.DataFrame, dataset: Any) -> None:
    """Required, target, feature and columnTypes columns exist, and there are rows."""
    columns = list(df.columns)
    present = set(columns)
    missing_required = [c for c in dataset.validation.required_columns if c not in present]
    if missing_required:
        raise DataInvalid(f"required column(s) missing: {', '.join(missing_required)}")
    target = dataset.target
    if target is not None and target not in present:
        raise DataInvalid(f"target column {target!r} not found (columns: {_names(columns)})")
    if dataset.features is not None:
        absent = [c for c in dataset.features if c not in present]
        if absent:
            raise DataInvalid(f"feature column(s) not found: {', '.join(absent)}")
    if len(df) == 0:
        raise DataInvalid("dataset has no rows")


def _target_rows(
    df: pd.DataFrame, target: str | None, limit: float | None
) -> tuple[pd.DataFrame, pd.Series | None, list[str]]:
    """(rows with a target value, the target, warnings); rows without one are dropped within ``limit``."""
    if target is None:
        return df, None, []
    y = df[target]
    missing = y.isna()
    if bool(missing.all()):
        raise DataInvalid(f"target column {target!r} has no values")
    if not bool(missing.any()):
        return df, y, []
    n_missing = int(missing.sum())
    frac = n_missing / len(df)
    if limit is not None and frac > limit:
        raise DataInvalid(f"target column {target!r} is missing in {frac:.1%} of rows (maxMissingFraction {limit})")
    df = df.loc[~missing]
    return df, df[target], [f"dropped {n_missing} row(s) without a value in target {target!r}"]


@dataclass(frozen=True)
class _ColumnChoice:
    kind: str = ""
    dropped: str = ""  # why the column is left out ("" when used)
    converted: pd.Series | None = None  # the values the model sees, when they differ from the file's

    @property
    def constant(self) -> bool:
        return self.dropped == "constant"


def _type_column(name: str, s: pd.Series, declared: str | None, limit: float | None) -> _ColumnChoice:
    """How one candidate column is used: its kind, a conversion, or why it is left out."""
    if declared == "ignore":
        return _ColumnChoice(dropped="columnTypes: ignore")
    n_rows = len(s)
    n_missing = int(s.isna().sum())
    if n_missing == n_rows:
        raise DataInvalid(f"column {name!r} has no values (all missing)")
    if limit is not None and n_missing / n_rows > limit:
        raise DataInvalid(
            f"column {name!r} is missing in {n_missing / n_rows:.1%} of rows (maxMissingFraction {limit})"
        )
    kind, converted = declared, None
    if kind is None:
        kind, why = _infer_kind(name, s, n_rows)
        if kind == "skip":
            return _ColumnChoice(dropped=why)
        if kind == "numeric-text":
            kind, converted = "numeric", pd.to_numeric(s, errors="coerce")
    else:
        converted = _declared_conversion(name, s, kind)
    if kind in ("categorical", "text") and (
        (not _is_numeric(s) and not _is_string(s)) or (pd.api.types.is_object_dtype(s.dtype) and _mixed_types(s))
    ):
        # One-hot encoders need one value type per column (JSON exports mix 1 and "1").
        converted = s.astype(str).where(s.notna(), None)
    if n_missing == 0 and _is_constant(s):
        return _ColumnChoice(kind=kind, dropped="constant", converted=converted)
    return _ColumnChoice(kind=kind, converted=converted)


def _declared_conversion(name: str, s: pd.Series, kind: str) -> pd.Series | None:
    """The numeric values of a column declared numeric; checks a declared datetime column parses."""
    if kind == "numeric" and not _is_numeric(s):
        bad = _bad_numeric_example(s)
        if bad is not None:
            raise DataInvalid(
                f"column {name!r} is declared numeric but has {bad[0]} non-numeric value(s), e.g. {bad[1]!r}"
            )
        return pd.to_numeric(s, errors="coerce")
    if kind == "datetime" and not pd.api.types.is_datetime64_any_dtype(s.dtype):
        parsed = pd.to_datetime(s, errors="coerce", utc=True, format="mixed")
        bad_mask = s.notna() & parsed.isna()
        if bool(bad_mask.any()):
            raise DataInvalid(
                f"column {name!r} is declared datetime but {int(bad_mask.sum())} value(s) do not parse, "
                f"e.g. {s[bad_mask].iloc[0]!r}"
            )
    return None


def _prepared(
    df: pd.DataFrame, y: pd.Series | None, task: str, choices: dict[str, _ColumnChoice], warnings: list[str]
) -> Prepared:
    """The feature frame (with conversions) and each used column's final dtype."""
    dropped = {name: c.dropped for name, c in choices.items() if c.dropped}
    used = [Column(name=name, kind=c.kind, dtype="") for name, c in choices.items() if not c.dropped]
    if not used:
        detail = "; ".join(f"{k}: {v}" for k, v in list(dropped.items())[:10]) or "no candidate columns"
        raise DataInvalid(f"no usable feature columns ({detail})")
    X = df[[c.name for c in used]]
    converted = {c.name: choices[c.name].converted for c in used if choices[c.name].converted is not None}
    if converted:
        X = X.assign(**converted)
    for c in used:
        c.dtype = str(X[c.name].dtype)
    if dropped:
        warnings.append("left out: " + ", ".join(f"{k} ({v})" for k, v in list(dropped.items())[:20]))
    return Prepared(X=X, y=y, task=task, columns=used, dropped=dropped, warnings=warnings)


def _mixed_types(s: pd.Series) -> bool:
    return len({type(v) for v in s.dropna().head(10_000)}) > 1


def _is_constant(s: pd.Series) -> bool:
    if _is_numeric(s) and not pd.api.types.is_bool_dtype(s.dtype):
        values = s.to_numpy(dtype=float, na_value=np.nan)
        return bool(np.nanmin(values) == np.nanmax(values))
    return int(s.nunique(dropna=True)) <= 1


def _check_target(y: pd.Series, task: str) -> pd.Series:
    name = y.name
    if task == CLASSIFICATION:
        counts = y.value_counts()
        if len(counts) < 2:
            raise DataInvalid(
                f"target column {name!r} has a single class ({counts.index[0]!r}); classification needs at least two"
            )
        return y
    if task == REGRESSION:
        if pd.api.types.is_bool_dtype(y.dtype):
            raise DataInvalid(f"target column {name!r} is boolean; regression needs a numeric target")
        if not _is_numeric(y):
            bad = _bad_numeric_example(y)
            if bad is not None:
                raise DataInvalid(
                    f"target column {name!r} has non-numeric value(s), e.g. {bad[1]!r}; regression needs numbers"
                )
            y = pd.to_numeric(y)
        if int(y.nunique()) < 2:
            raise DataInvalid(f"target column {name!r} is constant; nothing to learn")
        return y
    # anomaly detection: optional labels, 1/true/anomaly/outlier/-1 mark anomalies
    labels = y.astype(str).str.strip().str.lower().isin(_ANOMALY_TRUE)
    return labels.astype(int).rename(name)


def _names(columns: list[str]) -> str:
    shown = ", ".join(columns[:12])
    return shown + (f", ... ({len(columns)} total)" if len(columns) > 12 else "")


# ---- transformers ---------------------------------------------------------------------------------


class DatetimeParts(TransformerMixin, BaseEstimator):
    """Expands datetime columns (or ISO strings) into year, month, day, weekday, hour and epoch days."""

    parts = ("year", "month", "day", "day_of_week", "hour")

    def fit(self, X: Any, y: Any = None) -> DatetimeParts:
        frame = pd.DataFrame(X)
        self.columns_ = [str(c) for c in frame.columns]
        self.n_features_in_ = frame.shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        frame = pd.DataFrame(X)
        out = []
        for col in frame.columns:
            ts = pd.to_datetime(frame[col], errors="coerce", utc=True, format="mixed")
            for part in self.parts:
                out.append(getattr(ts.dt, part).to_numpy(dtype=float, na_value=np.nan))
            epoch = (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds() / 86400.0
            out.append(epoch.to_numpy(dtype=float, na_value=np.nan))
        return np.column_stack(out) if out else np.empty((len(frame), 0))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = [f"{c}_{p}" for c in self.columns_ for p in (*self.parts, "epoch_days")]
        return np.asarray(names, dtype=object)


class TextTfidf(TransformerMixin, BaseEstimator):
    """TF-IDF of one free-text column (missing values become empty text)."""

    def __init__(self, max_features: int = TEXT_MAX_FEATURES) -> None:
        self.max_features = max_features

    def _docs(self, X: Any) -> list[str]:
        s = pd.DataFrame(X).iloc[:, 0]
        return s.fillna("").astype(str).tolist()

    def fit(self, X: Any, y: Any = None) -> TextTfidf:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer_ = TfidfVectorizer(max_features=self.max_features)
        self.vectorizer_.fit(self._docs(X))
        return self

    def transform(self, X: Any) -> Any:
        return self.vectorizer_.transform(self._docs(X))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self.vectorizer_.get_feature_names_out(), dtype=object)


def build_preprocessor(columns: list[Column], scale: bool, native_missing: bool = False) -> ColumnTransformer:
    """One ColumnTransformer: impute (+ scale) numbers, one-hot categories, expand dates, TF-IDF text."""
    numeric = [c.name for c in columns if c.kind == "numeric"]
    categorical = [c.name for c in columns if c.kind == "categorical"]
    dates = [c.name for c in columns if c.kind == "datetime"]
    texts = [c.name for c in columns if c.kind == "text"]
    transformers: list[tuple[str, Any, Any]] = []
    if numeric and native_missing and not scale:
        # The estimator handles NaN itself (histogram GBMs): no imputation copy of the largest block.
        transformers.append(("numeric", "passthrough", numeric))
    elif numeric:
        steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
        if scale:
            steps.append(("scale", StandardScaler()))
        transformers.append(("numeric", Pipeline(steps), numeric))
    if categorical:
        transformers.append(
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        (
                            "onehot",
                            OneHotEncoder(
                                handle_unknown="ignore",
                                max_categories=MAX_ONE_HOT_CATEGORIES,
                                sparse_output=False,
                            ),
                        ),
                    ]
                ),
                categorical,
            )
        )
    if dates:
        date_steps: list[tuple[str, Any]] = [
            ("parts", DatetimeParts()),
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ]
        if scale:
            date_steps.append(("scale", StandardScaler()))
        transformers.append(("datetime", Pipeline(date_steps), dates))
    for name in texts:
        transformers.append((f"text_{name}", TextTfidf(), [name]))
    return ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0, verbose_feature_names_out=True)
