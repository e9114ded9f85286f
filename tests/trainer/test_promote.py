"""spec.register.promote in the trainer: challenger and champion scored on the same hold-out split, the
champion's file checked by sha256 before it is unpickled, an incompatible champion reported (real
scikit-learn, the CLI in-process)."""

from __future__ import annotations

import hashlib
import json
import pathlib
from pathlib import Path
from typing import Any

import joblib
from kubetrain_trainer import contract

from .conftest import spec_for, write_config

WEAK = {"n_estimators": 1, "max_depth": 1}  # one stump: separates one species of three
STRONG = {"n_estimators": 20, "max_depth": 4}


def _spec(data_dir: Path, params: dict[str, Any], metric: str = "accuracy", **extra: Any) -> dict[str, Any]:
    return spec_for(
        (data_dir / "iris.csv").as_uri(),
        "species",
        "random_forest",
        params,
        task="classification",
        seed=3,
        register={"promote": {"alias": "production", "metric": metric}},
        **extra,
    )


def _train(cli: Any, tmp_path: Path, name: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    cfg = write_config(tmp_path / f"{name}.yaml", spec, name=name)
    return cli("run", "--config", str(cfg), "--output", str(tmp_path / "out"), env=env)


def _champion_env(tmp_path: Path, name: str, sha: str | None = None) -> dict[str, str]:
    model = tmp_path / "out" / name / contract.MODEL_FILE
    digest = sha or hashlib.sha256(model.read_bytes()).hexdigest()
    return {
        contract.ENV_CHAMPION_NAME: f"{name}-v1",
        contract.ENV_CHAMPION_URI: model.as_uri(),
        contract.ENV_CHAMPION_SHA256: digest,
    }


def test_no_champion_reports_the_challengers_score_and_the_holdout(cli: Any, tmp_path: Path, data_dir: Path) -> None:
    run = _train(cli, tmp_path, "first", _spec(data_dir, STRONG))
    assert run.code == 0, run.result
    promo = run.result["promotion"]
    assert promo["metric"] == "accuracy"
    assert promo["challenger"] == run.result["metrics"]["accuracy"]
    assert promo["holdout"].startswith("sha256:") and len(promo["holdout"]) == 71
    assert "champion" not in promo and "champion_score" not in promo and "problem" not in promo
    assert json.loads(run.termination or "{}")["promotion"] == promo  # the termination message carries it


def test_champion_and_challenger_are_scored_on_the_same_holdout(cli: Any, tmp_path: Path, data_dir: Path) -> None:
    weak = _train(cli, tmp_path, "weak", _spec(data_dir, WEAK))
    assert weak.code == 0, weak.result
    strong = _train(cli, tmp_path, "strong", _spec(data_dir, STRONG), env=_champion_env(tmp_path, "weak"))
    assert strong.code == 0, strong.result
    promo = strong.result["promotion"]
    # Same seed and test fraction: the same rows, so the champion scores exactly what its own run measured.
    assert promo["holdout"] == weak.result["promotion"]["holdout"]
    assert promo["champion"] == "weak-v1"
    assert promo["champion_score"] == weak.result["metrics"]["accuracy"]
    assert promo["challenger"] == strong.result["metrics"]["accuracy"]
    assert promo["challenger"] > promo["champion_score"] + 0.1

    # The other way round: a weak challenger against the strong champion (lower-is-better metric too).
    back = _train(
        cli, tmp_path, "back", _spec(data_dir, WEAK, metric="log_loss"), env=_champion_env(tmp_path, "strong")
    )
    assert back.code == 0, back.result
    promo = back.result["promotion"]
    assert promo["holdout"] == weak.result["promotion"]["holdout"]
    assert promo["challenger"] == back.result["metrics"]["log_loss"]
    assert promo["champion_score"] == strong.result["metrics"]["log_loss"]
    assert promo["champion_score"] < promo["challenger"]  # the champion's loss is smaller: it is better


def test_a_different_test_fraction_is_a_different_holdout(cli: Any, tmp_path: Path, data_dir: Path) -> None:
    a = _train(cli, tmp_path, "a", _spec(data_dir, STRONG))
    b = _train(cli, tmp_path, "b", _spec(data_dir, STRONG, evaluation={"testFraction": 0.3}))
    assert a.result["promotion"]["holdout"] != b.result["promotion"]["holdout"]


class _Booby:
    """Unpickling this creates the marker file: proof that a file was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (pathlib.Path.touch, (self.marker,))


def test_tampered_champion_fails_clearly_and_is_never_unpickled(cli: Any, tmp_path: Path, data_dir: Path) -> None:
    first = _train(cli, tmp_path, "champ", _spec(data_dir, WEAK))
    assert first.code == 0
    env = _champion_env(tmp_path, "champ")  # the sha256 the registry recorded
    marker = tmp_path / "unpickled"
    joblib.dump(_Booby(marker), tmp_path / "out" / "champ" / contract.MODEL_FILE)  # the file is swapped
    run = _train(cli, tmp_path, "challenger", _spec(data_dir, STRONG), env=env)
    assert run.code == contract.EXIT_VERIFY_FAILED
    assert run.result["reason"] == contract.REASON_VERIFY_FAILED
    assert "champion champ-v1: checksum mismatch" in run.result["message"]
    assert env[contract.ENV_CHAMPION_SHA256] in run.result["message"] and "not loaded" in run.result["message"]
    assert not marker.exists(), "the tampered champion was unpickled"
    assert not (tmp_path / "out" / "challenger").exists(), "nothing is saved when the champion is tampered with"


def test_a_missing_champion_file_fails_clearly(cli: Any, tmp_path: Path, data_dir: Path) -> None:
    env = {
        contract.ENV_CHAMPION_URI: (tmp_path / "nowhere" / contract.MODEL_FILE).as_uri(),
        contract.ENV_CHAMPION_SHA256: "0" * 64,
    }
    run = _train(cli, tmp_path, "orphan", _spec(data_dir, STRONG), env=env)
    assert run.code == contract.EXIT_VERIFY_FAILED
    assert "not found" in run.result["message"]


def test_incompatible_champions_are_reported_not_a_crash(cli: Any, tmp_path: Path, data_dir: Path) -> None:
    # Trained on other columns (wine) and on another task (diabetes regression).
    wine = spec_for((data_dir / "wine.parquet").as_uri(), "cultivar", "random_forest", STRONG)
    assert _train(cli, tmp_path, "wine", wine).code == 0
    reg = spec_for((data_dir / "diabetes.jsonl").as_uri(), "progression", "ridge", {})
    assert _train(cli, tmp_path, "reg", reg).code == 0
    for champ, problem in (("wine", "reads columns the hold-out lacks: alcohol"), ("reg", "is not a classifier")):
        run = _train(cli, tmp_path, f"vs-{champ}", _spec(data_dir, STRONG), env=_champion_env(tmp_path, champ))
        assert run.code == 0, run.result
        promo = run.result["promotion"]
        assert "champion_score" not in promo and promo["champion"] == f"{champ}-v1"
        assert promo["problem"].startswith(f"champion {champ}-v1 {problem}"), promo
        assert promo["challenger"] == run.result["metrics"]["accuracy"]


def test_promote_metric_of_the_inferred_other_task_is_config_invalid(cli: Any, tmp_path: Path, data_dir: Path) -> None:
    # random_forest without spec.task: the API cannot know r2 is wrong; the trainer infers classification.
    spec = spec_for(
        (data_dir / "iris.csv").as_uri(),
        "species",
        "random_forest",
        {"n_estimators": 5},
        register={"promote": {"alias": "production", "metric": "r2"}},
    )
    run = _train(cli, tmp_path, "wrong-metric", spec)
    assert run.code == contract.EXIT_CONFIG_INVALID
    assert run.result["message"].startswith("spec.register.promote.metric: r2 is not computed for classification")
    assert not (tmp_path / "out" / "wrong-metric").exists()


def test_half_a_champion_in_the_environment_is_config_invalid(cli: Any, tmp_path: Path, data_dir: Path) -> None:
    run = _train(cli, tmp_path, "half", _spec(data_dir, STRONG), env={contract.ENV_CHAMPION_URI: "file:///x.joblib"})
    assert run.code == contract.EXIT_CONFIG_INVALID
    assert contract.ENV_CHAMPION_SHA256 in run.result["message"]


def test_promotion_is_never_trimmed_from_the_result() -> None:
    promo: contract.PromotionScores = {
        "metric": "accuracy",
        "holdout": "sha256:" + "a" * 64,
        "challenger": 0.9,
        "champion": "m-v1",
        "champion_score": 0.8,
        "problem": "p" * contract.PROMOTION_PROBLEM_MAX,
    }
    big = contract.Result(
        outcome="Succeeded",
        reason="Trained",
        metrics={f"metric_{i}": 0.5 for i in range(400)},
        warnings=["w" * 500] * 10,
        promotion=promo,
    )
    text = big.to_json()
    assert len(text.encode()) <= contract.RESULT_MAX_BYTES
    parsed = contract.parse_result(text)
    assert parsed is not None and parsed.promotion == promo and "metrics" in (parsed.trimmed or [])
