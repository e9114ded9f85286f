"""TrainingSchedule on the engine: the kopf triggers, ``gather`` (reads) and ``act`` (status, Events, metrics).

Triggers: any event of the schedule (the initial listing after a restart included), any event of a
TrainingRun it controls (ownerReference: a child that finishes frees a Forbid schedule and counts for the
history limits), and the requeue at the next tick. The child runs are created and deleted by the engine
(``Plan.create`` / ``Plan.delete``); the operator writes the schedule's ``status`` only.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kubetrain_api.models import GROUP, VERSION
from prometheus_client import Counter

from .. import k8s, kube, metrics
from ..engine import ENGINE, Plan
from ..settings import Settings
from . import decide
from .decide import KIND, ScheduleFacts, SchedulePlan

log = logging.getLogger("kubetrain.trainingschedule")

TICKS = Counter(
    "kubetrain_schedule_ticks_total",
    "TrainingSchedule ticks by decision (started, skipped, missed)",
    ["namespace", "decision"],
)


@kopf.on.event(GROUP, VERSION, "trainingschedules")
async def trainingschedule_event(type: str, namespace: str | None, name: str, **_: Any) -> None:
    """Trigger: any event of a TrainingSchedule. Effect: one engine pass; a deleted one is forgotten (its
    runs go by garbage collection)."""
    if not namespace:
        return
    if type == "DELETED":
        ENGINE.forget(KIND, namespace, name)
        return
    await ENGINE.trigger(KIND, namespace, name)


@kopf.on.event(GROUP, VERSION, "trainingruns", id="trainingschedule-child")
async def child_run_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """Trigger: any event of a TrainingRun (its own handler reconciles the run). Effect: a pass of the
    schedule controlling it, if one does."""
    owner = k8s.controller_of(dict(body))
    if namespace and owner and owner[0] == KIND:
        await ENGINE.trigger(KIND, namespace, owner[1])


class TrainingScheduleReconciler:
    """gather/decide/act of a TrainingSchedule (key: the schedule's name)."""

    kind = KIND
    pod_label: str | None = None

    async def gather(
        self, namespace: str, name: str, memory: Mapping[str, Any], now: dt.datetime
    ) -> ScheduleFacts | None:
        body = await kube.get_training_schedule(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        uid = body["metadata"]["uid"]
        runs, taken = [], set()
        for run in await kube.list_training_runs(namespace):
            if k8s.owned_by(run, uid):
                runs.append(run)
            else:
                taken.add(str(run["metadata"]["name"]))
        return ScheduleFacts(body=body, runs=runs, taken=taken, memory=dict(memory))

    def decide(self, facts: ScheduleFacts, settings: Settings, now: dt.datetime) -> Plan:
        return decide.decide(facts, settings, now)

    async def act(self, facts: ScheduleFacts, plan: Plan, memory: dict[str, Any]) -> None:
        assert isinstance(plan, SchedulePlan)
        meta = facts.meta
        namespace = meta["namespace"]
        for child in plan.delete:
            log.info("%s/%s: deleted TrainingRun %s", namespace, meta["name"], child.name)
        for d in plan.decisions:
            log.info("%s/%s: tick %s %s (%s)", namespace, meta["name"], d.get("tick"), d["decision"], d["reason"])
            TICKS.labels(namespace, d["decision"].lower()).inc(1)
        if plan.missed:
            TICKS.labels(namespace, "missed").inc(plan.missed)
        if plan.status:
            await kube.patch_child(KIND, namespace, meta["name"], {"status": plan.status})
            metrics.STATUS_WRITES.labels(KIND).inc()
        for event in plan.events:
            k8s.post_event(facts.body, event)

    def forget(self, namespace: str, name: str) -> None:
        return None

    def key_of_child(self, labels: Mapping[str, str], owner: str) -> str:
        return owner


ENGINE.register(TrainingScheduleReconciler())
