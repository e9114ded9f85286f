"""nodeloss: which trainer pod is on a lost node, and since when (pure; the cluster test is
tests/operator/test_node_loss.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubetrain_operator import nodeloss

NOW = dt.datetime(2026, 12, 3, 12, 0, 0, tzinfo=dt.UTC)


def pod(
    name: str = "p", node: str | None = "n1", phase: str = "Running", ready: str | None = "True", **meta: Any
) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": ready}] if ready else []
    return {
        "metadata": {"name": name, **meta},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, "conditions": conditions},
    }


def node(ready: str, since: dt.datetime, reason: str = "NodeStatusUnknown") -> dict[str, Any]:
    stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "status": {"conditions": [{"type": "Ready", "status": ready, "reason": reason, "lastTransitionTime": stamp}]}
    }


def test_only_bound_unfinished_pods_that_are_not_ready_or_being_deleted_are_suspects() -> None:
    assert not nodeloss.suspect(pod(ready="True"))
    assert nodeloss.suspect(pod(ready="False"))
    assert nodeloss.suspect(pod(ready="True", deletionTimestamp="2026-12-03T11:00:00Z"))
    assert not nodeloss.suspect(pod(ready="False", node=None))  # not scheduled
    assert not nodeloss.suspect(pod(ready="False", phase="Failed"))
    assert not nodeloss.suspect(pod(ready="False", phase="Succeeded"))
    assert not nodeloss.suspect(pod(ready=None))  # no Ready condition yet: just created


def test_nodes_to_read_once_each_and_none_when_off() -> None:
    pods = [pod("a", "n1", ready="False"), pod("b", "n1", ready="False"), pod("c", "n2"), pod("d", "n3", ready="False")]
    assert nodeloss.nodes_to_read(pods, 300) == ["n1", "n3"]
    assert nodeloss.nodes_to_read(pods, 0) == []


def test_a_pod_is_lost_only_after_the_grace_period_and_the_recheck_says_when() -> None:
    pods = [pod("a", "n1", ready="False")]
    early = {"n1": node("Unknown", NOW - dt.timedelta(seconds=100))}
    lost, recheck = nodeloss.lost_pods(pods, early, 300, NOW)
    assert lost == [] and recheck == 200.5
    late = {"n1": node("Unknown", NOW - dt.timedelta(seconds=301))}
    lost, recheck = nodeloss.lost_pods(pods, late, 300, NOW)
    assert [(p.pod, p.node) for p in lost] == [("a", "n1")] and recheck is None
    assert "node n1 has not been Ready for 301s (NodeStatusUnknown" in lost[0].message
    assert "KUBETRAIN_NODE_LOST_SECONDS=300" in lost[0].message
    assert lost[0].since == "2026-12-03T11:54:59Z"


def test_a_ready_node_a_missing_node_or_the_check_off_loses_nothing() -> None:
    pods = [pod("a", "n1", ready="False")]
    assert nodeloss.lost_pods(pods, {"n1": node("True", NOW - dt.timedelta(hours=1))}, 300, NOW) == ([], None)
    # a deleted Node: the pod garbage collector fails and removes its pods
    assert nodeloss.lost_pods(pods, {"n1": None}, 300, NOW) == ([], None)
    assert nodeloss.lost_pods(pods, {"n1": node("Unknown", NOW - dt.timedelta(hours=1))}, 0, NOW) == ([], None)
    # a healthy pod on a not-Ready node (it has not been marked yet) is left alone until it is
    healthy = [pod("b", "n1", ready="True")]
    assert nodeloss.lost_pods(healthy, {"n1": node("Unknown", NOW - dt.timedelta(hours=1))}, 300, NOW) == ([], None)


def test_the_failed_status_keeps_other_conditions_and_adds_one_disruption_target() -> None:
    p = pod("a", "n1", ready="False")
    p["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"})
    (item,), _ = nodeloss.lost_pods([p], {"n1": node("Unknown", NOW - dt.timedelta(seconds=400))}, 300, NOW)
    patch = nodeloss.failed_status(p, item, "2026-12-03T12:00:00Z")["status"]
    assert patch["phase"] == "Failed" and patch["reason"] == "NodeLost"
    types = [c["type"] for c in patch["conditions"]]
    assert types == ["Ready", "DisruptionTarget"], types
    target = patch["conditions"][-1]
    assert target["status"] == "True" and target["reason"] == "NodeLost" and target["message"] == item.message
