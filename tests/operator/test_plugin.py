"""``kubectl kubetrain`` against the real local control plane, with the operator as a subprocess.

The plugin runs as its console script (``kubectl-kubetrain``) with the cluster's kubeconfig, exactly as a
user runs it: compare prints both versions' metric columns; promote moves an alias and rollback returns it
to the previous holder (status and aliasHistory agree); promote of a version that missed its thresholds,
or of a Failed (unverified) one, to ``production`` exits 4 with the refusal's reason and leaves the alias
where it was; why on an unschedulable run names the resource; logs prints the trainer's output, of every
attempt of a retried run and of every pod of a parallel search, and ``logs -f`` started before the first pod
exists follows each pod as it appears (a retry's new pod included) until the run is finished.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Cluster, wait_until

from .conftest import DATA_CLAIM, MODELS_CLAIM, Operator, Workspace, iris_run

pytestmark = pytest.mark.cluster

PLUGIN = Path(sys.executable).parent / "kubectl-kubetrain"


def plugin(cluster: Cluster, ns: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PLUGIN), "--kubeconfig", cluster.kubeconfig, "-n", ns, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cluster.env,
    )


def run_manifest(name: str, estimator: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {
            "model": "iris",
            "task": "classification",
            "dataset": {"uri": f"pvc://{DATA_CLAIM}/iris.csv", "target": "species"},
            "estimator": estimator or {"name": "logistic_regression", "params": {"max_iter": 200}},
            "output": {"uri": f"pvc://{MODELS_CLAIM}/runs"},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
            "backoffLimit": 0,
        },
    }


def mv(ws: Workspace, name: str) -> dict[str, Any]:
    return dict(ws.get("mv", name))


def ready(ws: Workspace, name: str, timeout: float = 150) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        proc = ws.kubectl("get", "mv", name, "-o", "json", check=False)
        obj = json.loads(proc.stdout) if proc.returncode == 0 else {}
        return obj if (obj.get("status") or {}).get("phase") == "Ready" else None

    return wait_until(f"{name} Ready", check, timeout)


def holds(ws: Workspace, name: str) -> list[str]:
    return list((mv(ws, name).get("status") or {}).get("aliases") or [])


def moves(ws: Workspace, name: str, alias: str = "production") -> list[str]:
    return [e["action"] for e in (mv(ws, name).get("status") or {}).get("aliasHistory") or [] if e["alias"] == alias]


def test_compare_promote_rollback_history_logs(cluster: Cluster, workspace: Workspace, operator: Operator) -> None:
    ws, ns = workspace, workspace.namespace
    ws.apply(run_manifest("plug-a", {"name": "random_forest", "params": {"n_estimators": 2, "max_depth": 1}}))
    ws.apply(run_manifest("plug-b"))
    v1, v2 = ready(ws, "iris-v1"), ready(ws, "iris-v2")
    assert v1["spec"]["metrics"]["accuracy"] != v2["spec"]["metrics"]["accuracy"]

    # compare: both metric columns, the differing ones marked
    proc = plugin(cluster, ns, "compare", "iris-v1", "iris-v2")
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    lines = proc.stdout.splitlines()
    assert "iris-v1" in lines[0] and "iris-v2" in lines[0]
    acc = next(line for line in lines if "metrics.accuracy" in line)
    assert acc.lstrip().startswith("*")
    for value in (v1["spec"]["metrics"]["accuracy"], v2["spec"]["metrics"]["accuracy"]):
        assert f"{value:.6g}" in acc
    doc = json.loads(plugin(cluster, ns, "-o", "json", "compare", "iris-v1", "iris-v2").stdout)
    row = next(r for r in doc["rows"] if r["field"] == "accuracy")
    assert row["values"] == [v1["spec"]["metrics"]["accuracy"], v2["spec"]["metrics"]["accuracy"]] and row["differs"]
    assert plugin(cluster, ns, "compare", "iris-v1", "iris-v9").returncode == 3

    # promote v1, then v2: the alias moves, the old holder's claim is withdrawn
    proc = plugin(cluster, ns, "promote", "iris-v1", "production")
    assert proc.returncode == 0, proc.stderr
    assert holds(ws, "iris-v1") == ["production"]
    t0 = time.monotonic()
    proc = plugin(cluster, ns, "promote", "iris-v2", "production")
    assert proc.returncode == 0, proc.stderr
    print(f"MEASURE promote (patch → both statuses agree) {time.monotonic() - t0:.2f}s: {proc.stdout.strip()}")
    assert "iris-v1 → iris-v2" in proc.stdout
    assert holds(ws, "iris-v2") == ["production"] and holds(ws, "iris-v1") == []
    assert "production" not in mv(ws, "iris-v1")["spec"]["aliases"]
    assert moves(ws, "iris-v1")[-1] in ("Superseded", "Removed") and moves(ws, "iris-v2") == ["Assigned"]

    # rollback: back to v1, the previous holder; status and aliasHistory agree
    proc = plugin(cluster, ns, "-o", "json", "rollback", "iris", "production")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["version"] == "iris-v1" and result["previousHolder"] == "iris-v2", result
    assert holds(ws, "iris-v1") == ["production"] and holds(ws, "iris-v2") == []
    assert moves(ws, "iris-v1")[-1] == "Assigned" and moves(ws, "iris-v2")[-1] in ("Superseded", "Removed")
    assert mv(ws, "iris-v1")["spec"]["aliases"] == ["production"]
    assert "production" not in mv(ws, "iris-v2")["spec"]["aliases"]

    # history: every move, oldest first; the last one is v1's re-assignment
    hist = json.loads(plugin(cluster, ns, "-o", "json", "history", "iris").stdout)
    assert [v["name"] for v in hist["versions"]] == ["iris-v1", "iris-v2"]
    assigned = [(e["name"], e["action"]) for e in hist["aliasMoves"] if e["action"] == "Assigned"]
    assert assigned == [("iris-v1", "Assigned"), ("iris-v2", "Assigned"), ("iris-v1", "Assigned")]
    table = plugin(cluster, ns, "history", "iris")
    assert table.returncode == 0 and "Alias moves:" in table.stdout
    assert plugin(cluster, ns, "history", "nomodel").returncode == 3

    # logs and why of a finished run
    logs = plugin(cluster, ns, "logs", "plug-a")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.startswith("==> plug-a-") and "Succeeded" in logs.stdout.splitlines()[0]
    assert len(logs.stdout.splitlines()) > 1, logs.stdout
    why = plugin(cluster, ns, "why", "plug-a")
    assert why.returncode == 0 and why.stdout.startswith("plug-a: Succeeded"), why.stdout + why.stderr
    assert ws.run("plug-a")["status"]["modelVersion"] in why.stdout.splitlines()[0]


def test_promote_to_production_is_refused_with_the_reason(
    cluster: Cluster, workspace: Workspace, operator: Operator
) -> None:
    ws, ns = workspace, workspace.namespace
    ws.apply(run_manifest("good"))
    ready(ws, "iris-v1")
    assert plugin(cluster, ns, "promote", "iris-v1", "production").returncode == 0
    ws.apply(run_manifest("weak"))
    ready(ws, "iris-v2")
    # iris-v2 missed its thresholds (as its run would report)
    ws.kubectl("patch", "mv", "iris-v2", "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": {"passedThresholds": False}}))  # fmt: skip
    proc = plugin(cluster, ns, "promote", "iris-v2", "production")
    print(proc.stderr)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "production is protected and iris-v2 missed its run's thresholds" in proc.stderr
    assert "production stays with iris-v1" in proc.stderr
    assert holds(ws, "iris-v1") == ["production"] and holds(ws, "iris-v2") == []
    assert "production" not in mv(ws, "iris-v2")["spec"]["aliases"]  # the refused claim is withdrawn
    assert moves(ws, "iris-v2")[-1] == "Refused"

    # an unverified (Failed: checksum mismatch) version is refused too
    artifact = mv(ws, "iris-v1")["spec"]["artifact"]
    ws.apply({
        "apiVersion": "kubetrain.io/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": "iris-v9", "labels": {"kubetrain.io/model": "iris"}},
        "spec": {"model": "iris", "version": 9, "artifact": {"uri": artifact["uri"], "sha256": "0" * 64}},
    })  # fmt: skip
    wait_until("iris-v9 Failed", lambda: (mv(ws, "iris-v9").get("status") or {}).get("phase") == "Failed", 120)
    proc = plugin(cluster, ns, "promote", "iris-v9", "production", "--timeout", "30")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "iris-v9 failed" in proc.stderr
    assert holds(ws, "iris-v1") == ["production"]


def test_why_an_unschedulable_run_names_the_resource(
    cluster: Cluster, workspace: Workspace, operator: Operator
) -> None:
    ws, ns = workspace, workspace.namespace
    greedy = iris_run("greedy", resources={"requests": {"cpu": "64", "memory": "256Mi"},
                                           "limits": {"cpu": "64", "memory": "2Gi"}})  # fmt: skip
    ws.apply(greedy)
    ws.wait_phase("greedy", ("Pending",), timeout=60)
    wait_until("a FailedScheduling event", lambda: "FailedScheduling" in ws.kubectl("get", "events").stdout, 60)
    proc = plugin(cluster, ns, "why", "greedy")
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("greedy: Pending: Unschedulable") and "Insufficient cpu" in first, first
    assert "FailedScheduling" in proc.stdout
    doc = json.loads(plugin(cluster, ns, "-o", "json", "why", "greedy").stdout)
    assert any("Insufficient cpu" in (p["detail"] or "") for p in doc["pods"]), doc["pods"]
    assert plugin(cluster, ns, "why", "no-such-run").returncode == 3
    proc = plugin(cluster, ns, "logs", "greedy")
    assert proc.returncode == 3 and "no trainer pod with a log" in proc.stderr


def follow(cluster: Cluster, ns: str, run: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(PLUGIN), "--kubeconfig", cluster.kubeconfig, "-n", ns, "logs", "-f", run],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cluster.env,
    )


def sections(out: str) -> list[tuple[str, list[str]]]:
    """(header, lines under it) of each pod in a ``logs`` output, in order."""
    found: list[tuple[str, list[str]]] = []
    for line in out.splitlines():
        if line.startswith("==> ") and line.endswith(" <=="):
            found.append((line, []))
        else:
            assert found, f"a log line before any pod header: {line!r}"
            found[-1][1].append(line)
    return found


def finished(proc: subprocess.Popen[str], timeout: float = 420) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return out, err


def test_logs_cover_every_attempt_of_a_retried_run_and_every_search_pod_and_follow_them(
    cluster: Cluster, workspace: Workspace, operator: Operator
) -> None:
    ws, ns = workspace, workspace.namespace
    # "retried": its first attempt fails when it saves (a plain file where its output directory goes: an
    # unexpected OSError, exit 1, retryable); the file is removed once that pod failed, so the retry succeeds.
    ws.claim_dir(MODELS_CLAIM).joinpath("retried").write_text("not a directory")
    # "searched": a random search shared by two pods (an Indexed Job).
    (ws.claim_dir(DATA_CLAIM) / "wine.csv").write_bytes((REPO / "examples" / "data" / "wine.csv").read_bytes())
    search = yaml.safe_load((REPO / "examples" / "wine-search.yaml").read_text())
    search["metadata"] = {"name": "searched"}
    assert search["spec"]["search"]["parallelism"] == 2
    search["spec"]["resources"] = {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    # "broken": fails the same way with no retry, for `why` on a Failed run (its verdict and log tail).
    ws.claim_dir(MODELS_CLAIM).joinpath("broken").write_text("not a directory")
    ws.apply(iris_run("retried", backoffLimit=1))
    ws.apply(search)
    ws.apply(iris_run("broken", backoffLimit=0))
    # Followed from before any pod exists: every pod is picked up as it appears, until the run is finished.
    followers = {name: follow(cluster, ns, name) for name in ("retried", "searched")}
    t0 = time.monotonic()

    def first_failed() -> bool:
        return any((p.get("status") or {}).get("phase") == "Failed" for p in ws.pods("retried"))

    wait_until("the first attempt of retried to fail", first_failed, timeout=240, interval=0.5)
    ws.claim_dir(MODELS_CLAIM).joinpath("retried").unlink()
    outs = {name: finished(proc)[0] for name, proc in followers.items()}
    print(f"both followers returned after {time.monotonic() - t0:.0f}s")
    for name in outs:
        assert ws.run(name)["status"]["phase"] == "Succeeded", ws.run(name)["status"]
    run = ws.run("retried")
    assert run["status"]["attempts"] == 2, run["status"]
    pods = sorted(ws.pods("retried"), key=lambda p: p["metadata"]["creationTimestamp"])
    names = [p["metadata"]["name"] for p in pods]
    assert [p["status"]["phase"] for p in pods] == ["Failed", "Succeeded"], names

    # -f on the retried run: the failed attempt, then the retry's pod (it appeared after the follow began),
    # each under its own header, the retry's ending with the trainer's result.
    print(outs["retried"][-3000:])
    followed = sections(outs["retried"])
    assert [h.split()[1] for h, _ in followed] == names, [h for h, _ in followed]
    assert any("InternalError" in line for line in followed[0][1]), followed[0][1][-20:]
    outcomes = [json.loads(line)["outcome"] for line in followed[0][1] if line.startswith('{"outcome"')]
    assert "Succeeded" not in outcomes, outcomes
    result = json.loads(next(line for line in reversed(followed[1][1]) if line.startswith('{"outcome"')))
    assert result["outcome"] == "Succeeded", result

    # Without -f, after the fact: the same two pods, with their final phases.
    plain = plugin(cluster, ns, "logs", "retried")
    assert plain.returncode == 0, plain.stderr
    shown = sections(plain.stdout)
    assert [h for h, _ in shown] == [f"==> {names[0]} (Failed) <==", f"==> {names[1]} (Succeeded) <=="], shown
    assert shown[0][1] and shown[1][1]

    # The search: both Indexed pods, in the follow (in the order they started: the two pods of an Indexed Job
    # start together, and -f streams one pod after the other) and afterwards (index 0 then 1); the pod of
    # index 0 ends with the result.
    after = plugin(cluster, ns, "logs", "searched").stdout
    assert [h.split("(")[1].split(",")[0] for h, _ in sections(after)] == ["index 0", "index 1"], after[-2000:]
    for out in (outs["searched"], after):
        shown = sorted(sections(out), key=lambda section: section[0].split("(")[1].split(",")[0])
        assert [h.split("(")[1].split(",")[0] for h, _ in shown] == ["index 0", "index 1"], [h for h, _ in shown]
        assert len({h.split()[1] for h, _ in shown}) == 2
        assert all(lines for _, lines in shown), shown
        assert any(line.startswith('{"outcome"') for line in shown[0][1])
    assert [h.split()[-2].rstrip(")") for h, _ in sections(plugin(cluster, ns, "logs", "searched").stdout)] == [
        "Succeeded",
        "Succeeded",
    ]

    # why on a Failed run: the verdict with the failure's reason, the pod's exit, and the log tail.
    broken = ws.wait_phase("broken", ("Succeeded", "Failed"), timeout=240)
    assert broken["status"]["phase"] == "Failed", broken["status"]
    why = plugin(cluster, ns, "why", "broken")
    print(why.stdout)
    assert why.returncode == 0, why.stderr
    first = why.stdout.splitlines()[0]
    assert first.startswith(f"broken: Failed: {broken['status']['failure']['reason']}: "), first
    assert "InternalError" in first and "\nLog tail:\n" in why.stdout, why.stdout
    assert "(exit 1)" in why.stdout  # the pod's terminated state
    doc = json.loads(plugin(cluster, ns, "-o", "json", "why", "broken").stdout)
    assert doc["phase"] == "Failed" and doc["logTail"] and doc["failure"]["exitCode"] == 1, doc

    # -o yaml, for scripts: the history of the retried run's model names its version.
    proc = plugin(cluster, ns, "-o", "yaml", "history", "iris")
    assert proc.returncode == 0, proc.stderr
    assert [v["name"] for v in yaml.safe_load(proc.stdout)["versions"]] == [run["status"]["modelVersion"]]
