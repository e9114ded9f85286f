"""Local node agent: a stand-in for the kubelet, for development and tests ONLY.

This is NOT a kubelet and offers no isolation whatsoever. It registers fake Nodes with the local control
plane started by ``hack/dev-cluster`` and runs the containers of the pods bound to them as plain local
processes of the current user (root on the dev box) -- the image name is ignored, except that images from
a registry host ending in ``.invalid`` never "pull". Never point it at a cluster you care about.

What it does (see docs/dev-cluster.md for the full rules):

* Nodes: registers each configured node (capacity/allocatable incl. ``nvidia.com/gpu``, labels, taints),
  keeps it Ready with status heartbeats and Leases in ``kube-node-lease``.
* Pods: watches pods with ``fieldSelector spec.nodeName=<node>``; runs ``command + args`` of every
  container in its own process group with the pod's env (literal, fieldRef, resourceFieldRef,
  configMapKeyRef, secretKeyRef, envFrom), ``python``/``python3`` resolving to this interpreter's venv.
* Volumes: emptyDir -> per-pod folder, persistentVolumeClaim -> ``<run-dir>/pvc/<ns>/<claim>/``,
  hostPath -> the path itself, configMap/secret/projected -> files written into a per-pod folder.
  A process cannot see mounts, so every env value, command/arg element and workingDir that starts with
  a volumeMount's ``mountPath`` is rewritten to the local folder (``subPath`` honoured); a mount at
  ``/tmp`` also sets ``TMPDIR``.
* Termination message: ``KUBETRAIN_TERMINATION_LOG`` points at a per-container file (the container's
  ``terminationMessagePath`` is rewritten to it too); its first 4096 bytes become the terminated state's
  ``message``; with ``FallbackToLogsOnError`` an empty file on failure gives the log tail instead.
* Status: Pending -> Running -> Succeeded/Failed via pods/status, restartPolicy, activeDeadlineSeconds,
  memory limits (RSS of the process group polled, SIGKILL + OOMKilled/137), graceful deletion.
* Logs: a kubelet-style HTTPS ``/containerLogs/{ns}/{pod}/{container}`` endpoint so ``kubectl logs`` works.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.server
import logging
import math
import os
import re
import shutil
import signal
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the HTTP client under lightkube (its transport errors are not ApiErrors)
from lightkube import ApiError, Client, codecs
from lightkube.config.kubeconfig import KubeConfig
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import (
    ConfigMap,
    Node,
    PersistentVolume,
    PersistentVolumeClaim,
    Pod,
    Secret,
)
from lightkube.types import PatchType

log = logging.getLogger("node-agent")

KUBE_VERSION = os.environ.get("KUBETRAIN_KUBE_VERSION", "v1.37.2")
MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 10
STATUS_REPORT_SECONDS = 60
POLL_SECONDS = 0.25
OOM_EXIT_CODE = 137
START_ERROR_EXIT_CODE = 128
VENV_BIN = str(Path(sys.executable).parent)
STORAGE_CLASS = "local"
PROVISIONER = "kubetrain.io/local-node-agent"

Obj = dict[str, Any]


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


_SUFFIXES: dict[str, Decimal] = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource quantity ("500m", "1Gi", "2") as a Decimal in base units."""
    text = str(value).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix) and not re.fullmatch(r"[0-9.]+[eE][0-9]+", text):
            return Decimal(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return Decimal(text)


# ---------------------------------------------------------------------------------------------------------
# Node configuration


@dataclass
class NodeConfig:
    name: str
    cpu: str = "4"
    memory: str = "16Gi"
    pods: str = "110"
    gpu: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[Obj] = field(default_factory=list)

    @classmethod
    def parse(cls, spec: str) -> NodeConfig:
        """``name[,cpu=4][,memory=16Gi][,pods=110][,gpu=2][,label=k=v]...[,taint=k=v:Effect]...``"""
        name, *items = [part.strip() for part in spec.split(",") if part.strip()]
        node = cls(name=name)
        for item in items:
            key, _, value = item.partition("=")
            if key in ("cpu", "memory", "pods"):
                setattr(node, key, value)
            elif key == "gpu":
                node.gpu = int(value)
            elif key == "label":
                lk, _, lv = value.partition("=")
                node.labels[lk] = lv
            elif key == "taint":
                kv, _, effect = value.rpartition(":")
                tk, _, tv = kv.partition("=")
                taint = {"key": tk, "effect": effect}
                if tv:
                    taint["value"] = tv
                node.taints.append(taint)
            else:
                raise ValueError(f"unknown node option {key!r} in {spec!r}")
        return node

    def resources(self) -> dict[str, str]:
        res = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods, "ephemeral-storage": "100Gi"}
        if self.gpu:
            res["nvidia.com/gpu"] = str(self.gpu)
        return res


DEFAULT_NODES = [
    "kubetrain-dev,cpu=4,memory=16Gi",
    "kubetrain-dev-gpu,cpu=4,memory=16Gi,gpu=2,label=nvidia.com/gpu.present=true,"
    "taint=nvidia.com/gpu=present:NoSchedule",
]


# ---------------------------------------------------------------------------------------------------------
# Helpers for processes


def process_group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


def kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def read_tail(path: Path, lines: int, limit: int) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    tail = b"\n".join(data.splitlines()[-lines:])
    return tail[-limit:].decode("utf-8", errors="replace")


