"""Resilience of the operator against a misbehaving control plane, on a PRIVATE dev cluster.

The module starts its own cluster (``hack/dev-cluster up`` with a fresh ``KUBETRAIN_RUN_DIR``), because
it kills, restarts and stalls the API server, which must never happen to the shared one. Teardown always
runs ``hack/dev-cluster reset`` for that run dir (pods, mounts, bridge, network slot) and removes it.

* The API server is restarted by hand (SIGKILL, then the SAME command line again), as a crashed API
  server would be; the kubelets and their running trainer pods carry on meanwhile.
* A silent watch is modelled by a TCP proxy between operator and API server that stops forwarding on
  every open connection (sockets stay open, no bytes, no FIN/RST). SIGSTOP of the API server is not an
  honest model: after SIGCONT the very same connections carry on, so a test would pass without any
  timeout at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEV_CLUSTER, REPO, Cluster, _parse_up_output

from .conftest import Operator, Workspace, iris_run, prepare_workspace
from .crds import install_crds

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

#: Watch timeouts of the operator in the stall test (seconds): the server ends each watch after
#: SERVER_TIMEOUT, the client abandons it after CLIENT_TIMEOUT.
SERVER_TIMEOUT = 10
CLIENT_TIMEOUT = 12
#: A new run must be noticed within this many seconds after the API server is back.
NOTICE_BOUND = 60.0
#: Once the API shows a Job Complete after an outage, the run must be Succeeded within this many seconds.
OPERATOR_BOUND = 10.0


# ---- the private control plane -----------------------------------------------------------------------------


class PrivateCluster(Cluster):
    """tests.conftest.Cluster plus control of the API server process of its run dir."""

    _restarted: list[subprocess.Popen[bytes]]

    @property
    def pids(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "pids"

    def pid(self, component: str) -> int:
        return int((self.pids / f"{component}.pid").read_text().strip())

    def ready(self) -> bool:
        proc = self.kubectl("get", "--raw", "/readyz", "--request-timeout=2s", check=False, timeout=10)
        return proc.returncode == 0 and proc.stdout.strip() == "ok"

    def kill_apiserver(self) -> list[str]:
        """SIGKILL kube-apiserver (its own process group, as hack/dev-cluster launches it); returns its
        command line for ``start_apiserver``."""
        pid = self.pid("kube-apiserver")
        cmdline = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        assert cmdline and cmdline[0].endswith("kube-apiserver"), cmdline
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "kube-apiserver survived SIGKILL"
        return cmdline

    def start_apiserver(self, cmdline: list[str], timeout: float = 90) -> float:
        """Launch the API server again like hack/dev-cluster does (setsid, same log, pid file); returns
        the seconds until /readyz."""
        assert self.run_dir is not None
        t0 = time.monotonic()
        with (self.run_dir / "logs" / "kube-apiserver.log").open("ab") as log:
            proc = subprocess.Popen(
                cmdline, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._restarted.append(proc)
        (self.pids / "kube-apiserver.pid").write_text(f"{proc.pid}\n")
        deadline = t0 + timeout
        while not self.ready():
            assert proc.poll() is None, f"restarted kube-apiserver exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"kube-apiserver not ready {timeout}s after restart"
            time.sleep(0.3)
        return time.monotonic() - t0

    def etcd_url(self) -> str:
        """The client URL of this cluster's etcd (plain HTTP on loopback, from the API server's flags)."""
        pid = self.pid("kube-apiserver")
        for arg in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"):
            if arg.startswith("--etcd-servers="):
                return arg.split("=", 1)[1].split(",")[0]
        raise AssertionError("kube-apiserver has no --etcd-servers flag")

    def etcd(self, url: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call of etcd's v3 JSON gateway at ``url`` (``/v3/<method>``), e.g. ``kv/put`` or ``kv/compaction``."""
        import urllib.request

        req = urllib.request.Request(
            f"{url}/v3/{method}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as resp:
            out: dict[str, Any] = json.loads(resp.read() or b"{}")
        return out

    def api_address(self) -> tuple[str, int]:
        text = Path(self.kubeconfig).read_text()
        match = re.search(r"server: https://([0-9.]+):(\d+)", text)
        assert match, "no server in the admin kubeconfig"
        return match.group(1), int(match.group(2))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[PrivateCluster]:
    run_dir = Path(tempfile.mkdtemp(prefix="kubetrain-resilience-"))
    env = dict(os.environ)
    env["KUBETRAIN_RUN_DIR"] = str(run_dir)
    env["KUBETRAIN_GPU_NODE"] = ""  # one node (kubelet + containerd) is enough here
    env.pop("KUBECONFIG", None)
    cluster: PrivateCluster | None = None
    try:
        t0 = time.monotonic()
        proc = subprocess.run([str(DEV_CLUSTER), "up"], env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"private hack/dev-cluster up failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
        kubeconfig, bin_dir = _parse_up_output(proc.stdout)
        assert Path(kubeconfig).resolve().is_relative_to(run_dir.resolve()), kubeconfig
        print(f"private cluster up in {time.monotonic() - t0:.1f}s ({run_dir})")
        cenv = dict(env)
        if bin_dir:
            cenv["PATH"] = bin_dir + os.pathsep + cenv.get("PATH", "")
        cenv["KUBECONFIG"] = kubeconfig
        cluster = PrivateCluster(kubeconfig=kubeconfig, run_dir=run_dir, external=False, env=cenv)
        cluster._restarted = []
        install_crds(cluster.kubectl)
        yield cluster
    finally:
        # Always: down for THIS run dir only (the env carries KUBETRAIN_RUN_DIR), then remove it.
        if cluster is not None:
            for p in cluster._restarted:  # a stopped (SIGSTOP) process would ignore SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGCONT)
        subprocess.run([str(DEV_CLUSTER), "reset"], env=env, capture_output=True, text=True, timeout=300)
        if cluster is not None:
            for p in cluster._restarted:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def ws(private_cluster: PrivateCluster) -> Iterator[Workspace]:
    """A fresh namespace of the private cluster with Bound claims and iris.csv."""
    cluster = private_cluster
    assert cluster.ready(), "the private API server is not ready at the start of the test"
    name = f"r-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"no default service account in {name} after 30s"
        time.sleep(0.3)
    workspace = prepare_workspace(cluster, name)
    yield workspace


@pytest.fixture
def op(ws: Workspace, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Operator]:
    """The operator for ``ws`` (not started); its log is printed when the test fails."""
    operator = Operator(ws.cluster, ws.namespace, tmp_path / "operator.log")
    yield operator
    operator.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        lines = [line for line in operator.log_text().splitlines() if "HTTP Request:" not in line]
        print(f"----- operator log ({operator.log_path}), last 200 lines -----")
        print("\n".join(lines[-200:]))


# ---- helpers --------------------------------------------------------------------------------------------------


def wait_for(what: str, predicate: Any, timeout: float, interval: float = 0.3) -> float:
    """Poll ``predicate`` until truthy; returns the seconds it took."""
    t0 = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - t0
        except AssertionError:
            pass
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)


def phase(ws: Workspace, name: str) -> str | None:
    return (ws.run(name).get("status") or {}).get("phase")


def noticed(ws: Workspace, name: str) -> bool:
    """The operator acted on the run: it has a status with a Job name."""
    return bool((ws.run(name).get("status") or {}).get("jobName"))


def catch_up(ws: Workspace, name: str, timeout: float = 150) -> dict[str, float]:
    """Seconds from now until the trainer pod shows Succeeded (kubelet), the Job Complete (Job
    controller) and the run finished (operator): tells whose latency it is."""
    t0 = time.monotonic()
    seen: dict[str, float] = {}
    while "run" not in seen:
        assert time.monotonic() - t0 < timeout, f"run {name} not finished after {timeout}s; seen {seen}"
        now = time.monotonic() - t0
        if "pod" not in seen and any((p.get("status") or {}).get("phase") == "Succeeded" for p in ws.pods(name)):
            seen["pod"] = now
        jobs = ws.jobs(name)
        if (
            "job" not in seen
            and jobs
            and any(
                c.get("type") == "Complete" and c.get("status") == "True"
                for c in (jobs[0].get("status") or {}).get("conditions") or []
            )
        ):
            seen["job"] = now
        if phase(ws, name) in ("Succeeded", "Failed"):
            seen["run"] = now
        time.sleep(0.2)
    seen.setdefault("pod", seen["run"])
    seen.setdefault("job", seen["run"])
    return seen


def assert_one_job_succeeded(ws: Workspace, name: str) -> dict[str, Any]:
    run = ws.run(name)
    st = run["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert st["primaryMetric"].startswith("accuracy=") and st.get("modelVersion"), st
    jobs = ws.jobs(name)
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    assert jobs[0]["metadata"]["name"] == st["jobName"]
    return run


TRACEBACK_LINE = re.compile(r"^(\s|Traceback|The above exception|During handling|[\w.]+(Error|Exception)\b|$)")


def log_records(text: str) -> list[str]:
    """The log records of the operator's plain log (traceback lines are not records)."""
    return [line for line in text.splitlines() if not TRACEBACK_LINE.match(line)]


# ---- a TCP proxy whose connections can be made to go silent -------------------------------------------------


class StallingProxy:
    """127.0.0.1:<port> → the API server's address, byte for byte (TLS passes through). ``stall()`` makes every
    connection open at that moment go silent for good: no bytes either way, but no FIN or RST either —
    a watch that hangs without being closed. New connections are forwarded normally."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.lock = threading.Lock()
        self.conns: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self.accepted = 0
        self.closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            stalled = threading.Event()
            with self.lock:
                self.conns.append((client, upstream, stalled))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream, stalled), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket, stalled: threading.Event) -> None:
        peers = {a: b, b: a}
        try:
            while not self.closing.is_set() and not stalled.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.2)
                if stalled.is_set():
                    return  # leave both sockets open and unread: silence
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    peers[s].sendall(data)
        except OSError:
            a.close()
            b.close()

    def stall(self) -> int:
        """Silence every open connection; returns how many there were."""
        with self.lock:
            live = [c for c in self.conns if c[0].fileno() != -1 and not c[2].is_set()]
            for _, _, stalled in live:
                stalled.set()
            return len(live)

    def close(self) -> None:
        self.closing.set()
        self.server.close()
        with self.lock:
            for a, b, _ in self.conns:
                a.close()
                b.close()

    def kubeconfig(self, admin: str, path: Path) -> Path:
        text = Path(admin).read_text()
        path.write_text(re.sub(r"server: https://[0-9.]+:\d+", f"server: https://127.0.0.1:{self.port}", text))
        return path


# ---- tests -----------------------------------------------------------------------------------------------------


def test_api_server_restart_resets_watches(ws: Workspace, op: Operator, private_cluster: PrivateCluster) -> None:
    """A killed and restarted API server (every watch reset, connections refused meanwhile): a run that
    was Running finishes with exactly one Job, and a NEW run is noticed and trained without restarting
    the operator."""
    cluster = private_cluster
    op.start()
    ws.apply(iris_run("before"))
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/before", "--timeout=90s")
    assert_one_job_succeeded(ws, "before")

    ws.apply(iris_run("during"))
    wait_for("run 'during' Running", lambda: phase(ws, "during") == "Running", timeout=60, interval=0.1)
    cmdline = cluster.kill_apiserver()
    t_kill = time.monotonic()
    time.sleep(10)  # the trainer finishes while the API server is down
    ready = cluster.start_apiserver(cmdline)
    t_back = time.monotonic()
    assert op.proc is not None and op.proc.poll() is None, "the operator died with the API server"

    during = catch_up(ws, "during")
    assert_one_job_succeeded(ws, "during")
    assert ws.run("during")["status"]["attempts"] == 1, "the trainer pod must not be re-run"
    # The operator's share: from the Job's Complete (visible in the API) to the run's Succeeded.
    assert during["run"] - during["job"] < OPERATOR_BOUND, during

    t_new = time.monotonic()
    ws.apply(iris_run("after"))
    notice_s = wait_for("run 'after' noticed", lambda: noticed(ws, "after"), NOTICE_BOUND, interval=0.1)
    done_s = wait_for("run 'after' finished", lambda: phase(ws, "after") in ("Succeeded", "Failed"), 90)
    assert_one_job_succeeded(ws, "after")
    assert op.starts == 1 and op.proc.poll() is None
    print(
        f"api server down {t_back - t_kill:.1f}s (ready {ready:.1f}s after relaunch); after it was back, 'during': "
        f"pod Succeeded {during['pod']:.1f}s, Job Complete {during['job']:.1f}s, run Succeeded {during['run']:.1f}s;"
        f" new run noticed {notice_s:.1f}s after apply "
        f"({t_new - t_back:.1f}s after the API server was back), Succeeded {notice_s + done_s:.1f}s after apply"
    )


def test_silent_watch_recovers_within_client_timeout(
    ws: Workspace, op: Operator, private_cluster: PrivateCluster, tmp_path: Path
) -> None:
    """Every connection of the operator goes silent (not closed): the watch client timeout ends the
    stalled watches, and a run created afterwards is noticed and trained."""
    cluster = private_cluster
    proxy = StallingProxy(cluster.api_address())
    try:
        kubeconfig = proxy.kubeconfig(cluster.kubeconfig, tmp_path / "via-proxy.kubeconfig")
        op.start(
            KUBECONFIG=str(kubeconfig),
            KUBETRAIN_WATCH_SERVER_TIMEOUT=str(SERVER_TIMEOUT),
            KUBETRAIN_WATCH_CLIENT_TIMEOUT=str(CLIENT_TIMEOUT),
        )
        ws.apply(iris_run("before"))
        ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/before", "--timeout=90s")
        time.sleep(1)
        stalled = proxy.stall()
        accepted = proxy.accepted
        assert stalled >= 3, f"expected the operator's watch connections to be open, found {stalled}"
        t0 = time.monotonic()
        ws.apply(iris_run("after"))  # through the admin kubeconfig, not the proxy
        notice_s = wait_for("run 'after' noticed", lambda: noticed(ws, "after"), 60, interval=0.1)
        done_s = wait_for("run 'after' finished", lambda: phase(ws, "after") in ("Succeeded", "Failed"), 90)
        assert_one_job_succeeded(ws, "after")
        assert proxy.accepted > accepted, "the operator opened no new connection after the stall"
        # Bound: the client timeout ends the stalled watches; reconciles that went out on a stalled pooled
        # connection fail after lightkube's 10 s request timeout and are retried with backoff.
        assert notice_s < CLIENT_TIMEOUT + 10 + 8, f"noticed only after {notice_s:.1f}s"
        print(
            f"{stalled} connections silenced; new run noticed {notice_s:.1f}s after apply (client timeout "
            f"{CLIENT_TIMEOUT}s), Succeeded after {notice_s + done_s:.1f}s; {time.monotonic() - t0:.1f}s total"
        )
    finally:
        proxy.close()


def test_no_retry_storm_while_api_server_is_down(ws: Workspace, op: Operator, private_cluster: PrivateCluster) -> None:
    """10 s without an API server, with runs in progress: few log records per second, few failed
    reconciles (exponential backoff), and the operator works afterwards."""
    cluster = private_cluster
    op.start()
    # Runs that keep the operator busy: one waiting for an image that never pulls (re-checked against its
    # start-up deadline), one training.
    ws.apply(iris_run("stuck", image="registry.invalid/kubetrain/trainer:0.0.0", startupDeadlineSeconds=600))
    ws.apply(iris_run("busy"))
    wait_for("runs in progress", lambda: noticed(ws, "stuck") and phase(ws, "busy") == "Running", 60, 0.1)
    errors0 = op.metric("kubetrain_reconcile_total", result="error")
    offset = len(op.log_text())
    cmdline = cluster.kill_apiserver()
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < 10:
        time.sleep(1)
        samples.append(len(log_records(op.log_text()[offset:])))
    errors = op.metric("kubetrain_reconcile_total", result="error") - errors0
    outage_log = op.log_text()[offset:]
    cluster.start_apiserver(cmdline)
    records = log_records(outage_log)
    per_second = [b - a for a, b in zip([0, *samples], samples, strict=False)]
    print(
        f"10 s outage: {len(records)} log records ({len(outage_log.splitlines())} lines), per second "
        f"{per_second}, {errors:.0f} failed reconciles"
    )
    print("\n".join(r[:160] for r in records[:40]))
    # 6 watch streams retried with backoff (1, 2, 3, 5, 5 s) and 2 runs reconciled with backoff (2, 4, 8 s):
    # a few dozen records; a tight loop would log hundreds.
    # The first second holds one burst: every open watch stream and in-flight request fails at once (two or
    # three records each). After that, backoff must keep it quiet; a tight loop would log hundreds/s.
    assert per_second[0] <= 40, f"log storm at the outage: {per_second} records/s"
    assert max(per_second[1:]) <= 12, f"log storm: {per_second} records/s"
    assert len(records) <= 60, f"{len(records)} log records in a 10 s outage"
    # Backoff 2, 4, 8, 16 s gives each run about four failures in 10 s, plus the odd early re-check (a
    # progress/deadline requeue); a loop without backoff would fail dozens of times per run.
    assert errors <= 16, f"{errors} failed reconciles in a 10 s outage (2 runs, backoff 2, 4, 8 s)"
    # and afterwards: the training run finishes, a new run is trained
    busy = catch_up(ws, "busy")
    assert_one_job_succeeded(ws, "busy")
    print(
        f"after the API server was back, 'busy': pod Succeeded {busy['pod']:.1f}s, Job Complete {busy['job']:.1f}s,"
        f" run Succeeded {busy['run']:.1f}s"
    )
    assert busy["run"] - busy["job"] < OPERATOR_BOUND, busy
    ws.apply(iris_run("next"))
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/next", "--timeout=90s")
    assert phase(ws, "stuck") == "Pending"


def test_etcd_stopped_for_10s_mid_run_loses_nothing(
    ws: Workspace, op: Operator, private_cluster: PrivateCluster
) -> None:
    """etcd frozen (SIGSTOP) for 10 s while runs train: the API server answers with errors or stalls
    meanwhile; afterwards every run ends Succeeded with one Job and one version, and a new run trains."""
    cluster = private_cluster
    op.start()
    for name in ("e1", "e2", "e3"):
        ws.apply(iris_run(name))
    wait_for("a run Running", lambda: any(phase(ws, n) == "Running" for n in ("e1", "e2", "e3")), 90, 0.2)
    pid = cluster.pid("etcd")
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(10)
        assert op.proc is not None and op.proc.poll() is None, "the operator died while etcd was stopped"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for("the API server ready again", cluster.ready, 60)
    for name in ("e1", "e2", "e3"):
        catch_up(ws, name)
        assert_one_job_succeeded(ws, name)
    versions = sorted(v["spec"]["version"] for v in ws.get("mv")["items"])
    assert versions == [1, 2, 3], versions  # no gap, no duplicate
    ws.apply(iris_run("after-etcd"))
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/after-etcd", "--timeout=120s")
    assert op.starts == 1 and op.proc.poll() is None


def test_a_watch_resumed_after_an_etcd_compaction_gets_410_gone_and_relists(
    ws: Workspace, op: Operator, private_cluster: PrivateCluster
) -> None:
    """The operator's watches resume from a resourceVersion that etcd has compacted away: the API server
    answers 410 Gone ("too old resource version"), kopf lists afresh, and runs created afterwards train.

    How: the API server is stopped; etcd's revision is advanced with writes of its own and compacted at
    the newest one; the API server starts again (its watch cache begins after the compaction), so every
    watch the operator resumes from its last resourceVersion is too old."""
    cluster = private_cluster
    op.start(KUBETRAIN_WATCH_SERVER_TIMEOUT="5")
    ws.apply(iris_run("before-compaction"))
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/before-compaction", "--timeout=120s")
    old_rv = ws.run("before-compaction")["metadata"]["resourceVersion"]  # about where the operator's watches are
    etcd = cluster.etcd_url()  # read from the API server's flags while it runs
    cmdline = cluster.kill_apiserver()
    try:
        import base64

        key = base64.b64encode(b"/kubetrain-test/compaction").decode()
        for i in range(20):
            rev = cluster.etcd(etcd, "kv/put", {"key": key, "value": base64.b64encode(str(i).encode()).decode()})
        revision = int(rev["header"]["revision"])
        cluster.etcd(etcd, "kv/compaction", {"revision": str(revision), "physical": True})
        cluster.etcd(etcd, "kv/deleterange", {"key": key})
    finally:
        cluster.start_apiserver(cmdline)
    ws.apply(iris_run("after-compaction"))
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/after-compaction", "--timeout=150s")
    assert_one_job_succeeded(ws, "after-compaction")
    assert_one_job_succeeded(ws, "before-compaction")  # untouched: no second Job
    # What the resumed watches met: a watch from that resourceVersion is refused with 410 Gone now.
    path = f"/apis/kubetrain.io/v1alpha1/namespaces/{ws.namespace}/trainingruns"
    gone = cluster.kubectl(
        "get", "--raw", f"{path}?watch=true&resourceVersion={old_rv}&timeoutSeconds=2", check=False, timeout=30
    )
    assert '"code":410' in gone.stdout or "too old resource version" in gone.stdout + gone.stderr, gone
    print(f"watch from resourceVersion {old_rv} after the compaction at {revision}: {gone.stdout.strip()[:300]}")
    assert op.starts == 1 and op.proc is not None and op.proc.poll() is None  # kopf re-listed, no restart


def _loosened(crd: dict[str, Any]) -> dict[str, Any]:
    """``crd`` as an older, laxer schema would have been: spec is any object (no types, enums, CEL)."""
    out = json.loads(json.dumps(crd))
    for version in out["spec"]["versions"]:
        props = version["schema"]["openAPIV3Schema"]["properties"]
        props["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        version["schema"]["openAPIV3Schema"].pop("x-kubernetes-validations", None)
    return out


def test_objects_stored_under_an_older_schema_are_reported_not_crash_looped(
    ws: Workspace, op: Operator, private_cluster: PrivateCluster
) -> None:
    """Objects the current CRDs would refuse, stored while a laxer schema was installed (as after an
    upgrade): the operator marks each Failed with a ConfigInvalid condition and a Warning Event naming the
    field, keeps running (no restart), and a valid run beside them trains."""
    import yaml

    cluster = private_cluster
    crds = {
        kind: yaml.safe_load((REPO / "crds" / f"kubetrain.io_{kind}.yaml").read_text())
        for kind in ("trainingruns", "modelversions", "trainingschedules")
    }
    bad_run = iris_run("old-run")
    bad_run["spec"]["estimator"] = {"name": "no_such_estimator"}
    bad_schedule = {
        "apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingSchedule", "metadata": {"name": "old-schedule"},
        "spec": {"schedule": "@every 1s", "runTemplate": {"spec": iris_run("t")["spec"]}},
    }  # fmt: skip
    try:
        for crd in crds.values():
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(_loosened(crd)))
        time.sleep(2)  # the API server picks the new schema up
        ws.apply(bad_run)
        ws.apply(bad_schedule)
    finally:
        install_crds(cluster.kubectl)
    # The objects are stored; the current schema would refuse them now (a new one: an update that leaves the
    # invalid fields as they are passes, by CRD validation ratcheting):
    copy = {**bad_run, "metadata": {"name": "old-run-copy"}}
    refused = ws.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(copy), check=False)
    assert refused.returncode != 0 and "estimator" in refused.stderr, refused.stderr
    op.start()
    ws.apply(iris_run("new-run"))
    failed = ws.wait_phase("old-run", ("Failed", "Succeeded"), timeout=60)
    assert failed["status"]["failure"]["reason"] == "ConfigInvalid", failed["status"]
    assert "estimator" in failed["status"]["failure"]["message"], failed["status"]
    conds = {c["type"]: c for c in failed["status"]["conditions"]}
    assert conds["Succeeded"]["status"] == "False" and conds["Succeeded"]["reason"] == "ConfigInvalid", conds
    assert ws.jobs("old-run") == []

    def schedule_reported() -> dict[str, Any] | None:
        obj = ws.get("trainingschedule", "old-schedule")
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        return (
            obj
            if any(c.get("status") == "False" and "schedule" in c.get("message", "") for c in conds.values())
            else None
        )

    wait_for("old-schedule reported", schedule_reported, 60)
    events = ws.get("events", "--field-selector", "type=Warning")["items"]
    reported = {(e["involvedObject"]["kind"], e["involvedObject"]["name"]) for e in events}
    assert ("TrainingRun", "old-run") in reported and ("TrainingSchedule", "old-schedule") in reported, reported
    ws.kubectl("wait", "--for=condition=Succeeded", "trainingrun/new-run", "--timeout=120s")
    assert op.starts == 1 and op.proc is not None and op.proc.poll() is None
    assert "Traceback" not in op.log_text(), op.log_text()[-3000:]
