# ruff: noqa: ASYNC109, ASYNC240  (a benchmark: bounded waits take timeouts; start-up reads files)
"""Operator load benchmark: create→Job latency and throughput of the operator against the raw API.

On the local dev cluster (``hack/dev-cluster up``; export KUBETRAIN_RUN_DIR to keep it private), with the
operator started as a local process from a checkout (``--repo``, default this one) through
``bench/operator_shim.py`` (kopf settings overrides + a counting client):

* loads — steady 10 runs/s (100 runs), 50 runs/s (250 runs) and a burst of 1,000 runs. TrainingRuns are
  created with ``suspend: true`` (no pod ever runs; only the operator's own work counts) and a watch on
  Jobs records when each run's Job appears. In the SAME benchmark run, before the operator's turn, the
  same Jobs (copied from one the operator made, names and labels changed) are created straight through
  the API at the same rate: the baseline, i.e. what this machine's API server can do at that moment.
  Reported per load: p50/p99/max create→Job latency, throughput (runs/s vs baseline Jobs/s), the
  operator's CPU seconds (/proc/<pid>/stat), RSS (VmRSS, VmHWM), and API requests per run by verb and
  resource — from the operator's own counting client (watches excluded), with the API server's
  ``apiserver_request_total`` deltas (whole server: operator, generator, controller-manager) beside it;
* memory — N TrainingRuns (suspended) and N ModelVersions present, then the operator started: RSS when
  it has settled (its CPU idle), then while runs churn;
* soak — runs created and deleted continuously, RSS sampled every 10 s, growth computed.

Each variant (``--variants``) is one operator process with kopf settings overrides (see VARIANTS); the
loads of all variants run in one invocation, each next to its own baseline. The load generator is an
aiohttp client (bounded concurrency), all traffic goes to 127.0.0.1, every wait is bounded in time.

    .venv/bin/python bench/operator_load.py --quick                 # a couple of minutes (make bench-quick)
    .venv/bin/python bench/operator_load.py                         # the full benchmark (make bench)
    .venv/bin/python bench/operator_load.py --repo /work/main --variants operator,tuned --soak-seconds 120
    .venv/bin/python bench/operator_load.py --profile               # py-spy record of each burst

Writes bench/reports/operator_load-<UTC date>.json/.md and operator_load-latest.json/.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import copy
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REPORTS = HERE / "reports"
SHIM = HERE / "operator_shim.py"
NS = "kubetrain-bench"
GROUP_VERSION = "kubetrain.io/v1alpha1"
TR_PATH = "/apis/kubetrain.io/v1alpha1/namespaces/{ns}/trainingruns"
MV_PATH = "/apis/kubetrain.io/v1alpha1/namespaces/{ns}/modelversions"
JOB_PATH = "/apis/batch/v1/namespaces/{ns}/jobs"
EVENT_PATH = "/api/v1/namespaces/{ns}/events"
BENCH_LABEL = "kubetrain.io/bench"
#: Requests of the load generator in flight at once (creates and deletes): enough that the API server,
#: not the generator, is the limit; small enough not to trip the server's max-requests-inflight (400).
CONCURRENCY = 64

#: Goals of issue 11, shown next to each figure.
GOALS = {
    "p99_10": ("create→Job p99 at 10 runs/s", "≤ 100 ms"),
    "p99_50": ("create→Job p99 at 50 runs/s", "≤ 250 ms"),
    "burst": ("burst throughput vs baseline", "≥ 80 %"),
    "rss": ("RSS with 5,000 runs + 5,000 versions", "≤ 200 MiB"),
    "soak": ("RSS growth over the soak", "< 5 %"),
    "writes": ("API writes per successful run", "≤ 6"),
    "reads": ("API reads per successful run (beyond watches)", "≤ 3"),
}

#: kopf settings overrides per variant (applied by operator_shim.py after the operator's startup handler).
#: "operator" is the operator exactly as configured in startup.py (reports before 2026-12-07 call it "v0.1").
VARIANTS: dict[str, dict[str, Any]] = {
    "operator": {},
    # kopf's default: no cap on concurrent per-object workers (each idles 5 s after its last event).
    "unlimited": {"queueing.worker_limit": None},
    # no cap, idle workers exit after 0.5 s: fewer parked tasks during a burst.
    "unlimited-idle0.5": {"queueing.worker_limit": None, "queueing.idle_timeout": 0.5},
    # the candidate: no cap, short idle, and no per-event "Handler ... succeeded" INFO line from kopf.
    "tuned": {
        "queueing.worker_limit": None,
        "queueing.idle_timeout": 0.5,
        "log:kopf.objects": "WARNING",
    },
    # a cap that still bounds memory: 200 workers x 0.5 s idle -> at most ~400 objects/s of worker churn.
    "limit200-idle0.5": {"queueing.worker_limit": 200, "queueing.idle_timeout": 0.5, "log:kopf.objects": "WARNING"},
}


@dataclass(frozen=True)
class Load:
    name: str
    count: int
    rate: float | None  # runs/s; None = burst (as fast as the generator's concurrency allows)


@dataclass(frozen=True)
class Sizes:
    loads: tuple[Load, ...]
    memory_runs: int
    memory_versions: int
    memory_namespaces: int
    churn_seconds: float
    soak_seconds: float
    settle_timeout: float
    load_timeout: float


FULL = Sizes(
    loads=(Load("steady-10/s", 100, 10.0), Load("steady-50/s", 250, 50.0), Load("burst-1000", 1000, None)),
    memory_runs=5000,
    memory_versions=5000,
    memory_namespaces=50,
    churn_seconds=60,
    soak_seconds=600,
    settle_timeout=900,
    load_timeout=600,
)
QUICK = Sizes(
    loads=(Load("steady-10/s", 30, 10.0), Load("steady-50/s", 100, 50.0), Load("burst-200", 200, None)),
    memory_runs=300,
    memory_versions=300,
    memory_namespaces=5,
    churn_seconds=20,
    soak_seconds=40,
    settle_timeout=180,
    load_timeout=240,
)


def log(msg: str) -> None:
    print(f"[bench {dt.datetime.now(dt.UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of values, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# ---- the API, through aiohttp ---------------------------------------------------------------------------


def is_local_address(host: str) -> bool:
    """Loopback, or an address of one of this machine's interfaces (the dev cluster's API server listens
    on its bridge address since it runs real nodes): a socket can bind to it only then."""
    if host in ("127.0.0.1", "localhost"):
        return True
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


#: how often one call honours a 429's Retry-After before the benchmark gives up
TOO_MANY_REQUESTS_RETRIES = 60


class Api:
    """A small async client for the admin kubeconfig (an API server on this machine only), JSON in and
    out."""

    def __init__(self, kubeconfig: str, tmp: Path) -> None:
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        ctx_name = cfg.get("current-context")
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        self.server = cluster["server"].rstrip("/")
        host = re.sub(r"^https?://", "", self.server).split(":")[0]
        if not is_local_address(host):
            raise SystemExit(f"the benchmark talks to an API server on this machine only, not {self.server}")
        self.ssl = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        cert, key = tmp / "client.crt", tmp / "client.key"
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        key.chmod(0o600)
        self.ssl.load_cert_chain(str(cert), str(key))
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        conn = aiohttp.TCPConnector(ssl=self.ssl, limit=CONCURRENCY + 16)
        self.session = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *_: Any) -> None:
        assert self.session is not None
        await self.session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        ok: tuple[int, ...] = (),
        timeout: float = 60,
    ) -> Any:
        assert self.session is not None
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        limit = aiohttp.ClientTimeout(total=timeout)
        for _ in range(TOO_MANY_REQUESTS_RETRIES):
            async with self.session.request(
                method, self.server + path, json=body, params=params, headers=headers, timeout=limit
            ) as resp:
                text = await resp.text()
                if resp.status == 429 and 429 not in ok:
                    # e.g. "storage is (re)initializing" just after a CRD is (re)created: the API server asks
                    # to come back in retryAfterSeconds; a fresh cluster must not fail the benchmark.
                    await asyncio.sleep(float(resp.headers.get("Retry-After") or 1))
                    continue
                if resp.status >= 400 and resp.status not in ok:
                    raise RuntimeError(f"{method} {path} -> {resp.status}: {text[:500]}")
                return json.loads(text) if text and resp.content_type == "application/json" else text
        raise RuntimeError(f"{method} {path} -> 429 {TOO_MANY_REQUESTS_RETRIES} times: {text[:500]}")

    async def list(self, path: str, **params: str) -> dict[str, Any]:
        return dict(await self.call("GET", path, params=params))

    async def count(self, path: str, **params: str) -> int:
        """How many objects a list returns (paged, so 10,000 objects are not one response)."""
        total, cont = 0, ""
        for _ in range(1000):
            page = await self.list(path, limit="500", **({"continue": cont} if cont else {}), **params)
            total += len(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue") or ""
            if not cont:
                break
        return total

    async def metrics(self) -> str:
        return str(await self.call("GET", "/metrics"))


async def bounded(coros: list[Any], limit: int = CONCURRENCY) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def wait_empty(api: Api, paths: list[tuple[str, dict[str, str]]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [await api.count(p, **q) for p, q in paths]
        if not any(counts):
            return True
        await asyncio.sleep(1)
    log(f"WARNING: objects still present after {timeout:.0f}s: {paths}")
    return False


# ---- machine and control-plane CPU ---------------------------------------------------------------------------

#: Processes of a loopback control plane (hack/dev-cluster runs them on this machine); read from /proc.
CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller")  # comm is cut at 15 characters


def cpu_sample() -> dict[str, float]:
    """Machine-wide busy and total CPU seconds (all cores, /proc/stat) and the control plane's own CPU seconds
    (kube-apiserver, etcd, kube-controller-manager, by process name; 0 when the cluster is not on this machine)."""
    clk = os.sysconf("SC_CLK_TCK")
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    busy = total - fields[3] - fields[4]
    control = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, rest = stat.read_text().split(") ", 1)
        except OSError:
            continue
        if comm.split("(", 1)[1] in CONTROL_PLANE:
            parts = rest.split()
            control += int(parts[11]) + int(parts[12])
    return {"busy": busy / clk, "total": total / clk, "control_plane": control / clk}


def cpu_use(before: Mapping[str, float], after: Mapping[str, float], wall: float) -> dict[str, float]:
    """Between two samples: the share of the machine's CPU that was busy, and the cores the control plane used."""
    total = after["total"] - before["total"]
    return {
        "machine_busy_share": round((after["busy"] - before["busy"]) / total, 3) if total > 0 else 0.0,
        "control_plane_cores": round((after["control_plane"] - before["control_plane"]) / max(wall, 1e-6), 2),
    }


