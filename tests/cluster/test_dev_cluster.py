"""Acceptance tests of the local dev cluster (hack/dev-cluster): a real control plane and real nodes (kubelet
on containerd, pods on a CNI bridge) built from source.

Pods run the small busybox image every node has (BUSYBOX_IMAGE). Each test gets a fresh namespace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import BUSYBOX_IMAGE, REPO, Cluster, wait_until
from tests.operator.crds import install_crds

pytestmark = pytest.mark.cluster

SUPPORTED_RELEASES = ("v1.37.2", "v1.36.3")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def local_only(cluster: Cluster) -> None:
    if cluster.external:
        pytest.skip("node layout is specific to the local dev cluster")


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", script]}],
    }
    pod_spec.update(spec.pop("pod", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}, **spec},
    }


def pod(name: str, script: str, **container: Any) -> dict[str, Any]:
    spec: dict[str, Any] = container.pop("pod_spec", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", script], **container}],
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


def running(cluster: Cluster, namespace: str, name: str) -> bool:
    return cluster.get_json("pod", name, "-n", namespace).get("status", {}).get("phase") == "Running"


def test_kubectl_version_shows_release(cluster: Cluster) -> None:
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] in SUPPORTED_RELEASES
    assert out["clientVersion"]["gitVersion"] == out["serverVersion"]["gitVersion"]


def test_nodes_are_real_kubelets_with_gpu_capacity_and_taints(cluster: Cluster) -> None:
    local_only(cluster)
    nodes = {n["metadata"]["name"]: n for n in cluster.get_json("nodes")["items"]}
    gpu = nodes["kubetrain-dev-gpu"]
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in gpu["spec"]["taints"]
    assert "nvidia.com/gpu" not in nodes["kubetrain-dev"]["status"]["allocatable"]
    for node in nodes.values():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
        info = node["status"]["nodeInfo"]
        assert info["kubeletVersion"] in SUPPORTED_RELEASES
        assert info["containerRuntimeVersion"].startswith("containerd://")
        assert {"type": "InternalIP", "address": cluster.host_ip} in node["status"]["addresses"]


def test_job_completes_and_kubectl_logs_reads_the_container(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("hello", "echo hello from $(hostname) uid=$(id -u)"), namespace)
    assert wait_until("job Complete", lambda: job_condition(cluster, namespace, "hello"), 120) == "Complete"
    # kubectl logs goes API server -> the kubelet's server on the node's InternalIP.
    logs = cluster.kubectl("logs", "-n", namespace, "job/hello").stdout
    assert "hello from hello-" in logs and "uid=0" in logs


def test_kubectl_exec_runs_in_the_container(cluster: Cluster, namespace: str) -> None:
    cluster.apply(pod("shell", "echo started > /tmp/marker; sleep 600"), namespace)
    wait_until("pod Running", lambda: running(cluster, namespace, "shell"), 90)
    out = wait_until(
        "exec works",
        lambda: cluster.kubectl("exec", "-n", namespace, "shell", "--", "cat", "/tmp/marker", check=False).stdout,
        30,
    )
    assert out.strip() == "started"
    proc = cluster.kubectl("exec", "-n", namespace, "shell", "--", "sh", "-c", "exit 7", check=False)
    assert proc.returncode == 7


def test_failing_job_fails_after_backoff_limit(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("boom", "exit 3", backoffLimit=1), namespace)
    assert wait_until("job Failed", lambda: job_condition(cluster, namespace, "boom"), 180) == "Failed"
    pods = cluster.get_json("pods", "-n", namespace, "-l", "job-name=boom")["items"]
    assert len(pods) == 2  # the first try + backoffLimit retries
    for p in pods:
        assert p["status"]["phase"] == "Failed"
        assert p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_too_many_gpus_stays_pending_unschedulable(cluster: Cluster, namespace: str) -> None:
    manifest = pod(
        "greedy", "true", resources={"limits": {"nvidia.com/gpu": "99"}}, pod_spec={"tolerations": [GPU_TOLERATION]}
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


def test_gpu_pod_lands_on_gpu_node_and_needs_the_toleration(cluster: Cluster, namespace: str) -> None:
    local_only(cluster)
    limits = {"limits": {"nvidia.com/gpu": "1"}}
    cluster.apply(pod("gpu", "echo gpu ok", resources=limits, pod_spec={"tolerations": [GPU_TOLERATION]}), namespace)
    cluster.apply(pod("intolerant", "echo never", resources=limits), namespace)
    wait_until("pod Succeeded", lambda: terminated(cluster, namespace, "gpu"), 90)
    assert cluster.get_json("pod", "gpu", "-n", namespace)["spec"]["nodeName"] == "kubetrain-dev-gpu"

    def untolerated() -> str | None:
        for c in cluster.get_json("pod", "intolerant", "-n", namespace)["status"].get("conditions") or []:
            if c["type"] == "PodScheduled" and c["status"] == "False":
                return str(c.get("message", ""))
        return None

    assert "untolerated taint" in wait_until("intolerant pod Unschedulable", untolerated, 60)


def test_deleting_job_removes_pods_via_garbage_collector(cluster: Cluster, namespace: str) -> None:
    # A shell as PID 1 ignores SIGTERM: without a short grace period the pod would wait its 30 s for SIGKILL.
    cluster.apply(job("sleeper", "sleep 600", pod={"terminationGracePeriodSeconds": 1}), namespace)

    def pods_running() -> bool:
        pods = cluster.get_json("pods", "-n", namespace, "-l", "job-name=sleeper")["items"]
        return bool(pods) and all(p["status"].get("phase") == "Running" for p in pods)

    wait_until("job pod Running", pods_running, 90)
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
    cluster.apply(pod("default-path", "printf 'trained: acc=0.97' > /dev/termination-log"), namespace)
    cluster.apply(
        pod("custom-path", "printf 'via path' > /tmp/result; exit 2", terminationMessagePath="/tmp/result"),
        namespace,
    )
    cluster.apply(
        pod("fallback", "echo line one; echo the real error; exit 1", terminationMessagePolicy="FallbackToLogsOnError"),
        namespace,
    )
    t1 = wait_until("default-path terminated", lambda: terminated(cluster, namespace, "default-path"), 90)
    assert t1["message"] == "trained: acc=0.97" and t1["reason"] == "Completed" and t1["exitCode"] == 0
    t2 = wait_until("custom-path terminated", lambda: terminated(cluster, namespace, "custom-path"), 90)
    assert t2["message"] == "via path" and t2["reason"] == "Error" and t2["exitCode"] == 2
    t3 = wait_until("fallback terminated", lambda: terminated(cluster, namespace, "fallback"), 90)
    assert "the real error" in t3["message"]


def test_env_field_refs_and_claim_on_this_machine(cluster: Cluster, namespace: str) -> None:
    local_only(cluster)
    folder = cluster.claim(namespace, "models")
    (folder / "input.txt").write_text("from the host")
    script = (
        "mkdir -p /models/run1/out && cat /models/run1/../input.txt > /models/run1/out/copy.txt && "
        'printf \'%s|%s|%s|%s|%s|%s|%s|%s\' "$POD_NAME" "$POD_NS" "$NODE" "$TEAM" "$MEM_MI" "$CPU" '
        '"$GREETING" "$POD_IP" > /dev/termination-log'
    )
    manifest = pod(
        "envs",
        script,
        env=[
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "WHO", "value": "world"},
            {"name": "GREETING", "value": "hello $(WHO)"},
        ],
        resources={"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
        volumeMounts=[{"name": "models", "mountPath": "/models"}],
        pod_spec={"volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}]},
    )
    manifest["metadata"]["labels"] = {"team": "ml"}
    cluster.apply(manifest, namespace)
    t = wait_until("pod terminated", lambda: terminated(cluster, namespace, "envs"), 90)
    assert t["exitCode"] == 0, t
    name, ns, node, team, mem, cpu, greeting, pod_ip = t["message"].split("|")
    assert (name, ns, team, mem, cpu, greeting) == ("envs", namespace, "ml", "512", "250", "hello world")
    assert node == "kubetrain-dev"
    assert pod_ip.startswith(cluster.info["POD_SUBNET"].rsplit(".", 1)[0] + "."), pod_ip
    # The claim is a real mount of the folder on this machine: what the pod wrote is there.
    assert (folder / "run1" / "out" / "copy.txt").read_text() == "from the host"


def test_fs_group_decides_who_may_write_a_claim(cluster: Cluster, namespace: str) -> None:
    local_only(cluster)
    folder = cluster.claim(namespace, "shared")
    nonroot = {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True}
    write = "touch /data/$(id -u)-$(id -G | tr ' ' '-') && echo ok"
    mount = [{"name": "shared", "mountPath": "/data"}]
    volumes = [{"name": "shared", "persistentVolumeClaim": {"claimName": "shared"}}]
    cluster.apply(
        pod(
            "with-fsgroup",
            write,
            volumeMounts=mount,
            pod_spec={"volumes": volumes, "securityContext": {**nonroot, "fsGroup": 10001}},
        ),
        namespace,
    )
    t = wait_until("with-fsgroup terminated", lambda: terminated(cluster, namespace, "with-fsgroup"), 90)
    assert t["exitCode"] == 0, t
    written = [p for p in folder.iterdir() if p.name.startswith("10001-")]
    assert len(written) == 1 and written[0].stat().st_gid == 10001
    assert folder.stat().st_gid == 10001  # the kubelet applied fsGroup to the local volume
    # The same user without the fsGroup: the kubelet changes nothing and the root-owned folder refuses it.
    (folder / "sub").mkdir()
    (folder / "sub").chmod(0o755)
    cluster.apply(
        pod(
            "without-fsgroup",
            "touch /data/sub/x",
            volumeMounts=mount,
            pod_spec={"volumes": volumes, "securityContext": nonroot},
        ),
        namespace,
    )
    t2 = wait_until("without-fsgroup terminated", lambda: terminated(cluster, namespace, "without-fsgroup"), 90)
    assert t2["exitCode"] != 0


def test_pods_reach_the_api_server_through_the_kubernetes_service(cluster: Cluster, namespace: str) -> None:
    local_only(cluster)
    cluster.kubectl("create", "serviceaccount", "probe", "-n", namespace)
    cluster.kubectl(
        "create",
        "rolebinding",
        "probe-view",
        "--clusterrole=view",
        f"--serviceaccount={namespace}:probe",
        "-n",
        namespace,
    )
    # busybox's wget cannot do TLS with the API server (handshake failure): Python's ssl from the trainer
    # image, verifying the API server against the ServiceAccount's CA, with the pod's own projected token.
    image = cluster.images.get("TRAINER_IMAGE")
    assert image, "no trainer image in the dev cluster (hack/dev-cluster load-images)"
    script = (
        "import os, ssl, urllib.request\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "host, port = os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT']\n"
        "print(f'host={host}:{port}')\n"
        "ctx = ssl.create_default_context(cafile=f'{sa}/ca.crt')\n"
        "ns = open(f'{sa}/namespace').read()\n"
        "req = urllib.request.Request(f'https://kubernetes.default.svc:{port}/api/v1/namespaces/{ns}/serviceaccounts',\n"
        "    headers={'Authorization': 'Bearer ' + open(f'{sa}/token').read()})\n"
        "import socket\n"
        "orig = socket.getaddrinfo\n"
        "socket.getaddrinfo = lambda h, *a, **k: orig(host if h == 'kubernetes.default.svc' else h, *a, **k)\n"
        "print(urllib.request.urlopen(req, context=ctx, timeout=10).read().decode())\n"
    )
    manifest = pod("probe", "")
    manifest["spec"]["containers"][0].update(image=image, command=["python", "-c", script])
    manifest["spec"]["serviceAccountName"] = "probe"
    cluster.apply(manifest, namespace)
    t = wait_until("probe terminated", lambda: terminated(cluster, namespace, "probe"), 90)
    logs = cluster.kubectl("logs", "-n", namespace, "probe").stdout
    assert t["exitCode"] == 0, logs
    svc = cluster.get_json("service", "kubernetes", "-n", "default")
    assert f"host={svc['spec']['clusterIP']}:443" in logs and '"name":"probe"' in logs


def test_pods_have_no_route_off_this_machine(cluster: Cluster, namespace: str) -> None:
    local_only(cluster)
    cluster.apply(
        pod("offline", "ip route; wget -q -T 3 -O- http://1.1.1.1/ && echo REACHED || echo unreachable"), namespace
    )
    wait_until("offline terminated", lambda: terminated(cluster, namespace, "offline"), 90)
    logs = cluster.kubectl("logs", "-n", namespace, "offline").stdout
    assert "default" not in logs and "unreachable" in logs and "REACHED" not in logs, logs


def test_restricted_namespace_refuses_privileged_pod(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    manifest = pod("priv", "true", securityContext={"privileged": True})
    proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert proc.returncode != 0
    assert "violates PodSecurity" in proc.stderr and "privileged" in proc.stderr


def test_memory_limit_is_enforced_by_the_kernel(cluster: Cluster, namespace: str) -> None:
    # tail buffers /dev/zero looking for a newline that never comes, until the memory cgroup kills it.
    cluster.apply(pod("hog", "tail /dev/zero", resources={"limits": {"memory": "128Mi"}}), namespace)
    t = wait_until("pod terminated", lambda: terminated(cluster, namespace, "hog"), 90)
    assert t["reason"] == "OOMKilled" and t["exitCode"] == 137
    # The kubelet reports the container's end first and the pod's terminal phase once the sandbox is down.
    phase = lambda: cluster.get_json("pod", "hog", "-n", namespace)["status"]["phase"] == "Failed"  # noqa: E731
    wait_until("pod Failed", phase, 60)


def test_cpu_limit_is_a_cfs_quota_in_the_container_cgroup(cluster: Cluster, namespace: str) -> None:
    local_only(cluster)
    cluster.apply(
        pod(
            "quota",
            "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us > /dev/termination-log",
            resources={"limits": {"cpu": "250m", "memory": "64Mi"}},
        ),
        namespace,
    )
    t = wait_until("quota terminated", lambda: terminated(cluster, namespace, "quota"), 90)
    quota, period = (int(x) for x in t["message"].split())
    assert quota / period == pytest.approx(0.25), t["message"]


def test_invalid_registry_image_shows_image_pull_backoff(cluster: Cluster, namespace: str) -> None:
    manifest = pod("nopull", "true")
    manifest["spec"]["containers"][0]["image"] = "registry.example.invalid/kubetrain/trainer:0.0.0"
    cluster.apply(manifest, namespace)

    def waiting_reason() -> str | None:
        obj = cluster.get_json("pod", "nopull", "-n", namespace)
        for cs in obj.get("status", {}).get("containerStatuses") or []:
            reason = cs.get("state", {}).get("waiting", {}).get("reason")
            if reason == "ImagePullBackOff":
                return str(reason)
        return None

    assert wait_until("ImagePullBackOff", waiting_reason, 90) == "ImagePullBackOff"
    assert cluster.get_json("pod", "nopull", "-n", namespace)["status"]["phase"] == "Pending"


def test_pod_active_deadline_and_restart_on_failure(cluster: Cluster, namespace: str) -> None:
    deadline = {"activeDeadlineSeconds": 3, "terminationGracePeriodSeconds": 1}  # sh ignores SIGTERM (see above)
    cluster.apply(pod("deadline", "sleep 600", pod_spec=deadline), namespace)
    # Fails once, then succeeds: restarted in place by the kubelet (the emptyDir outlives the container).
    script = "n=$(cat /state/tries 2>/dev/null || echo 0); echo $((n + 1)) > /state/tries; [ $n -ge 1 ]"
    cluster.apply(
        pod(
            "flaky",
            script,
            volumeMounts=[{"name": "state", "mountPath": "/state"}],
            pod_spec={"restartPolicy": "OnFailure", "volumes": [{"name": "state", "emptyDir": {}}]},
        ),
        namespace,
    )

    def phase(name: str) -> str | None:
        p = cluster.get_json("pod", name, "-n", namespace)["status"].get("phase")
        return p if p in ("Succeeded", "Failed") else None

    assert wait_until("deadline pod Failed", lambda: phase("deadline"), 60) == "Failed"
    assert cluster.get_json("pod", "deadline", "-n", namespace)["status"]["reason"] == "DeadlineExceeded"
    assert wait_until("flaky pod Succeeded", lambda: phase("flaky"), 90) == "Succeeded"
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
