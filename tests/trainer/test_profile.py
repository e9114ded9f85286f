"""Dataset fingerprints and feature profiles with PSI drift: the facts a TrainingSchedule's gates compare."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kubetrain_trainer.errors import DataInvalid
from kubetrain_trainer.profile import drift, feature_profile, same_source, source_fingerprint

from tests.s3server import moto_server


def frame(n: int = 5000, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(10.0 + shift, 2.0, n),
            "y": rng.exponential(3.0, n),
            "colour": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
            "flag": rng.random(n) < 0.3,
        }
    )


def test_the_same_distribution_does_not_drift() -> None:
    profile = feature_profile(frame(seed=0))
    result = drift(profile, frame(seed=1))  # a fresh sample of the same distributions
    assert result.max_psi < 0.02, result
    assert set(result.psi) == {"x", "y", "colour", "flag"}
    assert drift(profile, frame(seed=0)).max_psi == pytest.approx(0.0, abs=1e-9)


def test_a_two_sigma_shift_drifts_and_names_the_feature() -> None:
    profile = feature_profile(frame(seed=0))
    result = drift(profile, frame(shift=2 * 2.0, seed=1))  # mean + 2 standard deviations
    assert result.psi["x"] > 1.0, result
    assert result.top[0][0] == "x"
    assert result.psi["y"] < 0.02 and result.psi["colour"] < 0.02
    assert result.to_json()["top"][0]["feature"] == "x"


def test_categorical_drift_and_unseen_values() -> None:
    profile = feature_profile(frame(seed=0))
    new = frame(seed=1)
    new["colour"] = np.where(np.arange(len(new)) % 2 == 0, "purple", new["colour"])  # half never seen
    result = drift(profile, new)
    assert result.top[0][0] == "colour" and result.psi["colour"] > 0.25


def test_missing_values_and_text_in_a_numeric_column_count_as_missing() -> None:
    profile = feature_profile(frame(seed=0))
    new = frame(seed=1).astype({"x": object})
    new.loc[: len(new) // 2, "x"] = "n/a"
    result = drift(profile, new)
    assert result.psi["x"] > 0.25


def test_a_feature_the_new_data_lacks_is_reported_not_scored() -> None:
    profile = feature_profile(frame(seed=0))
    result = drift(profile, frame(seed=1).drop(columns=["y"]))
    assert result.missing_features == ["y"] and "y" not in result.psi


def test_constant_and_all_missing_columns_profile_without_error() -> None:
    data = pd.DataFrame({"c": [1.0] * 50, "m": [np.nan] * 50, "s": ["a"] * 50})
    profile = feature_profile(data)
    assert profile["features"]["c"]["edges"] == [1.0]
    assert profile["features"]["m"]["missing"] == 1.0
    assert drift(profile, data).max_psi == pytest.approx(0.0, abs=1e-9)


def test_the_profile_is_small_json() -> None:
    profile = feature_profile(frame(n=100_000))
    text = json.dumps(profile)
    assert len(text) < 4096
    assert json.loads(text) == profile
    assert sum(profile["features"]["x"]["fractions"]) == pytest.approx(1.0)


def test_bad_inputs_are_clear() -> None:
    with pytest.raises(DataInvalid, match="empty dataset"):
        feature_profile(pd.DataFrame({"x": []}))
    profile = feature_profile(frame(n=100))
    with pytest.raises(DataInvalid, match="empty dataset"):
        drift(profile, frame(n=100).iloc[0:0])
    with pytest.raises(DataInvalid, match="unsupported profile"):
        drift({"version": 99, "features": {}}, frame(n=100))


def test_file_fingerprints_follow_the_content_not_the_mtime(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    frame(n=200).to_csv(path, index=False)
    first = source_fingerprint(f"file://{path}")
    assert first["method"] == "sha256" and first["size"] == path.stat().st_size
    path.touch()  # a new mtime, the same bytes
    assert same_source(first, source_fingerprint(f"file://{path}"))
    frame(n=201).to_csv(path, index=False)
    assert not same_source(first, source_fingerprint(f"file://{path}"))
    assert not same_source(first, None)


def test_file_fingerprint_errors(tmp_path: Path) -> None:
    with pytest.raises(DataInvalid, match="not found"):
        source_fingerprint(f"file://{tmp_path}/nope.csv")
    with pytest.raises(DataInvalid, match="is a directory"):
        source_fingerprint(f"file://{tmp_path}")


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("s3fs", reason="s3fs (the s3 extra) is needed")
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


def test_s3_fingerprints_use_the_etag_without_downloading(s3_endpoint: str) -> None:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    )
    client.create_bucket(Bucket="kt-fingerprint")
    client.put_object(Bucket="kt-fingerprint", Key="d.csv", Body=b"a,b\n1,2\n")
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": s3_endpoint}}
    first = source_fingerprint("s3://kt-fingerprint/d.csv", options)
    assert first["method"] == "etag" and first["size"] == 8
    assert same_source(first, source_fingerprint("s3://kt-fingerprint/d.csv", options))
    client.put_object(Bucket="kt-fingerprint", Key="d.csv", Body=b"a,b\n1,3\n")
    assert not same_source(
        first, source_fingerprint("s3://kt-fingerprint/d.csv", {**options, "skip_instance_cache": True})
    )
    with pytest.raises(DataInvalid, match="not found"):
        source_fingerprint("s3://kt-fingerprint/missing.csv", options)