# ---- apiserver_request_total ------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


_ENGINE_SERIES = {
    "kubetrain_reconcile_total": "passes",
    "kubetrain_reconcile_duration_seconds_sum": "pass_seconds",
    "kubetrain_reconcile_queue_wait_seconds_sum": "wait_seconds",
    "kubetrain_reconcile_queue_wait_seconds_count": "waits",
}


def engine_stats(before: Mapping[str, float], after: Mapping[str, float], runs: int) -> dict[str, Any]:
    """Passes per run, their mean time and the mean time a key waited for a worker, between two scrapes."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in _ENGINE_SERIES.values()}
    out: dict[str, Any] = {}
    if d["passes"] > 0:
        out["passes_per_run"] = round(d["passes"] / max(runs, 1), 2)
        out["pass_mean_ms"] = round(1000 * d["pass_seconds"] / d["passes"], 1)
    if d["waits"] > 0:
        out["queue_wait_mean_ms"] = round(1000 * d["wait_seconds"] / d["waits"], 1)
    return out


def parse_request_totals(text: str) -> dict[str, float]:
    """apiserver_request_total summed by "<verb> <resource>[/<subresource>]" (codes and scopes summed)."""
    out: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels")))
        key = f"{labels.get('verb', '').lower()} {labels.get('resource', '')}"
        if labels.get("subresource"):
            key += "/" + labels["subresource"]
        out[key] += float(m.group("value"))
    return dict(out)


def counter_delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] - before.get(k, 0) > 0}


WRITE_VERBS = ("create", "patch", "update", "delete", "deletecollection", "apply")
READ_VERBS = ("get", "list")


def per_run(requests: dict[str, float], runs: int) -> dict[str, Any]:
    """Requests per run: by verb/resource, and writes/reads totals (watches excluded, counted apart)."""
    if runs <= 0:
        return {}
    writes = sum(v for k, v in requests.items() if k.split(" ")[0] in WRITE_VERBS)
    reads = sum(v for k, v in requests.items() if k.split(" ")[0] in READ_VERBS)
    watches = sum(v for k, v in requests.items() if k.split(" ")[0] == "watch")
    return {
        "writes_per_run": round(writes / runs, 2),
        "reads_per_run": round(reads / runs, 2),
        "watch_requests": watches,
        "by_verb_resource_per_run": {
            k: round(v / runs, 3) for k, v in sorted(requests.items()) if k.split(" ")[0] != "watch"
        },
    }


# ---- the operator process ---------------------------------------------------------------------------------


def repo_python(repo: Path) -> str:
    venv = repo / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class Operator:
    """The operator under test: ``operator_shim.py`` with the checkout's Python, in its own session."""

    def __init__(self, repo: Path, kubeconfig: str, variant: str, log_dir: Path) -> None:
        self.repo, self.kubeconfig, self.variant = repo, kubeconfig, variant
        self.log_path = log_dir / f"operator-{variant}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stats_port = 0
        self.metrics_port = 0
        self.clk = os.sysconf("SC_CLK_TCK")

    def start(self, scope: list[str], extra_env: dict[str, str] | None = None) -> None:
        self.stats_port = free_port()
        self.metrics_port = free_port()
        env = dict(os.environ)
        env.update(
            KUBECONFIG=self.kubeconfig,
            KUBETRAIN_METRICS_PORT=str(self.metrics_port),
            KUBETRAIN_HEALTH_PORT=str(free_port()),
            KUBETRAIN_BENCH_TUNING=json.dumps(VARIANTS[self.variant]),
            KUBETRAIN_BENCH_STATS_PORT=str(self.stats_port),
            PYTHONUNBUFFERED="1",
            **(extra_env or {}),
        )
        with self.log_path.open("ab") as logf:
            logf.write(f"\n===== {self.variant} {scope} {VARIANTS[self.variant]} =====\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                [repo_python(self.repo), str(SHIM), *scope],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.repo),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.clk  # utime, stime (fields 14, 15)

    def memory_mib(self) -> dict[str, float]:
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
        return out

    async def requests(self) -> dict[str, float]:
        return dict((await self.stats())["requests"])

    async def stats(self) -> dict[str, Any]:
        for _ in range(50):
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
                    s.get(f"http://127.0.0.1:{self.stats_port}/") as r,
                ):
                    return dict(await r.json())
            except (TimeoutError, aiohttp.ClientError, OSError):
                if not self.alive():
                    rc = self.proc and self.proc.returncode
                    raise RuntimeError(f"operator exited ({rc}); see {self.log_path}") from None
                await asyncio.sleep(0.2)
        raise RuntimeError(f"operator stats endpoint not answering; see {self.log_path}")

    async def engine_totals(self) -> dict[str, float]:
        """The operator's own /metrics, summed over kinds: passes, their time, the time keys waited in the work
        queue (absent before the work queue: an older checkout))."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
                s.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r,
            ):
                text = await r.text()
        except (TimeoutError, aiohttp.ClientError, OSError):
            return {}
        out: dict[str, float] = collections.defaultdict(float)
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if name in _ENGINE_SERIES:
                out[_ENGINE_SERIES[name]] += float(rest.rsplit(" ", 1)[1])
        return dict(out)

    async def wait_ready(self, timeout: float = 60) -> None:
        """Until the stats endpoint answers (started by the last startup handler) and the watches run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                reqs = await self.requests()
                if sum(v for k, v in reqs.items() if k.startswith("watch ")) >= 2:
                    return
            await asyncio.sleep(0.3)
        raise RuntimeError(f"operator not ready after {timeout}s; see {self.log_path}")

    async def settle(self, timeout: float, idle_cpu: float = 0.03, quiet_windows: int = 3) -> float:
        """Wait until the operator's CPU use stays below ``idle_cpu`` s per 1 s window for ``quiet_windows``
        windows in a row (bounded by ``timeout``). Returns the seconds waited (== timeout: not settled)."""
        t0 = time.monotonic()
        quiet = 0
        last = self.cpu_seconds()
        while time.monotonic() - t0 < timeout:
            await asyncio.sleep(1)
            now = self.cpu_seconds()
            quiet = quiet + 1 if now - last < idle_cpu else 0
            last = now
            if quiet >= quiet_windows:
                return time.monotonic() - t0 - quiet_windows
        return timeout

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


