"""The trainer's side of a TrainingSchedule's gates (real scikit-learn, the CLI in-process): every artifact
carries the feature profile and the dataset's source fingerprint; ``gate`` reports the fingerprint, and with a
reference version the PSI of the data against its profile, after checking the reference's sha256 — and never
trains."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kubetrain_trainer import contract

from .conftest import spec_for, write_config


def _data(path: Path, shift: float = 0.0, n: int = 600, seed: int = 0) -> Path:
    """Two numeric features and a categorical one; ``shift`` moves x by that many standard deviations."""
    rng = np.random.default_rng(seed)
    x = rng.normal(5.0, 1.5, n)
    z = rng.normal(0.0, 1.0, n)
    colour = rng.choice(["red", "green", "blue"], n)
    label = np.where(x + z > 5.0, "hi", "lo")
    frame = pd.DataFrame({"x": x + shift * 1.5, "z": z, "colour": colour, "label": label})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def _spec(data: Path) -> dict[str, Any]:
    return spec_for(data.as_uri(), "label", "random_forest", {"n_estimators": 5}, task="classification", seed=1)


def _train(cli: Any, tmp_path: Path, data: Path, name: str = "ref") -> Any:
    cfg = write_config(tmp_path / f"{name}.yaml", _spec(data), name=name)
    run = cli("run", "--config", str(cfg), "--output", str(tmp_path / "out"))
    assert run.code == 0, run.result
    return run


def _reference(tmp_path: Path, name: str = "ref", sha: str | None = None) -> dict[str, str]:
    model = tmp_path / "out" / name / contract.MODEL_FILE
    return {
        contract.ENV_DRIFT_REFERENCE_NAME: f"{name}-v1",
        contract.ENV_DRIFT_REFERENCE_URI: model.parent.as_uri(),
        contract.ENV_DRIFT_REFERENCE_SHA256: sha or hashlib.sha256(model.read_bytes()).hexdigest(),
    }


def _gate(cli: Any, tmp_path: Path, data: Path, env: dict[str, str] | None = None) -> Any:
    cfg = write_config(tmp_path / "gate.yaml", _spec(data), name="tick")
    return cli("gate", "--config", str(cfg), env=env)


def test_every_artifact_stores_the_profile_and_the_source_fingerprint(cli: Any, tmp_path: Path) -> None:
    data = _data(tmp_path / "data" / "d.csv")
    run = _train(cli, tmp_path, data)
    directory = tmp_path / "out" / "ref"
    meta = json.loads((directory / contract.METADATA_FILE).read_text())
    profile_path = directory / contract.PROFILE_FILE
    assert meta["profile"] == {
        "file": contract.PROFILE_FILE,
        "sha256": hashlib.sha256(profile_path.read_bytes()).hexdigest(),
    }
    profile = json.loads(profile_path.read_text())
    assert set(profile["features"]) == {"x", "z", "colour"}  # the model's features, not the target
    assert profile["features"]["x"]["kind"] == "numeric" and profile["features"]["colour"]["kind"] == "categorical"
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    source = f"sha256:{digest};size={data.stat().st_size}"
    assert run.result["dataset"]["source"] == meta["dataset"]["source"] == source


def test_gate_reports_the_fingerprint_and_never_trains(cli: Any, tmp_path: Path) -> None:
    data = _data(tmp_path / "data" / "d.csv")
    gate = _gate(cli, tmp_path, data)
    assert (gate.code, gate.result["reason"], gate.result["outcome"]) == (0, "GateChecked", "Succeeded")
    fingerprint = gate.result["gate"]["fingerprint"]
    assert fingerprint == f"sha256:{hashlib.sha256(data.read_bytes()).hexdigest()};size={data.stat().st_size}"
    assert "drift" not in gate.result["gate"] and "model" not in gate.result
    assert (
        not (tmp_path / "kubetrain-runs").exists()
        and json.loads(gate.termination or "{}")["gate"] == gate.result["gate"]
    )
    # Same bytes, new mtime: same fingerprint. One changed value: another.
    data.write_bytes(data.read_bytes())
    assert _gate(cli, tmp_path, data).result["gate"]["fingerprint"] == fingerprint
    frame = pd.read_csv(data)
    frame.loc[0, "z"] += 1.0
    frame.to_csv(data, index=False)
    assert _gate(cli, tmp_path, data).result["gate"]["fingerprint"] != fingerprint


def test_gate_psi_is_small_on_the_training_data_and_large_after_a_two_sigma_shift(cli: Any, tmp_path: Path) -> None:
    data = _data(tmp_path / "data" / "d.csv")
    _train(cli, tmp_path, data)
    ref = _reference(tmp_path)
    same = _gate(cli, tmp_path, data, ref)
    assert same.code == 0, same.result
    drift = same.result["gate"]["drift"]
    assert drift["against"] == "ref-v1" and drift["max_psi"] < 0.01 and drift["rows"] == 600, drift
    shifted = _gate(cli, tmp_path, _data(tmp_path / "data" / "shifted.csv", shift=2.0, seed=5), ref)
    drift = shifted.result["gate"]["drift"]
    assert drift["max_psi"] > 1.0 and drift["top"][0]["feature"] == "x", drift
    assert [t["psi"] for t in drift["top"]] == sorted((t["psi"] for t in drift["top"]), reverse=True)
    assert "PSI against ref-v1" in shifted.result["message"]


def test_a_tampered_reference_fails_the_gate_clearly(cli: Any, tmp_path: Path) -> None:
    data = _data(tmp_path / "data" / "d.csv")
    _train(cli, tmp_path, data)
    wrong = _gate(cli, tmp_path, data, _reference(tmp_path, sha="0" * 64))
    assert (wrong.code, wrong.result["reason"]) == (contract.EXIT_VERIFY_FAILED, "VerifyFailed")
    assert "checksum mismatch for model.joblib" in wrong.result["message"]
    ref = _reference(tmp_path)
    profile = tmp_path / "out" / "ref" / contract.PROFILE_FILE
    profile.write_text(profile.read_text().replace('"rows": 600', '"rows": 601'))
    edited = _gate(cli, tmp_path, data, ref)
    assert (
        edited.code == contract.EXIT_VERIFY_FAILED and "checksum mismatch for profile.json" in edited.result["message"]
    )


def test_a_reference_without_a_profile_is_reported_not_a_failure(cli: Any, tmp_path: Path) -> None:
    data = _data(tmp_path / "data" / "d.csv")
    _train(cli, tmp_path, data)
    meta_path = tmp_path / "out" / "ref" / contract.METADATA_FILE
    meta = json.loads(meta_path.read_text())
    del meta["profile"]  # as an artifact trained before profiles were stored
    meta_path.write_text(json.dumps(meta))
    gate = _gate(cli, tmp_path, data, _reference(tmp_path))
    assert gate.code == 0 and "drift" not in gate.result["gate"]
    assert "no feature profile" in gate.result["gate"]["problem"]


@pytest.mark.parametrize(
    ("change", "code", "needle"),
    [
        ("missing-data", contract.EXIT_DATA_INVALID, "not found"),
        ("half-reference", contract.EXIT_CONFIG_INVALID, contract.ENV_DRIFT_REFERENCE_SHA256),
    ],
)
def test_gate_bad_inputs_fail_with_a_clear_reason(
    cli: Any, tmp_path: Path, change: str, code: int, needle: str
) -> None:
    data = _data(tmp_path / "data" / "d.csv")
    env = None
    if change == "missing-data":
        data = tmp_path / "data" / "nope.csv"
    else:
        env = {contract.ENV_DRIFT_REFERENCE_URI: (tmp_path / "out" / "ref").as_uri()}
    gate = _gate(cli, tmp_path, data, env)
    assert gate.code == code and needle in gate.result["message"], gate.result


def test_a_large_gate_report_fits_the_termination_message() -> None:
    long = "f" * contract.GATE_NAME_MAX
    report: contract.GateReport = {
        "fingerprint": "etag:" + "a" * (contract.GATE_FINGERPRINT_MAX - 5),
        "drift": {
            "against": "m" * 253,
            "max_psi": 9.5,
            "top": [{"feature": long, "psi": 1.0}] * contract.GATE_TOP_FEATURES,
            "missing_features": [long] * contract.GATE_TOP_FEATURES,
            "rows": 10,
        },
    }
    result = contract.Result("Succeeded", "GateChecked", message="m" * 5000, gate=report)
    text = result.to_json()
    assert len(text.encode()) <= contract.RESULT_MAX_BYTES
    assert contract.parse_result(text).gate == report  # type: ignore[union-attr]
