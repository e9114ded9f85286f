"""ModelVersion on the engine: the kopf trigger, ``gather`` (reads) and ``act`` (Events) — see ``decide``.

The engine key is the model: an event of any version of it (its creation, a spec.aliases edit, its
deletion, our own status writes), of a verification or cleanup Job or pod (routed by ``routing``), or a
TrainingRun that registered a version of it, ends in one pass over all its versions. The operator writes
ModelVersion ``status`` only — never ``spec`` — plus the finalizer of ``deletionPolicy: Delete`` versions.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kubetrain_api.models import GROUP, VERSION

from .. import k8s, kube
from ..engine import ENGINE, Again, Plan
from ..mlflowmirror import mirror
from ..settings import Settings, get_settings
from . import children, decide
from .decide import ModelFacts, ModelPlan, VersionFacts

log = logging.getLogger("kubetrain.modelversion")
KIND = "ModelVersion"


@kopf.on.event(GROUP, VERSION, "modelversions")
async def modelversion_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """Trigger: any event of a ModelVersion (the initial listing after a restart included). Effect: one
    engine pass over every version of its model."""
    model = (body.get("spec") or {}).get("model")
    if namespace and model:
        ENGINE.trigger(KIND, namespace, str(model))


class ModelVersionReconciler:
    """gather/decide/act of the versions of one model (key: the model's name)."""

    kind = KIND
    pod_label: str | None = k8s.LABEL_MODEL_VERSION

    async def gather(
        self, namespace: str, model: str, memory: Mapping[str, Any], now: dt.datetime
    ) -> ModelFacts | None:
        everything = await kube.list_model_versions(namespace)
        mine = [o for o in everything if (o.get("spec") or {}).get("model") == model]
        if not mine:
            return None
        versions = [await _version_facts(namespace, obj) for obj in mine]
        settings = get_settings()
        facts = ModelFacts(namespace, model, versions, everything, dict(memory))
        if settings.mlflow_mirror:
            runs = {v.name: await _mirror_run(namespace, v) for v in versions}
            facts.mirror = await mirror.gather(namespace, model, mine, runs, memory, settings, now)
        return facts

    def decide(self, facts: ModelFacts, settings: Settings, now: dt.datetime) -> Plan:
        return decide.decide(facts, settings, now)

    async def act(self, facts: ModelFacts, plan: Plan, memory: dict[str, Any]) -> None:
        assert isinstance(plan, ModelPlan)
        for child in plan.delete:
            log.info("retention: deleted %s/%s (model %s)", child.namespace, child.name, facts.model)
        for obj, event in plan.posts:
            log.info("%s/%s: %s %s", facts.namespace, obj["metadata"]["name"], event.reason, event.message)
            k8s.post_event(obj, event)
        if plan.mirror is not None and plan.mirror.actions and facts.mirror is not None:
            written = await mirror.act(plan.mirror, facts.mirror, memory, get_settings(), k8s.now())
            if not written:  # the next pass reports it (Tracked=False) and backs off
                raise Again("an MLflow registry write failed")

    def forget(self, namespace: str, model: str) -> None:
        return None

    def key_of_child(self, labels: Mapping[str, str], owner: str) -> str:
        return labels.get(k8s.LABEL_MODEL) or owner


async def _version_facts(namespace: str, obj: dict[str, Any]) -> VersionFacts:
    """The reads one version's phase depends on: its run (lineage), its verification or cleanup Job, and the
    check Jobs of its protected-alias claims."""
    facts = VersionFacts(obj=obj)
    for _alias, _claim, name in decide.pending_checks(obj, frozenset(get_settings().protected_aliases)):
        job = await kube.get_job(namespace, name)
        message = None
        if job is not None and k8s.job_state(job) == k8s.JOB_FAILED:
            message = await _termination_message(namespace, name)
        facts.checks[name] = (job, message)
    if facts.deleting:
        if decide.wants_cleanup(obj) and k8s.FINALIZER in (obj["metadata"].get("finalizers") or ()):
            target = children.cleanup_target(obj)
            if target:
                facts.job = await kube.get_job(namespace, children.cleanup_job_name(obj, target))
        return facts
    if decide.settled(obj) or not (obj.get("spec") or {}).get("artifact"):
        return facts
    ref = decide.run_ref(obj)
    if ref is not None:
        facts.run = await kube.get_training_run(namespace, ref[0])
        if decide.trusted_lineage(facts) is True:
            return facts
    facts.job = await kube.get_job(namespace, children.verify_job_name(obj))
    if facts.job is not None and k8s.job_state(facts.job) == k8s.JOB_FAILED:
        facts.job_message = await _termination_message(namespace, facts.job["metadata"]["name"])
    return facts


async def _mirror_run(namespace: str, v: VersionFacts) -> dict[str, Any] | None:
    """The producing TrainingRun, while the version is not mirrored yet (its server and MLflow run id)."""
    if v.run is not None or v.deleting:
        return v.run
    if ((v.obj.get("status") or {}).get("tracking") or {}).get("version"):
        return None
    ref = decide.run_ref(v.obj)
    return await kube.get_training_run(namespace, ref[0]) if ref else None


async def _termination_message(namespace: str, job_name: str) -> str | None:
    """The trainer's result message (or the log tail the kubelet put there) of the Job's last pod."""
    pods = sorted(await kube.list_job_pods(namespace, job_name), key=k8s.created)
    for pod in reversed(pods):
        text = k8s.termination_message(pod, children.COMPONENT_VERIFY)
        if text:
            return decide.result_message(text)
    return None


ENGINE.register(ModelVersionReconciler())
