"""Shared pytest fixtures.

Cluster tests (``@pytest.mark.cluster``) get a real control plane through the session fixture ``cluster``:
``KUBETRAIN_TEST_KUBECONFIG`` selects an existing cluster (e.g. kind), otherwise ``hack/dev-cluster up``
starts the local one (built from source; real kubelets on containerd run the pods, so it needs root). The
fixture is lazy: unit tests never start anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
DEV_CLUSTER = REPO / "hack" / "dev-cluster"
T = TypeVar("T")


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, fn: Callable[[], T | None], timeout: float = 90, interval: float = 0.5) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def _cache_root() -> Path:
    return Path(os.environ.get("KUBETRAIN_CACHE", Path.home() / ".cache" / "kubetrain"))


#: The small image every dev-cluster node has (hack/dev-cluster builds it from Debian's busybox-static).
BUSYBOX_IMAGE = "localhost/kubetrain/busybox:1.35"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (hack/dev-cluster's cluster.env and images.env); {} when the file is missing."""
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


#: Helm flags for the chart installed by the tests: a longer Lease and renew deadline than the chart's (client-go's
#: 15 / 10 s). The dev cluster's pods share this machine's CPU scheduler with every host process of the suite
#: (three pytest workers, control planes, image builds): at a load average of 30 the pods' cgroup got so little
#: CPU that a freshly started leader made no renewal for 10 s and exited with 3 (CI, 2026-12-07: the demo and the
#: Prometheus install test, no renewal error logged, just starved). Leader election itself is tested with the
#: chart's timings in tests/unit/test_leader*.py and tests/operator/test_leader.py.
LOADED_MACHINE_LEASE = (
    "--set", "operator.leaderElection.leaseSeconds=60",
    "--set", "operator.leaderElection.renewDeadlineSeconds=45",
)  # fmt: skip

#: Kept-alive API clients by kubeconfig path (Cluster.get_training_run).
_CLIENTS: dict[str, Any] = {}


#: kubectl's names of the kinds the tests read → (API path prefix, resource, namespaced, kind).
_REST_KINDS: dict[str, tuple[str, str, bool, str]] = {}
for _names, _where in (
    (("pod", "pods", "po"), ("/api/v1", "pods", True, "Pod")),
    (("job", "jobs"), ("/apis/batch/v1", "jobs", True, "Job")),
    (("event", "events", "ev"), ("/api/v1", "events", True, "Event")),
    (
        ("pvc", "persistentvolumeclaim", "persistentvolumeclaims"),
        ("/api/v1", "persistentvolumeclaims", True, "PersistentVolumeClaim"),
    ),
    (("pv", "persistentvolume", "persistentvolumes"), ("/api/v1", "persistentvolumes", False, "PersistentVolume")),
    (("node", "nodes", "no"), ("/api/v1", "nodes", False, "Node")),
    (("service", "services", "svc"), ("/api/v1", "services", True, "Service")),
    (("serviceaccount", "serviceaccounts", "sa"), ("/api/v1", "serviceaccounts", True, "ServiceAccount")),
    (("lease", "leases"), ("/apis/coordination.k8s.io/v1", "leases", True, "Lease")),
    (("trainingrun", "trainingruns", "tr"), ("/apis/kubetrain.io/v1alpha1", "trainingruns", True, "TrainingRun")),
    (("modelversion", "modelversions", "mv"), ("/apis/kubetrain.io/v1alpha1", "modelversions", True, "ModelVersion")),
    (
        ("trainingschedule", "trainingschedules", "ts"),
        ("/apis/kubetrain.io/v1alpha1", "trainingschedules", True, "TrainingSchedule"),
    ),
):
    for _name in _names:
        _REST_KINDS[_name] = _where


def rest_get_path(args: tuple[str, ...] | list[str]) -> tuple[str, dict[str, str], str] | None:
    """(path, query, kind) of ``kubectl get ARGS`` when it is one kind of ``_REST_KINDS``, an optional name and
    only ``-n``/``-l``/``--field-selector``/``-A``; None for anything else (kubectl answers those)."""
    positional: list[str] = []
    params: dict[str, str] = {}
    namespace, everywhere = "default", False
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("-n", "--namespace", "-l", "--selector", "--field-selector"):
            if not rest:
                return None
            value = rest.pop(0)
            if arg in ("-n", "--namespace"):
                namespace = value
            else:
                params["labelSelector" if arg in ("-l", "--selector") else "fieldSelector"] = value
        elif arg in ("-A", "--all-namespaces"):
            everywhere = True
        elif arg.startswith("-"):
            return None
        else:
            positional.append(arg)
    if len(positional) == 1 and "/" in positional[0]:
        positional = positional[0].split("/", 1)
    if not 1 <= len(positional) <= 2 or positional[0] not in _REST_KINDS:
        return None
    prefix, resource, namespaced, kind = _REST_KINDS[positional[0]]
    if len(positional) == 2 and (params or everywhere):
        return None
    path = prefix
    if namespaced and not everywhere:
        path += f"/namespaces/{namespace}"
    path += f"/{resource}"
    if len(positional) == 2:
        path += f"/{positional[1]}"
    return path, params, kind


