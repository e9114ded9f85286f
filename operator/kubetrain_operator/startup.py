"""Operator-wide kopf configuration and login: one ``@kopf.on.startup``. (The metrics server is started by
``__main__`` before kopf, so that a standby serves its probes while it waits for the Lease.)"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import cache, kube
from .engine import ENGINE
from .k8s import OWNED_SELECTOR
from .settings import get_settings

PREFIX = "kubetrain.io"
#: kopf's delays between retries of a failed API request: short at first, never above 5 s, ~5 min in total.
API_ERROR_BACKOFFS: tuple[float, ...] = (1, 2, 3, 5) + (5,) * 58
#: Objects per page of the initial listing of each watched resource.
LIST_CHUNK_SIZE = 200
#: Seconds a kopf per-object worker (and the watch event it holds) outlives its object's last event.
KOPF_IDLE_TIMEOUT = 0.5


class NoDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base with an empty essence. kopf builds the diff-base on every watch event (a deep copy of
    the whole body, status and managedFields included) for its change-detecting handlers (on.create/update/
    field/resume); only ``on.event`` handlers are registered here (tests/unit/test_operator_startup.py checks
    it), so nothing reads it. During a burst of 200 runs building it was 12.8 % of the operator's CPU (py-spy,
    ``bench/operator_load.py --profile``)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **kwargs: Any
) -> None:
    """Trigger: operator start. Effect: deliberate kopf settings, our settings read once, the engine's reads
    served from kopf's indexes (``cache``)."""
    ours = get_settings()
    # The engine's reads from kopf's indexes (cache.py); KUBETRAIN_WATCH_CACHE=false reads the API per pass.
    if ours.watch_cache:
        cache.bind(kwargs)
    logger.info("kubetrain settings: %s", ours.summary())
    # kopf's own state (kopf's change-detecting handlers are not used: none is written) under our domain.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = NoDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration")
    # kopf removes ITS finalizer from objects whose handlers do not need it (ours never do): its name must
    # not be the engine's own k8s.FINALIZER (deletionPolicy Delete), or kopf strips it at once.
    settings.persistence.finalizer = f"{PREFIX}/kopf-finalizer"
    # Events for transitions are posted explicitly (kopf.event); handler log lines are not posted.
    settings.posting.loggers = False
    settings.posting.reporting_component = "kubetrain-operator"
    # No kopf peering (not a lease: equal priorities freeze everything, kopf#734): one process runs the
    # handlers because __main__ starts kopf only once it holds our Lease (leader.py), or because only one
    # runs (leader election off).
    settings.peering.standalone = True
    # Watch streams: bounded server-side, client timeout above it (the bound on a silently stalled
    # stream, besides kopf's inactivity timeout), fast reconnects.
    settings.watching.server_timeout = ours.watch_server_timeout or None
    settings.watching.client_timeout = ours.watch_client_timeout or None
    settings.watching.connect_timeout = 30
    # The initial listing (start-up, and a re-list after a 410 Gone) in pages: one response per 200 objects,
    # not one holding every run of the cluster at once (readiness.py: each object's raw event is dropped as
    # soon as it is indexed and its key queued).
    settings.watching.chunk_size = LIST_CHUNK_SIZE
    settings.watching.reconnect_backoff = 1.0
    # Retries of failed API requests, watch (re)connects included. kopf's default (1, 1, 2, ..., 13, 21 s)
    # left the watches up to 21 s behind an API server that was back, and gives up after ~1 min of outage;
    # capped at 5 s, a restarted API server is seen again within 5 s, for ~5 min of outage (1 request per
    # 5 s per watch: no storm).
    settings.networking.error_backoffs = API_ERROR_BACKOFFS
    # Only our Jobs and their pods (trainer, verification, cleanup), filtered by the API server, not in memory.
    settings.watching.label_selectors["batch", "v1", "jobs"] = OWNED_SELECTOR
    settings.watching.label_selectors["", "v1", "pods"] = OWNED_SELECTOR
    _queueing_and_logging(settings)
    settings.networking.request_timeout = 60


def _queueing_and_logging(settings: kopf.OperatorSettings) -> None:
    """kopf's worker queueing and its per-event log lines, set deliberately (measured: bench/reports)."""
    # Queueing. kopf runs one worker task per object with events; a worker lives on for idle_timeout
    # after its object's last event, holding that event (the whole object as watched). Our handlers only
    # queue a key for the engine's workers (engine.py), which serialise and coalesce the passes of each
    # object themselves, so a kopf worker has nothing to wait for: it ends 0.5 s after its last event
    # (kopf's default 5 s, with worker_limit=20, served at most 20 objects per ~5 s: ≈4 runs/s while the
    # process idled, bench/reports). No worker_limit: a limit DEADLOCKS with kopf's indexes at start-up
    # (every worker indexes its object, then kopf's readiness waits for ALL objects: with 1,000 runs present
    # and 200 slots, no Job was ever created), and the work in progress is bounded by the engine's workers
    # (KUBETRAIN_RECONCILE_WORKERS) and the API requests by kube.MAX_IN_FLIGHT instead.
    # (kopf's time-based batching, settings.batching.batch_window, was removed from kopf: nothing to set.)
    settings.queueing.worker_limit = None
    settings.queueing.idle_timeout = KOPF_IDLE_TIMEOUT
    # kopf logs "Handler '...' succeeded." at INFO for every event of every object: noise at scale
    # (4+ lines per run). Its warnings and errors stay; --verbose shows everything.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    """Trigger: operator stop. Effect: the engine's workers stopped, the API client closed."""
    await ENGINE.stop()
    await kube.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Trigger: kopf needs credentials. Effect: in-cluster service account, else the kubeconfig."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
