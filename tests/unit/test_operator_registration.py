"""registration: version numbering and the ModelVersion manifest (pure parts)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubetrain_operator.trainingrun import registration
from kubetrain_trainer import contract

from tests.unit.test_operator_jobs import UID, make_run


def mv(model: str, version: int) -> dict[str, Any]:
    return {"metadata": {"name": f"{model}-v{version}"}, "spec": {"model": model, "version": version}}


@pytest.mark.parametrize(
    ("existing", "expected"),
    [([], 1), ([mv("iris", 1), mv("iris", 2)], 3), ([mv("iris", 7), mv("wine", 9)], 8), ([mv("wine", 3)], 1)],
)
def test_next_version(existing: list[dict[str, Any]], expected: int) -> None:
    assert registration.next_version(existing, "iris") == expected


def test_model_version_manifest() -> None:
    result = contract.Result.from_json(
        json.dumps(
            {
                "outcome": "Succeeded",
                "reason": "Trained",
                "estimator": "random_forest",
                "metrics": {"accuracy": 0.97},
                "model": {"uri": "pvc://kubetrain-models/iris/model.joblib", "sha256": "b" * 64, "size": 5},
                "best_params": {"max_depth": 3},
                "dataset": {"fingerprint": "sha256:abc"},
                "versions": {"python": "3.11.7", "sklearn": "1.9.1", "joblib": "1.6.0"},
            }
        )
    )
    m = registration.build_model_version(make_run(), UID, result, 4, "ghcr.io/kubetrain/trainer:0.1.0")
    assert m["metadata"]["name"] == "iris-v4" and "ownerReferences" not in m["metadata"]
    assert m["metadata"]["labels"] == {
        "kubetrain.io/model": "iris",
        "kubetrain.io/run": "iris",
        "kubetrain.io/run-uid": UID,
        "app.kubernetes.io/managed-by": "kubetrain",
    }
    spec = m["spec"]
    assert spec["version"] == 4 and spec["aliases"] == ["candidate"]
    assert spec["artifact"] == {
        "uri": "pvc://kubetrain-models/iris/model.joblib",
        "sha256": "b" * 64,
        "size": 5,
        "format": "joblib",
    }
    assert spec["source"]["trainingRun"] == {"name": "iris", "uid": UID}
    assert spec["source"]["params"] == {"max_depth": 3} and spec["source"]["datasetFingerprint"] == "sha256:abc"
    assert spec["runtime"] == {"python": "3.11.7", "scikitLearn": "1.9.1", "joblib": "1.6.0"}
    assert spec["metrics"] == {"accuracy": 0.97}


def test_model_version_carries_the_runs_credentials_references() -> None:
    """A run-created version records how its artifact is read (envFrom, serviceAccountName), so a later
    verification Job (e.g. after its run was deleted) can read an s3:// model; no secret values are copied."""
    result = contract.Result.from_json(
        json.dumps(
            {
                "outcome": "Succeeded",
                "reason": "Trained",
                "model": {"uri": "s3://models/iris/model.joblib", "sha256": "c" * 64},
            }
        )
    )
    refs = [{"secretRef": {"name": "s3-creds"}}, {"configMapRef": {"name": "s3-endpoint"}}]
    run = make_run(envFrom=refs, serviceAccountName="trainer-irsa")
    spec = registration.build_model_version(run, UID, result, 1, "img:1")["spec"]
    assert spec["envFrom"] == refs and spec["serviceAccountName"] == "trainer-irsa"
    plain = registration.build_model_version(make_run(), UID, result, 1, "img:1")["spec"]
    assert "envFrom" not in plain and "serviceAccountName" not in plain


def test_signature_from_the_trainers_result_fits_the_api() -> None:
    result = contract.Result(
        outcome="Succeeded", reason="Trained", model={"uri": "pvc://m/iris/model.joblib", "sha256": "a" * 64}
    )
    raw = {"features": [{"name": "x", "dtype": "float64", "kind": "numeric"}], "target": "y"}
    result.signature = raw
    assert registration.signature_of(result) == {"features": [{"name": "x", "dtype": "float64"}], "target": "y"}
    mv = registration.build_model_version(make_run(), UID, result, 1, "img")
    assert mv["spec"]["signature"] == {"features": [{"name": "x", "dtype": "float64"}], "target": "y"}
    result.signature = {"features": "not a list"}
    assert registration.signature_of(result) == {"features": []}
    result.signature = None
    assert registration.signature_of(result) is None
