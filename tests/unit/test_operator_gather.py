"""trainingrun.handlers._gather_running with the watch cache: the start-up-deadline failure is decided on pods
read from the API, not on a watched copy that may lag (no cluster: kube's reads are replaced)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from kubetrain_operator import kube
from kubetrain_operator.settings import Settings, get_settings, set_settings
from kubetrain_operator.trainingrun import handlers
from kubetrain_operator.trainingrun.decide import RunFacts

from tests.unit.test_operator_jobs import make_run
from tests.unit.test_operator_status import NOW, job, pod

BODY = {"metadata": {"namespace": "ml", "name": "iris", "uid": "a151"}, "status": {"phase": "Pending"}}


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """kube's Job and pod reads: the cached pods wait without a reason, the API's say ImagePullBackOff."""
    fresh_calls: list[bool] = []

    async def get_job(namespace: str, name: str) -> dict[str, Any]:
        return job(active=1)

    async def list_job_pods(namespace: str, job_name: str, *, fresh: bool = False) -> list[dict[str, Any]]:
        fresh_calls.append(fresh)
        return [pod("Pending", waiting="ImagePullBackOff")] if fresh else [pod("Pending")]

    monkeypatch.setattr(kube, "get_job", get_job)
    monkeypatch.setattr(kube, "list_job_pods", list_job_pods)
    old = get_settings()
    set_settings(Settings.from_env({"KUBETRAIN_METRICS_PORT": "0"}))
    yield fresh_calls
    set_settings(old)


def test_the_deadline_failure_reads_the_pods_afresh(reads: list[bool]) -> None:
    facts = RunFacts(body=BODY)
    asyncio.run(handlers._gather_running(facts, make_run(startupDeadlineSeconds=30), NOW))
    assert reads == [False, True]  # the cached pods, then the API's at the deadline
    assert facts.pods[0]["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"


def test_before_the_deadline_only_the_cache_is_read(reads: list[bool]) -> None:
    facts = RunFacts(body=BODY)
    asyncio.run(handlers._gather_running(facts, make_run(startupDeadlineSeconds=600), NOW))
    assert reads == [False]


def _complete_job_reads(monkeypatch: pytest.MonkeyPatch, watched: dict[str, Any]) -> list[bool]:
    """kube's reads for a Complete Job: the API's pods show the finished trainer, the watched ones ``watched``."""
    from tests.unit.test_operator_status import OK_RESULT

    fresh_calls: list[bool] = []
    finished = pod("Succeeded", exit_code=0, message=OK_RESULT)

    async def get_job(namespace: str, name: str) -> dict[str, Any]:
        return job(conds=[("Complete", "")], succeeded=1)

    async def list_job_pods(namespace: str, job_name: str, *, fresh: bool = False) -> list[dict[str, Any]]:
        fresh_calls.append(fresh)
        return [finished] if fresh else [watched]

    async def list_model_versions(namespace: str) -> list[dict[str, Any]]:
        return []

    monkeypatch.setattr(kube, "get_job", get_job)
    monkeypatch.setattr(kube, "list_job_pods", list_job_pods)
    monkeypatch.setattr(kube, "list_model_versions", list_model_versions)
    return fresh_calls


def _gather(facts: RunFacts) -> None:
    old = get_settings()
    set_settings(Settings.from_env({"KUBETRAIN_METRICS_PORT": "0", "KUBETRAIN_PROGRESS_INTERVAL": "0"}))
    try:
        asyncio.run(handlers._gather_running(facts, make_run(), NOW))
    finally:
        set_settings(old)


def test_a_complete_job_without_a_visible_result_reads_the_pods_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Jobs' watch shows Complete while the pods' watch still shows the trainer Running (it lags, e.g.
    reconnecting): the result comes from the API, not a Succeeded status without metrics for good."""
    fresh_calls = _complete_job_reads(monkeypatch, watched=pod("Running"))
    facts = RunFacts(body=BODY)
    _gather(facts)
    assert fresh_calls[:2] == [False, True]
    assert facts.pods[0]["status"]["phase"] == "Succeeded"


def test_a_complete_job_with_its_result_visible_reads_nothing_more(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_operator_status import OK_RESULT

    fresh_calls = _complete_job_reads(monkeypatch, watched=pod("Succeeded", exit_code=0, message=OK_RESULT))
    _gather(RunFacts(body=BODY))
    assert fresh_calls == [False]
