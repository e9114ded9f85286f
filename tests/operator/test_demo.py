"""`hack/demo` (what `make demo` runs) from an empty cluster: its own run directory, so a new etcd, PKI and
node agent, then CRDs, claims, the operator and the iris example trained and registered."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import DEV_CLUSTER, REPO, free_port

pytestmark = pytest.mark.cluster


def test_demo_trains_iris_on_a_fresh_cluster(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo-cluster"
    env = {
        **os.environ,
        "KUBETRAIN_RUN_DIR": str(run_dir),
        "KUBETRAIN_METRICS_PORT": str(free_port()),
        "KUBETRAIN_HEALTH_PORT": str(free_port()),
    }
    env.pop("KUBECONFIG", None)
    try:
        proc = subprocess.run(
            [str(REPO / "hack" / "demo")], env=env, capture_output=True, text=True, timeout=900, cwd=REPO
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        lines = proc.stdout.splitlines()
        # The last lines are `kubectl get tr,mv -o wide` (earlier ones echo kubectl apply).
        run_line = [line for line in lines if line.startswith("trainingrun.kubetrain.io/iris ")][-1]
        mv_line = [line for line in lines if line.startswith("modelversion.kubetrain.io/iris-v1 ")][-1]
        assert "Succeeded" in run_line.split() and any(c.startswith("accuracy=") for c in run_line.split())
        assert "Ready" in mv_line.split() and '["candidate"]' in mv_line
        assert (run_dir / "pvc" / "kubetrain-demo" / "kubetrain-models" / "iris" / "model.joblib").is_file()
        # Run twice: idempotent, reuses the cluster and the trained run.
        again = subprocess.run(
            [str(REPO / "hack" / "demo")], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
        )
        assert again.returncode == 0, again.stderr[-4000:]
        assert "iris-v1" in again.stdout and "iris-v2" not in again.stdout
    finally:
        pid_file = run_dir / "pids" / "operator-demo.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        subprocess.run([str(DEV_CLUSTER), "reset"], env=env, capture_output=True, timeout=300)
        shutil.rmtree(run_dir, ignore_errors=True)