def image_never_pulls(image: str) -> bool:
    """Images from a registry host under the RFC 2606 ``.invalid`` TLD never pull."""
    first, sep, _ = image.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        return False
    host = first.split(":")[0]
    return host.endswith(".invalid")


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion (``$$`` escapes, unknown references stay as they are)."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(repl, text)


# ---------------------------------------------------------------------------------------------------------
# The agent


class Agent:
    def __init__(self, kubeconfig: str, run_dir: Path, nodes: list[NodeConfig], port: int) -> None:
        self.kubeconfig = kubeconfig
        self.run_dir = run_dir
        self.nodes = {n.name: n for n in nodes}
        self.port = port
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.boot_id = str(uuid.uuid4())
        self.client = self.new_client()

    def new_client(self) -> Client:
        return Client(config=KubeConfig.from_file(self.kubeconfig), field_manager="kubetrain-node-agent")

    # -- nodes ----------------------------------------------------------------------------------------
    def register_node(self, node: NodeConfig) -> None:
        labels = {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubetrain.io/local-node-agent": "true",
            **node.labels,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
            "spec": {"taints": node.taints},
        }
        try:
            self.client.create(codecs.from_dict(body))
            log.info("registered node %s", node.name)
        except ApiError as e:
            if e.status.code != 409:
                raise
            self.client.patch(
                Node,
                node.name,
                {"metadata": {"labels": labels}, "spec": {"taints": node.taints or None}},
                patch_type=PatchType.MERGE,
            )
            log.info("node %s exists; labels and taints updated", node.name)
        self.report_node_status(node)

    def report_node_status(self, node: NodeConfig) -> None:
        stamp = now()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        status: Obj = {
            "capacity": node.resources(),
            "allocatable": node.resources(),
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "reason": r,
                    "message": "local node agent (kubetrain dev/test only)",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
                for t, s, r in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": node.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": node.name,
                "systemUUID": node.name,
                "bootID": self.boot_id,
                "kernelVersion": os.uname().release,
                "osImage": "kubetrain local node agent",
                "containerRuntimeVersion": "local-process://0.1",
                "kubeletVersion": KUBE_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        # Keep the transition time of conditions that did not change, as the kubelet does.
        try:
            current = self.client.get(Node, node.name).to_dict().get("status", {})
            old = {c["type"]: c for c in current.get("conditions") or []}
            for c in status["conditions"]:
                prev = old.get(c["type"])
                if prev and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
                    c["lastTransitionTime"] = prev["lastTransitionTime"]
        except ApiError:
            pass
        self.client.patch(Node.Status, node.name, {"status": status}, patch_type=PatchType.STRATEGIC)

    def renew_lease(self, node: NodeConfig) -> None:
        try:
            self.client.patch(
                Lease,
                node.name,
                {"spec": {"renewTime": now_micro(), "holderIdentity": node.name}},
                namespace="kube-node-lease",
                patch_type=PatchType.MERGE,
            )
        except ApiError as e:
            if e.status.code != 404:
                raise
            uid = self.client.get(Node, node.name).to_dict()["metadata"]["uid"]
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": node.name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": uid}],
                },
                "spec": {
                    "holderIdentity": node.name,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": now_micro(),
                },
            }
            self.client.create(codecs.from_dict(lease))

    def heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(LEASE_RENEW_SECONDS):
            for node in self.nodes.values():
                try:
                    self.renew_lease(node)
                    if time.monotonic() - last_status > STATUS_REPORT_SECONDS:
                        self.report_node_status(node)
                except Exception:
                    log.exception("heartbeat for node %s failed", node.name)
                    with contextlib.suppress(Exception):
                        self.register_node(node)
            if time.monotonic() - last_status > STATUS_REPORT_SECONDS:
                last_status = time.monotonic()

    # -- pods -----------------------------------------------------------------------------------------
    def pod_dir(self, pod: Obj) -> Path:
        meta = pod["metadata"]
        return self.run_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"

    def handle_pod(self, event: str, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self.lock:
            worker = self.workers.get(uid)
        if event == "DELETED":
            if worker:
                worker.request_stop(grace=0, finish_deletion=False)
            return
        phase = (pod.get("status") or {}).get("phase")
        if worker is None:
            if meta.get("deletionTimestamp"):
                if phase not in ("Succeeded", "Failed") and self.pod_dir(pod).exists():
                    # Started by an earlier agent run: make sure nothing is left of it.
                    cleanup_stale_dir(self.pod_dir(pod))
                self.finish_deletion(pod)
                return
            if phase in ("Succeeded", "Failed"):
                return
            worker = PodWorker(self, pod)
            with self.lock:
                self.workers[uid] = worker
            threading.Thread(target=worker.run, name=f"pod-{meta['name']}", daemon=True).start()
        else:
            worker.update(pod)

    def finish_deletion(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            self.client.delete(Pod, meta["name"], namespace=meta["namespace"], grace_period=0)
            log.info("pod %s/%s: deletion finished", meta["namespace"], meta["name"])
        except ApiError as e:
            if e.status.code != 404:
                log.warning("pod %s/%s: delete failed: %s", meta["namespace"], meta["name"], e)
        shutil.rmtree(self.pod_dir(pod), ignore_errors=True)

    def forget(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)

    def watch_loop(self, node: str) -> None:
        """List, then watch, pods bound to ``node``; on any error re-list from scratch."""
        client = self.new_client()
        while not self.stopping.is_set():
            try:
                listing = client.list(Pod, namespace="*", fields={"spec.nodeName": node})
                pods = [p.to_dict() for p in listing]
                seen = {p["metadata"]["uid"] for p in pods}
                self.reconcile_orphans(node, seen)
                for pod in pods:
                    self.safe_handle("ADDED", pod)
                for event, obj in client.watch(
                    Pod,
                    namespace="*",
                    fields={"spec.nodeName": node},
                    resource_version=listing.resourceVersion if pods else None,
                    server_timeout=300,
                ):
                    if self.stopping.is_set():
                        return
                    self.safe_handle(event, obj.to_dict())
            except Exception as e:
                if self.stopping.is_set():
                    return
                log.warning("pod watch for %s failed (%s); re-listing in 2s", node, e)
                time.sleep(2)

    def safe_handle(self, event: str, pod: Obj) -> None:
        try:
            self.handle_pod(event, pod)
        except Exception:
            log.exception("handling pod %s failed", pod.get("metadata", {}).get("name"))

    def reconcile_orphans(self, node: str, existing: set[str]) -> None:
        with self.lock:
            gone = [w for uid, w in self.workers.items() if uid not in existing and w.node == node]
        for worker in gone:
            worker.request_stop(grace=0, finish_deletion=False)

    def cleanup_orphan_dirs(self, existing: set[str]) -> None:
        """Kill processes and remove folders of pods that no longer exist (deleted while we were down)."""
        pods_root = self.run_dir / "pods"
        if not pods_root.exists():
            return
        for d in pods_root.iterdir():
            uid = d.name.rsplit("_", 1)[-1]
            if uid not in existing:
                log.info("cleaning up pod folder of a pod that is gone: %s", d.name)
                cleanup_stale_dir(d)
                shutil.rmtree(d, ignore_errors=True)

    def startup_cleanup(self) -> None:
        existing: set[str] = set()
        for node in self.nodes:
            pods = self.client.list(Pod, namespace="*", fields={"spec.nodeName": node})
            existing |= {p.to_dict()["metadata"]["uid"] for p in pods}
        self.cleanup_orphan_dirs(existing)

    # -- storage: a tiny provisioner so PVCs bind (data lives in <run-dir>/pvc/<ns>/<claim>/) -----------
    def ensure_storage_class(self) -> None:
        sc = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        try:
            self.client.create(codecs.from_dict(sc))
        except ApiError as e:
            if e.status.code != 409:
                raise

    def storage_loop(self) -> None:
        client = self.new_client()
        while not self.stopping.wait(1.0):
            try:
                self.provision(client)
            except Exception as e:
                log.warning("storage reconcile failed: %s", e)

    def provision(self, client: Client) -> None:
        pvs: dict[str, Obj] = {}
        for item in client.list(PersistentVolume):
            pv_dict = item.to_dict()
            pvs[pv_dict["metadata"]["name"]] = pv_dict
        for pvc in client.list(PersistentVolumeClaim, namespace="*"):
            claim = pvc.to_dict()
            meta, spec = claim["metadata"], claim.get("spec") or {}
            if spec.get("volumeName") or meta.get("deletionTimestamp"):
                continue
            if spec.get("storageClassName") not in (STORAGE_CLASS, None, ""):
                continue
            name = f"pvc-{meta['uid']}"
            if name in pvs:
                continue
            path = self.run_dir / "pvc" / meta["namespace"] / meta["name"]
            path.mkdir(parents=True, exist_ok=True)
            size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
            pv: Obj = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": name,
                    "labels": {"kubetrain.io/local-node-agent": "true"},
                    "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                },
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": spec.get("storageClassName") or "",
                    "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": meta["namespace"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                },
            }
            client.create(codecs.from_dict(pv))
            log.info("provisioned %s for claim %s/%s at %s", name, meta["namespace"], meta["name"], path)
        for pv_name, pv in pvs.items():
            ann = pv["metadata"].get("annotations") or {}
            if ann.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
                continue
            if (pv.get("status") or {}).get("phase") in ("Released", "Failed") and not pv["metadata"].get(
                "deletionTimestamp"
            ):
                with contextlib.suppress(ApiError):
                    client.delete(PersistentVolume, pv_name)
                ref = pv["spec"].get("claimRef") or {}
                shutil.rmtree(self.run_dir / "pvc" / ref.get("namespace", "?") / ref.get("name", "?"), True)
                log.info("deleted released volume %s", pv_name)

    def find_log(self, namespace: str, pod: str, container: str) -> tuple[Path | None, PodWorker | None]:
        with self.lock:
            for w in self.workers.values():
                if w.namespace == namespace and w.name == pod:
                    return w.log_path(container), w
        root = self.run_dir / "pods"
        for d in root.glob(f"{namespace}_{pod}_*"):
            p = d / "logs" / f"{container}.log"
            if p.exists():
                return p, None
        return None, None

    def run(self) -> None:
        for node in self.nodes.values():
            self.register_node(node)
            self.renew_lease(node)
        self.startup_cleanup()
        self.ensure_storage_class()
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self.storage_loop, name="storage", daemon=True).start()
        for node_name in self.nodes:
            threading.Thread(target=self.watch_loop, args=(node_name,), name=f"watch-{node_name}", daemon=True).start()
        log.info("node agent running for nodes %s", ", ".join(self.nodes))
        self.stopping.wait()

    def shutdown(self) -> None:
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.kill_all(signal.SIGKILL)


