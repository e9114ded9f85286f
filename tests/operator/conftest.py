"""Fixtures of the operator tier: CRDs installed, a namespace with data/models claims and datasets, and
the operator as a real subprocess (``python -m kubetrain_operator --namespace <ns>``) whose log is
printed when a test fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Cluster, free_port

from .crds import install_crds

DATA_CLAIM = "kubetrain-data"
MODELS_CLAIM = "kubetrain-models"
IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> None:
    install_crds(cluster.kubectl)


class Workspace:
    """A test namespace with Bound data/models claims; helpers to write data and wait for runs."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        assert cluster.run_dir is not None, "operator tests need the local dev cluster (claims map to folders)"
        self.pvc_root = cluster.run_dir / "pvc" / namespace  # see Cluster.claim

    def claim_dir(self, claim: str) -> Path:
        return self.pvc_root / claim

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.namespace, *args, check=check, input=input)

    def get(self, *args: str) -> Any:
        """``kubectl -n NS get ARGS -o json`` (over the cluster's kept-alive client where it can: ``get_json``)."""
        return self.cluster.get_json("-n", self.namespace, *args)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def write_csv(self, name: str, frame: Any) -> None:
        path = self.claim_dir(DATA_CLAIM) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)

    def run(self, name: str) -> dict[str, Any]:
        return self.cluster.get_training_run(self.namespace, name)

    def wait_phase(self, name: str, phases: tuple[str, ...], timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = self.run(name)
            if (run.get("status") or {}).get("phase") in phases:
                return run
            time.sleep(0.5)
        raise AssertionError(f"run {name} not in {phases} after {timeout}s: {json.dumps(run.get('status'), indent=1)}")

    def jobs(self, run: str) -> list[dict[str, Any]]:
        return list(self.get("jobs", "-l", f"kubetrain.io/run={run}")["items"])

    def pods(self, run: str) -> list[dict[str, Any]]:
        return list(self.get("pods", "-l", f"kubetrain.io/run={run}")["items"])


@pytest.fixture
def workspace(cluster: Cluster, namespace: str, crds: None) -> Workspace:
    return prepare_workspace(cluster, namespace)


def prepare_workspace(cluster: Cluster, namespace: str) -> Workspace:
    """Bound data/models claims and iris.csv in an existing namespace (with its default service account)."""
    ws = Workspace(cluster, namespace)
    for claim in (DATA_CLAIM, MODELS_CLAIM):
        cluster.claim(namespace, claim)  # a static local PV whose folder is ws.claim_dir(claim)
    ws.write_csv("iris.csv", iris_frame())
    return ws


def iris_frame() -> Any:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    frame.columns = IRIS_COLUMNS
    frame["species"] = frame["species"].map({0: "setosa", 1: "versicolor", 2: "virginica"})
    return frame


def iris_run(name: str, **overrides: Any) -> dict[str, Any]:
    """examples/iris-classification.yaml with ``name`` and spec overrides (None deletes a key)."""
    doc = yaml.safe_load((REPO / "examples" / "iris-classification.yaml").read_text())
    doc["metadata"] = {"name": name}
    for key, value in overrides.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return dict(doc)


class Operator:
    """``python -m kubetrain_operator --namespace NS`` as a subprocess, log in a file. ``scope`` replaces
    ``--namespace NS`` (e.g. ``["--all-namespaces"]`` or ``["--namespace", "team-*"]``)."""

    def __init__(self, cluster: Cluster, namespace: str, log_path: Path, scope: list[str] | None = None) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.scope = scope if scope is not None else ["--namespace", namespace]
        self.health_port = 0
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.starts = 0

    def start(self, **env: str) -> None:
        self.metrics_port = free_port()
        self.health_port = free_port()
        full = dict(self.cluster.env)
        full.update(
            KUBETRAIN_METRICS_PORT=str(self.metrics_port),
            KUBETRAIN_HEALTH_PORT=str(self.health_port),
            KUBETRAIN_PROGRESS_INTERVAL="3",
            PYTHONUNBUFFERED="1",
        )
        full.update(env)
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== operator start #{self.starts} env={env} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetrain_operator", *self.scope],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full,
            cwd=str(REPO),
            start_new_session=True,
        )
        log.close()

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup, like a crashed pod."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` matching ``labels`` on /metrics."""
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def operator_factory(
    cluster: Cluster, workspace: Workspace, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Operator]]:
    """Start the operator (``start(**env)``); the log is shown when the test fails."""
    op = Operator(cluster, workspace.namespace, tmp_path / "operator.log")

    def start(**env: str) -> Operator:
        op.start(**env)
        return op

    yield start
    op.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        text = op.log_text()
        lines = [line for line in text.splitlines() if "HTTP Request:" not in line]
        print(f"----- operator log ({op.log_path}), last 150 lines without HTTP requests -----")
        print("\n".join(lines[-150:]))


@pytest.fixture
def operator(operator_factory: Callable[..., Operator]) -> Operator:
    return operator_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