@dataclass
class Cluster:
    """A running cluster: its admin kubeconfig, an environment with our kubectl/helm, and helpers.

    For the local dev cluster, ``info`` is its ``cluster.env`` (NODE_IP: this machine's address on the pod
    bridge, the only host address pods can reach; CPU_NODE, GPU_NODE) and ``images`` its ``images.env``
    (TRAINER_IMAGE[_ID], OPERATOR_IMAGE[_ID], the project's images imported into every node)."""

    kubeconfig: str
    run_dir: Path | None
    external: bool
    env: dict[str, str] = field(default_factory=dict)

    @property
    def info(self) -> dict[str, str]:
        return read_env_file(self.run_dir / "cluster.env") if self.run_dir else {}

    @property
    def images(self) -> dict[str, str]:
        return read_env_file(self.run_dir / "images.env") if self.run_dir else {}

    @property
    def host_ip(self) -> str:
        """The address of this machine that pods can reach (servers for pods bind here)."""
        return self.info.get("NODE_IP", "127.0.0.1")

    def claim(self, namespace: str, name: str, storage: str = "1Gi") -> Path:
        """A PersistentVolumeClaim bound to a static ``local`` PersistentVolume whose folder is
        ``<run dir>/pvc/<namespace>/<name>`` on this machine (the kubelet applies ``fsGroup`` to local
        volumes, unlike hostPath). Returns the folder; the claim is Bound when this returns."""
        assert self.run_dir is not None, "claims on the local dev cluster only"
        path = claim_path(self.run_dir, namespace, name)
        path.mkdir(parents=True, exist_ok=True)
        self.create(local_volume(namespace, name, path, storage))
        self.create(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "volumeName": local_volume_name(namespace, name),
                    "resources": {"requests": {"storage": storage}},
                },
            },
        )
        wait_until(
            f"claim {namespace}/{name} Bound",
            lambda: self.get_json("pvc", name, "-n", namespace).get("status", {}).get("phase") == "Bound",
            60,
            0.3,
        )
        return path

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the cluster; output captured as text. ``check`` raises with stderr shown."""
        proc = subprocess.run(
            ["kubectl", *args], env=self.env, input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def get_json(self, *args: str) -> Any:
        """``kubectl get ARGS -o json``: for the kinds and flags of ``_REST_KINDS``/``rest_get_path`` over a
        kept-alive connection (a kubectl process per read cost ~70 ms of CPU plus a TLS handshake on the API
        server, and the waits poll every half second on a suite bound by two cores), else through kubectl."""
        where = rest_get_path(args)
        if where is None:
            return json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        path, params, kind = where
        body = self.api("GET", path, params=params, what=f"get {' '.join(args)}")
        if "items" not in body:
            body.get("metadata", {}).pop("managedFields", None)  # kubectl hides them
            return body
        items = body["items"]
        for item in items:  # as kubectl prints a list's items
            item.setdefault("apiVersion", body.get("apiVersion"))
            item.setdefault("kind", kind)
            item.get("metadata", {}).pop("managedFields", None)
        return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        what: str = "",
        ok: tuple[int, ...] = (),
    ) -> Any:
        """One API request over this cluster's kept-alive client (admin credentials): the decoded answer. An
        AssertionError, with the API's message, on an error status (except those in ``ok``: then None) or when
        the API cannot be reached twice (a restarted API server closes the kept connection: one retry)."""
        import httpx2
        from lightkube import Client, KubeConfig

        for attempt in (1, 2):
            client = _CLIENTS.get(self.kubeconfig)
            if client is None:
                client = _CLIENTS[self.kubeconfig] = Client(
                    config=KubeConfig.from_file(self.kubeconfig), timeout=httpx2.Timeout(30), trust_env=False
                )
            http = client._client._client  # lightkube's httpx client: base URL, TLS and credentials set
            try:
                resp = http.request(method, path, params=params, json=body)
            except Exception as exc:  # transport
                _CLIENTS.pop(self.kubeconfig, None)
                if attempt == 2:
                    raise AssertionError(f"{what or method + ' ' + path}: {exc!r}") from exc
                continue
            if resp.status_code >= 400:
                if resp.status_code in ok:
                    return None
                try:
                    message = resp.json().get("message") or resp.text
                except ValueError:
                    message = resp.text
                raise AssertionError(f"{what or method + ' ' + path} failed ({resp.status_code}): {message}")
            return resp.json()
        raise AssertionError("unreachable")

    def get_training_run(self, namespace: str, name: str) -> dict[str, Any]:
        """One TrainingRun, as ``kubectl get -o json`` prints it, over the kept-alive client (the waits poll it
        every half second). An AssertionError when it is missing or the API is down."""
        return dict(self.get_json("trainingrun", name, "-n", namespace))

    def create(self, manifest: dict[str, Any]) -> None:
        """POST a PersistentVolume or PersistentVolumeClaim over the kept-alive client; one that exists already
        is applied with kubectl instead (as ``apply`` would)."""
        kind, meta = manifest["kind"], manifest["metadata"]
        resource = {"PersistentVolume": "persistentvolumes", "PersistentVolumeClaim": "persistentvolumeclaims"}[kind]
        path = f"/api/v1/namespaces/{meta['namespace']}/{resource}" if "namespace" in meta else f"/api/v1/{resource}"
        if self.api("POST", path, manifest, what=f"create {kind} {meta['name']}", ok=(409,)) is None:
            self.apply(manifest)

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=text)


def claim_path(run_dir: Path, namespace: str, claim: str) -> Path:
    return run_dir / "pvc" / namespace / claim


def local_volume_name(namespace: str, claim: str) -> str:
    return f"{namespace}-{claim}"[:253]


def local_volume(namespace: str, claim: str, path: Path, storage: str = "1Gi") -> dict[str, Any]:
    """A static ``local`` PV for one claim (pre-bound by claimRef), usable on every dev-cluster node (they are
    all this machine). Retain: the folder stays for the test to read; ``reset`` removes it."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": local_volume_name(namespace, claim),
            "labels": {"kubetrain.io/claim-namespace": namespace[:63]},
        },
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "claimRef": {"namespace": namespace, "name": claim},
            "local": {"path": str(path)},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubetrain.io/dev-node", "operator": "In", "values": ["true"]}]}
                    ]
                }
            },
        },
    }


