"""Hyperparameter search: in one pod (GridSearchCV / RandomizedSearchCV) or shared by an Indexed Job.

With ``spec.search.parallelism = n`` the operator runs an Indexed Job with n completions. Every pod
builds the same candidate list (ParameterGrid, or ParameterSampler seeded with ``spec.seed``) and the
same training split, scores candidates ``index, index + n, ...`` and writes
``<run dir>/trials/trial-<index>.json``. The pod with index 0 waits for every share, picks the best
candidate (highest mean cv score, then the lowest candidate number) and refits it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sklearn.base import clone
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    ParameterGrid,
    ParameterSampler,
    RandomizedSearchCV,
    StratifiedKFold,
    cross_val_score,
)

from . import contract
from .errors import ConfigInvalid, TrainerError
from .estimators import RESERVED, check_value, validate_params

STEP = "model__"


class TrialsIncomplete(TrainerError):
    """Index 0 gave up waiting for the other pods' shares (retryable)."""


def build_space(space: dict[str, Any], est: Any, strategy: str) -> dict[str, Any]:
    """spec.search.space → a pipeline param space (``model__<name>``), each value checked."""
    known = set(est.get_params(deep=False))
    out: dict[str, Any] = {}
    for key, values in space.items():
        where = f"spec.search.space.{key}"
        if key not in known:
            raise ConfigInvalid(f"{where}: unknown parameter for {type(est).__name__}")
        if key in RESERVED:
            raise ConfigInvalid(f"{where}: {key} is set by the trainer and cannot be searched")
        if isinstance(values, list):
            checked = [check_value(key, v, "spec.search.space") for v in values]
            for v in checked:
                validate_params(clone(est).set_params(**{key: v}), f"{where}={v!r}")
            out[STEP + key] = checked
        elif isinstance(values, dict):
            if strategy != "random":
                raise ConfigInvalid(f"{where}: grid search needs a list of values")
            out[STEP + key] = distribution(values, where)
        else:
            raise ConfigInvalid(f"{where} must be a list of values or a distribution")
    return out


def distribution(spec: dict[str, Any], where: str) -> Any:
    kind, low, high = spec.get("distribution"), spec.get("low"), spec.get("high")
    if not isinstance(low, int | float) or not isinstance(high, int | float) or high <= low:
        raise ConfigInvalid(f"{where}: distribution needs numbers low < high")
    if kind == "uniform":
        return stats.uniform(loc=low, scale=high - low)
    if kind == "loguniform":
        if low <= 0:
            raise ConfigInvalid(f"{where}: loguniform needs low > 0")
        return stats.loguniform(low, high)
    if kind == "randint":
        return stats.randint(int(low), int(high))
    raise ConfigInvalid(f"{where}: unknown distribution {kind!r} (uniform, loguniform, randint)")


def cv_splitter(task: str, folds: int, seed: int) -> Any:
    if task == "classification":
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)


def candidates(space: dict[str, Any], strategy: str, trials: int, seed: int) -> list[dict[str, Any]]:
    if strategy == "grid":
        return [dict(c) for c in ParameterGrid(space)]
    return [{k: _plain(v) for k, v in c.items()} for c in ParameterSampler(space, n_iter=trials, random_state=seed)]


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def search_in_process(
    pipeline: Any, space: dict[str, Any], search: Any, scoring: Any, cv: Any, n_jobs: int, seed: int
) -> Any:
    """GridSearchCV or RandomizedSearchCV, refit on the whole training split."""
    if search.strategy == "grid":
        return GridSearchCV(pipeline, space, scoring=scoring, cv=cv, n_jobs=n_jobs, refit=True, error_score="raise")
    return RandomizedSearchCV(
        pipeline,
        space,
        n_iter=search.trials,
        scoring=scoring,
        cv=cv,
        n_jobs=n_jobs,
        refit=True,
        random_state=seed,
        error_score="raise",
    )


def trial_path(run_dir: Path, index: int) -> Path:
    return run_dir / contract.TRIALS_DIR / f"trial-{index}.json"


@dataclass(frozen=True)
class ShareTask:
    """One pod's part of a parallel search: candidates ``index, index + count, ...``."""

    index: int
    count: int
    scoring: Any
    cv: Any
    n_jobs: int
    run_dir: Path


def run_share(pipeline: Any, cands: list[dict[str, Any]], X: Any, y: Any, task: ShareTask) -> Path:
    """Score this pod's share of the candidates and write trial-<index>.json atomically."""
    index, count, scoring, cv, n_jobs = task.index, task.count, task.scoring, task.cv, task.n_jobs
    rows = []
    for k in range(index, len(cands), count):
        model = clone(pipeline).set_params(**cands[k])
        scores = cross_val_score(model, X, y, scoring=scoring, cv=cv, n_jobs=n_jobs, error_score="raise")
        rows.append(
            {
                "candidate": k,
                "params": {p.removeprefix(STEP): v for p, v in cands[k].items()},
                "mean": float(np.mean(scores)),
                "std": float(np.std(scores)),
            }
        )
    doc = {"index": index, "count": count, "candidates": len(cands), "trials": rows}
    path = trial_path(task.run_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def collect_shares(run_dir: Path, count: int, n_candidates: int, timeout: float, poll: float = 1.0) -> list[dict]:
    """Wait (bounded) until every pod's trial file is present; all trial rows, best first."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [i for i in range(count) if not trial_path(run_dir, i).exists()]
        if not missing:
            break
        if time.monotonic() >= deadline:
            raise TrialsIncomplete(
                f"search shares {', '.join(map(str, missing))} of {count} did not arrive within {timeout:.0f}s"
            )
        time.sleep(poll)
    rows: list[dict] = []
    for i in range(count):
        doc = json.loads(trial_path(run_dir, i).read_text())
        if doc.get("count") != count or doc.get("candidates") != n_candidates:
            raise TrialsIncomplete(f"trial-{i}.json comes from a different search (stale file)")
        rows.extend(doc["trials"])
    if len({r["candidate"] for r in rows}) != n_candidates:
        raise TrialsIncomplete("trial files do not cover every candidate")
    rows.sort(key=lambda r: (-r["mean"], r["candidate"]))
    return rows
