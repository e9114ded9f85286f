"""Operator-wide kopf configuration, login and the metrics server: one ``@kopf.on.startup``."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from .. import kube, metrics
from ..jobs import OWNED_SELECTOR
from ..settings import get_settings

PREFIX = "kubetrain.io"
_server: Any = None


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    """Trigger: operator start. Effect: deliberate kopf settings, our settings read once, /metrics served."""
    global _server
    ours = get_settings()
    logger.info("kubetrain settings: %s", ours.summary())
    # kopf's own state (used only by change-detecting handlers) under our domain, in annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # Events for transitions are posted explicitly (kopf.event); handler log lines are not posted.
    settings.posting.loggers = False
    settings.posting.reporting_component = "kubetrain-operator"
    # One replica (Deployment strategy Recreate): no peering.
    settings.peering.standalone = True
    # Watch streams: bounded server-side, client timeout above it, fast reconnects.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.watching.reconnect_backoff = 1.0
    # Only our Jobs and their pods, filtered by the API server, not in memory.
    settings.watching.label_selectors["batch", "v1", "jobs"] = OWNED_SELECTOR
    settings.watching.label_selectors["", "v1", "pods"] = OWNED_SELECTOR
    settings.batching.worker_limit = 20
    settings.networking.request_timeout = 60
    _server = await metrics.start_server(ours.metrics_port)


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    """Trigger: operator stop. Effect: HTTP server and API client closed."""
    if _server is not None:
        await _server.cleanup()
    await kube.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Trigger: kopf needs credentials. Effect: in-cluster service account, else the kubeconfig."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