# ---- manifests --------------------------------------------------------------------------------------------


def run_manifest(repo: Path, name: str, namespace: str, tag: str) -> dict[str, Any]:
    """The checkout's examples/iris-classification.yaml, suspended, with a bench label."""
    doc = yaml.safe_load((repo / "examples" / "iris-classification.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace, "labels": {BENCH_LABEL: tag}}
    doc["spec"]["suspend"] = True
    return dict(doc)


def baseline_job(template: dict[str, Any], name: str, namespace: str) -> dict[str, Any]:
    """A copy of a Job the operator made: same spec (suspended), new name, no owner, bench labels only,
    so the operator's label-selected Job watch never sees it."""
    job = copy.deepcopy(template)
    meta = job["metadata"]
    job["metadata"] = {"name": name, "namespace": namespace, "labels": {BENCH_LABEL: "baseline"}}
    if meta.get("annotations"):
        job["metadata"]["annotations"] = meta["annotations"]
    job.pop("status", None)
    spec = job["spec"]
    spec.pop("selector", None)
    spec.pop("manualSelector", None)
    tmeta = spec["template"].setdefault("metadata", {})
    tmeta["labels"] = {BENCH_LABEL: "baseline"}
    spec["suspend"] = True
    return dict(job)


def model_version_manifest(name: str, namespace: str, model: str, version: int) -> dict[str, Any]:
    """A hand-registered version with a fake (never read) artifact; its status is preset to Ready by the
    bench so the operator verifies nothing (a Pending one would get a verification Job and pod each)."""
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "ModelVersion",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubetrain.io/model": model, BENCH_LABEL: "mem"}},
        "spec": {
            "model": model,
            "version": version,
            "artifact": {"uri": f"pvc://kubetrain-models/{model}/{version}/model.joblib", "sha256": "0" * 64},
            "metrics": {"accuracy": 0.9},
        },
    }


READY_STATUS = {
    "status": {
        "phase": "Ready",
        "observedGeneration": 1,
        "conditions": [
            {
                "type": t,
                "status": "True",
                "reason": "Verified",
                "message": "preset by the benchmark",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            }
            for t in ("ArtifactVerified", "Ready")
        ],
    }
}


# ---- Job watch ----------------------------------------------------------------------------------------------


class JobWatch:
    """Records the first time each Job is seen (ADDED) in a namespace, by name, with its labels."""

    def __init__(self, api: Api, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.seen: dict[str, tuple[float, dict[str, str]]] = {}
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    async def start(self) -> None:
        first = await self.api.list(JOB_PATH.format(ns=self.namespace), limit="1")
        rv = first["metadata"]["resourceVersion"]
        self.task = asyncio.create_task(self._run(rv))

    async def _run(self, rv: str) -> None:
        assert self.api.session is not None
        path = self.api.server + JOB_PATH.format(ns=self.namespace)
        while True:
            params = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
            try:
                async with self.api.session.get(
                    path, params=params, timeout=aiohttp.ClientTimeout(total=None, sock_read=330)
                ) as resp:
                    async for raw in resp.content:
                        t = time.monotonic()
                        event = json.loads(raw)
                        obj = event.get("object") or {}
                        meta = obj.get("metadata") or {}
                        if event.get("type") == "ERROR":
                            raise RuntimeError(f"job watch error: {obj}")
                        rv = meta.get("resourceVersion") or rv
                        if event.get("type") == "ADDED" and meta.get("name") not in self.seen:
                            self.seen[meta["name"]] = (t, meta.get("labels") or {})
                            self.changed.set()
            except (TimeoutError, aiohttp.ClientError) as exc:
                log(f"job watch reconnecting: {exc!r}")
                await asyncio.sleep(0.5)

    def by_run(self) -> dict[str, float]:
        return {labels["kubetrain.io/run"]: t for t, labels in self.seen.values() if "kubetrain.io/run" in labels}

    async def wait_for(self, want: set[str], key: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            have = set(self.by_run()) if key == "run" else set(self.seen)
            if want <= have:
                return True
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=1)
        return False

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


# ---- one load: baseline, then the operator ------------------------------------------------------------------


async def paced_create(api: Api, path: str, manifests: list[dict[str, Any]], rate: float | None) -> dict[str, float]:
    """POST each manifest at ``rate`` per second (None: all at once, CONCURRENCY in flight); returns the
    monotonic send time per name."""
    sent: dict[str, float] = {}
    sem = asyncio.Semaphore(CONCURRENCY)
    t0 = time.monotonic()

    async def one(i: int, m: dict[str, Any]) -> None:
        if rate:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        async with sem:
            sent[m["metadata"]["name"]] = time.monotonic()
            # An overloaded API server answers 429/5xx (seen: 504 in a burst of 1,000 while other helpers
            # loaded the machine; also dropped connections): retried; a retried create that had gone through
            # is a 409, which is fine.
            for attempt in range(6):
                try:
                    await api.call("POST", path, m, ok=(409,) if attempt else ())
                    return
                except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                    transient = not isinstance(exc, RuntimeError) or re.search(r"-> (429|500|503|504):", str(exc))
                    if attempt == 5 or not transient:
                        raise
                    log(f"create retried after: {str(exc)[:120]}")
                    await asyncio.sleep(0.5 * 2**attempt)

    await asyncio.gather(*(one(i, m) for i, m in enumerate(manifests)))
    return sent


def latency_stats(sent: dict[str, float], seen: dict[str, float]) -> dict[str, Any]:
    lat = [(seen[n] - t) * 1000 for n, t in sent.items() if n in seen]
    if not lat:
        return {"done": 0, "of": len(sent)}
    first, last = min(sent.values()), max(seen[n] for n in sent if n in seen)
    span = max(last - first, 1e-6)
    return {
        "done": len(lat),
        "of": len(sent),
        "p50_ms": round(pct(lat, 0.5) or 0, 1),
        "p99_ms": round(pct(lat, 0.99) or 0, 1),
        "max_ms": round(max(lat), 1),
        "mean_ms": round(statistics.fmean(lat), 1),
        "throughput_per_s": round(len(lat) / span, 2),
        "span_s": round(span, 2),
    }


async def clean_namespace(api: Api, namespace: str, timeout: float) -> None:
    """Delete runs, Jobs (pods in the background) and events of the namespace and wait until they are gone."""
    background = {"propagationPolicy": "Background"}
    # A deletecollection of 1,000 Jobs on a loaded API server took over 60 s: allow 300 s, and carry on to
    # the bounded wait below if even that is not enough (the server keeps deleting).
    for path, params in (
        (TR_PATH, {"labelSelector": BENCH_LABEL}),
        (JOB_PATH, {}),  # the operator's Jobs carry its labels, the baseline's the bench label: all of them
        (EVENT_PATH, {}),
    ):
        try:
            # 504: the server gave up waiting, not deleting (it carries on): the bounded wait below covers it.
            await api.call("DELETE", path.format(ns=namespace), background, params=params, ok=(404, 504), timeout=300)
        except TimeoutError:
            log(f"deleting {path.format(ns=namespace)} timed out; waiting for the server to finish")
    await wait_empty(api, [(TR_PATH.format(ns=namespace), {}), (JOB_PATH.format(ns=namespace), {})], timeout)


async def run_load(
    api: Api, repo: Path, op: Operator, template: dict[str, Any], load: Load, sizes: Sizes, profile_dir: Path | None
) -> dict[str, Any]:
    tag = re.sub(r"[^a-z0-9]+", "", load.name.lower())
    result: dict[str, Any] = {"load": load.name, "count": load.count, "rate": load.rate}

    # Baseline: the same Jobs straight through the API, at the same pace, in the same namespace.
    watch = JobWatch(api, NS)
    await watch.start()
    try:
        jobs = [baseline_job(template, f"bl-{tag}-{i}", NS) for i in range(load.count)]
        m0 = parse_request_totals(await api.metrics())
        c0, t0 = cpu_sample(), time.monotonic()
        sent = await paced_create(api, JOB_PATH.format(ns=NS), jobs, load.rate)
        ok = await watch.wait_for(set(sent), "name", sizes.load_timeout)
        usage = cpu_use(c0, cpu_sample(), time.monotonic() - t0)
        seen = {n: t for n, (t, _) in watch.seen.items()}
        result["baseline"] = latency_stats(sent, seen) | {"complete": ok} | usage
        m1 = parse_request_totals(await api.metrics())
        result["baseline"]["apiserver_requests"] = counter_delta(m1, m0)
    finally:
        await watch.stop()
    await clean_namespace(api, NS, 180)
    await op.settle(30)

    # The operator: TrainingRuns at the same pace; their Jobs appear through the operator.
    watch = JobWatch(api, NS)
    await watch.start()
    spy: subprocess.Popen[bytes] | None = None
    try:
        runs = [run_manifest(repo, f"r-{tag}-{i}", NS, tag) for i in range(load.count)]
        cpu0, req0 = op.cpu_seconds(), await op.requests()
        e0 = await op.engine_totals()
        m0 = parse_request_totals(await api.metrics())
        if profile_dir is not None:
            spy = start_py_spy(op.pid, profile_dir / f"py-spy-{op.variant}-{tag}.txt")
        c0, t0 = cpu_sample(), time.monotonic()
        sent = await paced_create(api, TR_PATH.format(ns=NS), runs, load.rate)
        ok = await watch.wait_for(set(sent), "run", sizes.load_timeout)
        t_jobs = time.monotonic() - t0
        usage = cpu_use(c0, cpu_sample(), t_jobs)
        e1 = await op.engine_totals()
        result["operator"] = latency_stats(sent, watch.by_run()) | {"complete": ok} | usage
        result["operator"]["engine_until_all_jobs"] = engine_stats(e0, e1, load.count)
        cpu_jobs = op.cpu_seconds() - cpu0
        # Follow-up work (status writes, events, reconciles triggered by the Job's own events).
        settled = await op.settle(60)
        if spy is not None:
            stop_py_spy(spy)
            spy = None
            result["profile_wall_s"] = round(time.monotonic() - t0, 1)
        cpu1, req1 = op.cpu_seconds(), await op.requests()
        e2 = await op.engine_totals()
        m1 = parse_request_totals(await api.metrics())
        reqs = counter_delta(req1, req0)
        result["operator"]["engine_total"] = engine_stats(e0, e2, load.count)
        result["operator"] |= {
            "cpu_s_until_all_jobs": round(cpu_jobs, 2),
            "wall_s_until_all_jobs": round(t_jobs, 2),
            "cpu_s_total": round(cpu1 - cpu0, 2),
            "cpu_share_of_one_core_until_all_jobs": round(cpu_jobs / max(t_jobs, 1e-6), 3),
            "settle_s_after_jobs": round(settled, 1),
            "memory_mib": op.memory_mib(),
            "requests": reqs,
            "apiserver_requests": counter_delta(m1, m0),
        } | per_run(reqs, load.count)
        b, o = result["baseline"], result["operator"]
        if b.get("throughput_per_s") and o.get("throughput_per_s"):
            result["throughput_ratio"] = round(o["throughput_per_s"] / b["throughput_per_s"], 3)
    finally:
        if spy is not None:
            stop_py_spy(spy)
        await watch.stop()
    await clean_namespace(api, NS, 300)
    await op.settle(60)
    result["operator_memory_after_cleanup_mib"] = op.memory_mib()
    return result


# ---- py-spy ------------------------------------------------------------------------------------------------


def py_spy_bin() -> str | None:
    cand = Path(sys.executable).parent / "py-spy"
    return str(cand) if cand.exists() else shutil.which("py-spy")


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = py_spy_bin()
    if exe is None:
        log("py-spy not installed (dev extra); no profile")
        return None
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "50", "--nonblocking", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Collapsed stacks (py-spy --format raw) → total samples and the frames with the most inclusive and
    self samples (``function (file)``), plus shares of a few buckets that matter for an operator."""
    if not path.exists():
        return {}
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    total = 0
    rules = [
        ("logging", ("logging/__init__.py", "kopf/_core/engines/posting", "kopf/_cogs/helpers/loggers")),
        ("json / pydantic", ("json/", "pydantic", "jsonschema")),
        ("tls / sockets", ("ssl.py", "asyncio/sslproto", "selector_events", "socket")),
        ("http clients", ("aiohttp/", "httpx", "httpcore", "h11")),
        ("lightkube", ("lightkube/",)),
        ("kopf", ("kopf/",)),
        ("kubetrain", ("kubetrain_",)),
    ]
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.strip() for f in stack.split(";")]
        names = []
        for f in frames:
            m = re.match(r"(?P<fn>[^ ]+) \((?P<file>[^:)]+)", f)
            names.append(f"{m.group('fn')} ({_short(m.group('file'))})" if m else f)
        for name in set(names):
            inclusive[name] += n
        if names:
            own[names[-1]] += n
        leaf_files = " ".join(frames[-6:])
        for bucket, needles in rules:
            if any(x in leaf_files for x in needles):
                buckets[bucket] += n
                break
        else:
            buckets["other"] += n
    if not total:
        return {"samples": 0}

    def share(c: collections.Counter[str]) -> list[list[Any]]:
        return [[k, round(100 * v / total, 1)] for k, v in c.most_common(top)]

    return {
        "samples": total,
        "inclusive_pct": share(inclusive),
        "self_pct": share(own),
        "buckets_pct_by_leaf": {k: round(100 * v / total, 1) for k, v in buckets.most_common()},
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/operator/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# ---- memory test and soak ----------------------------------------------------------------------------------


async def ensure_namespace(api: Api, name: str) -> None:
    await api.call(
        "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, ok=(409,)
    )


async def run_memory(
    api: Api, repo: Path, kubeconfig: str, variant: str, sizes: Sizes, log_dir: Path
) -> dict[str, Any]:
    """N runs and N versions spread over namespaces, then the operator (all namespaces) started: RSS after
    it settled; then runs churn (created and deleted) while everything else stays."""
    stamp = dt.datetime.now(dt.UTC).strftime("%H%M%S")  # namespaces of an earlier run may still be terminating
    nss = [f"kubetrain-bench-mem-{stamp}-{i}" for i in range(sizes.memory_namespaces)]
    for ns in nss:
        await ensure_namespace(api, ns)
    t0 = time.monotonic()
    runs = [run_manifest(repo, f"m-{i}", nss[i % len(nss)], "mem") for i in range(sizes.memory_runs)]
    await bounded([api.call("POST", TR_PATH.format(ns=r["metadata"]["namespace"]), r, ok=(409,)) for r in runs])
    # 10 versions per model (retention keeps 10: nothing is deleted), models spread over the namespaces.
    mvs = []
    for i in range(sizes.memory_versions):
        model, version = f"model-{i // 10}", i % 10 + 1
        mvs.append(model_version_manifest(f"{model}-v{version}", nss[(i // 10) % len(nss)], model, version))
    await bounded([api.call("POST", MV_PATH.format(ns=m["metadata"]["namespace"]), m, ok=(409,)) for m in mvs])
    await bounded(
        [
            api.call(
                "PATCH",
                MV_PATH.format(ns=m["metadata"]["namespace"]) + f"/{m['metadata']['name']}/status",
                READY_STATUS,
            )
            for m in mvs
        ]
    )
    created_s = time.monotonic() - t0
    log(f"memory: {len(runs)} runs and {len(mvs)} versions created in {created_s:.0f}s")

    op = Operator(repo, kubeconfig, variant, log_dir)
    result: dict[str, Any] = {
        "variant": variant,
        "runs": len(runs),
        "versions": len(mvs),
        "namespaces": len(nss),
        "objects_created_s": round(created_s, 1),
        "versions_note": "hand-registered, status preset to Ready (no verification Job), 10 per model, "
        "fake artifact never read",
    }
    op.start(["--all-namespaces"])
    try:
        await op.wait_ready()
        t1 = time.monotonic()
        settled = await op.settle(sizes.settle_timeout, quiet_windows=5)
        jobs = sum([await api.count(JOB_PATH.format(ns=ns)) for ns in nss])
        reqs = await op.requests()
        result["start"] = {
            "settle_s": round(settled, 1),
            "settled": settled < sizes.settle_timeout,
            "wall_s": round(time.monotonic() - t1, 1),
            "jobs_created": jobs,
            "cpu_s": round(op.cpu_seconds(), 1),
            "memory_mib": op.memory_mib(),
            "requests": reqs,
        } | per_run(reqs, len(runs) + len(mvs))
        log(f"memory: settled={settled:.0f}s jobs={jobs} {op.memory_mib()}")
        # Churn: create and delete runs at 10/s in the first namespace while all the rest stays present.
        result["churn"] = await churn(api, repo, op, nss[0], sizes.churn_seconds, rate=10.0, keep_s=5.0)
    finally:
        op.stop()
    # A restart with everything present (runs, versions, and now their Jobs): the usual case of an operator
    # upgraded or rescheduled on a cluster with thousands of runs; it has nothing to create.
    op = Operator(repo, kubeconfig, variant, log_dir)
    op.start(["--all-namespaces"])
    try:
        await op.wait_ready()
        t1 = time.monotonic()
        settled = await op.settle(sizes.settle_timeout, quiet_windows=5)
        reqs = await op.requests()
        result["restart"] = {
            "settle_s": round(settled, 1),
            "settled": settled < sizes.settle_timeout,
            "wall_s": round(time.monotonic() - t1, 1),
            "cpu_s": round(op.cpu_seconds(), 1),
            "memory_mib": op.memory_mib(),
            "requests": reqs,
        } | per_run(reqs, len(runs) + len(mvs))
        log(f"memory: restart settled={settled:.0f}s {op.memory_mib()}")
    finally:
        op.stop()
    for ns in nss:
        await api.call("DELETE", f"/api/v1/namespaces/{ns}", ok=(404,))
    return result


async def churn(
    api: Api, repo: Path, op: Operator, namespace: str, seconds: float, rate: float, keep_s: float, sample_s: float = 10
) -> dict[str, Any]:
    """Create runs at ``rate`` per second and delete each ``keep_s`` seconds later, for ``seconds``;
    RSS sampled every ``sample_s`` seconds."""
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    cpu0 = op.cpu_seconds()
    pending: collections.deque[tuple[float, str]] = collections.deque()
    i = created = deleted = errors = 0
    next_sample = t0
    sem = asyncio.Semaphore(CONCURRENCY)
    tasks: set[asyncio.Task[Any]] = set()

    async def call(method: str, path: str, body: Any = None) -> None:
        nonlocal errors
        async with sem:
            try:
                await api.call(method, path, body, ok=(404, 409))
            except Exception as exc:  # counted, never fatal: the soak measures memory
                errors += 1
                log(f"churn request failed: {exc}")

    def spawn(c: Any) -> None:
        task = asyncio.create_task(c)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    while (now := time.monotonic()) - t0 < seconds:
        if now >= next_sample:
            samples.append({"t_s": round(now - t0, 1), **op.memory_mib(), "cpu_s": round(op.cpu_seconds() - cpu0, 2)})
            next_sample += sample_s
        while pending and pending[0][0] <= now:
            _, name = pending.popleft()
            spawn(call("DELETE", TR_PATH.format(ns=namespace) + f"/{name}"))
            deleted += 1
        name = f"churn-{i}"
        spawn(call("POST", TR_PATH.format(ns=namespace), run_manifest(repo, name, namespace, "churn")))
        pending.append((now + keep_s, name))
        i += 1
        created += 1
        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
    for _, name in pending:
        spawn(call("DELETE", TR_PATH.format(ns=namespace) + f"/{name}"))
        deleted += 1
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    await op.settle(60)
    samples.append(
        {"t_s": round(time.monotonic() - t0, 1), **op.memory_mib(), "cpu_s": round(op.cpu_seconds() - cpu0, 2)}
    )
    rss = [s["VmRSS"] for s in samples]
    third = max(1, len(rss) // 3)
    first, last = statistics.median(rss[:third]), statistics.median(rss[-third:])
    return {
        "after_warmup": growth_after_warmup(samples, seconds),
        "seconds": seconds,
        "rate_per_s": rate,
        "created": created,
        "deleted": deleted,
        "errors": errors,
        "samples": samples,
        "rss_first_third_median_mib": first,
        "rss_last_third_median_mib": last,
        "growth_pct": round(100 * (last - first) / first, 1) if first else None,
    }


def growth_after_warmup(samples: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """RSS growth from the end of the warm-up (the first 60 s or 20 % of the soak, whichever is longer: the
    operator's caches, connection pools and allocator arenas fill first) to the end."""
    warmup = max(60.0, 0.2 * seconds)
    steady = [x for x in samples if x["t_s"] >= warmup]
    if len(steady) < 2:
        return {"warmup_s": warmup, "growth_pct": None}
    first, last = steady[0]["VmRSS"], steady[-1]["VmRSS"]
    return {
        "warmup_s": warmup,
        "from_mib": first,
        "to_mib": last,
        "growth_pct": round(100 * (last - first) / first, 1) if first else None,
    }


async def run_soak(api: Api, repo: Path, kubeconfig: str, variant: str, sizes: Sizes, log_dir: Path) -> dict[str, Any]:
    op = Operator(repo, kubeconfig, variant, log_dir)
    op.start(["--namespace", NS])
    try:
        await op.wait_ready()
        result = await churn(api, repo, op, NS, sizes.soak_seconds, rate=5.0, keep_s=10.0)
        result["variant"] = variant
    finally:
        op.stop()
    await clean_namespace(api, NS, 300)
    return result


# ---- the whole benchmark ------------------------------------------------------------------------------------


def cluster_up() -> tuple[str, str | None]:
    proc = subprocess.run([str(REPO / "hack" / "dev-cluster"), "up"], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"hack/dev-cluster up failed:\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    kubeconfig = lines[-1].removeprefix("export KUBECONFIG=")
    path_line = next((line for line in lines if line.startswith("export PATH=")), None)
    bin_dir = path_line.removeprefix("export PATH=").strip('"').split(":")[0] if path_line else None
    return kubeconfig, bin_dir


def kubectl(bin_dir: str | None, kubeconfig: str, *args: str) -> str:
    exe = str(Path(bin_dir) / "kubectl") if bin_dir else "kubectl"
    proc = subprocess.run([exe, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def install_crds(repo: Path, bin_dir: str | None, kubeconfig: str) -> None:
    kubectl(bin_dir, kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(repo / "crds"))
    for crd in ("trainingruns.kubetrain.io", "modelversions.kubetrain.io"):
        kubectl(bin_dir, kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")


def machine_info(repo: Path) -> dict[str, Any]:
    py = repo_python(repo)
    kopf_version = subprocess.run(
        [py, "-c", "import kopf, lightkube, sys; print(kopf.__version__ if hasattr(kopf,'__version__') else '?')"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if kopf_version in ("", "?"):
        kopf_version = subprocess.run(
            [py, "-c", "from importlib.metadata import version as v; print(v('kopf'))"], capture_output=True, text=True
        ).stdout.strip()
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "operator", "api"], capture_output=True, text=True
    )
    load1 = os.getloadavg()[0]
    return {
        "nproc": os.cpu_count(),
        "load_avg_1m_at_start": round(load1, 2),
        "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "kopf": kopf_version,
        "repo": str(repo),
        "commit": commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else ""),
        "platform": platform.platform(),
    }


async def template_job(api: Api, repo: Path, op: Operator) -> dict[str, Any]:
    """One run through the operator; its Job is the template of the baseline's Jobs."""
    watch = JobWatch(api, NS)
    await watch.start()
    try:
        await api.call("POST", TR_PATH.format(ns=NS), run_manifest(repo, "warmup", NS, "warmup"))
        if not await watch.wait_for({"warmup"}, "run", 60):
            raise RuntimeError(f"the operator made no Job for the warm-up run in 60 s; see {op.log_path}")
        jobs = (await api.list(JOB_PATH.format(ns=NS), labelSelector="kubetrain.io/run=warmup"))["items"]
        return dict(jobs[0])
    finally:
        await watch.stop()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    if args.soak_seconds is not None:
        sizes = Sizes(**{**sizes.__dict__, "soak_seconds": args.soak_seconds})
    if args.memory_objects is not None:
        sizes = Sizes(**{**sizes.__dict__, "memory_runs": args.memory_objects, "memory_versions": args.memory_objects})
    if args.load_timeout is not None:
        sizes = Sizes(**{**sizes.__dict__, "load_timeout": args.load_timeout})
    if args.settle_timeout is not None:
        sizes = Sizes(**{**sizes.__dict__, "settle_timeout": args.settle_timeout})
    repo = Path(args.repo).resolve()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    if args.kubeconfig:
        kubeconfig, bin_dir = args.kubeconfig, None
    else:
        log("hack/dev-cluster up")
        kubeconfig, bin_dir = cluster_up()
    install_crds(repo, bin_dir, kubeconfig)
    loads = [ld for ld in sizes.loads if not args.loads or any(s in ld.name for s in args.loads.split(","))]
    report: dict[str, Any] = {
        "benchmark": "operator_load",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(repo),
        "goals": {k: {"what": w, "goal": g} for k, (w, g) in GOALS.items()},
        "variants": {v: VARIANTS[v] for v in variants},
        "loads": {},
        "memory": {},
        "soak": {},
        "notes": [
            "Numbers are noisy: 2 cores shared with other builds and tests. Compare the operator with the "
            "baseline of the SAME load in the SAME run (ratios), not absolute figures across runs.",
        ],
    }
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="kubetrain-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    report["operator_logs"] = str(log_dir)
    profile_dir = log_dir if args.profile else None
    with tempfile.TemporaryDirectory() as tmp:
        async with Api(kubeconfig, Path(tmp)) as api:
            await ensure_namespace(api, NS)
            await clean_namespace(api, NS, 120)
            for variant in variants if loads else []:
                op = Operator(repo, kubeconfig, variant, log_dir)
                op.start(["--namespace", NS])
                try:
                    await op.wait_ready()
                    effective = (await op.stats())["settings"]
                    log(f"{variant}: effective kopf settings {effective}")
                    template = await template_job(api, repo, op)
                    await clean_namespace(api, NS, 120)
                    await op.settle(30)
                    start_mem = op.memory_mib()
                    results = []
                    for load in loads:
                        log(f"{variant}: {load.name} ({load.count} runs at {load.rate or 'burst'})")
                        res = await run_load(
                            api, repo, op, template, load, sizes, profile_dir if load.rate is None else None
                        )
                        if profile_dir is not None and load.rate is None:
                            tag = re.sub(r"[^a-z0-9]+", "", load.name.lower())
                            res["profile"] = prof = summarise_profile(profile_dir / f"py-spy-{variant}-{tag}.txt")
                            if prof.get("samples") and res.get("profile_wall_s"):
                                prof["busy_pct_of_wall"] = round(
                                    100 * prof["samples"] / (50 * res["profile_wall_s"]), 1
                                )
                        log(f"{variant}: {load.name}: {summary_line(res)}")
                        results.append(res)
                        report["loads"][variant] = {
                            "effective_settings": effective,
                            "memory_at_start_mib": start_mem,
                            "results": results,
                        }
                        write_reports(report, args)  # after each load: a later failure loses nothing
                    report["loads"][variant] = {
                        "effective_settings": effective,
                        "memory_at_start_mib": start_mem,
                        "results": results,
                    }
                finally:
                    op.stop()
                write_reports(report, args)  # partial reports survive a later failure
            for variant in [v for v in (args.memory_variants or "").split(",") if v]:
                if args.skip_memory:
                    break
                log(f"memory test ({variant}): {sizes.memory_runs} runs + {sizes.memory_versions} versions")
                report["memory"][variant] = await run_memory(api, repo, kubeconfig, variant, sizes, log_dir)
                write_reports(report, args)
            for variant in [v for v in (args.soak_variants or "").split(",") if v]:
                if args.skip_soak:
                    break
                log(f"soak ({variant}): {sizes.soak_seconds:.0f}s")
                report["soak"][variant] = await run_soak(api, repo, kubeconfig, variant, sizes, log_dir)
                write_reports(report, args)
    return report


def summary_line(res: dict[str, Any]) -> str:
    b, o = res.get("baseline", {}), res.get("operator", {})
    return (
        f"operator p50={o.get('p50_ms')}ms p99={o.get('p99_ms')}ms {o.get('throughput_per_s')}/s "
        f"({o.get('done')}/{o.get('of')}); baseline p99={b.get('p99_ms')}ms {b.get('throughput_per_s')}/s; "
        f"ratio={res.get('throughput_ratio')} cpu={o.get('cpu_s_total')}s w/r per run="
        f"{o.get('writes_per_run')}/{o.get('reads_per_run')}"
    )


# ---- reports ------------------------------------------------------------------------------------------------


AS_CONFIGURED = "the operator as configured in startup.py (its effective kopf settings are read back below)"


def verdict(value: float | None, goal: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "—"
    ok = value >= goal if higher_is_better else value <= goal
    return "met" if ok else "missed"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    out = [
        f"# Operator load benchmark — {report['date']} ({report['mode']})",
        "",
        f"Machine: {m['nproc']} cores (shared with other helpers' builds and tests; 1-min load "
        f"{m['load_avg_1m_at_start']} at start), {m['mem_total_gib']} GiB, Python {m['python']}, kopf {m['kopf']}. "
        f"Operator checkout: `{m['repo']}` at `{m['commit']}`.",
        "",
        "TrainingRuns are created with `suspend: true` (no pod runs); a watch on Jobs records when each run's "
        "Job appears. Each load is run first as the **baseline** — the same Jobs (a copy of one the operator "
        "made) created straight through the API at the same pace — then through the operator, in the same "
        "run: compare the two, not figures across runs (the machine is noisy). Requests per run come from "
        "the operator's own counting client (every HTTP request of the process; watches excluded) from the "
        "first create until it is idle again, cleanup excluded.",
        "",
        "Variants (kopf settings set after the operator's own startup handler, see `bench/operator_shim.py`):",
        "",
    ]
    for v, tuning in report["variants"].items():
        out.append(f"- `{v}`: {json.dumps(tuning) if tuning else AS_CONFIGURED}")
    columns = list(dict.fromkeys([*report["loads"], *report["memory"], *report["soak"]]))
    out += [
        "",
        "## Goals",
        "",
        "| goal | target | " + " | ".join(f"`{v}`" for v in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    rows = goal_rows(report)
    for key, (what, target) in GOALS.items():
        cells = [rows.get((key, v), "—") for v in columns]
        out.append(f"| {what} | {target} | " + " | ".join(cells) + " |")
    out += ["", "## Loads", ""]
    for variant, data in report["loads"].items():
        out += [
            f"### `{variant}`",
            "",
            f"Effective kopf settings (read back from the running operator): `{data.get('effective_settings')}`; "
            f"RSS at start (idle, after one warm-up run): {data['memory_at_start_mib']}",
            "",
            "| load | who | done | p50 ms | p99 ms | max ms | runs/s | ratio | CPU s | CPU share "
            "| RSS / HWM MiB | writes/run | reads/run | machine busy | control plane cores |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in data["results"]:
            b, o = r["baseline"], r["operator"]
            out.append(
                f"| {r['load']} | baseline | {b.get('done')}/{b.get('of')} | {b.get('p50_ms')} | {b.get('p99_ms')} | "
                f"{b.get('max_ms')} | {b.get('throughput_per_s')} | | | | | | | "
                f"{b.get('machine_busy_share', '')} | {b.get('control_plane_cores', '')} |"
            )
            mem = o.get("memory_mib", {})
            out.append(
                f"| {r['load']} | operator | {o.get('done')}/{o.get('of')} | {o.get('p50_ms')} | {o.get('p99_ms')} | "
                f"{o.get('max_ms')} | {o.get('throughput_per_s')} | {r.get('throughput_ratio')} | "
                f"{o.get('cpu_s_total')} | "
                f"{o.get('cpu_share_of_one_core_until_all_jobs')} | {mem.get('VmRSS')} / {mem.get('VmHWM')} | "
                f"{o.get('writes_per_run')} | {o.get('reads_per_run')} | "
                f"{o.get('machine_busy_share', '')} | {o.get('control_plane_cores', '')} |"
            )
        out += [
            "",
            "*machine busy*: the share of all cores busy from the first create until the last Job appeared "
            "(/proc/stat); *control plane cores*: CPU of kube-apiserver, etcd and kube-controller-manager over "
            "the same span, in cores (0 when the cluster is not on this machine).",
            "",
        ]
        last = data["results"][-1] if data["results"] else None
        if last:
            out += [f"Requests per run by verb and resource, {last['load']} (operator's client):", "", "```"]
            out += [f"{k:40s} {v}" for k, v in last["operator"].get("by_verb_resource_per_run", {}).items()]
            out += ["```", ""]
            prof = last.get("profile")
            if prof and prof.get("samples"):
                out += [
                    f"py-spy during {last['load']} ({prof['samples']} samples at 50 Hz of non-idle threads over "
                    f"{last.get('profile_wall_s')} s: busy {prof.get('busy_pct_of_wall')} % of the wall time; "
                    "leaf buckets):",
                    "",
                    "```",
                ]
                out += [f"{k:20s} {v} %" for k, v in prof["buckets_pct_by_leaf"].items()]
                out += ["-- inclusive --"] + [f"{v:5.1f} %  {k}" for k, v in prof["inclusive_pct"][:15]]
                out += ["-- self --"] + [f"{v:5.1f} %  {k}" for k, v in prof["self_pct"][:12]]
                out += ["```", ""]
    if report["memory"]:
        out += ["## Memory with many objects present", ""]
        for v, mem in report["memory"].items():
            s = mem.get("start", {})
            c = mem.get("churn", {})
            out += [
                f"### `{v}`: {mem['runs']} runs + {mem['versions']} versions in {mem['namespaces']} namespaces "
                f"(operator `--all-namespaces`, started after they exist)",
                "",
                f"- versions: {mem['versions_note']}",
                f"- settled: {s.get('settled')} after {s.get('settle_s')} s; Jobs created: {s.get('jobs_created')}; "
                f"CPU {s.get('cpu_s')} s; memory {s.get('memory_mib')} (the goal, ≤ 200 MiB, is for 5,000 + 5,000)",
                f"- requests per object at start-up: writes {s.get('writes_per_run')}, reads {s.get('reads_per_run')}",
                f"- churn ({c.get('rate_per_s')}/s for {c.get('seconds')} s): RSS "
                f"{c.get('rss_first_third_median_mib')} → "
                f"{c.get('rss_last_third_median_mib')} MiB ({c.get('growth_pct')} %)",
            ]
            r = mem.get("restart")
            if r:
                out += [
                    f"- restarted with everything present (runs, versions and their Jobs): settled {r.get('settled')} "
                    f"after {r.get('settle_s')} s; CPU {r.get('cpu_s')} s; memory {r.get('memory_mib')}; requests per "
                    f"object: writes {r.get('writes_per_run')}, reads {r.get('reads_per_run')}",
                ]
            out += [""]
    if report["soak"]:
        out += ["## Soak", ""]
        for v, s in report["soak"].items():
            aw = growth_after_warmup(s["samples"], s["seconds"])
            out += [
                f"- `{v}`: {s['seconds']:.0f} s, {s['created']} runs created and deleted ({s['rate_per_s']}/s, "
                f"each kept 10 s), {s['errors']} errors; RSS median first third {s['rss_first_third_median_mib']} MiB"
                f" → last third {s['rss_last_third_median_mib']} MiB ({s['growth_pct']} %, warm-up included); "
                f"after a {aw['warmup_s']:.0f} s warm-up {aw.get('from_mib')} → {aw.get('to_mib')} MiB: growth "
                f"**{aw['growth_pct']} %** (goal < 5 %: {verdict(aw['growth_pct'], 5)}); "
                f"samples (t, RSS): " + ", ".join(f"{x['t_s']:.0f}s {x['VmRSS']}" for x in s["samples"]),
            ]
        out.append("")
    out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(out)


def goal_rows(report: dict[str, Any]) -> dict[tuple[str, str], str]:
    rows: dict[tuple[str, str], str] = {}
    for variant in dict.fromkeys([*report["loads"], *report["memory"], *report["soak"]]):
        for r in report["loads"].get(variant, {}).get("results", []):
            o = r["operator"]
            if r["rate"] == 10.0:
                rows[("p99_10", variant)] = f"{o.get('p99_ms')} ms ({verdict(o.get('p99_ms'), 100)})"
            elif r["rate"] == 50.0:
                rows[("p99_50", variant)] = f"{o.get('p99_ms')} ms ({verdict(o.get('p99_ms'), 250)})"
            elif r["rate"] is None and r.get("throughput_ratio") is not None:
                ratio = r["throughput_ratio"]
                rows[("burst", variant)] = f"{100 * ratio:.0f} % ({verdict(ratio, 0.8, True)})"
            if r["rate"] is None:
                rows[("writes", variant)] = f"{o.get('writes_per_run')} ({verdict(o.get('writes_per_run'), 6)})"
                rows[("reads", variant)] = f"{o.get('reads_per_run')} ({verdict(o.get('reads_per_run'), 3)})"
        memtest = report["memory"].get(variant, {})
        mem = memtest.get("start", {}).get("memory_mib", {}).get("VmRSS")
        if mem is not None:
            size = f"{memtest['runs']:,} + {memtest['versions']:,}"
            full = memtest["runs"] >= 5000 and memtest["versions"] >= 5000
            rows[("rss", variant)] = (
                f"{mem} MiB with {size} (" + (verdict(mem, 200) if full else "goal's size not measured") + ")"
            )
            again = memtest.get("restart", {}).get("memory_mib", {}).get("VmRSS")
            if again is not None:
                rows[("rss", variant)] += f"; restarted with their Jobs present: {again} MiB" + (
                    f" ({verdict(again, 200)})" if full else ""
                )
        soak = report["soak"].get(variant)
        if soak is not None:
            aw = growth_after_warmup(soak["samples"], soak["seconds"])
            rows[("soak", variant)] = (
                f"{aw['growth_pct']} % over {soak['seconds']:.0f} s after warm-up ({verdict(aw['growth_pct'], 5)}"
                + (", shorter than the goal's 10 min)" if soak["seconds"] < 600 else ")")
            )
    return rows


def write_reports(report: dict[str, Any], args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = "operator_load" + (f"-{args.label}" if args.label else "") + ("-quick" if report["mode"] == "quick" else "")
    stem, latest = f"{base}-{report['date'][:10]}", f"{base}-latest"
    text = json.dumps(report, indent=1, sort_keys=False) + "\n"
    md = markdown(report)
    for name in (stem, latest):
        (out / f"{name}.json").write_text(text)
        (out / f"{name}.md").write_text(md)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a couple of minutes)")
    parser.add_argument("--repo", default=str(REPO), help="operator checkout to benchmark (default: this one)")
    parser.add_argument("--kubeconfig", help="an existing loopback cluster instead of hack/dev-cluster up")
    parser.add_argument("--variants", default="operator", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--loads", default="", help="only loads whose name contains one of these (comma-separated)")
    parser.add_argument("--memory-variants", default="operator", help="variants of the memory test ('' = none)")
    parser.add_argument("--soak-variants", default="operator", help="variants of the soak ('' = none)")
    parser.add_argument("--memory-objects", type=int, help="runs and versions of the memory test (each)")
    parser.add_argument("--load-timeout", type=float, help="bound of the wait for one load's Jobs (s)")
    parser.add_argument("--settle-timeout", type=float, help="bound of the memory test's settle wait (s)")
    parser.add_argument("--soak-seconds", type=float, help="length of the soak (default 600, quick 40)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-soak", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy record the operator during each burst")
    parser.add_argument("--out", default=str(REPORTS), help="report directory")
    parser.add_argument("--render", metavar="JSON", help="only re-write the markdown of an existing JSON report")
    parser.add_argument("--label", default="", help="report name part: operator_load-<label>-<date>.md")
    parser.add_argument("--log-dir", help="operator logs and profiles (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.render:
        path = Path(args.render)
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return 0
    report = asyncio.run(bench(args))
    write_reports(report, args)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
