"""Broken datasets and configs: each ends with the right exit code, a message naming the problem, and
no artifact."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kubetrain_trainer import contract

from .conftest import spec_for, write_config

CONFIG, DATA = contract.EXIT_CONFIG_INVALID, contract.EXIT_DATA_INVALID


def _frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "region": rng.choice(["north", "south"], size=n),
            "y": rng.choice(["p", "q"], size=n),
        }
    )


def _csv(d: Path, df: pd.DataFrame, name: str = "data.csv") -> str:
    df.to_csv(d / name, index=False)
    return (d / name).as_uri()


def _spec(
    d: Path, df: pd.DataFrame | None = None, target: str | None = "y", est: str = "random_forest", **kw: Any
) -> dict:
    uri = _csv(d, _frame() if df is None else df)
    params = {"n_estimators": 5} if est in ("random_forest", "extra_trees") else {}
    return spec_for(uri, target, est, params, **kw)


def missing_target(d: Path) -> dict:
    return _spec(d, target="nope")


def all_null_column(d: Path) -> dict:
    df = _frame()
    df["empty"] = np.nan
    return _spec(d, df)


def wrong_format(d: Path) -> dict:
    spec = _spec(d)
    spec["dataset"]["format"] = "parquet"
    return spec


def empty_file(d: Path) -> dict:
    (d / "empty.csv").write_text("")
    return spec_for((d / "empty.csv").as_uri(), "y", "knn")


def header_only(d: Path) -> dict:
    (d / "header.csv").write_text("a,b,y\n")
    return spec_for((d / "header.csv").as_uri(), "y", "knn")


def unreadable_uri(d: Path) -> dict:
    return spec_for((d / "does-not-exist.csv").as_uri(), "y", "knn")


def unknown_param(d: Path) -> dict:
    spec = _spec(d)
    spec["estimator"]["params"]["n_trees"] = 10
    return spec


def bad_param_value(d: Path) -> dict:
    spec = _spec(d)
    spec["estimator"]["params"]["n_estimators"] = -3
    return spec


def object_param(d: Path) -> dict:
    spec = _spec(d)
    spec["estimator"]["params"]["n_estimators"] = {"__import__": "os"}
    return spec


def reserved_param(d: Path) -> dict:
    spec = _spec(d)
    spec["estimator"]["params"]["random_state"] = 7
    return spec


def text_in_numeric(d: Path) -> dict:
    df = _frame().astype({"a": object})
    df.loc[5, "a"] = "n/a-ish"
    return _spec(d, df)


def declared_numeric_text(d: Path) -> dict:
    spec = _spec(d)
    spec["dataset"]["columnTypes"] = {"region": "numeric"}
    return spec


def single_class(d: Path) -> dict:
    df = _frame()
    df["y"] = "p"
    return _spec(d, df, task="classification")


def constant_regression_target(d: Path) -> dict:
    df = _frame()
    df["y"] = 3.5
    return _spec(d, df, task="regression")


def text_regression_target(d: Path) -> dict:
    return _spec(d, task="regression")


def relative_path(d: Path) -> dict:
    spec = _spec(d)
    spec["dataset"]["uri"] = "file://data/data.csv"
    return spec


def dotdot(d: Path) -> dict:
    spec = _spec(d)
    spec["dataset"]["uri"] = (d / "data.csv").as_uri().replace("/data.csv", "/../data.csv")
    return spec


def dotdot_pvc(d: Path) -> dict:
    spec = _spec(d)
    spec["dataset"]["uri"] = "pvc://claim/../../etc/passwd.csv"
    return spec


def unknown_scheme(d: Path) -> dict:
    spec = _spec(d)
    spec["dataset"]["uri"] = "ftp://host/data.csv"
    return spec


def unknown_estimator(d: Path) -> dict:
    spec = _spec(d)
    spec["estimator"]["name"] = "deep_magic"
    return spec


def explicit_task_mismatch(d: Path) -> dict:
    return _spec(d, est="isolation_forest", task="classification")


def inferred_task_mismatch(d: Path) -> dict:
    return _spec(d, est="linear_regression")


def too_few_rows(d: Path) -> dict:
    return _spec(d, _frame(n=6))


def min_rows_rule(d: Path) -> dict:
    spec = _spec(d)
    spec["dataset"]["validation"] = {"minRows": 500}
    return spec


def missing_required_column(d: Path) -> dict:
    spec = _spec(d)
    spec["dataset"]["validation"] = {"requiredColumns": ["a", "customer_segment"]}
    return spec


def too_many_missing(d: Path) -> dict:
    df = _frame()
    df.loc[:20, "b"] = np.nan
    spec = _spec(d, df)
    spec["dataset"]["validation"] = {"maxMissingFraction": 0.1}
    return spec


def missing_feature(d: Path) -> dict:
    spec = _spec(d)
    spec["dataset"]["features"] = ["a", "ghost"]
    return spec


def malformed_json(d: Path) -> dict:
    (d / "broken.json").write_text('{"logs": [{"a": 1}, {"a": 2,,}]}')
    return spec_for((d / "broken.json").as_uri(), None, "isolation_forest")


def malformed_jsonl(d: Path) -> dict:
    rows = [json.dumps({"a": i, "y": i % 2}) for i in range(30)]
    rows[2] = "{not json"
    (d / "broken.jsonl").write_text("\n".join(rows))
    return spec_for((d / "broken.jsonl").as_uri(), "y", "knn")


def records_path_missing(d: Path) -> dict:
    (d / "doc.json").write_text(json.dumps({"items": [{"a": i} for i in range(20)]}))
    spec = spec_for((d / "doc.json").as_uri(), None, "isolation_forest")
    spec["dataset"]["recordsPath"] = "logs"
    return spec


def json_without_records(d: Path) -> dict:
    (d / "scalar.json").write_text(json.dumps({"count": 3, "name": "x"}))
    return spec_for((d / "scalar.json").as_uri(), None, "isolation_forest")


def unknown_extension(d: Path) -> dict:
    _frame().to_csv(d / "data.bin", index=False)
    return spec_for((d / "data.bin").as_uri(), "y", "knn")


def grid_with_distribution(d: Path) -> dict:
    return _spec(
        d, search={"strategy": "grid", "space": {"max_depth": {"distribution": "randint", "low": 1, "high": 5}}}
    )


def unknown_search_param(d: Path) -> dict:
    return _spec(d, search={"strategy": "grid", "space": {"depth": [1, 2]}})


def bad_search_value(d: Path) -> dict:
    return _spec(d, search={"strategy": "grid", "space": {"max_depth": [2, -1]}})


def extra_field(d: Path) -> dict:
    spec = _spec(d)
    spec["dataset"]["colour"] = "blue"
    return spec


def threshold_metric_for_other_task(d: Path) -> dict:
    return _spec(d, evaluation={"thresholds": [{"metric": "r2", "min": 0.5}]})


def no_usable_features(d: Path) -> dict:
    df = _frame()[["y"]].assign(row_id=[f"r{i}" for i in range(60)])
    return _spec(d, df)


CASES: list[tuple[Callable[[Path], dict], int, str]] = [
    (missing_target, DATA, "target column 'nope' not found"),
    (all_null_column, DATA, "column 'empty' has no values"),
    (wrong_format, DATA, "as parquet"),
    (empty_file, DATA, "is empty"),
    (header_only, DATA, "no rows"),
    (unreadable_uri, DATA, "does-not-exist.csv does not exist"),
    (unknown_param, CONFIG, "unknown parameter(s) n_trees"),
    (bad_param_value, CONFIG, "n_estimators"),
    (object_param, CONFIG, "n_estimators"),
    (reserved_param, CONFIG, "random_state"),
    (text_in_numeric, DATA, "column 'a' looks numeric"),
    (declared_numeric_text, DATA, "column 'region' is declared numeric"),
    (single_class, DATA, "single class"),
    (constant_regression_target, DATA, "constant"),
    (text_regression_target, DATA, "non-numeric"),
    (relative_path, CONFIG, "absolute path"),
    (dotdot, CONFIG, "'..'"),
    (dotdot_pvc, CONFIG, "'..'"),
    (unknown_scheme, CONFIG, "spec.dataset.uri"),
    (unknown_estimator, CONFIG, "estimator.name"),
    (explicit_task_mismatch, CONFIG, "does not support task classification"),
    (inferred_task_mismatch, CONFIG, "linear_regression does not support task classification"),
    (too_few_rows, DATA, "fewer than minRows 10"),
    (min_rows_rule, DATA, "fewer than minRows 500"),
    (missing_required_column, DATA, "required column(s) missing: customer_segment"),
    (too_many_missing, DATA, "column 'b' is missing in"),
    (missing_feature, DATA, "feature column(s) not found: ghost"),
    (malformed_json, DATA, "not valid JSON"),
    (malformed_jsonl, DATA, "line 3 is not valid JSON"),
    (records_path_missing, DATA, "recordsPath 'logs' not found"),
    (json_without_records, DATA, "no list of records"),
    (unknown_extension, CONFIG, "cannot infer the format"),
    (grid_with_distribution, CONFIG, "grid search needs a list"),
    (unknown_search_param, CONFIG, "depth"),
    (bad_search_value, CONFIG, "max_depth"),
    (extra_field, CONFIG, "colour"),
    (threshold_metric_for_other_task, CONFIG, "r2"),
    (no_usable_features, DATA, "no usable feature columns"),
]


@pytest.mark.parametrize(("make", "code", "needle"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_fails_cleanly(
    cli: Any, tmp_path: Path, make: Callable[[Path], dict], code: int, needle: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    spec = make(data)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", spec, name="bad")
    for command in ("validate", "run"):
        args = [command, "--config", str(cfg)] + (["--output", str(out)] if command == "run" else [])
        run = cli(*args)
        assert run.code == code, (command, run.result)
        assert run.result["outcome"] == "Failed"
        assert run.result["reason"] == contract.REASON_BY_EXIT_CODE[code]
        assert run.result["exit_code"] == code
        assert needle in run.result["message"], run.result["message"]
        assert run.termination == run.stdout.strip().splitlines()[-1]
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("spec: [unclosed", "not valid JSON/YAML"),
        ('{"spec": {"model": "m",}', "not valid JSON/YAML"),
        ("", "is empty"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("kind: ModelVersion\nspec: {model: m}\n", "kind must be TrainingRun"),
        ("model: m\n", "dataset"),
    ],
)
def test_malformed_config_is_config_invalid(cli: Any, tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    run = cli("run", "--config", str(cfg))
    assert run.code == CONFIG and needle in run.result["message"], run.result


def test_missing_config_and_bad_command_line(cli: Any, tmp_path: Path) -> None:
    run = cli("run")
    assert run.code == CONFIG and contract.ENV_CONFIG in run.result["message"]
    assert cli("run", "--config", str(tmp_path / "absent.yaml")).code == CONFIG
    assert cli("run", env={contract.ENV_CONFIG: "{not json"}).code == CONFIG
    assert cli("frobnicate").code == CONFIG


def test_unexpected_error_is_internal_and_retryable(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kubetrain_trainer.stages as stages

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(stages, "load", boom)
    data = tmp_path / "d"
    data.mkdir()
    cfg = write_config(tmp_path / "r.yaml", _spec(data))
    run = cli("run", "--config", str(cfg), "--output", str(tmp_path / "out"))
    assert run.code == contract.EXIT_INTERNAL_ERROR
    assert run.result["reason"] == "InternalError" and "disk on fire" in run.result["message"]
    assert "Traceback" in run.stderr


def test_xgboost_with_gpus_but_no_cuda_is_config_invalid(cli: Any, tmp_path: Path) -> None:
    """GPUs asked for, xgboost installed (the dev extra's CPU wheel), no CUDA device: a clear ConfigInvalid
    before any data is read, never a silent CPU fallback."""
    data = tmp_path / "d"
    data.mkdir()
    spec = _spec(data, est="xgboost", resources={"gpus": 1})
    run = cli("run", "--config", str(write_config(tmp_path / "r.yaml", spec)), "--output", str(tmp_path / "out"))
    assert run.code == CONFIG
    assert "spec.resources.gpus" in run.result["message"] and "CUDA" in run.result["message"]
    assert not (tmp_path / "out").exists()


def test_estimator_missing_from_the_image_is_config_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    """An image built without an optional library (e.g. no xgboost extra) names the estimator and the fix."""
    from kubetrain_trainer import estimators
    from kubetrain_trainer.errors import ConfigInvalid

    missing = {"classification": estimators._cls("kubetrain_no_such_module.Classifier")}
    monkeypatch.setitem(estimators.CATALOGUE, "xgboost", missing)
    with pytest.raises(ConfigInvalid, match="xgboost is not installed in this trainer image"):
        estimators.estimator_class("xgboost", "classification")
