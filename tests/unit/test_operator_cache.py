"""The watch cache (kubetrain_operator.cache): stripping, write-through overlay, kopf registration."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kubetrain_operator import cache, handlers, startup
from kubetrain_operator.settings import Settings, get_settings, set_settings


def _obj(kind: str, name: str, rv: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}, **extra}


@pytest.fixture
def indexes() -> Iterator[dict[str, dict[Any, list[dict[str, Any]]]]]:
    fake: dict[str, dict[Any, list[dict[str, Any]]]] = {name: {} for name in cache._INDEXES}
    cache.bind(fake)
    yield fake
    cache.unbind()


def test_strip_drops_what_no_pass_reads() -> None:
    job = _obj("Job", "j", "1", spec={"suspend": True, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {}}})
    job["metadata"]["managedFields"] = [{"manager": "x"}]
    job["metadata"]["annotations"] = {cache._LAST_APPLIED: "{}", "keep": "me"}
    out = cache.strip("Job", job)
    assert "managedFields" not in out["metadata"] and out["metadata"]["annotations"] == {"keep": "me"}
    assert out["spec"] == {"suspend": True, "template": {"metadata": {"labels": {"a": "b"}}}}
    assert "managedFields" in job["metadata"], "the watched body itself is not changed"
    pod = _obj("Pod", "p", "1", spec={"nodeName": "n1", "containers": [{"name": "c"}]}, status={"phase": "Running"})
    assert cache.strip("Pod", pod)["spec"] == {"nodeName": "n1"} and cache.strip("Pod", pod)["status"] == pod["status"]


def test_entries_are_compact_json_and_every_read_is_a_copy(
    indexes: dict[str, dict[Any, list[Any]]],
) -> None:
    run = _obj(
        "TrainingRun",
        "r",
        "7",
        spec={"model": "iris", "dataset": {"uri": "pvc://data/iris.csv", "target": "species"}},
        status={"phase": "Running", "conditions": [{"type": "Succeeded", "status": "Unknown"}]},
    )
    run["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:model": {}}}}]
    entry = cache.pack("TrainingRun", run)
    assert (entry.rv, entry.name) == (7, "r") and isinstance(entry.data, bytes)
    assert b"managedFields" not in entry.data and cache.unpack(entry) == cache.strip("TrainingRun", run)
    indexes["kubetrain_runs"][("ns", "r")] = [entry]
    first = cache.training_run("ns", "r")
    assert first is not None and first["status"]["phase"] == "Running"
    first["status"]["phase"] = "Failed"  # a reader that changes its copy changes nothing cached
    again = cache.training_run("ns", "r")
    assert again is not None and again["status"]["phase"] == "Running"


def test_unbound_means_api_reads() -> None:
    cache.unbind()
    assert not cache.bound()
    cache.wrote(_obj("Job", "j", "5"))  # outside a running operator: nothing is kept
    assert not cache._overlay


def test_our_write_is_seen_until_the_watch_catches_up(indexes: dict[str, dict[Any, list[dict[str, Any]]]]) -> None:
    jobs = indexes["kubetrain_jobs"]
    assert cache.job("ns", "j") is None
    cache.wrote(_obj("Job", "j", "10", status={"active": 0}))
    assert cache.job("ns", "j") is not None, "our creation is seen before its watch event"
    jobs[("ns", "j")] = [cache.pack("Job", _obj("Job", "j", "9"))]  # an older watched version: ours wins
    assert cache.job("ns", "j")["metadata"]["resourceVersion"] == "10"  # type: ignore[index]
    jobs[("ns", "j")] = [cache.pack("Job", _obj("Job", "j", "12"))]  # the watch caught up: the overlay goes
    assert cache.job("ns", "j")["metadata"]["resourceVersion"] == "12"  # type: ignore[index]
    assert not cache._overlay
    del jobs[("ns", "j")]  # deleted (DELETED event): gone, no ghost from the overlay
    assert cache.job("ns", "j") is None


def test_the_index_event_drops_the_overlay(indexes: dict[str, dict[Any, list[dict[str, Any]]]]) -> None:
    cache.wrote(_obj("Job", "j", "10"))
    asyncio.run(cache._index_jobs(body=kopf.Body(_obj("Job", "j", "9")), namespace="ns", name="j"))
    assert cache._overlay, "an older event keeps our write"
    asyncio.run(cache._index_jobs(body=kopf.Body(_obj("Job", "j", "10")), namespace="ns", name="j"))
    assert not cache._overlay


def test_a_write_the_watch_already_delivered_is_not_kept(indexes: dict[str, dict[Any, list[Any]]]) -> None:
    indexes["kubetrain_jobs"][("ns", "j")] = [cache.pack("Job", _obj("Job", "j", "11"))]
    cache.wrote(_obj("Job", "j", "11"))  # the watch event of our own creation came before the response
    indexes["kubetrain_versions"]["ns"] = [cache.pack("ModelVersion", _obj("ModelVersion", "m-v1", "7"))]
    cache.wrote(_obj("ModelVersion", "m-v1", "6"))
    cache.wrote(_obj("TrainingRun", "r", "3"))  # nothing watched yet: kept
    assert set(cache._overlay) == {("TrainingRun", "ns", "r")}


def test_expired_writes_are_swept_without_a_read(
    indexes: dict[str, dict[Any, list[Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache, "OVERLAY_SECONDS", -1.0)
    monkeypatch.setattr(cache, "SWEEP_SECONDS", 0.0)
    for i in range(50):
        cache.wrote(_obj("TrainingRun", f"r{i}", "3"))  # e.g. runs deleted right after our write
    assert len(cache._overlay) <= 1, "expired entries of objects nobody reads again are dropped"


def test_overlay_expires(indexes: dict[str, dict[Any, list[dict[str, Any]]]], monkeypatch: pytest.MonkeyPatch) -> None:
    cache.wrote(_obj("TrainingRun", "r", "3"))
    assert cache.training_run("ns", "r") is not None
    monkeypatch.setattr(cache, "OVERLAY_SECONDS", -1.0)
    cache.wrote(_obj("TrainingRun", "r", "4"))
    assert cache.training_run("ns", "r") is None, "an expired write is not trusted over the watch"


def test_model_versions_merge_watch_and_writes(indexes: dict[str, dict[Any, list[dict[str, Any]]]]) -> None:
    indexes["kubetrain_versions"]["ns"] = [
        cache.pack("ModelVersion", _obj("ModelVersion", "m-v1", "5")),
        cache.pack("ModelVersion", _obj("ModelVersion", "m-v2", "6")),
    ]
    cache.wrote(_obj("ModelVersion", "m-v2", "8", status={"phase": "Ready"}))
    cache.wrote(_obj("ModelVersion", "m-v3", "9"))
    got = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in cache.model_versions("ns")}
    assert got == {"m-v1": "5", "m-v2": "8", "m-v3": "9"}
    cache.deleted("ModelVersion", "ns", "m-v3")
    assert {o["metadata"]["name"] for o in cache.model_versions("ns")} == {"m-v1", "m-v2"}
    assert cache.model_versions("other") == []


def test_pods_are_indexed_by_their_job() -> None:
    pod = _obj("Pod", "p", "1", spec={"containers": []})
    got = asyncio.run(
        cache._index_pods(body=kopf.Body(pod), namespace="ns", labels={"batch.kubernetes.io/job-name": "j"})
    )
    assert got == {("ns", "j"): cache.pack("Pod", pod)}
    assert asyncio.run(cache._index_pods(body=kopf.Body(pod), namespace="ns", labels={})) is None


def test_indexes_are_registered_and_bound_at_startup() -> None:
    assert handlers  # imported: every kopf handler registered
    ids = {h.id for h in kopf.get_default_registry()._indexing.get_all_handlers()}
    assert set(cache._INDEXES) <= ids
    old = get_settings()
    try:
        settings = kopf.OperatorSettings()
        fake = {name: {} for name in cache._INDEXES}
        set_settings(Settings.from_env({"KUBETRAIN_METRICS_PORT": "0", "KUBETRAIN_WATCH_CACHE": "false"}))
        asyncio.run(startup.configure(settings=settings, logger=logging.getLogger("test"), **fake))
        assert not cache.bound(), "KUBETRAIN_WATCH_CACHE=false reads from the API"
        set_settings(Settings.from_env({"KUBETRAIN_METRICS_PORT": "0"}))  # the default: the cache
        asyncio.run(startup.configure(settings=settings, logger=logging.getLogger("test"), **fake))
        assert cache.bound()
        # Deliberate queueing (see startup.configure): no worker limit (it deadlocks with indexes), short idle.
        assert settings.queueing.worker_limit is None and settings.queueing.idle_timeout == 0.5
        assert settings.watching.chunk_size == startup.LIST_CHUNK_SIZE == 200  # the initial listing in pages
    finally:
        cache.unbind()
        set_settings(old)
