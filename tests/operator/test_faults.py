"""Faults on the shared dev cluster, each ending with nothing lost: the run in the right terminal state, one
Job per attempt, no version registered twice or for a model that is not there.

* the output volume is full (a real ENOSPC: a small tmpfs mounted on the claim's folder, which the kubelet
  bind-mounts into the trainer pod);
* a namespace deleted with runs and versions inside, while the operator watches it and another one;
* a concurrent writer on a run's status (it keeps resetting phase and modelVersion while the run trains).

The faults of the control plane itself (API server restart, etcd stopped, a watch past an etcd compaction,
objects stored under an older schema) are in test_resilience.py, on a private cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster, wait_until

from .conftest import MODELS_CLAIM, Operator, Workspace, iris_run, prepare_workspace

pytestmark = pytest.mark.cluster


def versions(ws: Workspace) -> list[dict[str, Any]]:
    return list(ws.get("mv")["items"])


@pytest.fixture
def tiny_claim(cluster: Cluster, workspace: Workspace) -> Iterator[Path]:
    """A claim "tiny" whose folder is a 96 KiB tmpfs: room for the trainer's write probe and a few files,
    not for a 300-tree forest with its report."""
    path = cluster.claim(workspace.namespace, "tiny")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k,mode=0777", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_output_volume_fails_the_run_clearly_and_registers_nothing(
    workspace: Workspace, operator: Operator, tiny_claim: Path
) -> None:
    ws = workspace
    run = iris_run("fills-up", output={"uri": "pvc://tiny/runs"}, backoffLimit=2)
    run["spec"]["estimator"] = {"name": "random_forest", "params": {"n_estimators": 300}}
    ws.apply(run)
    done = ws.wait_phase("fills-up", ("Succeeded", "Failed"), timeout=300)
    failure = done["status"].get("failure") or {}
    assert done["status"]["phase"] == "Failed" and failure.get("reason") == "ConfigInvalid", done["status"]
    assert "No space left on device" in failure["message"] and "output volume is full" in failure["message"], failure
    assert "/runs/fills-up" in failure["message"], failure
    assert len(ws.jobs("fills-up")) == 1 and len(ws.pods("fills-up")) == 1  # terminal: not retried
    assert versions(ws) == [] and "modelVersion" not in done["status"]
    left = sorted(str(p.relative_to(tiny_claim)) for p in tiny_claim.rglob("*"))
    assert not any("fills-up" in p for p in left), left  # no partial artifact, no temp dir


def test_namespace_deleted_with_runs_and_versions_inside(
    cluster: Cluster, workspace: Workspace, operator_factory: Callable[..., Operator], tmp_path: Path
) -> None:
    """The operator watches two namespaces; one is deleted while it holds a finished run with its Ready
    version and a run in training. The namespace goes away (nothing the operator holds keeps it), the
    operator keeps running without an unhandled error, and a run in the other namespace trains."""
    doomed = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", doomed)
    try:
        wait_until(
            f"default service account in {doomed}",
            lambda: cluster.kubectl("get", "sa", "default", "-n", doomed, check=False).returncode == 0,
            30,
        )
        other = prepare_workspace(cluster, doomed)
        op = Operator(cluster, workspace.namespace, tmp_path / "two.log", ["-n", workspace.namespace, "-n", doomed])
        op.start()
        try:
            other.apply(iris_run("finished"))
            other.wait_phase("finished", ("Succeeded",), timeout=180)
            mv = other.run("finished")["status"]["modelVersion"]
            wait_until(f"{mv} Ready", lambda: (other.get("mv", mv).get("status") or {}).get("phase") == "Ready", 120)
            slow = iris_run("training")
            slow["spec"]["estimator"] = {"name": "random_forest", "params": {"n_estimators": 400}}
            other.apply(slow)
            wait_until(
                "training Running", lambda: (other.run("training").get("status") or {}).get("phase") == "Running", 120
            )
            cluster.kubectl("delete", "namespace", doomed, "--wait=false")
            t0 = time.monotonic()
            wait_until(
                f"namespace {doomed} gone",
                lambda: cluster.kubectl("get", "namespace", doomed, check=False).returncode != 0,
                180,
                interval=1,
            )
            print(f"namespace {doomed} deleted in {time.monotonic() - t0:.1f}s")
            assert op.proc is not None and op.proc.poll() is None, op.log_text()[-3000:]
            workspace.apply(iris_run("elsewhere"))
            workspace.wait_phase("elsewhere", ("Succeeded",), timeout=180)
            assert len(workspace.jobs("elsewhere")) == 1
            log = op.log_text()
            assert "Traceback" not in log, log[-4000:]
            assert op.starts == 1 and op.proc.poll() is None
        finally:
            op.stop()
    finally:
        cluster.kubectl("delete", "namespace", doomed, "--wait=false", check=False)
        cluster.kubectl("delete", "pv", "-l", f"kubetrain.io/claim-namespace={doomed}", "--wait=false", check=False)


def test_a_concurrent_writer_on_status_loses_and_duplicates_nothing(workspace: Workspace, operator: Operator) -> None:
    """Someone else keeps overwriting the run's status (phase back to Pending, modelVersion and job
    removed) every 0.3 s while it trains and registers. When the writer stops, the run ends Succeeded
    with one Job and exactly one version, and its status names that version."""
    ws = workspace
    ws.apply(iris_run("contested"))
    stop = threading.Event()
    writes = {"ok": 0, "failed": 0}
    junk = json.dumps({"status": {"phase": "Pending", "modelVersion": None, "job": None}})

    def writer() -> None:
        while not stop.is_set():
            proc = ws.kubectl(
                "patch", "trainingrun", "contested", "--subresource=status", "--type=merge", "-p", junk, check=False
            )
            writes["ok" if proc.returncode == 0 else "failed"] += 1
            time.sleep(0.3)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        # until the Job completed and a version exists: the writer is active across training and registration
        wait_until(
            "the Job complete and a version registered",
            lambda: any((j.get("status") or {}).get("succeeded") for j in ws.jobs("contested")) and bool(versions(ws)),
            240,
        )
        time.sleep(3)  # a few more overwrites after the registration
    finally:
        stop.set()
        thread.join(timeout=10)
    print(f"concurrent status writes: {writes}")
    assert writes["ok"] >= 10, writes
    done = ws.wait_phase("contested", ("Succeeded", "Failed"), timeout=120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert len(ws.jobs("contested")) == 1 and len(ws.pods("contested")) == 1
    names = [v["metadata"]["name"] for v in versions(ws)]
    assert names == [done["status"]["modelVersion"]], (names, done["status"])
    assert "Traceback" not in operator.log_text(), operator.log_text()[-4000:]
    assert len(list(ws.claim_dir(MODELS_CLAIM).rglob("model.joblib"))) == 1  # one artifact directory


def _promote(ws: Workspace, name: str, alias: str = "production") -> None:
    ws.kubectl("patch", "mv", name, "--type=merge", "-p", json.dumps({"spec": {"aliases": [alias]}}))


def _check(ws: Workspace, name: str, timeout: float = 150) -> dict[str, Any]:
    """The version once its production claim's check has a result."""

    def done() -> dict[str, Any] | None:
        obj = dict(ws.get("mv", name))
        checks = (obj.get("status") or {}).get("aliasChecks") or []
        return obj if checks else None

    return wait_until(f"the check of {name}'s production claim", done, timeout)