def cleanup_stale_dir(pod_dir: Path) -> None:
    for pidfile in pod_dir.glob("pids/*.pgid"):
        with contextlib.suppress(ValueError, OSError):
            pgid = int(pidfile.read_text().strip())
            if pgid > 1:
                kill_group(pgid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            pidfile.unlink()


# ---------------------------------------------------------------------------------------------------------
# One pod


@dataclass
class Running:
    proc: subprocess.Popen[bytes] | _FailedProc
    started_at: str
    log_file: Any
    error: str | None = None  # set when the process could not be started


class PodWorker:
    def __init__(self, agent: Agent, pod: Obj) -> None:
        self.agent = agent
        self.client = agent.client
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.node: str = pod["spec"]["nodeName"]
        self.dir = agent.pod_dir(pod)
        self.stop = threading.Event()
        self.stop_grace = 30.0
        self.finish_deletion = True
        self.procs: dict[str, Running] = {}
        status = pod.get("status") or {}
        self.start_time: str = status.get("startTime") or now()
        self.restarts: dict[str, int] = {
            cs["name"]: cs.get("restartCount", 0) for cs in status.get("containerStatuses") or []
        }
        self.statuses: dict[str, Obj] = {}
        self.init_statuses: dict[str, Obj] = {}
        self.volumes: dict[str, Path] = {}
        self.lock = threading.Lock()

    @property
    def spec(self) -> Obj:
        return self.pod["spec"]

    def log_path(self, container: str) -> Path:
        return self.dir / "logs" / f"{container}.log"

    def update(self, pod: Obj) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.stop.is_set():
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            self.request_stop(grace=float(grace if grace is not None else 30), finish_deletion=True)

    def request_stop(self, grace: float, finish_deletion: bool) -> None:
        self.stop_grace = grace
        self.finish_deletion = finish_deletion
        self.stop.set()

    # -- status -------------------------------------------------------------------------------------
    def container_status(self, c: Obj, state: Obj, ready: bool = False, last: Obj | None = None) -> Obj:
        name = c["name"]
        cs: Obj = {
            "name": name,
            "image": c.get("image", ""),
            "imageID": "",
            "ready": ready,
            "started": "running" in state,
            "restartCount": self.restarts.get(name, 0),
            "state": state,
            "lastState": last or {},
        }
        running = self.procs.get(name)
        if running and ("running" in state or "terminated" in state):
            cs["containerID"] = f"local://{self.uid}/{name}/{running.proc.pid}"
            cs["imageID"] = "local://no-image"
        return cs

    def patch_status(self, phase: str, reason: str | None = None, message: str | None = None) -> None:
        containers = self.spec.get("containers", [])
        init = self.spec.get("initContainers") or []
        running = phase == "Running"
        all_ready = running and all("running" in self.statuses.get(c["name"], {}).get("state", {}) for c in containers)
        init_done = all(
            (self.init_statuses.get(c["name"], {}).get("state", {}).get("terminated") or {}).get("exitCode") == 0
            for c in init
        ) or phase in ("Running", "Succeeded")
        stamp = now()

        def cond(t: str, ok: bool, why: str | None = None) -> Obj:
            c = {"type": t, "status": "True" if ok else "False", "lastTransitionTime": stamp}
            if not ok and why:
                c["reason"] = why
            return c

        ready_reason = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
        status: Obj = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "conditions": [
                cond("PodReadyToStartContainers", phase != "Pending" or bool(self.volumes)),
                cond("Initialized", init_done, "ContainersNotInitialized"),
                cond("ContainersReady", all_ready, ready_reason),
                cond("Ready", all_ready, ready_reason),
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
            ],
            "containerStatuses": [self.statuses[c["name"]] for c in containers if c["name"] in self.statuses],
            "reason": reason,
            "message": message,
        }
        if init:
            status["initContainerStatuses"] = [
                self.init_statuses[c["name"]] for c in init if c["name"] in self.init_statuses
            ]
        # Only conditions whose status changed get a new transition time.
        old = {c["type"]: c for c in (self.pod.get("status") or {}).get("conditions") or []}
        for c in status["conditions"]:
            prev = old.get(c["type"])
            if prev and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
                c["lastTransitionTime"] = prev["lastTransitionTime"]
        # Like the kubelet's status manager, keep a status the API server cannot take right now (down,
        # restarting: connection errors, 429/5xx) and retry until it can; giving up here would end the
        # pod's worker and, after the next re-list, restart or fail a container that did its job.
        failures = 0
        while True:
            try:
                result = self.client.patch(
                    Pod.Status,
                    self.name,
                    {"status": status},
                    namespace=self.namespace,
                    patch_type=PatchType.MERGE,
                )
                self.pod = result.to_dict()
                if failures:
                    log.info(
                        "pod %s/%s: status %s written after %d failures", self.namespace, self.name, phase, failures
                    )
                return
            except ApiError as e:
                if e.status.code != 429 and (e.status.code or 0) < 500:
                    if e.status.code != 404:
                        log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, e)
                    return
                error: Exception = e
            except (httpx.TransportError, OSError) as e:
                error = e
            if failures % 10 == 0:
                log.warning(
                    "pod %s/%s: status %s not written (%s: %s); retrying",
                    self.namespace,
                    self.name,
                    phase,
                    type(error).__name__,
                    error,
                )
            failures += 1
            if self.agent.stopping.wait(min(0.5 * 2**failures, 5.0)):
                return

    # -- volumes and env ----------------------------------------------------------------------------
    def prepare_volumes(self) -> None:
        for vol in self.spec.get("volumes") or []:
            name = vol["name"]
            if "persistentVolumeClaim" in vol:
                path = self.agent.run_dir / "pvc" / self.namespace / vol["persistentVolumeClaim"]["claimName"]
            elif "hostPath" in vol:
                path = Path(vol["hostPath"]["path"])
            else:
                path = self.dir / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol:
                self.write_items(path, self.read_data(ConfigMap, vol["configMap"]), vol["configMap"])
            elif "secret" in vol:
                data = self.read_data(Secret, {"name": vol["secret"]["secretName"], **vol["secret"]})
                self.write_items(path, data, vol["secret"])
            elif "projected" in vol:
                for src in vol["projected"].get("sources") or []:
                    if "configMap" in src:
                        self.write_items(path, self.read_data(ConfigMap, src["configMap"]), src["configMap"])
                    elif "secret" in src:
                        self.write_items(path, self.read_data(Secret, src["secret"]), src["secret"])
                    elif "downwardAPI" in src:
                        for item in src["downwardAPI"].get("items") or []:
                            if "fieldRef" in item:
                                value = self.field_ref(item["fieldRef"]["fieldPath"])
                                (path / item["path"]).write_text(value)
                    elif "serviceAccountToken" in src:
                        # No TokenRequest here: local processes use the admin kubeconfig anyway.
                        (path / src["serviceAccountToken"].get("path", "token")).write_text("")
                ca = os.environ.get("KUBETRAIN_CA_FILE")
                if ca and Path(ca).exists() and not (path / "ca.crt").exists():
                    shutil.copy(ca, path / "ca.crt")
            self.volumes[name] = path

    def read_data(self, kind: type[ConfigMap] | type[Secret], ref: Obj) -> dict[str, str]:
        import base64

        try:
            obj = self.client.get(kind, ref["name"], namespace=self.namespace).to_dict()
        except ApiError:
            if ref.get("optional"):
                return {}
            raise
        data = dict(obj.get("data") or {})
        if kind is Secret:
            data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}
        return data

    @staticmethod
    def write_items(path: Path, data: dict[str, str], src: Obj) -> None:
        items = src.get("items")
        if items:
            for item in items:
                if item["key"] in data:
                    target = path / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
        else:
            for key, value in data.items():
                (path / key).write_text(value)

    def field_ref(self, path: str) -> str:
        meta = self.pod["metadata"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.node,
            "spec.serviceAccountName": self.spec.get("serviceAccountName", ""),
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path in ("metadata.labels", "metadata.annotations"):
            items = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
        return simple.get(path, "")

    def resource_ref(self, c: Obj, ref: Obj) -> str:
        resource = ref["resource"]
        kind, _, name = resource.partition(".")
        res = c.get("resources") or {}
        value = (res.get(kind) or {}).get(name)
        if value is None and kind == "requests":
            value = (res.get("limits") or {}).get(name)
        if value is None:
            value = self.agent.nodes[self.node].resources().get(name, "0")
        divisor = parse_quantity(ref.get("divisor") or "1")
        if divisor == 0:
            divisor = Decimal(1)
        return str(math.ceil(parse_quantity(value) / divisor))

    def mount_map(self, c: Obj) -> list[tuple[str, Path]]:
        mounts = []
        for m in c.get("volumeMounts") or []:
            base = self.volumes.get(m["name"])
            if base is None:
                continue
            local = base / m["subPath"] if m.get("subPath") else base
            if m.get("subPath") and not local.suffix:
                local.mkdir(parents=True, exist_ok=True)
            mounts.append((m["mountPath"].rstrip("/") or "/", local))
        mounts.append((c.get("terminationMessagePath") or "/dev/termination-log", self.term_path(c)))
        return sorted(mounts, key=lambda mp: len(mp[0]), reverse=True)

    @staticmethod
    def rewrite(value: str, mounts: list[tuple[str, Path]]) -> str:
        """Rewrite a leading mountPath prefix (path-component aware) to the local folder."""
        for mount_path, local in mounts:
            if value == mount_path:
                return str(local)
            if value.startswith(mount_path.rstrip("/") + "/"):
                return str(local) + value[len(mount_path.rstrip("/")) :]
        return value

    def term_path(self, c: Obj) -> Path:
        return self.dir / "termination" / f"{c['name']}.log"

    def build_env(self, c: Obj) -> dict[str, str]:
        env: dict[str, str] = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME": self.name,
            "HOME": str(self.dir / "home"),
        }
        for key in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "LANG", "TZ"):
            if key in os.environ:
                env[key] = os.environ[key]
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                data = self.read_data(ConfigMap, src["configMapRef"])
            elif "secretRef" in src:
                data = self.read_data(Secret, src["secretRef"])
            else:
                continue
            env.update({prefix + k: v for k, v in data.items()})
        for e in c.get("env") or []:
            name = e["name"]
            if "value" in e:
                env[name] = expand(e.get("value") or "", env)
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "fieldRef" in vf:
                    env[name] = self.field_ref(vf["fieldRef"]["fieldPath"])
                elif "resourceFieldRef" in vf:
                    env[name] = self.resource_ref(c, vf["resourceFieldRef"])
                elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
                    kind: type[ConfigMap] | type[Secret] = ConfigMap if "configMapKeyRef" in vf else Secret
                    ref = vf.get("configMapKeyRef") or vf.get("secretKeyRef")
                    data = self.read_data(kind, ref)
                    if ref["key"] in data:
                        env[name] = data[ref["key"]]
                    elif not ref.get("optional"):
                        raise RuntimeError(f"couldn't find key {ref['key']} in {kind.__name__} {ref['name']}")
            else:
                env[name] = ""
        mounts = self.mount_map(c)
        env = {k: self.rewrite(v, mounts) for k, v in env.items()}
        for mount_path, local in mounts:
            if mount_path == "/tmp":
                env["TMPDIR"] = str(local)
        env["PATH"] = VENV_BIN + os.pathsep + env["PATH"]
        env["VIRTUAL_ENV"] = str(Path(VENV_BIN).parent)
        env["KUBETRAIN_TERMINATION_LOG"] = str(self.term_path(c))
        env["KUBETRAIN_LOCAL_NODE_AGENT"] = "1"
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    # -- processes ----------------------------------------------------------------------------------
    def start(self, c: Obj) -> tuple[Running | None, str | None]:
        env = self.build_env(c)
        mounts = self.mount_map(c)
        argv = [self.rewrite(expand(a, env), mounts) for a in (c.get("command") or []) + (c.get("args") or [])]
        if not argv:
            return None, "no command: the local node agent has no image entrypoints; set command"
        exe = shutil.which(argv[0], path=env["PATH"]) if "/" not in argv[0] else argv[0]
        if exe is None:
            return None, f'exec: "{argv[0]}": executable file not found in $PATH'
        cwd = Path(self.rewrite(c.get("workingDir") or str(self.dir / "home"), mounts))
        cwd.mkdir(parents=True, exist_ok=True)
        Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
        term = self.term_path(c)
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_bytes(b"")
        logp = self.log_path(c["name"])
        logp.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(logp, "ab")  # noqa: SIM115 - closed when the process ends
        try:
            proc = subprocess.Popen(
                [exe, *argv[1:]],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            log_file.close()
            return None, str(e)
        pids = self.dir / "pids"
        pids.mkdir(parents=True, exist_ok=True)
        (pids / f"{c['name']}.pgid").write_text(str(proc.pid))
        log.info("pod %s/%s: started container %s pid %d", self.namespace, self.name, c["name"], proc.pid)
        return Running(proc=proc, started_at=now(), log_file=log_file), None

    def terminated(self, c: Obj, run: Running | None, code: int, reason: str | None, message: str = "") -> Obj:
        if not message:
            try:
                message = self.term_path(c).read_bytes()[:MAX_TERMINATION_MESSAGE].decode("utf-8", "replace")
            except OSError:
                message = ""
        if not message.strip() and code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = read_tail(self.log_path(c["name"]), FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES)
        state: Obj = {
            "exitCode": code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "startedAt": run.started_at if run else now(),
            "finishedAt": now(),
        }
        if message:
            state["message"] = message
        if run:
            state["containerID"] = f"local://{self.uid}/{c['name']}/{run.proc.pid}"
        return {"terminated": state}

    def kill_all(self, sig: signal.Signals) -> None:
        for run in list(self.procs.values()):
            if run.proc.poll() is None:
                kill_group(run.proc.pid, sig)

    def memory_limit(self, c: Obj) -> int | None:
        limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
        return int(parse_quantity(limit)) if limit else None

    def stop_processes(self) -> None:
        """SIGTERM every process group, SIGKILL after the grace period."""
        self.kill_all(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        while time.monotonic() < deadline and any(r.proc.poll() is None for r in self.procs.values()):
            time.sleep(0.1)
        self.kill_all(signal.SIGKILL)
        for run in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.proc.wait(timeout=5)
            # Grandchildren that left the group's leader behind.
            for pid in process_group_members(run.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # -- lifecycle ----------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.lifecycle()
        except Exception as e:
            log.exception("pod %s/%s: agent error", self.namespace, self.name)
            self.kill_all(signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.patch_status("Failed", "NodeAgentError", f"local node agent: {e}")
        finally:
            for run in self.procs.values():
                with contextlib.suppress(Exception):
                    run.log_file.close()
            if self.stop.is_set() and self.finish_deletion:
                self.agent.finish_deletion(self.pod)
            self.agent.forget(self.uid)

    def wait_images(self) -> bool:
        """Containers whose image cannot be pulled stay Waiting until the pod goes away."""
        bad = [
            c
            for c in (self.spec.get("initContainers") or []) + self.spec["containers"]
            if image_never_pulls(c["image"])
        ]
        if not bad:
            return True
        attempt = 0
        while not self.stop.is_set():
            for reason, pause in (("ErrImagePull", 1.0), ("ImagePullBackOff", min(10.0 * 2**attempt, 60.0))):
                for c in bad:
                    msg = (
                        f'Failed to pull image "{c["image"]}": registry host ends in .invalid '
                        "(local node agent: such images never pull)"
                        if reason == "ErrImagePull"
                        else f'Back-off pulling image "{c["image"]}"'
                    )
                    waiting = {"waiting": {"reason": reason, "message": msg}}
                    target = self.init_statuses if c in (self.spec.get("initContainers") or []) else self.statuses
                    target[c["name"]] = self.container_status(c, waiting)
                for c in self.spec["containers"]:
                    self.statuses.setdefault(
                        c["name"], self.container_status(c, {"waiting": {"reason": "PodInitializing"}})
                    )
                self.patch_status("Pending")
                if self.stop.wait(pause):
                    break
            attempt += 1
        return False

    def deadline_passed(self) -> bool:
        ads = self.spec.get("activeDeadlineSeconds")
        return ads is not None and time.time() - parse_time(self.start_time) > float(ads)

    def lifecycle(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        containers = self.spec["containers"]
        policy = self.spec.get("restartPolicy", "Always")
        if list(self.dir.glob("pids/*.pgid")):
            # Started by an earlier run of the agent: its processes cannot be adopted, so they are killed.
            # restartPolicy Never -> the pod fails; otherwise the containers restart (restartCount + 1).
            cleanup_stale_dir(self.dir)
            msg = "the local node agent restarted; it cannot adopt running processes"
            if policy == "Never":
                for c in containers:
                    self.statuses[c["name"]] = self.container_status(c, self.terminated(c, None, 137, "Error", msg))
                self.patch_status("Failed", "NodeAgentRestarted", msg)
                return
            for c in containers:
                self.restarts[c["name"]] = self.restarts.get(c["name"], 0) + 1
        for c in containers:
            self.statuses[c["name"]] = self.container_status(c, {"waiting": {"reason": "ContainerCreating"}})
        self.prepare_volumes()
        self.patch_status("Pending")
        if not self.wait_images():
            self.stop_processes()
            return

        # Init containers: one after the other, each must succeed.
        for c in self.spec.get("initContainers") or []:
            while True:
                code, reason, message = self.run_one(c, init=True)
                if self.stop.is_set():
                    return
                if code == 0:
                    break
                if policy == "Never" or reason == "DeadlineExceeded":
                    self.fail_rest(c, reason, message)
                    return
                self.restarts[c["name"]] = self.restarts.get(c["name"], 0) + 1
                if self.backoff(c, init=True):
                    return

        # Main containers: all at once.
        exited: dict[str, int] = {}
        backoff_until: dict[str, float] = {}
        for c in containers:
            self.launch(c)
        self.patch_status("Running")
        while True:
            if self.stop.wait(POLL_SECONDS):
                self.stop_processes()
                self.record_killed(containers, exited)
                if self.finish_deletion:
                    codes = [exited.get(c["name"], 137) for c in containers]
                    self.patch_status("Succeeded" if all(x == 0 for x in codes) else "Failed")
                return
            if self.deadline_passed():
                self.stop_grace = 0
                self.stop_processes()
                self.record_killed(containers, exited)
                self.patch_status(
                    "Failed",
                    "DeadlineExceeded",
                    "Pod was active on the node longer than the specified deadline",
                )
                return
            changed = False
            for c in containers:
                name = c["name"]
                run = self.procs.get(name)
                if name in backoff_until:
                    if time.monotonic() >= backoff_until[name]:
                        del backoff_until[name]
                        self.launch(c)
                        changed = True
                    continue
                if name in exited or run is None:
                    continue
                polled = run.proc.poll()
                reason = None
                if polled is not None:
                    code = polled
                else:
                    limit = self.memory_limit(c)
                    if limit and rss_bytes(process_group_members(run.proc.pid)) > limit:
                        log.info("pod %s/%s: container %s over its memory limit", self.namespace, self.name, name)
                        kill_group(run.proc.pid, signal.SIGKILL)
                        run.proc.wait()
                        code, reason = OOM_EXIT_CODE, "OOMKilled"
                    else:
                        continue
                # The group leader exited: the container is over; reap what is left of its group.
                for pid in process_group_members(run.proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                code = 128 - code if code < 0 else code  # killed by signal N -> 128+N
                if run.error is not None:
                    reason = "StartError"
                term = self.terminated(c, run, code, reason, run.error or "")
                run.log_file.close()
                changed = True
                restart = policy == "Always" or (policy == "OnFailure" and code != 0)
                if restart:
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                    delay = min(10.0 * 2 ** (self.restarts[name] - 1), 300.0) if self.restarts[name] > 1 else 1.0
                    self.statuses[name] = self.container_status(
                        c,
                        {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {delay:.0f}s"}},
                        last=term,
                    )
                    backoff_until[name] = time.monotonic() + delay
                else:
                    exited[name] = code
                    self.statuses[name] = self.container_status(c, term)
            if len(exited) == len(containers):
                phase = "Succeeded" if all(code == 0 for code in exited.values()) else "Failed"
                self.patch_status(phase)
                log.info("pod %s/%s: %s", self.namespace, self.name, phase)
                return
            if changed:
                self.patch_status("Running")

    def launch(self, c: Obj) -> None:
        name = c["name"]
        last = self.statuses.get(name, {}).get("lastState") or {}
        try:
            run, error = self.start(c)
        except Exception as e:  # a broken env reference and the like
            run, error = None, str(e)
        if run is None:
            self.statuses[name] = self.container_status(
                c,
                self.terminated(c, None, START_ERROR_EXIT_CODE, "StartError", error or "start failed"),
                last=last,
            )
            # A container that cannot start is treated like an exited one: kill nothing, wait for policy.
            self.procs[name] = Running(
                proc=_FailedProc(START_ERROR_EXIT_CODE), started_at=now(), log_file=_Null(), error=error
            )
            return
        self.procs[name] = run
        self.statuses[name] = self.container_status(
            c, {"running": {"startedAt": run.started_at}}, ready=True, last=last
        )

    def run_one(self, c: Obj, init: bool) -> tuple[int, str | None, str]:
        """Run an init container to completion."""
        self.launch(c)
        self.init_statuses[c["name"]] = self.statuses.pop(c["name"])
        self.patch_status("Pending")
        run = self.procs[c["name"]]
        while run.proc.poll() is None:
            if self.stop.wait(POLL_SECONDS):
                self.stop_processes()
                return 137, "Error", ""
            if self.deadline_passed():
                self.stop_grace = 0
                self.stop_processes()
                self.patch_status(
                    "Failed",
                    "DeadlineExceeded",
                    "Pod was active on the node longer than the specified deadline",
                )
                return 137, "DeadlineExceeded", ""
        code = run.proc.returncode
        code = 128 - code if code < 0 else code
        self.init_statuses[c["name"]] = self.container_status(c, self.terminated(c, run, code, None))
        self.patch_status("Pending")
        return code, None, ""

    def fail_rest(self, c: Obj, reason: str | None, message: str) -> None:
        if reason != "DeadlineExceeded":
            self.patch_status("Failed")

    def backoff(self, c: Obj, init: bool) -> bool:
        delay = min(10.0 * 2 ** (self.restarts[c["name"]] - 1), 300.0) if self.restarts[c["name"]] > 1 else 1.0
        return self.stop.wait(delay)

    def record_killed(self, containers: list[Obj], exited: dict[str, int]) -> None:
        for c in containers:
            run = self.procs.get(c["name"])
            if c["name"] in exited or run is None:
                continue
            code = run.proc.poll()
            code = 137 if code is None else (128 - code if code < 0 else code)
            self.statuses[c["name"]] = self.container_status(c, self.terminated(c, run, code, None))


class _FailedProc:
    """Stands in for a process that never started (its exit code is the start error's)."""

    def __init__(self, code: int) -> None:
        self.returncode = code
        self.pid = -1

    def poll(self) -> int:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode


class _Null:
    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------
# kubelet-style log endpoint for `kubectl logs`


def serve_logs(agent: Agent, port: int, cert: str, key: str) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("logs: " + format, *args)

        def do_GET(self) -> None:
            url = urllib.parse.urlparse(self.path)
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                self.send_error(404, "only /containerLogs/{namespace}/{pod}/{container} is served")
                return
            query = urllib.parse.parse_qs(url.query)
            path, worker = agent.find_log(parts[1], parts[2], parts[3])
            if path is None or not path.exists():
                self.send_error(404, f"no logs for container {parts[3]} of pod {parts[1]}/{parts[2]}")
                return
            data = path.read_bytes()
            if "tailLines" in query:
                n = int(query["tailLines"][0])
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-n:]) if n > 0 else b""
            if "limitBytes" in query:
                data = data[: int(query["limitBytes"][0])]
            follow = query.get("follow", ["false"])[0] == "true"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            if not follow:
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.chunk(data)
            pos = path.stat().st_size
            try:
                while True:
                    run = worker.procs.get(parts[3]) if worker else None
                    alive = run is not None and run.proc.poll() is None
                    size = path.stat().st_size
                    if size > pos:
                        with open(path, "rb") as f:
                            f.seek(pos)
                            self.chunk(f.read(size - pos))
                        pos = size
                    elif not alive:
                        break
                    time.sleep(0.3)
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

        def chunk(self, data: bytes) -> None:
            if data:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="logs", daemon=True).start()
    log.info("serving container logs on https://127.0.0.1:%d", port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(os.environ.get("KUBETRAIN_RUN_DIR", Path.home() / ".cache/kubetrain/run/dev-cluster")),
    )
    parser.add_argument(
        "--node",
        action="append",
        help="node spec name[,cpu=4][,memory=16Gi][,pods=110][,gpu=N][,label=k=v][,taint=k=v:Effect] "
        "(repeatable; default: env KUBETRAIN_AGENT_NODES, ';'-separated, else two default nodes)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("KUBETRAIN_AGENT_PORT", "10250")))
    parser.add_argument("--tls-cert", default=os.environ.get("KUBETRAIN_AGENT_TLS_CERT"))
    parser.add_argument("--tls-key", default=os.environ.get("KUBETRAIN_AGENT_TLS_KEY"))
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(message)s",
    )
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.kubeconfig:
        parser.error("--kubeconfig or KUBECONFIG is required")
    specs = args.node or [s for s in os.environ.get("KUBETRAIN_AGENT_NODES", "").split(";") if s.strip()]
    nodes = [NodeConfig.parse(s) for s in (specs or DEFAULT_NODES)]
    agent = Agent(args.kubeconfig, args.run_dir, nodes, args.port)

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping the agent and killing its pods' processes", signum)
        agent.shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.tls_cert and args.tls_key:
        serve_logs(agent, args.port, args.tls_cert, args.tls_key)
    agent.run()


if __name__ == "__main__":
    main()
