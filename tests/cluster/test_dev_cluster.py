"""Acceptance tests of the local control plane (hack/dev-cluster) and its node agent (hack/node_agent.py).

They run against the real kube-apiserver / controller-manager / scheduler built from source; pods are run
by the local node agent as processes. Each test gets a fresh namespace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Cluster, wait_until
from tests.operator.crds import install_crds

pytestmark = pytest.mark.cluster

SUPPORTED_RELEASES = ("v1.37.2", "v1.36.3")


def job(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "python:3.11-slim", "command": command}],
    }
    pod_spec.update(spec.pop("pod", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}, **spec},
    }


def pod(name: str, command: list[str], **container: Any) -> dict[str, Any]:
    spec: dict[str, Any] = container.pop("pod_spec", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "python:3.11-slim", "command": command, **container}],
            **spec,
        },
    }


def job_condition(cluster: Cluster, namespace: str, name: str) -> str | None:
    status = cluster.get_json("job", name, "-n", namespace).get("status", {})
    for cond in status.get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return str(cond["type"])
    return None


def terminated(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    obj = cluster.get_json("pod", name, "-n", namespace)
    for cs in obj.get("status", {}).get("containerStatuses") or []:
        if "terminated" in cs.get("state", {}):
            return dict(cs["state"]["terminated"])
    return None


def test_kubectl_version_shows_release(cluster: Cluster) -> None:
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] in SUPPORTED_RELEASES
    assert out["clientVersion"]["gitVersion"] == out["serverVersion"]["gitVersion"]


def test_nodes_registered_with_capacity_and_taints(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in cluster.get_json("nodes")["items"]}
    if cluster.external:
        pytest.skip("node layout is specific to the local node agent")
    gpu = nodes["kubetrain-dev-gpu"]
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in gpu["spec"]["taints"]
    assert "nvidia.com/gpu" not in nodes["kubetrain-dev"]["status"]["allocatable"]
    for node in nodes.values():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"


def test_job_completes(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("hello", ["python3", "-c", "import sys; print('hello from', sys.executable)"]), namespace)
    assert wait_until("job Complete", lambda: job_condition(cluster, namespace, "hello"), 120) == "Complete"
    # kubectl logs goes apiserver -> the agent's kubelet-style log endpoint.
    logs = cluster.kubectl("logs", "-n", namespace, "job/hello").stdout
    assert "hello from" in logs and ".venv" in logs


def test_failing_job_fails_after_backoff_limit(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("boom", ["python3", "-c", "raise SystemExit(3)"], backoffLimit=1), namespace)
    assert wait_until("job Failed", lambda: job_condition(cluster, namespace, "boom"), 180) == "Failed"
    pods = cluster.get_json("pods", "-n", namespace, "-l", "job-name=boom")["items"]
    assert len(pods) == 2  # the first try + backoffLimit retries
    for p in pods:
        assert p["status"]["phase"] == "Failed"
        assert p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_too_many_gpus_stays_pending_unschedulable(cluster: Cluster, namespace: str) -> None:
    manifest = pod(
        "greedy",
        ["python3", "-c", "pass"],
        resources={"limits": {"nvidia.com/gpu": "99"}},
        pod_spec={"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    )
    cluster.apply(manifest, namespace)

    def unschedulable() -> dict[str, Any] | None:
        obj = cluster.get_json("pod", "greedy", "-n", namespace)
        for c in obj.get("status", {}).get("conditions") or []:
            if c["type"] == "PodScheduled" and c["status"] == "False":
                return dict(c)
        return None

    cond = wait_until("PodScheduled=False", unschedulable, 60)
    assert cond["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in cond.get("message", "")
    assert cluster.get_json("pod", "greedy", "-n", namespace)["status"]["phase"] == "Pending"


def test_gpu_pod_lands_on_gpu_node(cluster: Cluster, namespace: str) -> None:
    if cluster.external:
        pytest.skip("node layout is specific to the local node agent")
    manifest = pod(
        "gpu",
        ["python3", "-c", "print('gpu ok')"],
        resources={"limits": {"nvidia.com/gpu": "1"}},
        pod_spec={"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    )
    cluster.apply(manifest, namespace)
    wait_until("pod Succeeded", lambda: terminated(cluster, namespace, "gpu"), 90)
    assert cluster.get_json("pod", "gpu", "-n", namespace)["spec"]["nodeName"] == "kubetrain-dev-gpu"


def test_deleting_job_removes_pods_via_garbage_collector(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("sleeper", ["python3", "-c", "import time; time.sleep(600)"]), namespace)

    def running() -> bool:
        pods = cluster.get_json("pods", "-n", namespace, "-l", "job-name=sleeper")["items"]
        return bool(pods) and all(p["status"].get("phase") == "Running" for p in pods)

    wait_until("job pod Running", running, 90)
    cluster.kubectl("delete", "job", "sleeper", "-n", namespace, "--cascade=background", "--wait=false")
    pods_gone = wait_until(
        "pods gone",
        lambda: not cluster.get_json("pods", "-n", namespace, "-l", "job-name=sleeper")["items"],
        90,
    )
    assert pods_gone
    jobs = cluster.get_json("jobs", "-n", namespace)["items"]
    assert [j["metadata"]["name"] for j in jobs] == []


def test_termination_message_in_pod_status(cluster: Cluster, namespace: str) -> None:
    # Written through the env var, and through the (rewritten) terminationMessagePath given as an argument.
    script = "import os, sys; open(os.environ['KUBETRAIN_TERMINATION_LOG'], 'w').write('trained: acc=0.97')"
    cluster.apply(pod("by-env", ["python3", "-c", script]), namespace)
    script2 = "import sys; open(sys.argv[1], 'w').write('via path'); sys.exit(2)"
    cluster.apply(
        pod("by-path", ["python3", "-c", script2, "/dev/termination-log"]),
        namespace,
    )
    cluster.apply(
        pod(
            "fallback",
            ["python3", "-c", "print('line one'); print('the real error'); raise SystemExit(1)"],
            terminationMessagePolicy="FallbackToLogsOnError",
        ),
        namespace,
    )
    t1 = wait_until("by-env terminated", lambda: terminated(cluster, namespace, "by-env"), 90)
    assert t1["message"] == "trained: acc=0.97" and t1["reason"] == "Completed" and t1["exitCode"] == 0
    t2 = wait_until("by-path terminated", lambda: terminated(cluster, namespace, "by-path"), 90)
    assert t2["message"] == "via path" and t2["reason"] == "Error" and t2["exitCode"] == 2
    t3 = wait_until("fallback terminated", lambda: terminated(cluster, namespace, "fallback"), 90)
    assert "the real error" in t3["message"]


def test_env_field_refs_and_volume_path_rewriting(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
        namespace,
    )
    script = (
        "import json, os, sys\n"
        "open(sys.argv[1], 'w').write('m')  # literal paths inside the script are NOT rewritten\n"
        "open(os.path.join(os.environ['SCRATCH'], 'x'), 'w').write('x')\n"
        "keys = ['POD_NAME', 'POD_NS', 'NODE', 'MEM_MI', 'CPU', 'TEAM', 'SCRATCH', 'TMPDIR', 'GREETING']\n"
        "json.dump({k: os.environ.get(k) for k in keys} | {'cwd': os.getcwd(), 'arg': sys.argv[1]},\n"
        "          open(os.environ['KUBETRAIN_TERMINATION_LOG'], 'w'))\n"
    )
    manifest = pod(
        "envs",
        ["python3", "-c", script, "/models/out/model.txt"],
        workingDir="/scratch/work",
        env=[
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
            {
                "name": "MEM_MI",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "SCRATCH", "value": "/scratch/data"},
            {"name": "WHO", "value": "world"},
            {"name": "GREETING", "value": "hello $(WHO)"},
        ],
        resources={"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
        volumeMounts=[
            {"name": "models", "mountPath": "/models", "subPath": "run1"},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        pod_spec={
            "volumes": [
                {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}},
            ]
        },
    )
    manifest["metadata"]["labels"] = {"team": "ml"}
    # The directories a real image would have: created by an init container through the same rewriting.
    manifest["spec"]["initContainers"] = [
        {
            "name": "mkdirs",
            "image": "busybox",
            "command": ["mkdir", "-p", "/models/out", "/scratch/data"],
            "volumeMounts": manifest["spec"]["containers"][0]["volumeMounts"],
        }
    ]
    cluster.apply(manifest, namespace)
    t = wait_until("pod terminated", lambda: terminated(cluster, namespace, "envs"), 90)
    assert t["exitCode"] == 0, t
    got = json.loads(t["message"])
    assert got["POD_NAME"] == "envs" and got["POD_NS"] == namespace and got["TEAM"] == "ml"
    assert got["MEM_MI"] == "512" and got["CPU"] == "250" and got["GREETING"] == "hello world"
    assert got["NODE"] in ("kubetrain-dev", "kubetrain-dev-gpu") or cluster.external
    if cluster.run_dir is not None:
        pvc_dir = cluster.run_dir / "pvc" / namespace / "models" / "run1"
        assert got["arg"] == str(pvc_dir / "out" / "model.txt")
        assert (pvc_dir / "out" / "model.txt").read_text() == "m"
        assert got["cwd"].endswith("/volumes/scratch/work")
        assert got["SCRATCH"].endswith("/volumes/scratch/data")
        assert got["TMPDIR"] is not None and got["TMPDIR"].endswith("/volumes/tmp")


def test_restricted_namespace_refuses_privileged_pod(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    manifest = pod("priv", ["python3", "-c", "pass"], securityContext={"privileged": True})
    proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert proc.returncode != 0
    assert "violates PodSecurity" in proc.stderr and "privileged" in proc.stderr


def test_memory_limit_ends_oomkilled(cluster: Cluster, namespace: str) -> None:
    script = "import time; x = b'a' * (400 * 1024 * 1024); time.sleep(60)"
    cluster.apply(pod("hog", ["python3", "-c", script], resources={"limits": {"memory": "128Mi"}}), namespace)
    t = wait_until("pod terminated", lambda: terminated(cluster, namespace, "hog"), 90)
    assert t["reason"] == "OOMKilled" and t["exitCode"] == 137
    assert cluster.get_json("pod", "hog", "-n", namespace)["status"]["phase"] == "Failed"


def test_invalid_registry_image_shows_image_pull_backoff(cluster: Cluster, namespace: str) -> None:
    manifest = pod("nopull", ["python3", "-c", "pass"])
    manifest["spec"]["containers"][0]["image"] = "registry.example.invalid/kubetrain/trainer:0.0.0"
    cluster.apply(manifest, namespace)

    def waiting_reason() -> str | None:
        obj = cluster.get_json("pod", "nopull", "-n", namespace)
        for cs in obj.get("status", {}).get("containerStatuses") or []:
            reason = cs.get("state", {}).get("waiting", {}).get("reason")
            if reason == "ImagePullBackOff":
                return str(reason)
        return None

    assert wait_until("ImagePullBackOff", waiting_reason, 60) == "ImagePullBackOff"
    assert cluster.get_json("pod", "nopull", "-n", namespace)["status"]["phase"] == "Pending"


def test_pod_active_deadline_and_restart_on_failure(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        pod("deadline", ["python3", "-c", "import time; time.sleep(600)"], pod_spec={"activeDeadlineSeconds": 3}),
        namespace,
    )
    # Fails twice, then succeeds: restarted in place by the agent.
    script = (
        "import os, pathlib; p = pathlib.Path(os.environ['HOME'], 'tries'); "
        "n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1)); raise SystemExit(0 if n >= 1 else 1)"
    )
    cluster.apply(pod("flaky", ["python3", "-c", script], pod_spec={"restartPolicy": "OnFailure"}), namespace)

    def phase(name: str) -> str | None:
        p = cluster.get_json("pod", name, "-n", namespace)["status"].get("phase")
        return p if p in ("Succeeded", "Failed") else None

    assert wait_until("deadline pod Failed", lambda: phase("deadline"), 60) == "Failed"
    assert cluster.get_json("pod", "deadline", "-n", namespace)["status"]["reason"] == "DeadlineExceeded"
    assert wait_until("flaky pod Succeeded", lambda: phase("flaky"), 60) == "Succeeded"
    cs = cluster.get_json("pod", "flaky", "-n", namespace)["status"]["containerStatuses"][0]
    assert cs["restartCount"] == 1


def _crd_files() -> list[Path]:
    return sorted((REPO / "crds").glob("*.yaml"))


def test_crds_establish_and_validate(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    crds = [yaml.safe_load(f.read_text()) for f in _crd_files()]
    names = [c["metadata"]["name"] for c in crds if c and c.get("kind") == "CustomResourceDefinition"]
    assert {"trainingruns.kubetrain.io", "modelversions.kubetrain.io"} <= set(names)
    install_crds(cluster.kubectl)  # polls for Established (kubectl wait races a brand-new CRD)

    tr_crd = next(c for c in crds if c["metadata"]["name"] == "trainingruns.kubetrain.io")
    version = next(v for v in tr_crd["spec"]["versions"] if v.get("served"))
    columns = [c["name"].upper() for c in version.get("additionalPrinterColumns", []) if not c.get("priority")]
    example = REPO / "examples" / "iris-classification.yaml"
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d and d.get("kind") == "TrainingRun"]
    assert docs, f"no TrainingRun in {example}"
    docs[0]["metadata"].pop("namespace", None)
    cluster.apply(docs[0], namespace)
    header = cluster.kubectl("get", "trainingruns", "-n", namespace).stdout.splitlines()[0].split()
    assert header[0] == "NAME"
    for col in columns:
        assert col in header, f"printer column {col} missing from {header}"

    invalid = {
        "apiVersion": f"kubetrain.io/{version['name']}",
        "kind": "TrainingRun",
        "metadata": {"name": "invalid"},
        "spec": "not-an-object",
    }
    proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(invalid), check=False)
    assert proc.returncode != 0
    assert "invalid" in proc.stderr.lower()