def test_an_artifact_altered_or_deleted_after_registration_is_refused_production(
    workspace: Workspace, operator: Operator
) -> None:
    """Three Ready versions; after registration one artifact is altered and one deleted. Promoting each to
    production (spec.aliases, as a user would): a check Job reads the artifact at its location for that
    claim; the altered and the deleted are refused with what the check found (status, AliasRefused, Event),
    the intact one is granted."""
    ws = workspace
    for run in ("altered", "deleted", "intact"):
        ws.apply(iris_run(run))
    names: dict[str, str] = {}
    for run in ("altered", "deleted", "intact"):
        done = ws.wait_phase(run, ("Succeeded", "Failed"), timeout=240)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        names[run] = done["status"]["modelVersion"]
        wait_until(
            f"{names[run]} Ready",
            lambda n=names[run]: (ws.get("mv", n).get("status") or {}).get("phase") == "Ready",
            120,
        )
    models = ws.claim_dir(MODELS_CLAIM)
    with (models / "altered" / "model.joblib").open("ab") as handle:
        handle.write(b"tampered")
    (models / "deleted" / "model.joblib").unlink()
    for run in ("altered", "deleted", "intact"):
        _promote(ws, names[run])
        obj = _check(ws, names[run])
        (check,) = obj["status"]["aliasChecks"]
        print(run, check)
        if run == "intact":
            assert check["result"] == "Passed", check
            wait_until(
                "intact holds production",
                lambda: ws.get("mv", names["intact"])["status"].get("aliases") == ["production"],
                30,
            )
            continue
        assert check["result"] == "Failed", check
        expected = "checksum mismatch" if run == "altered" else "not found"
        assert expected in check["message"], check
        status = ws.get("mv", names[run])["status"]
        assert status.get("aliases") == [], status
        refused = next(c for c in status["conditions"] if c["type"] == "AliasRefused")
        assert refused["status"] == "True" and "check of" in refused["message"], refused
        assert status["aliasHistory"][-1]["action"] == "Refused", status["aliasHistory"]
    # Events are posted in the background after the status they describe: wait for both.
    refused_on = {names["altered"], names["deleted"]}

    def refused_names() -> set[str]:
        events = ws.get("events", "--field-selector", "reason=AliasRefused")["items"]
        return {e["involvedObject"]["name"] for e in events}

    seen = wait_until("both AliasRefused Events", lambda: (got := refused_names()) == refused_on and got, 30)
    assert seen == refused_on, seen
    # one check Job per claim, none for the versions' registration (the trainer vouched for those)
    jobs = [j["metadata"]["name"] for j in ws.get("jobs", "-l", "kubetrain.io/component=verify")["items"]]
    assert len(jobs) == 3 and all("-check-" in j for j in jobs), jobs


