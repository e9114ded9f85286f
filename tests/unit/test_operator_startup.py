"""The kopf settings applied at operator start-up (handlers.startup.configure), without a cluster."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import kopf
import pytest
from kubetrain_operator import startup
from kubetrain_operator.settings import Settings, get_settings, set_settings


@pytest.fixture
def configured() -> Iterator[kopf.OperatorSettings]:
    old = get_settings()
    set_settings(Settings.from_env({"KUBETRAIN_METRICS_PORT": "0", "KUBETRAIN_WATCH_SERVER_TIMEOUT": "7"}))
    settings = kopf.OperatorSettings()
    asyncio.run(startup.configure(settings=settings, logger=logging.getLogger("test")))
    yield settings
    set_settings(old)


def test_watch_timeouts_come_from_our_settings(configured: kopf.OperatorSettings) -> None:
    assert configured.watching.server_timeout == 7 and isinstance(configured.watching.server_timeout, int)
    assert configured.watching.client_timeout == 330.0


def test_api_errors_are_retried_with_a_capped_backoff_for_minutes(configured: kopf.OperatorSettings) -> None:
    backoffs = list(configured.networking.error_backoffs)  # type: ignore[arg-type]
    # A restarted API server is seen again within 5 s (kopf's default grows to 21 s) ...
    assert max(backoffs) <= 5
    # ... no tight loop ...
    assert min(backoffs) >= 1
    # ... and an outage of several minutes does not make kopf give up on its watch streams.
    assert sum(backoffs) >= 240


def test_kopfs_finalizer_is_not_the_engines(configured: kopf.OperatorSettings) -> None:
    from kubetrain_operator import k8s

    # kopf strips its own finalizer from objects none of its handlers needs it for: it must not be ours.
    assert configured.persistence.finalizer != k8s.FINALIZER


def test_kopf_builds_no_diff_base_and_no_handler_needs_one(configured: kopf.OperatorSettings) -> None:
    """The empty diff-base (startup.NoDiffBaseStorage) is safe only while no kopf change-detecting handler
    exists: every kopf handler of the operator is ``on.event`` (or an activity), none is on.create/update/..."""
    from kubetrain_operator import handlers  # noqa: F401  (registers every kind's kopf handlers)

    storage = configured.persistence.diffbase_storage
    assert isinstance(storage, startup.NoDiffBaseStorage)
    body = kopf.Body({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"}, "spec": {"big": list(range(9))}})
    assert storage.build(body=body) == {}
    registry = kopf.get_default_registry()
    assert list(registry._watching.get_all_handlers()), "the on.event handlers were not registered"
    assert not list(registry._changing.get_all_handlers()), "a change-detecting handler needs kopf's diff-base"
