"""s3:// datasets and outputs against a real S3-compatible HTTP server: moto in server mode on loopback.

The server enforces IAM: the first three requests (create a user, its access key and an s3:* policy) are
unauthenticated, every later one must be signed with that key, so wrong credentials really are refused.
The trainer runs as a subprocess with only the variables a pod would have: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and the endpoint (AWS_ENDPOINT_URL, or FSSPEC_S3_ENDPOINT_URL).
Nothing leaves 127.0.0.1: proxies, config files and instance metadata are switched off.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.s3server import clean_env, moto_server

from .conftest import CliRun, _parse, spec_for, write_config

pytest.importorskip("moto.server", reason="moto[server] (the dev extra) is needed for the s3 tests")
pytest.importorskip("s3fs", reason="s3fs (the s3 extra) is needed for the s3 tests")

BUCKET = "kt-data"
OUT_BUCKET = "kt-models"  # empty until a run writes to it: a bucket with no objects must count as existing
POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'
WRITE_ONLY_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{OUT_BUCKET}/*"},
        ],
    }
)


@dataclass
class S3:
    endpoint: str
    key: str
    secret: str
    client: Any
    tmp: Path
    writer: tuple[str, str]  # (key, secret) of a user who may write objects but not read them

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            # nothing but the endpoint: no config files, no instance metadata, no proxy
            "AWS_CONFIG_FILE": str(self.tmp / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.tmp / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        env.update(overrides)
        return env

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in out.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=bucket, Key=key)["Body"].read())


def trainer(*argv: str, env: dict[str, str]) -> CliRun:
    proc = subprocess.run(
        [sys.executable, "-m", "kubetrain_trainer", *argv],
        capture_output=True,
        text=True,
        env={**clean_env(), **env},
        timeout=300,
    )
    return CliRun(proc.returncode, _parse(proc.stdout), proc.stdout, proc.stderr, None)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[S3]:
    import boto3

    tmp = tmp_path_factory.mktemp("s3")
    # IAM enforced: the first six requests (two users, their access keys and policies) are unauthenticated,
    # then signed.
    with moto_server(tmp / "moto.log", INITIAL_NO_AUTH_ACTION_COUNT="6") as endpoint:

        def session(key: str, secret: str) -> Any:
            return boto3.Session(aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1")

        iam = session("bootstrap", "bootstrap").client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="trainer")
        access = iam.create_access_key(UserName="trainer")["AccessKey"]
        iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=POLICY)
        key, secret = access["AccessKeyId"], access["SecretAccessKey"]
        # "writer" may write models but not read them back: storage that takes writes it will not return.
        iam.create_user(UserName="writer")
        writer = iam.create_access_key(UserName="writer")["AccessKey"]
        iam.put_user_policy(UserName="writer", PolicyName="s3", PolicyDocument=WRITE_ONLY_POLICY)
        client = session(key, secret).client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        client.create_bucket(Bucket=OUT_BUCKET)
        for name in ("iris.csv", "iris.parquet"):
            client.put_object(Bucket=BUCKET, Key=name, Body=(data_dir / name).read_bytes())
        yield S3(endpoint, key, secret, client, tmp, (writer["AccessKeyId"], writer["SecretAccessKey"]))


def _config(tmp_path: Path, dataset: str, output: str, name: str) -> Path:
    spec = spec_for(dataset, "species", "random_forest", {"n_estimators": 20}, output={"uri": output})
    return write_config(tmp_path / f"{name}.yaml", spec, name=name)


def _sha_of(s3: S3, key: str) -> str:
    return hashlib.sha256(s3.get(OUT_BUCKET, key)).hexdigest()


def test_run_reads_s3_csv_and_uploads_the_artifacts(s3: S3, tmp_path: Path) -> None:
    cfg = _config(tmp_path, f"s3://{BUCKET}/iris.csv", f"s3://{OUT_BUCKET}/models/", "iris-s3")
    run = trainer("run", "--config", str(cfg), env=s3.env())
    assert run.code == 0, (run.result, run.stderr[-2000:])
    assert run.result["reason"] == "Trained"
    prefix = "models/iris-s3/"
    plots = ["confusion_matrix.png", "feature_importance.png", "pr.png", "roc.png"]
    names = [
        "evaluation.json",
        "metadata.json",
        "model.joblib",
        "model.joblib.sha256",
        *plots,
        "profile.json",
        "report.html",
    ]
    assert s3.keys(OUT_BUCKET, prefix) == sorted(prefix + n for n in names)
    assert run.result["report"] == {"uri": f"s3://{OUT_BUCKET}/{prefix}report.html"}
    assert json.loads(s3.get(OUT_BUCKET, f"{prefix}evaluation.json"))["task"] == "classification"
    assert s3.get(OUT_BUCKET, f"{prefix}report.html").startswith(b"<!DOCTYPE html>")

    model = run.result["model"]
    assert model["uri"] == f"s3://{OUT_BUCKET}/{prefix}model.joblib"
    sha = _sha_of(s3, f"{prefix}model.joblib")
    assert model["sha256"] == sha
    assert model["size"] == len(s3.get(OUT_BUCKET, f"{prefix}model.joblib"))
    assert s3.get(OUT_BUCKET, f"{prefix}model.joblib.sha256").decode() == f"{sha}  model.joblib\n"
    meta = json.loads(s3.get(OUT_BUCKET, f"{prefix}metadata.json"))
    assert meta["model"] == model
    assert meta["dataset"]["uri"] == f"s3://{BUCKET}/iris.csv" and meta["dataset"]["rows"] == 150
    assert run.result["dataset"]["format"] == "csv"

    # verify downloads the directory (or the file) from s3 and checks the same bytes
    for uri in (f"s3://{OUT_BUCKET}/{prefix}", model["uri"]):
        ver = trainer("verify", env=s3.env(KUBETRAIN_VERIFY_URI=uri))
        assert ver.code == 0, (ver.result, ver.stderr[-2000:])
        assert ver.result["reason"] == "Verified" and ver.result["model"]["sha256"] == sha
        assert ver.result["model"]["uri"] == uri
    bad = trainer("verify", env=s3.env(KUBETRAIN_VERIFY_URI=model["uri"], KUBETRAIN_VERIFY_SHA256="0" * 64))
    assert bad.code == 13 and "checksum mismatch" in bad.result["message"]
    gone = trainer("verify", env=s3.env(KUBETRAIN_VERIFY_URI=f"s3://{OUT_BUCKET}/models/nope/"))
    assert gone.code == 13 and f"s3://{OUT_BUCKET}/models/nope/" in gone.result["message"]


def test_parquet_with_the_fsspec_endpoint_variable(s3: S3, tmp_path: Path) -> None:
    """FSSPEC_S3_ENDPOINT_URL reaches S3FileSystem(endpoint_url=...); AWS_ENDPOINT_URL points at a closed
    loopback port, so the run only passes if the fsspec variable is the one used."""
    cfg = _config(tmp_path, f"s3://{BUCKET}/iris.parquet", f"s3://{OUT_BUCKET}/pq", "iris-pq")
    env = s3.env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", FSSPEC_S3_ENDPOINT_URL=s3.endpoint)
    run = trainer("run", "--config", str(cfg), env=env)
    assert run.code == 0, (run.result, run.stderr[-2000:])
    assert run.result["dataset"]["format"] == "parquet"
    assert run.result["model"]["sha256"] == _sha_of(s3, "pq/iris-pq/model.joblib")


def test_missing_key_is_data_invalid_naming_it(s3: S3, tmp_path: Path) -> None:
    cfg = _config(tmp_path, f"s3://{BUCKET}/nope/missing.csv", f"s3://{OUT_BUCKET}/failed/", "missing-key")
    run = trainer("run", "--config", str(cfg), env=s3.env())
    assert run.code == 11, run.result
    assert run.result["reason"] == "DataInvalid"
    assert f"s3://{BUCKET}/nope/missing.csv" in run.result["message"] and "not found" in run.result["message"]
    assert "Traceback" not in run.stderr
    assert s3.keys(OUT_BUCKET, "failed/") == []


def test_missing_dataset_bucket_is_data_invalid_naming_it(s3: S3, tmp_path: Path) -> None:
    cfg = _config(tmp_path, "s3://no-such-bucket/iris.csv", f"s3://{OUT_BUCKET}/failed/", "missing-bucket")
    run = trainer("run", "--config", str(cfg), env=s3.env())
    assert run.code == 11, run.result
    assert "no-such-bucket" in run.result["message"] and "bucket does not exist" in run.result["message"]
    assert s3.keys(OUT_BUCKET, "failed/") == []


def test_missing_output_bucket_is_config_invalid_before_training(s3: S3, tmp_path: Path) -> None:
    cfg = _config(tmp_path, f"s3://{BUCKET}/iris.csv", "s3://no-such-output/models/", "missing-out")
    run = trainer("run", "--config", str(cfg), env=s3.env())
    assert run.code == 10, run.result
    assert run.result["reason"] == "ConfigInvalid"
    assert "spec.output.uri" in run.result["message"] and "'no-such-output' does not exist" in run.result["message"]
    assert not any(step == "train" for step, _ in run.progress)


@pytest.mark.parametrize(
    "creds", [{"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, {"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000"}]
)
def test_wrong_credentials_reading_the_dataset(s3: S3, tmp_path: Path, creds: dict[str, str]) -> None:
    """Unreadable data is DataInvalid (11, no retry), like an unreadable local file; nothing is written."""
    cfg = _config(tmp_path, f"s3://{BUCKET}/iris.csv", f"s3://{OUT_BUCKET}/failed/", "bad-creds")
    run = trainer("run", "--config", str(cfg), env=s3.env(**creds))
    assert run.code == 11, run.result
    msg = run.result["message"]
    assert msg.startswith(f"access denied reading dataset s3://{BUCKET}/iris.csv") and "AWS_ACCESS_KEY_ID" in msg
    assert "Traceback" not in run.stderr
    assert s3.keys(OUT_BUCKET, "failed/") == []


def test_wrong_credentials_writing_the_output(s3: S3, tmp_path: Path, data_dir: Path) -> None:
    """Local data, s3 output: the upload is refused → ConfigInvalid (10, no retry), and nothing is left."""
    cfg = _config(tmp_path, (data_dir / "iris.csv").as_uri(), f"s3://{OUT_BUCKET}/failed/", "bad-creds-out")
    run = trainer("run", "--config", str(cfg), env=s3.env(AWS_SECRET_ACCESS_KEY="wrong-secret"))
    assert run.code == 10, run.result
    msg = run.result["message"]
    assert msg.startswith(f"access denied uploading artifacts to s3://{OUT_BUCKET}/failed/bad-creds-out"), msg
    assert "Traceback" not in run.stderr
    assert s3.keys(OUT_BUCKET, "failed/") == []


def test_verify_with_wrong_credentials(s3: S3) -> None:
    uri = f"s3://{OUT_BUCKET}/models/iris-s3/"
    run = trainer("verify", env=s3.env(KUBETRAIN_VERIFY_URI=uri, AWS_SECRET_ACCESS_KEY="wrong-secret"))
    assert run.code == 13, run.result
    assert run.result["message"].startswith(f"access denied reading the model at {uri}")


def test_an_artifact_that_cannot_be_read_back_is_never_reported_as_succeeded(
    s3: S3, tmp_path: Path, data_dir: Path
) -> None:
    """The upload is accepted but the objects cannot be read back (the writer may not GetObject): the
    trainer reads the model back from its final location before it reports success, so the run fails
    (InternalError, retried by the Job) naming where, instead of registering a model nobody can load."""
    cfg = _config(tmp_path, (data_dir / "iris.csv").as_uri(), f"s3://{OUT_BUCKET}/unreadable/", "write-only")
    key, secret = s3.writer
    run = trainer("run", "--config", str(cfg), env=s3.env(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret))
    assert run.result["outcome"] == "Failed" and run.code == 1, run.result
    assert run.result["reason"] == "InternalError", run.result
    msg = run.result["message"]
    assert f"s3://{OUT_BUCKET}/unreadable/write-only" in msg and "cannot be read back" in msg, msg
    assert "model" not in run.result  # no artifact is reported
    # the same run with a user who can read succeeds and its model is what was read back
    ok = trainer("run", "--config", str(cfg), env=s3.env())
    assert ok.code == 0, ok.result
    assert _sha_of(s3, "unreadable/write-only/model.joblib") == ok.result["model"]["sha256"]