def _parse_up_output(stdout: str) -> tuple[str, str | None]:
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    last = lines[-1]
    assert last.startswith("export KUBECONFIG="), f"unexpected last line of dev-cluster up: {last!r}"
    path_line = next((line for line in lines if line.startswith("export PATH=")), None)
    bin_dir = None
    if path_line:
        bin_dir = path_line.removeprefix("export PATH=").strip('"').split(":")[0]
    return last.removeprefix("export KUBECONFIG="), bin_dir


def _run_dir() -> Path:
    return Path(os.environ.get("KUBETRAIN_RUN_DIR", _cache_root() / "run" / "dev-cluster"))


def _keep_cluster() -> bool:
    return os.environ.get("KUBETRAIN_KEEP_CLUSTER") == "1"


# ---- parallel runs (pytest-xdist, `make test`) -----------------------------------------------------------------
# Every worker is its own pytest session, so each has its own session-scoped ``cluster``: the first worker that
# needs it runs ``hack/dev-cluster up`` (which holds a lock, so the others wait for it and then find it running).
# No worker stops it: a worker marks that it used the cluster, and the controller runs ``down`` once every
# worker has finished (pytest_sessionfinish below). Operators never share namespaces: each test has its own.
SESSION_ENV = "KUBETRAIN_TEST_SESSION"


