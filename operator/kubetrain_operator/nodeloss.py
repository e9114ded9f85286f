"""Pods on a lost node: pure decisions (which pod is lost, since when) for a child Job's pods.

When a node stops reporting (its kubelet or the machine died), the node controller sets the node's Ready
condition to Unknown and the pod's Ready to False; after the NoExecute toleration (300 s by default) the
taint manager deletes the pod. Nobody can then finish that deletion: the kubelet that would confirm it is
gone. A Job with a podFailurePolicy (ours) replaces a pod only once it is *terminal* (Failed or Succeeded),
so the run would wait until the node comes back or someone deletes the Node or taints it
``node.kubernetes.io/out-of-service`` (Kubernetes' non-graceful node shutdown).

The operator does for its own trainer pods what the pod garbage collector does for that taint: once the
node has been not-Ready for ``node_lost_seconds``, it marks the pod Failed with a ``DisruptionTarget``
condition and force-deletes it. The Job's policy ignores disruptions (they do not count against
backoffLimit), so the Job starts a new pod on a node that works, and the run says why in
``status.disruptions`` and an Event.

The risk is the usual one of fencing by timeout: a node that is only cut off from the API server may still
run the old pod. The grace period should therefore be longer than a kubelet restart or a short network
blip; 0 turns this off (then the out-of-service taint is the way).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .k8s import parse_time

#: The reason of the DisruptionTarget condition the operator writes on a lost node's pod.
REASON_NODE_LOST = "NodeLost"
TERMINAL_POD_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class LostPod:
    """A pod to fail: its node has been not-Ready since ``since``."""

    pod: str
    node: str
    since: str
    message: str


def _condition(obj: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == ctype), None)


def suspect(pod: Mapping[str, Any]) -> bool:
    """A pod whose node may be lost: bound to a node, not terminal, and either not Ready (the node
    controller's mark when the node stops reporting) or being deleted (the taint manager's eviction)."""
    if not (pod.get("spec") or {}).get("nodeName"):
        return False
    if (pod.get("status") or {}).get("phase") in TERMINAL_POD_PHASES:
        return False
    ready = _condition(pod, "Ready")
    return bool((pod.get("metadata") or {}).get("deletionTimestamp")) or (
        ready is not None and ready.get("status") == "False"
    )


def nodes_to_read(pods: Sequence[Mapping[str, Any]], grace: float) -> list[str]:
    """The nodes a pass must look at (each once): those of suspect pods; none when the check is off."""
    if grace <= 0:
        return []
    return sorted({str(p["spec"]["nodeName"]) for p in pods if suspect(p)})


def not_ready_since(node: Mapping[str, Any] | None) -> dt.datetime | None:
    """When the node's Ready condition left True; None while it is Ready, or for a node that no longer
    exists (the pod garbage collector fails and removes the pods of a deleted node)."""
    if node is None:
        return None
    ready = _condition(node, "Ready")
    if ready is None or ready.get("status") == "True":
        return None
    return parse_time(ready.get("lastTransitionTime"))


def lost_pods(
    pods: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, Any] | None],
    grace: float,
    now: dt.datetime,
) -> tuple[list[LostPod], float | None]:
    """(the pods to fail now, seconds until the next one would be due) — pure."""
    if grace <= 0:
        return [], None
    lost: list[LostPod] = []
    recheck: float | None = None
    for pod in pods:
        if not suspect(pod):
            continue
        node = str(pod["spec"]["nodeName"])
        since = not_ready_since(nodes.get(node))
        if since is None:
            continue
        waited = (now - since).total_seconds()
        if waited < grace:
            left = grace - waited + 0.5
            recheck = left if recheck is None else min(recheck, left)
            continue
        ready = _condition(nodes.get(node) or {}, "Ready") or {}
        why = ready.get("reason") or ready.get("status") or "not Ready"
        message = (
            f"node {node} has not been Ready for {int(waited)}s ({why}; the limit is KUBETRAIN_NODE_LOST_SECONDS="
            f"{grace:g}): pod {pod['metadata']['name']} was marked Failed so that its Job starts a new one"
        )
        lost.append(LostPod(str(pod["metadata"]["name"]), node, since.strftime("%Y-%m-%dT%H:%M:%SZ"), message))
    return lost, recheck


def failed_status(pod: Mapping[str, Any], lost: LostPod, now: str) -> dict[str, Any]:
    """The status patch that ends the pod: phase Failed and a DisruptionTarget condition (the other
    conditions kept, a JSON merge patch replaces the list)."""
    conditions = [c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") != "DisruptionTarget"]
    conditions.append(
        {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": REASON_NODE_LOST,
            "message": lost.message,
            "lastTransitionTime": now,
        }
    )
    return {
        "status": {"phase": "Failed", "reason": REASON_NODE_LOST, "message": lost.message, "conditions": conditions}
    }
