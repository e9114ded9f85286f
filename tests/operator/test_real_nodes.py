"""What only real nodes can show: the trainer runs in a container of the image built from
Dockerfile.trainer, the kernel enforces the run's limits, the restricted profile holds at run time, and
``kubectl logs``/``exec`` reach the trainer. The operator runs as a local process (tests/operator/conftest.py);
the kubelet and containerd of the dev cluster run the trainer pods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import Cluster, wait_until

from .conftest import DATA_CLAIM, Operator, Workspace, iris_run

pytestmark = pytest.mark.cluster


def _trainer_images(cluster: Cluster) -> dict[str, str]:
    images = cluster.images
    if not images.get("TRAINER_IMAGE_ID"):
        pytest.fail(
            "no project images in the dev cluster: hack/build-images missing or failed (hack/dev-cluster load-images)"
        )
    return images


def _running_trainer(ws: Workspace, run: str, timeout: float = 120) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        for p in ws.pods(run):
            statuses = p["status"].get("containerStatuses") or []
            if p["status"].get("phase") == "Running" and statuses and "running" in statuses[0]["state"]:
                return dict(p)
        return None

    return wait_until(f"a Running trainer pod of {run}", running, timeout, 0.3)


def _container_cgroup(cluster: Cluster, pod: dict[str, Any], controller: str) -> Path:
    """The trainer container's cgroup v1 directory on this machine (under the kubelet's cgroupRoot)."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    uid = pod["metadata"]["uid"]
    roots = list(Path("/sys/fs/cgroup", controller).glob("kubetrain-*"))
    for root in roots:
        for candidate in root.rglob(container_id):
            if f"pod{uid}" in str(candidate):
                return candidate
    raise AssertionError(f"no {controller} cgroup for container {container_id} of pod {uid} under {roots}")


def test_iris_runs_in_the_trainer_image_as_10001_with_logs_exec_and_cpu_quota(
    cluster: Cluster, workspace: Workspace, operator: Operator
) -> None:
    """While the trainer runs: its cgroup carries the CPU quota the run asked for, it runs as uid 10001 on a
    read-only root, ``kubectl exec`` and ``kubectl logs`` reach it; afterwards the pod's imageID is the
    trainer image buildah built, and that digest is in the run's status and the version's lineage."""
    images = _trainer_images(cluster)
    ws = workspace
    # Slow enough to look at while it runs: many trees on a quarter of a CPU.
    ws.apply(
        iris_run(
            "iris-live",
            estimator={"name": "random_forest", "params": {"n_estimators": 3000}},
            resources={"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "250m", "memory": "1Gi"}},
        )
    )
    pod = _running_trainer(ws, "iris-live")
    name = pod["metadata"]["name"]
    cpu = _container_cgroup(cluster, pod, "cpu")
    quota, period = int((cpu / "cpu.cfs_quota_us").read_text()), int((cpu / "cpu.cfs_period_us").read_text())
    assert quota / period == pytest.approx(0.25), (quota, period)
    memory = _container_cgroup(cluster, pod, "memory")
    assert int((memory / "memory.limit_in_bytes").read_text()) == 1024**3

    ident = ws.kubectl("exec", name, "--", "id", "-u").stdout.strip()
    assert ident == "10001"
    write_root = ws.kubectl("exec", name, "--", "sh", "-c", "touch /opt/x", check=False)
    assert write_root.returncode != 0 and "Read-only file system" in write_root.stderr, write_root
    assert ws.kubectl("exec", name, "--", "sh", "-c", "touch /tmp/x && echo ok").stdout.strip() == "ok"

    run = ws.wait_phase("iris-live", ("Succeeded", "Failed"), timeout=600)
    assert run["status"]["phase"] == "Succeeded", json.dumps(run["status"], indent=1)
    logs = ws.kubectl("logs", name).stdout
    assert logs.strip(), "kubectl logs returned nothing for the trainer pod"
    (status,) = ws.get("pod", name)["status"]["containerStatuses"]
    assert status["imageID"] == images["TRAINER_IMAGE_ID"], (status, images)
    assert status["image"].endswith(images["TRAINER_IMAGE"]), status
    # the digest the pod ran, recorded in the run's status and the version's lineage
    digest = images["TRAINER_IMAGE_ID"].rsplit("@", 1)[-1]
    assert run["status"]["trainerImageDigest"] == digest, run["status"]
    source = ws.get("mv", run["status"]["modelVersion"])["spec"]["source"]
    assert source["imageDigest"] == digest, source


def test_memory_limit_ends_oomkilled_by_the_kernel(cluster: Cluster, workspace: Workspace, operator: Operator) -> None:
    """128Mi and a dataset that needs more: the kernel kills the trainer; the kubelet reports OOMKilled/137
    and the run fails OOMKilled without retrying."""
    _trainer_images(cluster)
    ws = workspace
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(400_000, 12)), columns=[f"x{i}" for i in range(12)])
    frame["y"] = (frame["x0"] > 0).map({True: "a", False: "b"})
    ws.write_csv("big.csv", frame)
    ws.apply(
        iris_run(
            "oom",
            dataset={"uri": f"pvc://{DATA_CLAIM}/big.csv", "target": "y"},
            evaluation={"testFraction": 0.25},
            resources={"requests": {"cpu": "500m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}},
            backoffLimit=0,
        )
    )
    run = ws.wait_phase("oom", ("Succeeded", "Failed"), timeout=300)
    failure = run["status"].get("failure") or {}
    assert run["status"]["phase"] == "Failed" and failure.get("reason") == "OOMKilled", json.dumps(
        run["status"], indent=1
    )
    assert failure.get("exitCode") == 137
    (pod,) = ws.pods("oom")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled" and terminated["exitCode"] == 137, terminated


def test_restricted_namespace_runs_the_trainer_and_an_output_inside_the_pod_is_refused(
    cluster: Cluster, workspace: Workspace, operator: Operator
) -> None:
    """Pod Security ``restricted`` enforced: iris trains (uid 10001, read-only root); a run whose output is
    a file:// path (inside the pod, gone with it) is refused before any Job — ConfigInvalid naming
    ``spec.output.uri`` and why, so no ModelVersion can point at a model that vanished with its pod."""
    _trainer_images(cluster)
    ws = workspace
    cluster.kubectl("label", "namespace", ws.namespace, "pod-security.kubernetes.io/enforce=restricted", "--overwrite")
    ws.apply(iris_run("restricted-ok"))
    ws.apply(iris_run("writes-pod", output={"uri": "file:///tmp/kubetrain-out/models"}, backoffLimit=1))
    ok = ws.wait_phase("restricted-ok", ("Succeeded", "Failed"), timeout=300)
    assert ok["status"]["phase"] == "Succeeded", json.dumps(ok["status"], indent=1)
    (pod,) = ws.pods("restricted-ok")
    ctx = pod["spec"]["containers"][0]["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert (pod["spec"].get("securityContext") or {}).get("runAsUser", ctx.get("runAsUser")) == 10001

    bad = ws.wait_phase("writes-pod", ("Succeeded", "Failed"), timeout=120)
    failure = bad["status"].get("failure") or {}
    assert bad["status"]["phase"] == "Failed" and failure.get("reason") == "ConfigInvalid", bad["status"]
    assert "spec.output.uri 'file:///tmp/kubetrain-out/models'" in failure["message"], failure
    assert "would be lost" in failure["message"] and "pvc://" in failure["message"], failure
    assert ws.jobs("writes-pod") == [] and ws.pods("writes-pod") == []
    assert "modelVersion" not in bad["status"]  # nothing registered
