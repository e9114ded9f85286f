"""Pure parts of bench/operator_load.py and bench/operator_shim.py (no cluster): request classification,
the API server's counters, per-run figures, quantiles, baseline Job copies and profile summaries."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


load = _load("operator_load")
shim = _load("operator_shim")
API = "https://127.0.0.1:6443"


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/apis/kubetrain.io/v1alpha1/namespaces/a/trainingruns/r1", "get trainingruns"),
        ("PATCH", "/apis/kubetrain.io/v1alpha1/namespaces/a/trainingruns/r1/status", "patch trainingruns/status"),
        ("GET", "/api/v1/namespaces/a/pods?labelSelector=batch.kubernetes.io%2Fjob-name%3Dj", "list pods"),
        ("GET", "/api/v1/namespaces/a/pods/p/log?tailLines=40", "get pods/log"),
        ("GET", "/apis/batch/v1/namespaces/a/jobs?watch=true&resourceVersion=5", "watch jobs"),
        ("GET", "/apis/batch/v1/jobs?watch=1", "watch jobs"),
        ("POST", "/apis/batch/v1/namespaces/a/jobs", "create jobs"),
        ("POST", "/api/v1/namespaces/a/events", "create events"),
        ("DELETE", "/apis/batch/v1/namespaces/a/jobs/j", "delete jobs"),
        ("DELETE", "/apis/batch/v1/namespaces/a/jobs", "deletecollection jobs"),
        ("PUT", "/apis/kubetrain.io/v1alpha1/namespaces/a/modelversions/m", "update modelversions"),
        ("GET", "/api/v1/namespaces/a", "get namespaces"),
        ("GET", "/api/v1/namespaces", "list namespaces"),
    ],
)
def test_requests_are_classified_by_verb_and_resource(method: str, path: str, expected: str) -> None:
    assert shim.classify(method, API + path) == expected


def test_apiserver_request_totals_are_summed_by_verb_and_resource() -> None:
    text = "\n".join(
        [
            "# HELP apiserver_request_total x",
            'apiserver_request_total{code="201",component="apiserver",group="batch",resource="jobs",scope="resource",'
            'subresource="",verb="POST",version="v1"} 12',
            'apiserver_request_total{code="409",component="apiserver",group="batch",resource="jobs",scope="resource",'
            'subresource="",verb="POST",version="v1"} 3',
            'apiserver_request_total{code="200",component="apiserver",group="kubetrain.io",resource="trainingruns",'
            'scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 4',
            'apiserver_request_duration_seconds_bucket{verb="POST",le="1"} 99',
        ]
    )
    totals = load.parse_request_totals(text)
    assert totals == {"post jobs": 15.0, "patch trainingruns/status": 4.0}
    assert load.counter_delta({"a": 5, "b": 2}, {"a": 3, "b": 2}) == {"a": 2}


def test_per_run_counts_writes_and_reads_and_leaves_watches_out() -> None:
    reqs = {
        "create jobs": 10,
        "patch trainingruns/status": 10,
        "get trainingruns": 30,
        "list pods": 20,
        "watch jobs": 2,
    }
    out = load.per_run(reqs, 10)
    assert out["writes_per_run"] == 2.0
    assert out["reads_per_run"] == 5.0
    assert out["watch_requests"] == 2
    assert "watch jobs" not in out["by_verb_resource_per_run"]
    assert load.per_run(reqs, 0) == {}


def test_quantiles_use_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert load.pct(values, 0.5) == 50
    assert load.pct(values, 0.99) == 99
    assert load.pct([7.0], 0.99) == 7
    assert load.pct([], 0.5) is None


def test_latency_and_throughput_of_a_load() -> None:
    sent = {"a": 0.0, "b": 0.1, "c": 0.2}
    seen = {"a": 0.01, "b": 0.13, "c": 1.2}
    stats = load.latency_stats(sent, seen)
    assert stats["done"] == 3 and stats["p50_ms"] == 30.0 and stats["max_ms"] == 1000.0
    assert stats["throughput_per_s"] == 2.5  # 3 Jobs between the first create (0.0) and the last Job (1.2)
    assert load.latency_stats({"a": 0.0}, {}) == {"done": 0, "of": 1}


def test_baseline_jobs_are_invisible_to_the_operator() -> None:
    template: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "iris-abc",
            "uid": "u",
            "resourceVersion": "9",
            "labels": {"app.kubernetes.io/managed-by": "kubetrain-operator", "kubetrain.io/run": "iris"},
            "ownerReferences": [{"kind": "TrainingRun", "uid": "x"}],
            "managedFields": [{}],
        },
        "spec": {
            "suspend": True,
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
            "template": {"metadata": {"labels": {"kubetrain.io/run": "iris", "controller-uid": "u"}}, "spec": {}},
        },
        "status": {"active": 0},
    }
    job = load.baseline_job(template, "bl-1", "ns")
    assert job["metadata"] == {"name": "bl-1", "namespace": "ns", "labels": {load.BENCH_LABEL: "baseline"}}
    assert "selector" not in job["spec"] and "status" not in job
    assert job["spec"]["template"]["metadata"]["labels"] == {load.BENCH_LABEL: "baseline"}
    assert template["metadata"]["name"] == "iris-abc"  # the template is not changed


def test_profile_summary_of_collapsed_stacks(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(
        "process 1:python;<module> (x.py:1);run (kopf/_core/reactor/queueing.py:10);emit (logging/__init__.py:5) 3\n"
        "process 1:python;<module> (x.py:1);get (lightkube/core/async_client.py:20) 1\n"
    )
    summary = load.summarise_profile(raw)
    assert summary["samples"] == 4
    assert summary["buckets_pct_by_leaf"]["logging"] == 75.0
    assert ["<module> (x.py)", 100.0] in summary["inclusive_pct"]
    assert summary["self_pct"][0] == ["emit (logging/__init__.py)", 75.0]


def test_soak_growth_leaves_the_warm_up_out() -> None:
    samples = [{"t_s": t, "VmRSS": rss} for t, rss in [(0, 60.0), (30, 90.0), (60, 100.0), (120, 101.0), (180, 102.0)]]
    out = load.growth_after_warmup(samples, 180)
    assert out == {"warmup_s": 60.0, "from_mib": 100.0, "to_mib": 102.0, "growth_pct": 2.0}
    assert load.growth_after_warmup(samples[:3], 180)["growth_pct"] is None  # one sample after warm-up


def test_cpu_use_is_the_busy_share_of_all_cores_and_the_control_planes_cores() -> None:
    before = {"busy": 100.0, "total": 200.0, "control_plane": 10.0}
    after = {"busy": 118.0, "total": 220.0, "control_plane": 22.0}  # 20 CPU-s over 10 s of wall on 2 cores
    assert load.cpu_use(before, after, 10.0) == {"machine_busy_share": 0.9, "control_plane_cores": 1.2}
    assert load.cpu_use(before, before, 0.0) == {"machine_busy_share": 0.0, "control_plane_cores": 0.0}


def test_a_cpu_sample_of_this_machine_counts_no_more_than_it_has() -> None:
    sample = load.cpu_sample()
    assert 0 < sample["busy"] <= sample["total"]
    assert sample["control_plane"] >= 0
