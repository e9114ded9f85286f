"""ModelVersion controller against the real local control plane with the operator as a subprocess.

Covers: versions from runs (trusted lineage), alias promotion and history, hand-registered verification
(checksum mismatch and success), protected-alias refusal, retention, concurrent registration with an
operator kill, and deletionPolicy Delete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Cluster, wait_until

from .conftest import DATA_CLAIM, MODELS_CLAIM, Operator, Workspace

pytestmark = pytest.mark.cluster

MODEL_CLAIM = MODELS_CLAIM


# ---- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture
def ns(workspace: Workspace) -> str:
    return workspace.namespace


@pytest.fixture
def models(workspace: Workspace) -> Path:
    """The local folder of the models claim."""
    return workspace.claim_dir(MODEL_CLAIM)


# ---- helpers ------------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    return wait_until(what, predicate, timeout, interval)


def mv(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", "mv", name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def mv_status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    obj = mv(cluster, ns, name)
    return (obj or {}).get("status") or {}


def wait_phase(cluster: Cluster, ns: str, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = mv_status(cluster, ns, name)
        if st.get("phase") == phase:
            return st
        return None

    return wait_for(check, timeout, f"{name} phase {phase}")


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def training_run(name: str, model: str = "iris") -> dict[str, Any]:
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {
            "model": model,
            "task": "classification",
            "dataset": {"uri": f"pvc://{DATA_CLAIM}/iris.csv", "target": "species"},
            "estimator": {"name": "logistic_regression", "params": {"max_iter": 200}},
            "output": {"uri": f"pvc://{MODEL_CLAIM}/runs"},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
            "backoffLimit": 0,
        },
    }


def patch_aliases(cluster: Cluster, ns: str, name: str, aliases: list[str]) -> None:
    cluster.kubectl("patch", "mv", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"aliases": aliases}}))


def local_artifact(folder: Path) -> tuple[Path, str]:
    """Train a tiny iris model with the trainer CLI into ``folder``; returns (model file, sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    run = training_run("hand")
    config = folder.parent / f"{folder.name}-config.json"
    config.write_text(json.dumps(run))
    env = {
        **os.environ,
        "KUBETRAIN_DATASET_PATH": str(REPO / "examples" / "data" / "iris.csv"),
        "KUBETRAIN_OUTPUT_DIR": str(folder),
        "KUBETRAIN_TERMINATION_LOG": str(folder.parent / f"{folder.name}-result.json"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "kubetrain_trainer", "run", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config.unlink()
    model = folder / "model.joblib"
    return model, hashlib.sha256(model.read_bytes()).hexdigest()


def hand_mv(name: str, model: str, version: int, uri: str, sha: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": name, "labels": {"kubetrain.io/model": model}},
        "spec": {"model": model, "version": version, "artifact": {"uri": uri, "sha256": sha}, **spec},
    }


# ---- tests --------------------------------------------------------------------------------------------


def test_run_versions_and_alias_promotion(
    cluster: Cluster, ns: str, models: Path, operator_factory: Callable[..., Operator]
) -> None:
    operator_factory()
    cluster.apply(training_run("iris-a"), ns)
    wait_phase(cluster, ns, "iris-v1", "Ready", 120)
    cluster.apply(training_run("iris-b"), ns)
    st2 = wait_phase(cluster, ns, "iris-v2", "Ready", 120)
    st1 = mv_status(cluster, ns, "iris-v1")

    # trusted lineage, serving hint, printer columns and the model label
    assert condition(st1, "ArtifactVerified")["reason"] == "VerifiedByTrainer"
    assert st1["passedThresholds"] is True
    assert st2["serving"]["storageUri"].startswith(f"pvc://{MODEL_CLAIM}/runs/iris-b")
    assert st2["serving"]["modelFormat"]["name"] == "sklearn"
    assert st2["primaryMetric"].startswith("accuracy=")
    listed = cluster.get_json("mv", "-n", ns, "-l", "kubetrain.io/model=iris")["items"]
    assert sorted(i["spec"]["version"] for i in listed) == [1, 2]

    # Each move of the protected alias waits on a promotion-time check of the artifact (a Job whose trainer pod
    # reads the file back): 30 s was too short for that pod on a loaded node (CI, 3 workers).
    patch_aliases(cluster, ns, "iris-v1", ["production"])
    wait_for(lambda: mv_status(cluster, ns, "iris-v1").get("aliases") == ["production"], 120, "v1 production")
    time.sleep(1.1)  # claims are ordered by the API server's write time (seconds), then by observation
    t0 = time.monotonic()
    patch_aliases(cluster, ns, "iris-v2", ["production"])
    wait_for(lambda: mv_status(cluster, ns, "iris-v2").get("aliases") == ["production"], 120, "v2 production")
    wait_for(lambda: mv_status(cluster, ns, "iris-v1").get("aliases") == [], 30, "v1 loses production")
    print(f"MEASURE alias move visible in status after {time.monotonic() - t0:.2f}s")

    v1 = mv(cluster, ns, "iris-v1")
    assert v1 is not None and v1["spec"]["aliases"] == ["production"]  # spec untouched
    h1 = [(e["alias"], e["action"]) for e in v1["status"]["aliasHistory"]]
    assert h1 == [("production", "Assigned"), ("production", "Superseded")]
    assert "iris-v2" in v1["status"]["aliasHistory"][-1]["message"]
    sup = condition(v1["status"], "AliasSuperseded")
    assert sup["status"] == "True" and "iris-v2" in sup["message"]
    h2 = [(e["alias"], e["action"]) for e in mv_status(cluster, ns, "iris-v2")["aliasHistory"]]
    assert h2 == [("production", "Assigned")]
    wide = cluster.kubectl("get", "mv", "-n", ns).stdout
    assert "production" in wide and "accuracy=" in wide


def test_ready_is_written_together_with_the_aliases(
    cluster: Cluster, ns: str, models: Path, operator_factory: Callable[..., Operator]
) -> None:
    """No reader ever sees a Ready version without the aliases it wins: every watch event of the version
    that shows Ready already shows them (protected ``production`` included, for a run that passed)."""
    operator_factory()
    template = '{.metadata.name}|{.status.phase}|{.status.aliases}{"\\n"}'
    watch = subprocess.Popen(
        ["kubectl", "get", "mv", "-n", ns, "--watch", "-o", f"jsonpath={template}"],
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)  # the watch is established before the version exists
        run = training_run("iris-w")
        run["spec"]["register"] = {"aliases": ["candidate", "production"]}
        cluster.apply(run, ns)
        wait_phase(cluster, ns, "iris-v1", "Ready", 120)
        time.sleep(2)  # the trailing writes (if any) reach the watch
    finally:
        watch.terminate()
        out, err = watch.communicate(timeout=10)
    events = [line.split("|") for line in out.splitlines() if line.startswith("iris-v1|")]
    ready = [json.loads(aliases) if aliases else [] for _, phase, aliases in events if phase == "Ready"]
    assert ready, (out, err)
    assert all(a == ["candidate", "production"] for a in ready), f"a Ready event without its aliases: {events}"


def test_hand_registered_verification_protection_and_delete_policy(
    cluster: Cluster, ns: str, models: Path, operator_factory: Callable[..., Operator]
) -> None:
    _, sha = local_artifact(models / "offline" / "a")
    shutil.copytree(models / "offline" / "a", models / "offline" / "b")
    shutil.copytree(models / "offline" / "a", models / "offline" / "c")
    operator_factory()
    uri = f"pvc://{MODEL_CLAIM}/offline/%s/model.joblib"
    t0 = time.monotonic()
    cluster.apply(hand_mv("flowers-v1", "flowers", 1, uri % "a", "0" * 64), ns)
    cluster.apply(hand_mv("flowers-v2", "flowers", 2, uri % "b", sha, aliases=["production"]), ns)
    cluster.apply(hand_mv("flowers-v3", "flowers", 3, uri % "c", sha, deletionPolicy="Delete"), ns)
    cluster.apply(hand_mv("flowers-dup", "flowers", 2, uri % "b", sha), ns)

    bad = wait_phase(cluster, ns, "flowers-v1", "Failed")
    verified = condition(bad, "ArtifactVerified")
    assert verified["status"] == "False" and verified["reason"] == "ChecksumMismatch", bad
    assert bad["verificationJob"].startswith("flowers-v1-verify-")

    good = wait_phase(cluster, ns, "flowers-v2", "Ready")
    print(
        f"MEASURE 4 hand-registered versions applied -> flowers-v2 Ready (Job verified) in {time.monotonic() - t0:.2f}s"
    )
    assert condition(good, "ArtifactVerified") == condition(good, "ArtifactVerified") | {
        "status": "True",
        "reason": "Verified",
    }
    wait_for(lambda: mv_status(cluster, ns, "flowers-v2").get("aliases") == ["production"], 30, "v2 production")
    dup = wait_phase(cluster, ns, "flowers-dup", "Failed")
    assert condition(dup, "Ready")["reason"] == "VersionConflict"

    # flowers-v3 missed its thresholds (as its run would report): production is refused, stays on v2
    wait_phase(cluster, ns, "flowers-v3", "Ready")
    cluster.kubectl(
        "patch", "mv", "flowers-v3", "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"passedThresholds": False}}),
    )  # fmt: skip
    patch_aliases(cluster, ns, "flowers-v3", ["production"])
    wait_for(
        lambda: condition(mv_status(cluster, ns, "flowers-v3"), "AliasRefused").get("status") == "True",
        30,
        "AliasRefused on v3",
    )
    st3 = mv_status(cluster, ns, "flowers-v3")
    assert st3["aliases"] == [] and st3["aliasHistory"][-1]["action"] == "Refused"
    assert mv_status(cluster, ns, "flowers-v2")["aliases"] == ["production"]
    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", "reason=AliasRefused").stdout
    assert "flowers-v3" in events

    # deletionPolicy Delete: a cleanup Job removes the artifact directory, then the object goes
    v3 = mv(cluster, ns, "flowers-v3")
    assert v3 is not None and v3["metadata"].get("finalizers")
    assert not mv(cluster, ns, "flowers-v2")["metadata"].get("finalizers")  # type: ignore[index]
    cluster.kubectl("delete", "mv", "flowers-v3", "-n", ns, "--wait=false")
    wait_for(lambda: mv(cluster, ns, "flowers-v3") is None, 60, "flowers-v3 deleted")
    assert not (models / "offline" / "c").exists()
    assert (models / "offline" / "b" / "model.joblib").exists()


def _watch(cluster: Cluster, ns: str, what: str, seen: Callable[[dict[str, Any]], bool]) -> tuple[Any, list[float]]:
    """``kubectl get WHAT --watch -o json`` in a thread; the monotonic time of the first object for which
    ``seen`` holds goes into the returned list."""
    import threading

    proc = subprocess.Popen(
        ["kubectl", "get", what, "-n", ns, "--watch", "--output-watch-events", "-o", "json"],
        env=cluster.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    times: list[float] = []

    def read() -> None:
        decoder, buf = json.JSONDecoder(), ""
        assert proc.stdout is not None
        for line in proc.stdout:
            buf += line
            try:
                event, _ = decoder.raw_decode(buf.strip())
            except ValueError:
                continue
            buf = ""
            if not times and seen(event.get("object") or {}):
                times.append(time.monotonic())

    threading.Thread(target=read, daemon=True).start()
    return proc, times


def test_verification_ready_follows_the_jobs_completion_within_a_second(
    cluster: Cluster, ns: str, models: Path, operator_factory: Callable[..., Operator]
) -> None:
    """The verification Job is watched like a trainer Job: its completion, not a poll, makes the version Ready."""
    _, sha = local_artifact(models / "offline" / "fast")
    operator_factory()

    def job_done(job: dict[str, Any]) -> bool:
        conds = (job.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Complete" and c["status"] == "True" for c in conds)

    jobs, job_times = _watch(cluster, ns, "jobs", job_done)
    versions, ready_times = _watch(cluster, ns, "mv", lambda o: (o.get("status") or {}).get("phase") == "Ready")
    try:
        time.sleep(1)  # both watches are established before the version exists
        uri = f"pvc://{MODEL_CLAIM}/offline/fast/model.joblib"
        cluster.apply(hand_mv("fast-v1", "fast", 1, uri, sha), ns)
        wait_phase(cluster, ns, "fast-v1", "Ready")
        wait_for(lambda: job_times and ready_times, 10, "both watches saw it")
    finally:
        jobs.terminate()
        versions.terminate()
    lag = ready_times[0] - job_times[0]
    print(f"MEASURE verification Job Complete -> ModelVersion Ready in {lag:.3f}s")
    assert lag < 1.0, f"Ready came {lag:.2f}s after the Job completed"


def test_concurrent_runs_retention_and_operator_kill(
    cluster: Cluster, ns: str, models: Path, operator_factory: Callable[..., Operator]
) -> None:
    op = operator_factory(KUBETRAIN_MODEL_RETENTION="3")
    cluster.apply(training_run("first"), ns)
    wait_phase(cluster, ns, "iris-v1", "Ready", 120)
    # Each move of the protected alias waits on a promotion-time check of the artifact (a Job whose trainer pod
    # reads the file back): 30 s was too short for that pod on a loaded node (CI, 3 workers).
    patch_aliases(cluster, ns, "iris-v1", ["production"])
    wait_for(lambda: mv_status(cluster, ns, "iris-v1").get("aliases") == ["production"], 120, "v1 production")

    names = [f"burst-{i}" for i in range(5)]
    for name in names:
        cluster.apply(training_run(name), ns)

    def registered() -> list[str]:
        runs = cluster.get_json("tr", "-n", ns)["items"]
        return [r["status"]["modelVersion"] for r in runs if (r.get("status") or {}).get("modelVersion")]

    # kill the operator while the burst registers, then start it again
    wait_for(lambda: len(registered()) >= 2, 180, "first registrations of the burst")
    op.kill()
    time.sleep(1)
    op.start(KUBETRAIN_MODEL_RETENTION="3")
    done = wait_for(lambda: len(registered()) == 6 and registered(), 180, "all six runs registered")

    versions = sorted(int(n.rsplit("-v", 1)[1]) for n in done)
    assert versions == [1, 2, 3, 4, 5, 6], done  # no duplicate, no gap
    run_uids = [i["metadata"]["labels"]["kubetrain.io/run-uid"] for i in cluster.get_json("mv", "-n", ns)["items"]]
    assert len(run_uids) == len(set(run_uids))

    # retention 3: v4..v6 plus the aliased v1 survive
    def kept() -> list[str]:
        items = cluster.get_json("mv", "-n", ns, "-l", "kubetrain.io/model=iris")["items"]
        return sorted(i["metadata"]["name"] for i in items if not i["metadata"].get("deletionTimestamp"))

    wait_for(lambda: kept() == ["iris-v1", "iris-v4", "iris-v5", "iris-v6"], 60, "retention")