CHAOS_SEEDS = [int(s) for s in os.environ.get("KUBETRAIN_CHAOS_SEEDS", "20261202").split(",") if s.strip()]


@pytest.mark.parametrize("seed", CHAOS_SEEDS)
def test_operator_sigkilled_at_random_during_20_concurrent_runs(
    workspace: Workspace, operator_factory: Callable[..., Operator], seed: int
) -> None:
    """20 runs at once; the operator is SIGKILLed at seeded random instants (every 2 to 8 s, so between
    any two of its API calls or in the middle of one, as a crash lands) and restarted, until every run has
    ended. Nothing is lost or doubled: every run Succeeded, one Job and one pod each, versions 1..20 without
    gap or duplicate, each run's status naming the version made from it. KUBETRAIN_CHAOS_SEEDS=1,2,3 repeats
    it with other seeds."""
    import random

    rng = random.Random(seed)
    ws = workspace
    names = [f"chaos-{i:02d}" for i in range(20)]
    op = operator_factory()
    for name in names:
        ws.apply(iris_run(name, resources={"requests": {"cpu": "50m", "memory": "200Mi"}, "limits": {"memory": "1Gi"}}))

    def finished() -> int:
        runs = ws.get("trainingrun")["items"]
        return sum(1 for r in runs if (r.get("status") or {}).get("phase") in ("Succeeded", "Failed"))

    kills, deadline = 0, time.monotonic() + 600
    while finished() < len(names) and kills < 40 and time.monotonic() < deadline:
        time.sleep(rng.uniform(2.0, 8.0))  # the operator needs ~2 s to start: shorter would kill only its start
        op.kill()
        kills += 1
        time.sleep(rng.uniform(0.0, 1.0))
        op.start()
    ended = finished()
    print(f"seed {seed}: {kills} SIGKILLs, {ended} of {len(names)} runs ended meanwhile")
    assert kills >= 3, "the operator was hardly killed: the test proved nothing"
    assert ended >= 5, (
        f"only {ended} runs ended while the operator was being killed: the kills did not overlap the work"
    )
    runs = {n: ws.wait_phase(n, ("Succeeded", "Failed"), timeout=300) for n in names}
    failed = {n: r["status"] for n, r in runs.items() if r["status"]["phase"] != "Succeeded"}
    assert not failed, failed
    for name in names:
        assert len(ws.jobs(name)) == 1 and len(ws.pods(name)) == 1, (name, ws.jobs(name), ws.pods(name))

    def registered() -> list[dict[str, Any]] | None:
        items = versions(ws)
        return items if len(items) >= len(names) else None

    items = wait_until("a version per run", registered, 120)
    numbers = sorted(int(v["spec"]["version"]) for v in items)
    assert numbers == list(range(1, len(names) + 1)), numbers  # no gap, no duplicate
    by_uid = {v["metadata"]["labels"]["kubetrain.io/run-uid"]: v["metadata"]["name"] for v in items}
    assert len(by_uid) == len(names)
    for name, run in runs.items():
        assert by_uid[run["metadata"]["uid"]] == run["status"]["modelVersion"], (name, run["status"])
    assert "Traceback" not in op.log_text(), op.log_text()[-4000:]
