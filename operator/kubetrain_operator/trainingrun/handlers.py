"""TrainingRun on the engine: the kopf trigger, ``gather`` (reads) and ``act`` (the run's own writes).

Every trigger — a change of the run, of its Job or of one of the Job's pods (routed by ``routing``), a
requeue — ends in one engine pass: gather → ``decide.decide`` → act. After a restart the initial listing
fires ``on.event`` for every run, which re-checks it; kopf writes no annotations and adds no finalizer.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kubetrain_api.models import GROUP, VERSION

from .. import k8s, kube, metrics, nodeloss
from ..engine import ENGINE, Again, Plan, object_event
from ..settings import Settings, get_settings
from . import children, decide, status
from .decide import RunFacts, RunPlan

log = logging.getLogger("kubetrain.trainingrun")
KIND = "TrainingRun"


@kopf.on.event(GROUP, VERSION, "trainingruns")
async def trainingrun_event(type: str, namespace: str | None, name: str, **_: Any) -> None:
    """Trigger: any event of a TrainingRun (creation, spec change, our own status writes, the initial
    listing after a restart). Effect: one engine pass; a deleted run is forgotten (its Job goes by GC)."""
    object_event(KIND, type, namespace, name)


class TrainingRunReconciler:
    """gather/decide/act of a TrainingRun (key: the run's name)."""

    kind = KIND
    pod_label: str | None = k8s.LABEL_RUN

    async def gather(self, namespace: str, name: str, memory: Mapping[str, Any], now: dt.datetime) -> RunFacts | None:
        body = await kube.get_training_run(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        facts = RunFacts(body=body, memory=dict(memory))
        run = decide.try_parse(body, get_settings())
        if isinstance(run, str):
            return facts
        if facts.current.get("phase") in status.TERMINAL_PHASES:
            await _gather_finished(facts, run)
        else:
            await _gather_running(facts, run, now)
        return facts

    def decide(self, facts: RunFacts, settings: Settings, now: dt.datetime) -> Plan:
        return decide.decide(facts, settings, now)

    async def act(self, facts: RunFacts, plan: Plan, memory: dict[str, Any]) -> None:
        assert isinstance(plan, RunPlan)
        meta = facts.meta
        if plan.create:
            log.info("%s/%s: created Job %s", meta["namespace"], meta["name"], plan.create[0]["metadata"]["name"])
        if plan.register is not None:
            await _register(facts, plan, memory)
        for pod, pod_status in plan.fail_pods:
            log.warning("%s/%s: pod %s: %s", meta["namespace"], meta["name"], pod, pod_status["status"]["message"])
            await kube.fail_pod(meta["namespace"], pod, pod_status)
        if plan.status:
            log.debug("%s/%s: status patch %s", meta["namespace"], meta["name"], plan.status)
            await kube.patch_training_run_status(meta["namespace"], meta["name"], plan.status)
            _count_write(meta["namespace"], plan)
        for event in plan.events:
            k8s.post_event(facts.body, event)
        metrics.observe_phase(meta["namespace"], meta["name"], plan.desired.get("phase") or facts.current.get("phase"))
        if plan.register is not None:
            # Its ModelVersion trusts it once this status (with the model's sha256) is stored: look now.
            ENGINE.trigger("ModelVersion", meta["namespace"], plan.register["spec"]["model"])

    def forget(self, namespace: str, name: str) -> None:
        metrics.observe_phase(namespace, name, None)

    def key_of_child(self, labels: Mapping[str, str], owner: str) -> str:
        return owner


async def _gather_running(facts: RunFacts, run: Any, now: dt.datetime) -> None:
    """The Job and its pods, then the reads the run's state asks for."""
    meta = facts.meta
    namespace, jname = meta["namespace"], children.job_name(meta["name"], meta["uid"])
    facts.job = await kube.get_job(namespace, jname)
    if decide.wants_champion(facts.current, facts.job, run):
        facts.versions = await kube.list_model_versions(namespace)  # the alias's holder is the champion
    if facts.job is None:
        return
    facts.pods = await kube.list_job_pods(namespace, jname)
    outcome = status.observe(run, facts.job, facts.pods, now)
    if outcome.delete_job:  # the start-up deadline: its reason (Unschedulable, ImagePullFailed) from the API
        facts.pods = await kube.list_job_pods(namespace, jname, fresh=True)
        outcome = status.observe(run, facts.job, facts.pods, now)
    elif outcome.phase == status.SUCCEEDED and outcome.result is None:
        # The Job is Complete but the watched pods do not show the trainer's result (termination message) yet:
        # the pods' watch lags the Jobs' (e.g. reconnecting). The result comes from the API, or the run would
        # be written Succeeded without its metrics and model, for good.
        facts.pods = await kube.list_job_pods(namespace, jname, fresh=True)
        outcome = status.observe(run, facts.job, facts.pods, now)
    settings = get_settings()
    if not outcome.terminal:
        for node in nodeloss.nodes_to_read(facts.pods, settings.node_lost_seconds):
            facts.nodes[node] = await kube.get_node(node)
    if outcome.phase == status.QUEUED:
        facts.queue_detail = await kube.kueue_admission_message(namespace, facts.job["metadata"]["uid"])
    elif decide.wants_log_tail(outcome) and outcome.failed_pod:
        container = children.TRAINER_CONTAINER
        facts.log_tail = await kube.pod_log_tail(namespace, outcome.failed_pod, container, settings.log_tail_lines)
    elif outcome.phase == status.SUCCEEDED and _registers(run, outcome.result):
        facts.versions = await kube.list_model_versions(namespace)
    pod = decide.progress_pod(outcome, facts.pods, facts.memory, settings, now)
    if pod:
        text = await kube.pod_log_tail(namespace, pod, children.TRAINER_CONTAINER, decide.PROGRESS_LOG_LINES)
        facts.progress_log = text or ""


async def _gather_finished(facts: RunFacts, run: Any) -> None:
    """Loose ends only: the Job of an operator-decided failure; Job, pods and versions for a registration."""
    current, namespace = facts.current, facts.meta["namespace"]
    jname = current.get("jobName")
    failure = (current.get("failure") or {}).get("reason")
    operator_failed = current.get("phase") == status.FAILED and failure in status.OPERATOR_DECIDED_FAILURES
    if not (operator_failed or decide.needs_registration(current, run)):
        return
    facts.job = await kube.get_job(namespace, jname) if jname else None
    if operator_failed:
        return
    if facts.job is not None and jname:
        facts.pods = await kube.list_job_pods(namespace, jname)
    facts.versions = await kube.list_model_versions(namespace)


async def _register(facts: RunFacts, plan: RunPlan, memory: dict[str, Any]) -> None:
    """Create the run's ModelVersion; AlreadyExists → gather again (adopt, or the next number); another
    failure is remembered (the next pass shows it and retries later)."""
    assert plan.register is not None
    meta = facts.meta
    try:
        await kube.create(plan.register)
    except Exception as exc:
        if kube.is_already_exists(exc):
            raise Again(f"ModelVersion {plan.register['metadata']['name']} already exists") from exc
        log.exception("%s/%s: registering the model failed", meta["namespace"], meta["name"])
        message = f"creating the ModelVersion failed: {type(exc).__name__}: {exc}"[:1000]
        memory[decide.MEM_REGISTRATION_ERROR] = (message, k8s.now())
        k8s.post_event(facts.body, k8s.Event.warning(status.REASON_REGISTRATION_FAILED, message))
        raise Again("registration failed") from exc
    memory.pop(decide.MEM_REGISTRATION_ERROR, None)


def _registers(run: Any, result: Any) -> bool:
    return bool(result is not None and run.spec.registration.enabled and (result.model or {}).get("sha256"))


def _count_write(namespace: str, plan: RunPlan) -> None:
    metrics.STATUS_WRITES.labels(KIND).inc()
    new = plan.transition[1]
    if not new:
        return
    desired = plan.desired
    metrics.RUN_TRANSITIONS.labels(namespace, new).inc()
    if new == status.FAILED:
        metrics.RUN_FAILURES.labels(namespace, (desired.get("failure") or {}).get("reason", "")).inc()
    t0, t1 = k8s.parse_time(desired.get("startTime")), k8s.parse_time(desired.get("completionTime"))
    if new in status.TERMINAL_PHASES and t0 and t1:
        metrics.RUN_DURATION.labels(namespace, new).observe((t1 - t0).total_seconds())


ENGINE.register(TrainingRunReconciler())
