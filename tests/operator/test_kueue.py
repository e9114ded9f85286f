"""Queued runs admitted by a real Kueue (built from the Go module proxy by hack/kueue, run as a process).

A ClusterQueue with a quota of one CPU and two runs that each ask for one CPU: both are created suspended
with the queue label, Kueue admits one, then the other when the first has finished — never both at once.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import REPO, Cluster, wait_until

from .conftest import Operator, Workspace, iris_run

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]
KUEUE = REPO / "hack" / "kueue"


@pytest.fixture(scope="module")
def kueue(cluster: Cluster) -> Iterator[None]:
    """Kueue on the dev cluster via ``hack/kueue up`` (built on first use); an external test cluster
    (KUBETRAIN_TEST_KUBECONFIG) must bring its own."""
    if cluster.external:
        if cluster.kubectl("get", "crd", "clusterqueues.kueue.x-k8s.io", check=False).returncode != 0:
            pytest.skip("the external test cluster has no Kueue installed")
        yield
        return
    assert cluster.run_dir is not None
    env = {**cluster.env, "KUBETRAIN_RUN_DIR": str(cluster.run_dir)}
    proc = subprocess.run([str(KUEUE), "up"], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    yield
    subprocess.run([str(KUEUE), "down"], env=env, capture_output=True, text=True, timeout=60)


def _apply(ws: Workspace, manifest: dict[str, Any]) -> None:
    ws.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def team_queue(kueue: None, workspace: Workspace) -> Iterator[str]:
    """LocalQueue ``team`` in the test namespace, on a ClusterQueue with 1 CPU and 4Gi of quota."""
    ws = workspace
    flavor, cq = f"flavor-{ws.namespace}", f"cq-{ws.namespace}"
    _apply(ws, {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": flavor}})
    _apply(
        ws,
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": cq},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ws.namespace}},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory"],
                        "flavors": [
                            {
                                "name": flavor,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "1"},
                                    {"name": "memory", "nominalQuota": "4Gi"},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    )
    ws.apply(
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "team"},
            "spec": {"clusterQueue": cq},
        }
    )
    try:
        yield "team"
    finally:
        ws.cluster.kubectl("delete", "clusterqueue", cq, "--ignore-not-found", "--wait=false", check=False)
        ws.cluster.kubectl("delete", "resourceflavor", flavor, "--ignore-not-found", "--wait=false", check=False)


def test_quota_admits_one_queued_run_at_a_time(team_queue: str, workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    resources = {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    for name in ("first", "second"):
        ws.apply(iris_run(name, queueName=team_queue, resources=resources))
    for name in ("first", "second"):
        ws.kubectl("wait", "--for=condition=Succeeded", f"trainingrun/{name}", "--timeout=240s")

    jobs = {name: ws.jobs(name) for name in ("first", "second")}
    assert all(len(j) == 1 for j in jobs.values()), jobs
    # Kueue admitted each through a Workload of the LocalQueue.
    workloads = ws.get("workloads.kueue.x-k8s.io")["items"]
    admitted = [w for w in workloads if (w.get("status") or {}).get("admission")]
    assert {w["spec"]["queueName"] for w in workloads} == {team_queue} and len(admitted) == 2, workloads
    # One CPU of quota: the second Job started only after the first had completed.
    windows = sorted(
        (_time(j[0]["status"]["startTime"]), _time(j[0]["status"]["completionTime"])) for j in jobs.values()
    )
    print("kueue: Job windows", [(a.isoformat(), b.isoformat()) for a, b in windows])
    assert windows[1][0] >= windows[0][1], f"both Jobs ran at once: {windows}"
    # Both runs passed through Queued (the Job waited suspended for admission), as phase-change Events.
    for name in ("first", "second"):
        selector = f"involvedObject.kind=TrainingRun,involvedObject.name={name}"

        def reasons(selector: str = selector) -> list[str] | None:
            found = [e["reason"] for e in ws.get("events", "--field-selector", selector)["items"]]
            return found if "Queued" in found else None

        wait_until(f"a Queued event on {name}", reasons, timeout=20)


def test_run_larger_than_the_quota_stays_queued_with_kueues_reason(
    team_queue: str, workspace: Workspace, operator: Operator
) -> None:
    """Two CPUs asked of a one-CPU queue: never admitted; the run says why, in Kueue's words, and no pod
    starts. Deleting the run removes its Job (and Kueue its Workload)."""
    ws = workspace
    resources = {"requests": {"cpu": "2", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
    ws.apply(iris_run("too-big", queueName=team_queue, resources=resources, startupDeadlineSeconds=10))

    def queued_with_reason() -> dict[str, Any] | None:
        run = ws.run("too-big")
        st = run.get("status") or {}
        cond = next((c for c in st.get("conditions") or [] if c["type"] == "Succeeded"), {})
        return st if st.get("phase") == "Queued" and "quota" in (cond.get("message") or "") else None

    st = wait_until("Kueue's reason in the run's status", queued_with_reason, timeout=60)
    message = next(c for c in st["conditions"] if c["type"] == "Succeeded")["message"]
    print("kueue: queued message:", message)
    assert message.startswith(f"waiting for admission by queue {team_queue}: ") and "cpu" in message
    # Past the start-up deadline (10 s, the least the API takes) it is still Queued: a queue wait is not a
    # start-up failure.
    time.sleep(15)
    assert ws.run("too-big")["status"]["phase"] == "Queued"
    assert ws.jobs("too-big")[0]["spec"]["suspend"] is True and not ws.pods("too-big")
    ws.kubectl("delete", "trainingrun", "too-big", "--wait=true")
    wait_until("the Job to be garbage-collected", lambda: not ws.jobs("too-big"), timeout=60)
