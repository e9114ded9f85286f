"""Hyperparameter search in one pod and shared across an Indexed Job's pods."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubetrain_trainer import contract

from .conftest import spec_for, write_config


def test_grid_search_picks_and_reports_best_params(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for(
        (data_dir / "wine.parquet").as_uri(),
        "cultivar",
        "knn",
        search={"strategy": "grid", "space": {"n_neighbors": [1, 5, 15], "weights": ["uniform", "distance"]}, "cv": 3},
        evaluation={"thresholds": [{"metric": "accuracy", "min": 0.85}]},
    )
    run = cli("run", "--config", str(write_config(tmp_path / "r.yaml", spec, name="grid")), "--output", str(tmp_path))
    assert run.code == 0, run.result
    assert set(run.result["best_params"]) == {"n_neighbors", "weights"}
    assert "search_best_accuracy" in run.result["metrics"]
    meta = json.loads((tmp_path / "grid" / "metadata.json").read_text())
    assert meta["estimator"]["params"]["n_neighbors"] == run.result["best_params"]["n_neighbors"]


def test_grid_search_over_xgboost_params_uses_xgboosts_names(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for(
        (data_dir / "iris.csv").as_uri(),
        "species",
        "xgboost",
        {"n_estimators": 20},
        search={"strategy": "grid", "space": {"max_depth": [2, 4], "learning_rate": [0.1, 0.3]}, "cv": 3},
    )
    run = cli("run", "--config", str(write_config(tmp_path / "r.yaml", spec, name="xgb")), "--output", str(tmp_path))
    assert run.code == 0, run.result
    assert set(run.result["best_params"]) == {"max_depth", "learning_rate"}
    assert run.result["metrics"]["accuracy"] >= 0.85
    # A name xgboost does not know is refused before any training, naming the field.
    spec["search"]["space"] = {"max_leaves_typo": [2, 4]}
    cfg = write_config(tmp_path / "b.yaml", spec, name="xgb-bad")
    bad = cli("run", "--config", str(cfg), "--output", str(tmp_path))
    assert bad.code == contract.EXIT_CONFIG_INVALID and "max_leaves_typo" in bad.result["message"], bad.result


def test_random_search_with_distributions_is_reproducible(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for(
        (data_dir / "diabetes.jsonl").as_uri(),
        "progression",
        "ridge",
        search={
            "strategy": "random",
            "space": {"alpha": {"distribution": "loguniform", "low": 0.001, "high": 100}, "fit_intercept": [True]},
            "trials": 6,
            "cv": 3,
            "scoring": "rmse",
        },
    )
    cfg = write_config(tmp_path / "r.yaml", spec, name="rand")
    a = cli("run", "--config", str(cfg), "--output", str(tmp_path / "a"))
    b = cli("run", "--config", str(cfg), "--output", str(tmp_path / "b"))
    assert a.code == b.code == 0, a.result
    assert a.result["best_params"] == b.result["best_params"]
    assert 0.001 <= a.result["best_params"]["alpha"] <= 100
    assert a.result["metrics"]["search_best_rmse"] > 0  # reported as the metric, not sklearn's negated score
    assert a.result["model"]["sha256"] == b.result["model"]["sha256"]


@pytest.mark.slow
def test_parallel_search_shares_candidates_across_indexed_pods(data_dir: Path, tmp_path: Path) -> None:
    """An Indexed Job with completions=3, run as three concurrent CLI processes sharing the output dir."""
    space = {"max_depth": [2, 4, None], "min_samples_leaf": [1, 3], "n_estimators": [5, 10]}
    spec = spec_for(
        (data_dir / "iris.csv").as_uri(),
        "species",
        "random_forest",
        search={"strategy": "grid", "space": space, "cv": 3, "parallelism": 3},
    )
    cfg = write_config(tmp_path / "r.yaml", spec, name="shared")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETRAIN_")}
    env.update({contract.ENV_CPU_LIMIT: "1", contract.ENV_TRIALS_TIMEOUT: "120"})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kubetrain_trainer", "run", "--config", str(cfg), "--output", str(out)],
            env={**env, contract.ENV_JOB_COMPLETION_INDEX: str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (2, 1, 0)
    ]
    results = {}
    for i, proc in zip((2, 1, 0), procs, strict=True):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        results[i] = json.loads(stdout.strip().splitlines()[-1])
    assert results[1]["reason"] == results[2]["reason"] == "TrialsCompleted"
    assert results[0]["reason"] == "Trained"
    run_dir = out / "shared"
    shares = [json.loads((run_dir / "trials" / f"trial-{i}.json").read_text()) for i in range(3)]
    seen = sorted(t["candidate"] for s in shares for t in s["trials"])
    assert seen == list(range(12))  # every grid point scored exactly once
    best = max((t for s in shares for t in s["trials"]), key=lambda t: (t["mean"], -t["candidate"]))
    assert results[0]["best_params"] == best["params"]
    assert (run_dir / "model.joblib").is_file() and (run_dir / "metadata.json").is_file()

    # The same search in one pod finds the same winner.
    single = subprocess.run(
        [sys.executable, "-m", "kubetrain_trainer", "run", "--config", str(cfg), "--output", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    assert json.loads(single.stdout.strip().splitlines()[-1])["best_params"] == best["params"]


def test_index_zero_gives_up_when_shares_never_arrive(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for(
        (data_dir / "iris.csv").as_uri(),
        "species",
        "knn",
        search={"strategy": "grid", "space": {"n_neighbors": [1, 3, 5, 7]}, "parallelism": 2},
    )
    cfg = write_config(tmp_path / "r.yaml", spec, name="lonely")
    run = cli(
        "run",
        "--config",
        str(cfg),
        "--output",
        str(tmp_path / "out"),
        env={contract.ENV_JOB_COMPLETION_INDEX: "0", contract.ENV_TRIALS_TIMEOUT: "1"},
    )
    assert run.code == contract.EXIT_INTERNAL_ERROR  # retryable: the other pod may just be slow
    assert "did not arrive" in run.result["message"]
    assert not (tmp_path / "out" / "lonely" / "model.joblib").exists()


def test_search_candidates_split_deterministically() -> None:
    from kubetrain_trainer.search import candidates
    from scipy import stats

    space = {"model__alpha": stats.uniform(0, 1), "model__fit_intercept": [True, False]}
    a = candidates(space, "random", 7, seed=3)
    b = candidates(space, "random", 7, seed=3)
    assert a == b and len(a) == 7
    assert all(isinstance(c["model__alpha"], float) for c in a)
