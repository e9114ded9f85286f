"""Child Jobs and pods of every kind, routed to their owner's engine pass (no polling).

kopf watches only the operator's children: ``settings.watching.label_selectors`` sends the server-side
selector ``k8s.OWNED_SELECTOR`` (see ``startup``), so no other Job or pod of the cluster is held in memory.
A Job is routed by its controller ownerReference, a pod by the owner label its kind names
(``Reconciler.pod_label``) — trainer, verification and cleanup Jobs alike.
"""

from __future__ import annotations

from typing import Any

import kopf

from . import k8s
from .engine import ENGINE


def route(obj: kopf.Body, namespace: str | None) -> None:
    """One engine pass of the object owning ``obj`` (a Job or a pod), if it is ours."""
    if not namespace:
        return
    labels = dict(obj.get("metadata", {}).get("labels") or {})
    owner = k8s.controller_of(dict(obj))
    routed = (owner[0], owner[1]) if owner and owner[0] in ENGINE.kinds else ENGINE.route_pod(labels)
    if routed is None:
        return
    kind, owner_name = routed
    ENGINE.trigger(kind, namespace, ENGINE.kinds[kind].key_of_child(labels, owner_name))


@kopf.on.event("batch", "v1", "jobs")
async def job_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """Trigger: an event of a Job we own (server-side label selector). Effect: its owner's pass."""
    route(body, namespace)


@kopf.on.event("", "v1", "pods")
async def pod_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """Trigger: an event of a pod of one of our Jobs (server-side label selector). Effect: its owner's pass,
    so start-up problems (Unschedulable, ImagePullBackOff), Running and a finished container show at once."""
    route(body, namespace)
