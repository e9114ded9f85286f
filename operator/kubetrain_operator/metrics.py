"""Prometheus metrics of the operator (low cardinality: kind, result, namespace, phase, reason — never run
names) and the small HTTP server that serves ``/metrics``, ``/healthz`` (liveness), ``/readyz`` (readiness:
a standby is ready too, or rolling updates and ``helm --wait`` would hang) and ``/leader`` (200 only on the
replica that holds the Lease and runs the handlers, 503 on a standby)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

RECONCILE_TOTAL = Counter(
    "kubetrain_reconcile_total", "Reconciliations by kind and result (ok, error, permanent)", ["kind", "result"]
)
RECONCILE_SECONDS = Histogram(
    "kubetrain_reconcile_duration_seconds",
    "Time spent in one reconciliation",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RUNS = Gauge(
    "kubetrain_trainingruns", "TrainingRuns known to the operator by namespace and phase", ["namespace", "phase"]
)
RUN_TRANSITIONS = Counter(
    "kubetrain_trainingrun_transitions_total", "Phase transitions written by the operator", ["namespace", "phase"]
)
RUN_FAILURES = Counter(
    "kubetrain_trainingrun_failures_total", "Runs that ended Failed, by reason", ["namespace", "reason"]
)
JOBS_CREATED = Counter("kubetrain_jobs_created_total", "Jobs created (trainer, verification, cleanup)", ["namespace"])
STATUS_WRITES = Counter("kubetrain_status_writes_total", "Status patches sent", ["kind"])
RUN_DURATION = Histogram(
    "kubetrain_trainingrun_duration_seconds",
    "Wall time of finished runs",
    ["namespace", "phase"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)

QUEUE_DEPTH = Gauge(
    "kubetrain_reconcile_queue_depth",
    "Objects waiting for a reconcile worker (KUBETRAIN_RECONCILE_WORKERS serve the queue)",
)
QUEUE_WAIT = Histogram(
    "kubetrain_reconcile_queue_wait_seconds",
    "Time an object waited in the work queue before its reconciliation started",
    ["kind"],
    buckets=(0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

LEADER = Gauge(
    "kubetrain_leader", "1 while this replica holds the leader Lease and runs the handlers, 0 while it is a standby"
)

_phases: dict[tuple[str, str], str] = {}
_leader: dict[str, object] = {"leader": False, "identity": None}


def set_leader(identity: str | None, leader: bool) -> None:
    """Record whether this process leads (the gauge and ``/leader``)."""
    _leader.update(leader=leader, identity=identity)
    LEADER.set(1 if leader else 0)


def observe_phase(namespace: str, name: str, phase: str | None) -> None:
    """Keep the runs-by-phase gauge in step (the run name is only a key of this in-memory map)."""
    key = (namespace, name)
    old = _phases.pop(key, None)
    if old:
        RUNS.labels(namespace, old).dec()
    if phase:
        _phases[key] = phase
        RUNS.labels(namespace, phase).inc()


@asynccontextmanager
async def timed(kind: str) -> AsyncIterator[None]:
    """Count and time one reconciliation; the result label follows the exception, if any."""
    import kopf

    t0 = time.monotonic()
    result = "ok"
    try:
        yield
    except kopf.PermanentError:
        result = "permanent"
        raise
    except BaseException:
        result = "error"
        raise
    finally:
        RECONCILE_TOTAL.labels(kind, result).inc()
        RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - t0)


async def _metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _leader_status(_: web.Request) -> web.Response:
    return web.json_response(dict(_leader), status=200 if _leader["leader"] else 503)


async def start_server(port: int) -> web.AppRunner | None:
    """Serve /metrics, /healthz, /readyz and /leader on ``port`` (0 = off)."""
    if not port:
        return None
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _healthz)
    app.router.add_get("/leader", _leader_status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    log.info("serving /metrics, /healthz, /readyz and /leader on :%d", port)
    return runner
