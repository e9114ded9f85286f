"""Every training example of ``examples/`` trained through the operator on the real control plane, progress
while a run is running, ``kubectl get tr`` columns, and the operator watching several namespaces."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import DEV_CLUSTER, REPO, Cluster, _parse_up_output

from .conftest import DATA_CLAIM, MODELS_CLAIM, Operator, Workspace, prepare_workspace
from .crds import install_crds

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

EXAMPLES = REPO / "examples"


def _example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / name).read_text()))


def _copy_data(ws: Workspace, *files: str) -> None:
    for f in files:
        shutil.copy(EXAMPLES / "data" / f, ws.claim_dir(DATA_CLAIM) / f)


def _train_example(ws: Workspace, file: str, timeout: float = 240) -> tuple[dict[str, Any], float]:
    """Apply the example unchanged and wait until it finished; (run, seconds from apply to the end)."""
    name = _example(file)["metadata"]["name"]
    t0 = time.monotonic()
    ws.kubectl("apply", "-f", str(EXAMPLES / file))
    run = ws.wait_phase(name, ("Succeeded", "Failed"), timeout=timeout)
    elapsed = time.monotonic() - t0
    print(f"{file}: apply → {run['status']['phase']} in {elapsed:.1f}s")
    assert run["status"]["phase"] == "Succeeded", run["status"]
    return run, elapsed


def _check_model(ws: Workspace, run: dict[str, Any], primary: str) -> None:
    """Primary metric reported, the artifact's checksum matches the file, a ModelVersion points at it."""
    st, name = run["status"], run["metadata"]["name"]
    assert primary in st["metrics"], st["metrics"]
    assert st["primaryMetric"].startswith(f"{primary}="), st["primaryMetric"]
    assert st["model"]["uri"] == f"pvc://{MODELS_CLAIM}/{name}/model.joblib"
    model = ws.claim_dir(MODELS_CLAIM) / name / "model.joblib"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == st["model"]["sha256"]
    assert st["model"]["size"] == model.stat().st_size
    mv = ws.get("modelversion", st["modelVersion"])
    assert mv["spec"]["model"] == run["spec"]["model"]
    assert mv["spec"]["artifact"]["sha256"] == st["model"]["sha256"]
    assert mv["spec"]["source"]["trainingRun"] == {"name": name, "uid": run["metadata"]["uid"]}


