"""A run that reads its dataset from S3 and writes its model to S3, through the operator: credentials come
from a Secret and the endpoint from a ConfigMap via spec.envFrom. The S3 server is moto in server mode on
loopback (a real HTTP S3 API; nothing leaves 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster, wait_until
from tests.s3server import moto_server

from .conftest import Operator, Workspace, iris_frame, iris_run

pytestmark = pytest.mark.cluster
SECRET = "kt-s3cr3t-9f2c"
pytest.importorskip("moto.server", reason="moto[server] (the dev extra) is needed")


@pytest.fixture
def s3_endpoint(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    with moto_server(tmp_path / "moto.log", host=cluster.host_ip) as endpoint:
        yield endpoint


def test_s3_dataset_and_output_through_env_from(workspace: Workspace, operator: Operator, s3_endpoint: str) -> None:
    import boto3

    client: Any = boto3.client(
        "s3", endpoint_url=s3_endpoint, aws_access_key_id="kubetrain", aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )  # fmt: skip
    client.create_bucket(Bucket="kt-data")
    client.create_bucket(Bucket="kt-models")
    client.put_object(Bucket="kt-data", Key="iris/iris.csv", Body=iris_frame().to_csv(index=False).encode())

    ws = workspace
    ws.kubectl(
        "create", "secret", "generic", "s3-creds",
        "--from-literal=AWS_ACCESS_KEY_ID=kubetrain", f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET}",
    )  # fmt: skip
    ws.kubectl(
        "create", "configmap", "s3-endpoint", f"--from-literal=AWS_ENDPOINT_URL={s3_endpoint}",
        "--from-literal=AWS_DEFAULT_REGION=us-east-1", "--from-literal=NO_PROXY=*",
    )  # fmt: skip
    run = iris_run(
        "iris-s3",
        dataset={"uri": "s3://kt-data/iris/iris.csv", "target": "species"},
        output={"uri": "s3://kt-models/runs/"},
        envFrom=[{"secretRef": {"name": "s3-creds"}}, {"configMapRef": {"name": "s3-endpoint"}}],
    )
    ws.apply(run)
    done = ws.wait_phase("iris-s3", ("Succeeded", "Failed"), timeout=120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    model = done["status"]["model"]
    assert model["uri"] == "s3://kt-models/runs/iris-s3/model.joblib"
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="kt-models")["Contents"])
    files = ["evaluation.json", "metadata.json", "model.joblib", "model.joblib.sha256", "profile.json", "report.html"]
    plots = ["confusion_matrix.png", "feature_importance.png", "pr.png", "roc.png"]
    assert keys == sorted(f"runs/iris-s3/{name}" for name in files + plots)
    # the report lives next to the model in the bucket, and status says where
    assert done["status"]["report"] == "s3://kt-models/runs/iris-s3/report.html"
    page = client.get_object(Bucket="kt-models", Key="runs/iris-s3/report.html")["Body"].read().decode()
    assert f"{done['status']['metrics']['accuracy']:.6g}" in page
    body = client.get_object(Bucket="kt-models", Key="runs/iris-s3/model.joblib")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == model["sha256"]
    mv = ws.get("modelversion", done["status"]["modelVersion"])
    assert mv["spec"]["artifact"]["uri"] == model["uri"]
    assert mv["spec"]["source"]["dataset"] == "s3://kt-data/iris/iris.csv"
    # The version records how its artifact is read (references only, never the values).
    assert mv["spec"]["envFrom"] == run["spec"]["envFrom"]
    # The Secret's values reached only the pod, never the TrainingRun or the Job's spec.
    job = ws.get("job", done["status"]["jobName"])
    assert SECRET not in json.dumps(job) and SECRET not in json.dumps(ws.run("iris-s3"))

    # The same s3:// model registered by hand: a verification Job downloads it with the credentials and
    # endpoint of spec.envFrom, checks the sha256, loads it and predicts, and the version becomes Ready.
    hand = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": "iris-offline-v1"},
        "spec": {
            "model": "iris-offline",
            "version": 1,
            "artifact": {"uri": model["uri"], "sha256": model["sha256"]},
            "envFrom": run["spec"]["envFrom"],
        },
    }
    ws.apply(hand)

    def settled() -> dict[str, Any] | None:
        st = ws.get("modelversion", "iris-offline-v1").get("status") or {}
        return st if st.get("phase") in ("Ready", "Failed") else None

    st = wait_until("the hand-registered s3 version to settle", settled, timeout=120)
    verified = next(c for c in st["conditions"] if c["type"] == "ArtifactVerified")
    assert st["phase"] == "Ready" and verified["reason"] == "Verified", st
    verify_job = ws.get("job", st["verificationJob"])
    pod_spec = verify_job["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["envFrom"] == run["spec"]["envFrom"]
    assert SECRET not in json.dumps(verify_job) and SECRET not in json.dumps(ws.get("modelversion", "iris-offline-v1"))


def test_s3_without_credentials_fails_clearly(workspace: Workspace, operator: Operator, s3_endpoint: str) -> None:
    ws = workspace
    ws.kubectl("create", "configmap", "s3-endpoint", f"--from-literal=AWS_ENDPOINT_URL={s3_endpoint}")
    ws.apply(
        iris_run(
            "no-bucket",
            dataset={"uri": "s3://missing-bucket/iris.csv", "target": "species"},
            envFrom=[{"configMapRef": {"name": "s3-endpoint"}}],
        )
    )
    done = ws.wait_phase("no-bucket", ("Succeeded", "Failed"), timeout=120)
    failure = done["status"].get("failure") or {}
    assert done["status"]["phase"] == "Failed", done["status"]
    assert failure.get("reason") in ("DataInvalid", "ConfigInvalid"), failure
    assert "missing-bucket" in failure.get("message", ""), failure
    assert len(ws.pods("no-bucket")) == 1
