"""The engine reads from the watch cache (``kubetrain_operator.cache``): it must stay correct.

Not timed (the benchmark, ``bench/operator_load.py``, measures speed): a Job or pod changed behind the
operator's back is seen and acted on, and a restart with many existing runs — the cache filled from kopf's
initial listing before any pass — looks at every run and creates no Job (none twice, none at all).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import pytest

from tests.conftest import wait_until

from .conftest import Operator, Workspace, iris_run

pytestmark = [pytest.mark.cluster]

#: Runs present at the restart (KUBETRAIN_TEST_RESTART_RUNS overrides).
RESTART_RUNS = int(os.environ.get("KUBETRAIN_TEST_RESTART_RUNS", "2000"))


def _metric(op: Operator, name: str, **labels: str) -> float:
    """0 until the restarted operator serves /metrics."""
    try:
        return op.metric(name, **labels)
    except OSError:
        return 0.0


def test_job_edited_behind_the_operators_back_is_put_back(
    workspace: Workspace, operator_factory: Callable[..., Operator]
) -> None:
    ws = workspace
    operator_factory()
    ws.apply(iris_run("edited", suspend=True))
    ws.wait_phase("edited", ("Suspended",), timeout=60)
    job = ws.run("edited")["status"]["jobName"]
    # Someone resumes the Job by hand: the run still says suspend, so the operator suspends it again —
    # it must see the edit (a Job watch event) and not a cached copy from before it.
    ws.kubectl("patch", "job", job, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_until("Job suspended again", lambda: ws.get("job", job)["spec"].get("suspend") is True, timeout=30)
    assert len(ws.jobs("edited")) == 1


def test_job_deleted_behind_the_operators_back_is_seen(
    workspace: Workspace, operator_factory: Callable[..., Operator]
) -> None:
    ws = workspace
    operator_factory()
    ws.apply(iris_run("vanished", suspend=True))
    ws.wait_phase("vanished", ("Suspended",), timeout=60)
    job = ws.run("vanished")["status"]["jobName"]
    ws.kubectl("delete", "job", job, "--wait=false")
    run = ws.wait_phase("vanished", ("Failed",), timeout=30)
    assert run["status"]["failure"]["reason"] == "JobDeleted"


def test_pod_deleted_behind_the_operators_back_is_seen(
    workspace: Workspace, operator_factory: Callable[..., Operator]
) -> None:
    ws = workspace
    operator_factory()
    # A pod that never starts (its image cannot be pulled) stays for as long as the test needs; the run's
    # message names it. Deleted by hand, the Job makes another: the message must name the new one.
    ws.apply(iris_run("repodded", image="registry.invalid/kubetrain/trainer:0.0.0", startupDeadlineSeconds=600))

    def named_pod() -> str | None:
        conditions = (ws.run("repodded").get("status") or {}).get("conditions") or []
        message = " ".join(str(c.get("message") or "") for c in conditions)
        pods = [p["metadata"]["name"] for p in ws.pods("repodded") if not p["metadata"].get("deletionTimestamp")]
        return next((p for p in pods if f"pod {p}:" in message), None)

    first = wait_until("the run's message names its pod", named_pod, timeout=90)
    ws.kubectl("delete", "pod", str(first), "--wait=true", "--grace-period=0", "--force")
    second = wait_until("the new pod named", lambda: (p := named_pod()) != first and p, timeout=90)
    assert second != first


def test_restart_with_many_runs_creates_no_job(workspace: Workspace, operator_factory: Callable[..., Operator]) -> None:
    ws = workspace
    n = RESTART_RUNS
    items = []
    for i in range(n):
        run = iris_run(f"many-{i:05d}", suspend=True)
        run["metadata"]["labels"] = {"kubetrain.io/test": "restart"}
        items.append(run)
    op = operator_factory()
    for start in range(0, n, 50):
        batch = {"apiVersion": "v1", "kind": "List", "items": items[start : start + 50]}
        # No client-side validation: it fetches the whole OpenAPI document per call (timed out on a loaded
        # API server); the server validates against the CRD schema anyway.
        ws.kubectl("create", "--validate=false", "-f", "-", input=json.dumps(batch))

    def job_uids() -> dict[str, str]:
        out = ws.kubectl(
            "get", "jobs", "-l", "kubetrain.io/run", "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.metadata.uid}{'\\n'}{end}",
        ).stdout  # fmt: skip
        return dict(line.split("=", 1) for line in out.split())

    wait_until(f"{n} Jobs", lambda: len(job_uids()) >= n, timeout=60 + n * 0.5, interval=5)
    before = job_uids()
    assert len(before) == n
    op.stop()
    op.start()
    # Every run is looked at again after the restart (one pass each at least) ...
    wait_until(
        f"{n} passes after the restart",
        lambda: _metric(op, "kubetrain_reconcile_total", kind="TrainingRun") >= n,
        timeout=60 + n * 0.3,
        interval=2,
    )
    time.sleep(5)
    # ... and none tried to create its Job: the cache held every Job before the first pass.
    assert op.metric("kubetrain_jobs_created_total") == 0
    after_restart = op.log_text().rsplit("===== operator start #2", 1)[1]
    assert "already exists" not in after_restart, after_restart[-3000:]
    assert job_uids() == before, "a Job was replaced"
    ws.kubectl("delete", "trainingruns", "-l", "kubetrain.io/test=restart", "--wait=false")
