"""What a TrainingSchedule's gates compare: where the data came from, and what it looked like.

- ``source_fingerprint(uri)``: a cheap identity of the dataset's *location*, so "has the data changed?"
  needs no download: the object store's ETag and size for ``s3://``, ETag (or Last-Modified) and size for
  ``https://``, and a sha256 of the bytes for files (a file's mtime changes on a copy that changes nothing).
- ``feature_profile(frame)``: a compact, JSON-able picture of the training data stored with every artifact
  (``profile.json``): deciles of each numeric feature, the frequencies of the most common values of each
  categorical one, and the missing fraction of both.
- ``drift(profile, frame)``: the population stability index (PSI) of each feature of new data against
  that picture, with the largest and the top features. PSI = sum over bins of (a - e) * ln(a / e), with
  fractions floored at ``PSI_FLOOR`` so an empty bin does not make it infinite. Conventional reading:
  < 0.1 stable, 0.1-0.25 moderate, > 0.25 drifted.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .data import check_uri_path, local_path
from .errors import DataInvalid

PROFILE_VERSION = 1
NUMERIC_BINS = 10
TOP_CATEGORIES = 20
PSI_FLOOR = 1e-4
OTHER = "__other__"
MISSING = "__missing__"
_CHUNK = 1 << 20


# ---- where the data came from -----------------------------------------------------------------------


def source_fingerprint(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"uri", "method", "value", "size"}``: equal values mean the same data at ``uri``."""
    scheme, _ = check_uri_path(uri, "spec.dataset.uri")
    path = local_path(uri, "spec.dataset.uri")
    if path is not None:
        return {"uri": uri, "method": "sha256", "value": _sha256(path), "size": path.stat().st_size}
    import fsspec  # remote schemes only; s3fs is the s3 extra

    fs, target = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    try:
        info = fs.info(target)
    except FileNotFoundError as exc:
        raise DataInvalid(f"spec.dataset.uri {uri!r}: not found ({exc})") from None
    size = info.get("size")
    for key in ("ETag", "etag", "Content-MD5", "Digest"):
        if info.get(key):
            return {"uri": uri, "method": key.lower(), "value": str(info[key]).strip('"'), "size": size}
    for key in ("LastModified", "Last-Modified", "mtime"):
        if info.get(key):
            return {"uri": uri, "method": "last-modified", "value": str(info[key]), "size": size}
    # No validator from the server: hash the bytes (one download, still no parse).
    with fs.open(target, "rb") as handle:
        digest = hashlib.sha256()
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return {"uri": uri, "method": "sha256", "value": digest.hexdigest(), "size": size, "scheme": scheme}


def _sha256(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            digest = hashlib.sha256()
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        raise DataInvalid(f"dataset {str(path)!r} not found") from None
    except IsADirectoryError:
        raise DataInvalid(f"dataset {str(path)!r} is a directory, not a file") from None
    return digest.hexdigest()


def fingerprint_text(fingerprint: dict[str, Any], max_length: int = 256) -> str:
    """``method:value;size=bytes`` of a ``source_fingerprint`` (what run status and the gate report)."""
    size = fingerprint.get("size")
    tail = f";size={size}" if size is not None else ""
    head = f"{fingerprint['method']}:{fingerprint['value']}"
    return head[: max_length - len(tail)] + tail


def same_source(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """True only when both fingerprints exist and agree on method, value and size."""
    if not a or not b:
        return False
    return all(a.get(k) == b.get(k) for k in ("method", "value", "size"))


# ---- what the data looked like ----------------------------------------------------------------------


def feature_profile(frame: pd.DataFrame, *, bins: int = NUMERIC_BINS, top: int = TOP_CATEGORIES) -> dict[str, Any]:
    """The training data's profile: per feature, bin edges and fractions (numeric) or value frequencies
    (categorical), plus the missing fraction."""
    if frame.empty:
        raise DataInvalid("cannot profile an empty dataset")
    features = {str(name): _profile_column(frame[name], bins, top) for name in frame.columns}
    return {"version": PROFILE_VERSION, "rows": len(frame), "features": features}


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _profile_column(column: pd.Series, bins: int, top: int) -> dict[str, Any]:
    missing = float(column.isna().mean())
    present = column.dropna()
    if _is_numeric(column):
        values = present.to_numpy(dtype=float)
        quantiles = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]) if len(values) else np.array([])
        edges = [float(e) for e in np.unique(quantiles)]
        return {
            "kind": "numeric",
            "edges": edges,
            "fractions": _numeric_fractions(values, edges, len(column)),
            "missing": missing,
        }
    counts = present.astype(str).value_counts()
    kept = counts.head(top)
    total = len(column)
    return {
        "kind": "categorical",
        "categories": {str(k): float(v) / total for k, v in kept.items()},
        "other": float(counts.iloc[len(kept) :].sum()) / total,
        "missing": missing,
    }


def _numeric_fractions(values: np.ndarray, edges: list[float], total: int) -> list[float]:
    """Fractions of all rows (missing included in the total) in bins (-inf, e1], (e1, e2], ..., (ek, inf)."""
    index = np.searchsorted(np.asarray(edges, dtype=float), values, side="left")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return [float(c) / total for c in counts]


@dataclass(frozen=True)
class Drift:
    """PSI of new data against a stored profile."""

    psi: dict[str, float]
    max_psi: float
    top: list[tuple[str, float]]
    missing_features: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "maxPsi": round(self.max_psi, 6),
            "top": [{"feature": f, "psi": round(v, 6)} for f, v in self.top],
            "missingFeatures": self.missing_features,
        }


def drift(profile: dict[str, Any], frame: pd.DataFrame, *, top: int = 5) -> Drift:
    """PSI per profiled feature of ``frame``; a feature the new data lacks is reported, not scored."""
    if profile.get("version") != PROFILE_VERSION or not isinstance(profile.get("features"), dict):
        raise DataInvalid(f"unsupported profile (version {profile.get('version')!r}); retrain to refresh it")
    if frame.empty:
        raise DataInvalid("cannot compute drift on an empty dataset")
    scores: dict[str, float] = {}
    absent: list[str] = []
    for name, ref in profile["features"].items():
        if name not in frame.columns:
            absent.append(name)
            continue
        scores[name] = _psi(_expected(ref), _actual(ref, frame[name]))
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    return Drift(scores, ranked[0][1] if ranked else 0.0, ranked[:top], absent)


def _expected(ref: dict[str, Any]) -> list[float]:
    if ref["kind"] == "numeric":
        return [*ref["fractions"], ref["missing"]]
    return [*ref["categories"].values(), ref["other"], ref["missing"]]


def _actual(ref: dict[str, Any], column: pd.Series) -> list[float]:
    total = len(column)
    missing = float(column.isna().mean())
    present = column.dropna()
    if ref["kind"] == "numeric":
        values = pd.to_numeric(present, errors="coerce")
        unparsable = int(values.isna().sum())  # text in a numeric column counts as missing
        fractions = _numeric_fractions(values.dropna().to_numpy(dtype=float), ref["edges"], total)
        return [*fractions, missing + unparsable / total]
    counts = present.astype(str).value_counts()
    known = [float(counts.get(k, 0)) / total for k in ref["categories"]]
    other = 1.0 - missing - sum(known)
    return [*known, max(other, 0.0), missing]


def _psi(expected: list[float], actual: list[float]) -> float:
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, PSI_FLOOR), max(a, PSI_FLOOR)
        total += (a - e) * math.log(a / e)
    return total
