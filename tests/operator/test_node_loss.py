"""A node lost while it runs trainers, on a PRIVATE two-node dev cluster (it stops one of its nodes, which
must never happen to the shared cluster).

``hack/dev-cluster node-stop`` stops the node's kubelet and, with it, its containers and containerd (what a
powered-off machine looks like to the control plane); the Node object stays. The node controller marks the
node not-Ready after its grace period (``--node-monitor-grace-period``, 50 s by default) and the pods on it
not Ready. Without the operator the runs would now wait forever: their Jobs have a podFailurePolicy, so they
replace a pod only once it is terminal, and no kubelet is left to make it so. The operator, after
``KUBETRAIN_NODE_LOST_SECONDS`` (10 here), marks each such pod Failed with a DisruptionTarget condition and
deletes it; the Jobs start new pods on the node that works, without counting the loss against backoffLimit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEV_CLUSTER, Cluster, _parse_up_output

from .conftest import Operator, Workspace, iris_run, prepare_workspace
from .crds import install_crds

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

NODE_LOST_SECONDS = 10
#: Slow enough to be caught running: many trees on a quarter of a CPU (tens of seconds).
SLOW = {
    "estimator": {"name": "random_forest", "params": {"n_estimators": 1000}},
    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "250m", "memory": "1Gi"}},
}


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    run_dir = Path(tempfile.mkdtemp(prefix="kubetrain-nodeloss-"))
    env = dict(os.environ)
    env["KUBETRAIN_RUN_DIR"] = str(run_dir)
    env.pop("KUBETRAIN_GPU_NODE", None)  # the default: a second node (tainted for GPUs)
    env.pop("KUBECONFIG", None)
    try:
        t0 = time.monotonic()
        proc = subprocess.run([str(DEV_CLUSTER), "up"], env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"private hack/dev-cluster up failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
        kubeconfig, bin_dir = _parse_up_output(proc.stdout)
        print(f"private two-node cluster up in {time.monotonic() - t0:.1f}s ({run_dir})")
        cenv = dict(env)
        if bin_dir:
            cenv["PATH"] = bin_dir + os.pathsep + cenv.get("PATH", "")
        cenv["KUBECONFIG"] = kubeconfig
        cluster = Cluster(kubeconfig=kubeconfig, run_dir=run_dir, external=False, env=cenv)
        install_crds(cluster.kubectl)
        yield cluster
    finally:
        subprocess.run([str(DEV_CLUSTER), "reset"], env=env, capture_output=True, text=True, timeout=300)
        shutil.rmtree(run_dir, ignore_errors=True)


def _ready(cluster: Cluster, node: str) -> str:
    conds = cluster.get_json("node", node)["status"].get("conditions") or []
    return next((str(c["status"]) for c in conds if c["type"] == "Ready"), "")


def _running_on(ws: Workspace, run: str) -> str | None:
    """The node of the run's trainer pod once its container runs."""
    for pod in ws.pods(run):
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if any("running" in (s.get("state") or {}) for s in statuses):
            return str(pod["spec"]["nodeName"])
    return None


def _wait(what: str, predicate: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(interval)


def test_a_lost_node_s_trainers_are_replaced_on_a_working_node_with_the_reason_in_status(
    two_nodes: Cluster, tmp_path: Path
) -> None:
    cluster = two_nodes
    cpu_node, gpu_node = cluster.info["CPU_NODE"], cluster.info["GPU_NODE"]
    ns = f"n-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    has_sa = lambda: cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0  # noqa: E731
    _wait(f"default service account in {ns}", has_sa, 30)
    ws = prepare_workspace(cluster, ns)
    op = Operator(cluster, ns, tmp_path / "operator.log")
    op.start(KUBETRAIN_NODE_LOST_SECONDS=str(NODE_LOST_SECONDS))
    tolerate_gpu_taint = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    runs = {"lost-a": 0, "lost-b": 2}  # name -> backoffLimit: a disruption counts against neither
    try:
        # Both trainers start on the node to be lost: the other one is cordoned meanwhile.
        cluster.kubectl("cordon", cpu_node)
        try:
            for name, backoff in runs.items():
                ws.apply(iris_run(name, backoffLimit=backoff, tolerations=tolerate_gpu_taint, **SLOW))
            for name in runs:
                on = _wait(f"{name} running", lambda n=name: _running_on(ws, n), 180)
                assert on == gpu_node, (name, on)
        finally:
            cluster.kubectl("uncordon", cpu_node)
        first = {name: ws.pods(name)[0]["metadata"]["name"] for name in runs}

        t_lost = time.monotonic()
        stop = subprocess.run(
            [str(DEV_CLUSTER), "node-stop", gpu_node], env=cluster.env, capture_output=True, text=True, timeout=300
        )
        assert stop.returncode == 0, stop.stderr
        _wait(f"{gpu_node} not Ready", lambda: _ready(cluster, gpu_node) != "True", 180, 1)
        t_not_ready = time.monotonic() - t_lost
        done = {name: ws.wait_phase(name, ("Succeeded", "Failed"), timeout=400) for name in runs}
        t_done = time.monotonic() - t_lost
        ready = _ready(cluster, gpu_node) or "?"
        print(f"node Ready={ready} after {t_not_ready:.0f}s; both runs finished {t_done:.0f}s after the loss")

        versions = sorted(v["spec"]["version"] for v in ws.get("mv")["items"])
        for name, run in done.items():
            st = run["status"]
            assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
            (lost,) = st["disruptions"]
            assert lost["pod"] == first[name] and lost["node"] == gpu_node and lost["reason"] == "NodeLost", lost
            assert f"node {gpu_node} has not been Ready for" in lost["message"], lost
            assert st["attempts"] == 2, st
            (job,) = ws.jobs(name)  # one Job per run
            jst = job["status"]
            assert jst.get("succeeded") == 1 and not jst.get("failed"), jst  # the loss did not count
            (pod,) = ws.pods(name)  # the lost pod is gone from the API, one replacement
            assert pod["metadata"]["name"] != first[name] and pod["spec"]["nodeName"] == cpu_node, pod["spec"]
            events = ws.get("events", "--field-selector", f"involvedObject.name={name},reason=NodeLost")["items"]
            assert len(events) == 1 and first[name] in events[0]["message"], events
        assert versions == [1, 2], versions  # no gap, no duplicate

        # The node comes back: its old pods stay gone, nothing runs or registers twice.
        up = subprocess.run([str(DEV_CLUSTER), "up"], env=cluster.env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stderr[-4000:]
        _wait(f"{gpu_node} Ready again", lambda: _ready(cluster, gpu_node) == "True", 120, 1)
        time.sleep(5)
        for name in runs:
            assert [p["metadata"]["name"] for p in ws.pods(name)] != [first[name]]
            assert len(ws.pods(name)) == 1 and len(ws.jobs(name)) == 1
            assert ws.run(name)["status"]["phase"] == "Succeeded"
        assert sorted(v["spec"]["version"] for v in ws.get("mv")["items"]) == [1, 2]
        log = op.log_text()
        assert "Traceback" not in log, log[-4000:]
        assert op.proc is not None and op.proc.poll() is None and op.starts == 1
    except BaseException:
        lines = [line for line in op.log_text().splitlines() if "HTTP Request:" not in line]
        print("----- operator log, last 200 lines -----\n" + "\n".join(lines[-200:]))
        raise
    finally:
        op.stop()