def test_diabetes_regression_example(workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    _copy_data(ws, "diabetes.parquet")
    run, _ = _train_example(ws, "diabetes-regression.yaml")
    _check_model(ws, run, "r2")
    st = run["status"]
    assert 0.2 <= st["metrics"]["r2"] <= 1 and st["metrics"]["rmse"] <= 80
    assert {"r2", "rmse", "mae"} <= set(st["metrics"])
    # kubectl get tr: PHASE, MODEL, METRIC, DURATION columns; -o wide adds START, JOB, REASON, MODEL-URI
    table = _table(ws.kubectl("get", "tr", "diabetes").stdout)
    print("kubectl get tr:", table)
    assert list(table) == ["NAME", "PHASE", "MODEL", "METRIC", "DURATION", "AGE"]
    assert table["NAME"] == "diabetes" and table["PHASE"] == "Succeeded" and table["MODEL"] == "diabetes"
    assert re.fullmatch(r"r2=0\.\d+", table["METRIC"]), table["METRIC"]
    assert table["METRIC"] == st["primaryMetric"]
    assert float(table["METRIC"][3:]) == pytest.approx(st["metrics"]["r2"], abs=1e-4)
    assert table["DURATION"] == st["duration"] and re.fullmatch(r"(\d+m)?\d+s", table["DURATION"])
    wide = _table(ws.kubectl("get", "tr", "diabetes", "-o", "wide").stdout)
    print("kubectl get tr -o wide:", wide)
    assert list(wide) == ["NAME", "PHASE", "MODEL", "METRIC", "DURATION", "AGE", "START", "JOB", "REASON", "MODEL-URI"]
    assert wide["JOB"] == st["jobName"] and wide["JOB"].startswith("diabetes-")
    assert wide["MODEL-URI"] == "pvc://kubetrain-models/diabetes/model.joblib"
    assert wide["REASON"] == ""


def _table(text: str) -> dict[str, str]:
    """Header → value of a one-row ``kubectl get`` table, cut at the header's column offsets (an empty
    column is blank)."""
    header, row, *rest = text.splitlines()
    assert not rest, text
    starts = [m.start() for m in re.finditer(r"\S+", header)] + [max(len(header), len(row))]
    return {header[a:b].strip(): row[a:b].strip() for a, b in itertools.pairwise(starts)}


def test_log_anomaly_example(workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    _copy_data(ws, "logs-export.json")
    run, _ = _train_example(ws, "log-anomaly.yaml")
    _check_model(ws, run, "anomaly_rate")
    assert 0 < run["status"]["metrics"]["anomaly_rate"] <= 0.2


def test_wine_search_example_is_an_indexed_job(workspace: Workspace, operator: Operator) -> None:
    ws = workspace
    _copy_data(ws, "wine.csv")
    run, _ = _train_example(ws, "wine-search.yaml")
    _check_model(ws, run, "balanced_accuracy")
    st = run["status"]
    assert st["metrics"]["balanced_accuracy"] >= 0.85
    assert "search_best_balanced_accuracy" in st["metrics"]
    (job,) = ws.jobs("wine-search")
    assert job["metadata"]["name"] == st["jobName"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == 2 and job["spec"]["parallelism"] == 2
    assert job["status"].get("succeeded") == 2, job["status"]
    pods = ws.pods("wine-search")
    indexes = sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert indexes == ["0", "1"], indexes
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)
    trials = ws.claim_dir(MODELS_CLAIM) / "wine-search" / "trials"
    assert sorted(p.name for p in trials.glob("trial-*.json")) == ["trial-0.json", "trial-1.json"]
    shares = [json.loads((trials / f"trial-{i}.json").read_text()) for i in (0, 1)]
    assert [[t["candidate"] for t in doc["trials"]] for doc in shares] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    # index 0 picked the best of BOTH shares (ties: the lowest candidate number) and refit it
    rows = sorted((t for doc in shares for t in doc["trials"]), key=lambda t: (-t["mean"], t["candidate"]))
    metadata = json.loads((ws.claim_dir(MODELS_CLAIM) / "wine-search" / "metadata.json").read_text())
    assert metadata["best_params"] == rows[0]["params"], (metadata["best_params"], rows)
    assert st["metrics"]["search_best_balanced_accuracy"] == pytest.approx(rows[0]["mean"], abs=1e-6)
    print(f"wine-search: best candidate {rows[0]['candidate']} (share {rows[0]['candidate'] % 2})")


def test_progress_is_visible_while_running(workspace: Workspace, operator_factory: Callable[..., Operator]) -> None:
    """A ~20 s random search (wine, 120 candidates, one pod): status.progress and phase Running show up
    before Succeeded, with the operator reading progress every second."""
    ws = workspace
    operator_factory(KUBETRAIN_PROGRESS_INTERVAL="1")
    _copy_data(ws, "wine.csv")
    doc = _example("wine-search.yaml")
    doc["metadata"]["name"] = "wine-progress"
    doc["spec"]["search"]["trials"] = 120
    doc["spec"]["search"].pop("parallelism")
    t0 = time.monotonic()
    ws.apply(doc)
    seen: list[tuple[float, str | None, dict[str, Any] | None]] = []
    deadline = t0 + 150
    while time.monotonic() < deadline:
        st = ws.run("wine-progress").get("status") or {}
        seen.append((round(time.monotonic() - t0, 1), st.get("phase"), st.get("progress")))
        if st.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    running = [(t, p) for t, phase, p in seen if phase == "Running" and p]
    print(f"wine-progress: {elapsed:.1f}s; first progress at {running[0] if running else None}; distinct:")
    print(sorted({(phase, json.dumps(p, sort_keys=True)) for _, phase, p in seen}, key=str))
    assert seen[-1][1] == "Succeeded", seen[-5:]
    assert elapsed >= 15, f"the run took only {elapsed:.1f}s; raise the number of trials"
    assert running, f"no progress while Running: {seen}"
    for _, progress in running:
        assert set(progress) == {"step", "percent"}, progress
        assert progress["step"] and 0 <= progress["percent"] <= 100, progress
    # the long search step is seen while it runs (a last "done" 100 may show while the process exits)
    assert any(p["step"] == "search" and p["percent"] < 100 for _, p in running), running
    # progress shows up within a few seconds of the search starting, not at the end
    assert running[0][0] <= elapsed - 8, (running[0], elapsed)


# ---- watching several namespaces ---------------------------------------------------------------------------


def _new_namespace(cluster: Cluster, name: str) -> None:
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"no default service account in namespace {name} after 30s"
        time.sleep(0.3)


def _healthy(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                assert resp.status == 200
                return
        except OSError:
            assert time.monotonic() < deadline, f"/healthz on :{port} not up after {timeout}s"
            time.sleep(0.3)


def _train_iris_in(workspaces: list[Workspace], op: Operator) -> None:
    """iris applied in every workspace at once; all succeed and are registered in their own namespace."""
    t0 = time.monotonic()
    for ws in workspaces:
        ws.kubectl("apply", "-f", str(EXAMPLES / "iris-classification.yaml"))
    try:
        for ws in workspaces:
            ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/iris", "--timeout=120s")
    except AssertionError:
        print("\n".join(line for line in op.log_text().splitlines() if "HTTP Request:" not in line)[-8000:])
        raise
    print(f"iris in {len(workspaces)} namespaces: Succeeded after {time.monotonic() - t0:.1f}s")
    for ws in workspaces:
        run = ws.run("iris")
        assert run["status"]["phase"] == "Succeeded" and run["status"]["modelVersion"] == "iris-v1"
        assert ws.get("modelversion", "iris-v1")["spec"]["source"]["trainingRun"]["uid"] == run["metadata"]["uid"]
        assert len(ws.jobs("iris")) == 1
        assert op.metric("kubetrain_jobs_created_total", namespace=ws.namespace) == 1


def test_namespace_glob_watches_exactly_the_matching_namespaces(
    cluster: Cluster, crds: None, namespace: str, tmp_path: Path
) -> None:
    """``--namespace 'ex-<random>-*'`` (a kopf glob) on the shared cluster: iris trains in both matching
    namespaces at once, a run in a namespace that does not match is left alone."""
    prefix = f"ex-{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}-a", f"{prefix}-b"]
    op = Operator(cluster, "", tmp_path / "operator.log", scope=["--namespace", f"{prefix}-*"])
    try:
        for name in names:
            _new_namespace(cluster, name)
        workspaces = [prepare_workspace(cluster, name) for name in names]
        outsider = prepare_workspace(cluster, namespace)
        outsider.kubectl("apply", "-f", str(EXAMPLES / "iris-classification.yaml"))
        op.start()
        _healthy(op.metrics_port)
        _train_iris_in(workspaces, op)
        assert not outsider.run("iris").get("status"), "a namespace outside the glob was reconciled"
        assert not outsider.jobs("iris")
    finally:
        op.stop()
        for name in names:
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def private_cluster() -> Iterator[Cluster]:
    """A second dev cluster (own etcd, API server, kubelet and containerd, network slot, run dir) that lives
    only for one test, so an ``--all-namespaces`` operator cannot touch the runs of other tests on the shared
    cluster."""
    run_dir = Path(tempfile.mkdtemp(prefix="kt-private-"))  # short: the kubelet's unix sockets live under it
    env = {
        **os.environ,
        "KUBETRAIN_RUN_DIR": str(run_dir),
        "KUBETRAIN_NODE": "kubetrain-private",
        "KUBETRAIN_GPU_NODE": "",
    }
    try:
        proc = subprocess.run([str(DEV_CLUSTER), "up"], capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, f"dev-cluster up failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        kubeconfig, bin_dir = _parse_up_output(proc.stdout)
        cenv = {**env, "KUBECONFIG": kubeconfig}
        if bin_dir:
            cenv["PATH"] = bin_dir + os.pathsep + cenv.get("PATH", "")
        yield Cluster(kubeconfig=kubeconfig, run_dir=run_dir, external=False, env=cenv)
    finally:
        subprocess.run([str(DEV_CLUSTER), "reset"], capture_output=True, text=True, timeout=300, env=env)


def test_all_namespaces_on_a_private_cluster(private_cluster: Cluster, tmp_path: Path) -> None:
    """``--all-namespaces`` for real: iris trains in two namespaces at once. On a private, short-lived dev
    cluster: on the shared one this operator would also reconcile the runs of concurrently running tests."""
    cluster = private_cluster
    t0 = time.monotonic()
    install_crds(cluster.kubectl)
    names = ["team-a", "team-b"]
    for name in names:
        _new_namespace(cluster, name)
    workspaces = [prepare_workspace(cluster, name) for name in names]
    print(f"private cluster ready after {time.monotonic() - t0:.1f}s (after up)")
    op = Operator(cluster, "", tmp_path / "operator.log", scope=["--all-namespaces"])
    op.start()
    try:
        _healthy(op.metrics_port)
        _healthy(op.health_port)  # kopf's liveness endpoint
        _train_iris_in(workspaces, op)
    finally:
        op.stop()
    assert op.proc is not None and op.proc.returncode == 0, op.log_text()[-3000:]
