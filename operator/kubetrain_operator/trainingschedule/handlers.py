"""TrainingSchedule on the engine: the kopf triggers, ``gather`` (reads) and ``act`` (status, Events, metrics).

Reads: the schedule, its children by the label ``kubetrain.io/schedule`` (plus a lookup of the names this
pass may create), its gate Jobs, and for ``when.drift`` the namespace's ModelVersions.

Triggers: any event of the schedule (the initial listing after a restart included), any event of a
TrainingRun it controls (ownerReference: a child that finishes frees a Forbid schedule and counts for the
history limits), and the requeue at the next tick. The child runs are created and deleted by the engine
(``Plan.create`` / ``Plan.delete``); the operator writes the schedule's ``status`` only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kubetrain_api.models import GROUP, VERSION
from prometheus_client import Counter, Gauge

from .. import k8s, kube, metrics
from ..engine import ENGINE, Plan, object_event
from ..settings import Settings
from . import decide, gates
from .decide import KIND, ScheduleFacts, SchedulePlan

log = logging.getLogger("kubetrain.trainingschedule")

TICKS = Counter(
    "kubetrain_schedule_ticks_total",
    "TrainingSchedule ticks by decision (started, skipped, missed) and reason (Scheduled, DataUnchanged, NoDrift, ...)",
    ["namespace", "decision", "reason"],
)
DRIFT_PSI = Gauge(
    "kubetrain_model_drift_psi",
    "PSI of a schedule's data against the training data of the version holding spec.when.drift.against, at its "
    "last gated tick: feature='max' is the largest, the other series the top features (at most "
    f"{gates.GAUGE_TOP_FEATURES})",
    ["namespace", "schedule", "feature"],
)


@kopf.on.event(GROUP, VERSION, "trainingschedules")
async def trainingschedule_event(type: str, namespace: str | None, name: str, **_: Any) -> None:
    """Trigger: any event of a TrainingSchedule. Effect: one engine pass; a deleted one is forgotten (its
    runs go by garbage collection)."""
    object_event(KIND, type, namespace, name)


@kopf.on.event(GROUP, VERSION, "trainingruns", id="trainingschedule-child")
async def child_run_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """Trigger: any event of a TrainingRun (its own handler reconciles the run). Effect: a pass of the
    schedule controlling it, if one does."""
    owner = k8s.controller_of(dict(body))
    if namespace and owner and owner[0] == KIND:
        ENGINE.trigger(KIND, namespace, owner[1])


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
        # The children by their label (not every run of the namespace); the names this pass may create are
        # looked up one by one, so a run someone else holds under such a name is seen too.
        labelled = await kube.list_training_runs(namespace, {decide.LABEL_SCHEDULE: name})
        runs = [r for r in labelled if k8s.owned_by(r, uid)]
        taken: set[str] = set()
        for child in decide.names_to_check(body, now):
            if any(r["metadata"]["name"] == child for r in runs):
                continue
            found = await kube.get_training_run(namespace, child)
            if found is None:
                continue
            if k8s.owned_by(found, uid):  # our child, its label removed
                runs.append(found)
            else:
                taken.add(child)
        facts = ScheduleFacts(body=body, runs=runs, taken=taken, memory=dict(memory))
        when = (body.get("spec") or {}).get("when") or {}
        # Listed even without spec.when: gate Jobs of a schedule whose gates were removed are cleaned up too.
        selector = {gates.LABEL_SCHEDULE: name, k8s.LABEL_COMPONENT: k8s.COMPONENT_GATE}
        for job in await kube.list_jobs(namespace, selector):
            if not k8s.owned_by(job, uid):
                continue
            job_name = str(job["metadata"]["name"])
            finished = k8s.job_state(job) != k8s.JOB_RUNNING
            pods = await kube.list_job_pods(namespace, job_name) if finished else []
            facts.gate_jobs[job_name] = gates.gate_job_facts(job, pods)
        if isinstance(when, dict) and when.get("drift"):
            facts.versions = await kube.list_model_versions(namespace)
        return facts

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
            TICKS.labels(namespace, d["decision"].lower(), d["reason"]).inc(1)
            if (d.get("gate") or {}).get("maxPsi") is not None:
                _set_drift(namespace, meta["name"], d["gate"])
        if plan.missed:
            TICKS.labels(namespace, "missed", "Missed").inc(plan.missed)
        if plan.status:
            await kube.patch_child(KIND, namespace, meta["name"], {"status": plan.status})
            metrics.STATUS_WRITES.labels(KIND).inc()
        for event in plan.events:
            k8s.post_event(facts.body, event)

    def forget(self, namespace: str, name: str) -> None:
        for feature in _DRIFT_SERIES.pop((namespace, name), set()):
            with contextlib.suppress(KeyError):
                DRIFT_PSI.remove(namespace, name, feature)

    def key_of_child(self, labels: Mapping[str, str], owner: str) -> str:
        return owner


#: The gauge's feature labels per schedule (bounded: 'max' and the top features of the last gated tick).
_DRIFT_SERIES: dict[tuple[str, str], set[str]] = {}


def _set_drift(namespace: str, name: str, gate: Mapping[str, Any]) -> None:
    """kubetrain_model_drift_psi of the last gated tick: 'max' and the top features; older features' series go."""
    values = {"max": float(gate["maxPsi"])}
    for entry in (gate.get("top") or [])[: gates.GAUGE_TOP_FEATURES]:
        values.setdefault(str(entry["feature"])[:120], float(entry["psi"]))
    old = _DRIFT_SERIES.get((namespace, name), set())
    for feature in old - set(values):
        with contextlib.suppress(KeyError):
            DRIFT_PSI.remove(namespace, name, feature)
    for feature, value in values.items():
        DRIFT_PSI.labels(namespace, name, feature).set(value)
    _DRIFT_SERIES[(namespace, name)] = set(values)


ENGINE.register(TrainingScheduleReconciler())
