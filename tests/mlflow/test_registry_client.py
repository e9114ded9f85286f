"""The operator's MLflow registry client (``mlflowmirror.client``, httpx only) against a real ``mlflow server``
on loopback (tests/mlflowserver.py): every endpoint the mirror uses, and the clear errors of a wrong URI,
refused or missing credentials and a server that is not there."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from kubetrain_operator.mlflowmirror.client import Credentials, MlflowError, Registry

from tests.conftest import free_port
from tests.mlflowserver import ADMIN_PASSWORD, ADMIN_USER, mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
ADMIN = Credentials(username=ADMIN_USER, password=ADMIN_PASSWORD, source="Secret t/admin")


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _registry_round_trip(url: str) -> None:
    async with Registry(url, ADMIN, timeout=120) as reg:  # a loaded test machine can be slow to answer
        absent = await reg.registered_model("client-iris")
        assert not absent.exists and absent.versions == []
        await reg.create_registered_model("client-iris", "test")
        await reg.create_registered_model("client-iris", "test")  # already there: fine
        tags = {"kubetrain.uid": "uid-1", "kubetrain.metric.accuracy": "0.95"}
        v1 = await reg.create_version("client-iris", "pvc://models/iris/run-a/model.joblib", None, tags, "d")
        v2 = await reg.create_version("client-iris", "s3://bucket/iris/model.joblib", None, {"kubetrain.uid": "u2"}, "")
        assert (v1, v2) == ("1", "2")
        await reg.set_alias("client-iris", "production", v1)
        await reg.set_version_tag("client-iris", v2, "kubetrain.metric.accuracy", "0.5")
        found = await reg.registered_model("client-iris")
        assert found.exists and found.aliases == {"production": "1"}
        by_version = {v.version: v for v in found.versions}
        assert by_version["1"].tags == tags and by_version["1"].source == "pvc://models/iris/run-a/model.joblib"
        assert by_version["2"].tags["kubetrain.metric.accuracy"] == "0.5"
        await reg.set_alias("client-iris", "production", v2)
        await reg.delete_alias("client-iris", "production")
        await reg.delete_alias("client-iris", "production")  # gone already: fine
        await reg.delete_version("client-iris", v1)
        await reg.delete_version("client-iris", v1)
        after = await reg.registered_model("client-iris")
        assert after.aliases == {} and [v.version for v in after.versions] == ["2"]


def test_every_endpoint_the_mirror_uses_works_against_a_real_server(mlflow_url: str) -> None:
    _run(_registry_round_trip(mlflow_url))


async def _error_of(url: str, credentials: Credentials | None) -> MlflowError:
    async with Registry(url, credentials, timeout=30) as reg:
        with pytest.raises(MlflowError) as info:
            await reg.registered_model("client-iris")
    return info.value


def test_refused_and_missing_credentials_say_so(mlflow_url: str) -> None:
    wrong = Credentials(username=ADMIN_USER, password="wrong", source="Secret t/creds")
    refused = _run(_error_of(mlflow_url, wrong))
    assert refused.reason == "MlflowRefused"
    assert "HTTP 401" in refused.message and "the credentials were refused (Secret t/creds)" in refused.message
    missing = _run(_error_of(mlflow_url, None))
    assert missing.reason == "MlflowRefused" and "no credentials were sent" in missing.message


def test_a_wrong_uri_and_an_absent_server_say_so(mlflow_url: str) -> None:
    wrong = _run(_error_of(mlflow_url + "/not-mlflow", ADMIN))
    assert wrong.reason == "MlflowError" and "wrong tracking URI?" in wrong.message, wrong.message
    nobody = _run(_error_of(f"http://127.0.0.1:{free_port()}", ADMIN))
    assert nobody.reason == "MlflowUnreachable" and "onnect" in nobody.message, nobody.message