def _xdist_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def _used_marker(run_dir: Path) -> Path:
    return run_dir / f".pytest-used-{os.environ.get(SESSION_ENV, 'none')}"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    external = os.environ.get("KUBETRAIN_TEST_KUBECONFIG")
    env = dict(os.environ)
    run_dir: Path | None = None
    if external:
        kubeconfig = external
        bin_dir = os.environ.get("KUBETRAIN_TEST_BIN_DIR")
    else:
        run_dir = _run_dir()
        if _xdist_worker():
            run_dir.mkdir(parents=True, exist_ok=True)
            _used_marker(run_dir).touch()  # before `up`: a failed start is cleaned up as well
        proc = subprocess.run([str(DEV_CLUSTER), "up"], capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            pytest.fail(f"hack/dev-cluster up failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
        kubeconfig, bin_dir = _parse_up_output(proc.stdout)
    if bin_dir:
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["KUBECONFIG"] = kubeconfig
    yield Cluster(kubeconfig=kubeconfig, run_dir=run_dir, external=bool(external), env=env)
    if not external and not _keep_cluster() and not _xdist_worker():
        subprocess.run([str(DEV_CLUSTER), "down"], capture_output=True, text=True, timeout=300)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a plain run): workers inherit the environment
        os.environ.setdefault(SESSION_ENV, uuid.uuid4().hex)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The xdist controller stops the shared dev cluster after the last worker (see ``cluster``). Every process
    closes its kept-alive API clients (``Cluster.api``)."""
    for client in _CLIENTS.values():
        with contextlib.suppress(Exception):
            client.close()
    _CLIENTS.clear()
    if hasattr(session.config, "workerinput") or os.environ.get("KUBETRAIN_TEST_KUBECONFIG"):
        return
    marker = _used_marker(_run_dir())
    if marker.exists():
        if not _keep_cluster():
            subprocess.run([str(DEV_CLUSTER), "down"], capture_output=True, text=True, timeout=300)
        marker.unlink(missing_ok=True)


_last_cpu: list[float] = []


def _worker_cpu() -> float:
    """CPU seconds of this pytest process and of its children it has waited for (kubectl, local operators)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """``KUBETRAIN_TEST_TIMELINE=FILE`` appends one JSON line per test phase (worker, node id, phase, start, stop,
    and ``cpu``: the worker's own CPU seconds and its reaped children's since the previous phase ended): which
    worker ran what, and when, to find the run's critical path and its costliest tests (``hack/test-timeline``)."""
    path = os.environ.get("KUBETRAIN_TEST_TIMELINE")
    if not path or getattr(report, "node", None) is not None:  # the xdist controller's copy of a worker's report
        return
    cpu = _worker_cpu()
    spent = cpu - _last_cpu[0] if _last_cpu else 0.0
    _last_cpu[:] = [cpu]
    line = {
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        "nodeid": report.nodeid,
        "when": report.when,
        "start": report.start,
        "stop": report.stop,
        "outcome": report.outcome,
        "cpu": round(spent, 3),
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


#: Modules whose module-scoped fixtures hold something cluster-wide (Kueue started and stopped on the shared
#: cluster): all their tests go to one worker, one after the other.
WHOLE_MODULES = ("tests/operator/test_kueue.py",)
#: Tests that bring up a dev cluster of their own (a control plane, two kubelets, the project's images imported):
#: one group, so one worker runs them one after another while the others share the dev cluster. Side by side
#: (four workers, 2026-12-03) four private clusters at once overloaded 2 cores.
PRIVATE_CLUSTERS = (
    "tests/operator/test_resilience.py",
    "tests/operator/test_node_loss.py",
    "tests/operator/test_demo.py",
    "tests/operator/test_examples.py::test_all_namespaces_on_a_private_cluster",
)
#: Started first (the longest units), so that they do not end the run.
FIRST = (
    *PRIVATE_CLUSTERS,
    "tests/operator/test_kueue.py",
    "tests/operator/test_install.py",
    "tests/images/test_built_images.py",
    "tests/unit/test_security_scan.py",
    "tests/operator/test_plugin.py",
    # Long waits on the clock (cron ticks, a moto server): begun early they overlap the CPU-bound tests instead of
    # ending the run with the machine half idle (2026-12-08: the last 70 s of the run were these, at 70 % CPU).
    "tests/operator/test_trainingschedule.py",
    "tests/operator/test_schedule_gates.py",
    "tests/trainer/test_s3.py",
)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``): the unit of distribution is one cluster test (each has its own
    namespace and operator), a whole module of the others (their module fixtures are set up once), a whole
    module of WHOLE_MODULES, and all of PRIVATE_CLUSTERS together; the longest units first. A plain ``pytest``
    run keeps the collection order."""
    if not hasattr(config, "workerinput"):
        return
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if item.nodeid.startswith(PRIVATE_CLUSTERS):
            item.add_marker(pytest.mark.xdist_group("private-clusters"))
        elif module in WHOLE_MODULES or item.get_closest_marker("cluster") is None:
            item.add_marker(pytest.mark.xdist_group(module))

    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(FIRST) if item.nodeid.startswith(prefix)), len(FIRST))

    items.sort(key=rank)  # stable: the collection order within each rank


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards without waiting."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    # Pods are refused until the service-account controller has created "default" in the namespace.
    deadline = time.monotonic() + 30
    while cluster.api("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default", ok=(404,)) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"no default service account in namespace {name} after 30s")
        time.sleep(0.3)
    yield name
    # Deleted without waiting; an API that is down at the end fails nothing (as `kubectl delete` did, unchecked).
    with contextlib.suppress(AssertionError):
        cluster.api("DELETE", f"/api/v1/namespaces/{name}", ok=(404,))
    if not cluster.external:
        with contextlib.suppress(AssertionError):
            selector = f"kubetrain.io/claim-namespace={name}"
            cluster.api("DELETE", "/api/v1/persistentvolumes", params={"labelSelector": selector})
