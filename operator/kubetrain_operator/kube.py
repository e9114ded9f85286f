"""The only module that talks to the Kubernetes API (lightkube ``AsyncClient``; never blocks the loop).

Functions take and return plain dicts (manifests as stored), so the rest of the operator stays pure.
``ApiError`` propagates; ``is_not_found`` / ``is_conflict`` / ``is_already_exists`` classify it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from kubetrain_api.models import GROUP, VERSION
from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Node, Pod, Secret
from lightkube.types import CascadeType, PatchType

from . import cache

FIELD_MANAGER = "kubetrain-operator"

TrainingRunResource = create_namespaced_resource(GROUP, VERSION, "TrainingRun", "trainingruns")
ModelVersionResource = create_namespaced_resource(GROUP, VERSION, "ModelVersion", "modelversions")
TrainingScheduleResource = create_namespaced_resource(GROUP, VERSION, "TrainingSchedule", "trainingschedules")
# Kueue's Workloads (read-only, optional): v1beta2 since Kueue 0.15, v1beta1 before.
KUEUE_WORKLOADS = [
    create_namespaced_resource("kueue.x-k8s.io", v, "Workload", "workloads") for v in ("v1beta2", "v1beta1")
]
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
log = logging.getLogger(__name__)

_client: AsyncClient | None = None
#: API requests of the operator in flight at once. httpx keeps 20 connections alive per client: more
#: requests at once open (and close) a TLS connection each — measured 11 % of the operator's CPU in TLS
#: handshakes during a burst of 1,000 runs, and ReadTimeouts from an API server flooded with them.
MAX_IN_FLIGHT = 20
_inflight: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None


def in_flight() -> asyncio.Semaphore:
    """The bound on concurrent API requests (one per event loop)."""
    global _inflight
    loop = asyncio.get_running_loop()
    if _inflight is None or _inflight[0] is not loop:
        _inflight = (loop, asyncio.Semaphore(MAX_IN_FLIGHT))
    return _inflight[1]


def client() -> AsyncClient:
    """The process-wide client (kubeconfig or in-cluster service account), created on first use."""
    global _client
    if _client is None:
        _client = AsyncClient(field_manager=FIELD_MANAGER)
    return _client


async def close() -> None:
    global _client
    if _client is not None:
        await _client.close()
        _client = None


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.status.code == 404


def is_already_exists(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.status.code == 409 and exc.status.reason == "AlreadyExists"


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.status.code == 409


def _dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else obj.to_dict()


# --- TrainingRun ---------------------------------------------------------------------------------------------


async def get_training_run(namespace: str, name: str) -> dict[str, Any] | None:
    """The run as last watched (``cache``), or from the API outside a running operator."""
    if cache.bound():
        return cache.training_run(namespace, name)
    try:
        async with in_flight():
            return _dict(await client().get(TrainingRunResource, name, namespace=namespace))
    except ApiError as exc:
        if is_not_found(exc):
            return None
        raise


async def patch_training_run_status(namespace: str, name: str, patch: dict[str, Any]) -> None:
    """JSON merge patch of the status subresource (no resourceVersion: our own fields only)."""
    await patch_child("TrainingRun", namespace, name, {"status": patch})


async def list_training_runs(namespace: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The namespace's TrainingRuns with ``labels`` (all without), from the API (a schedule's children)."""
    selector: dict[str, Any] | None = dict(labels) if labels else None
    async with in_flight():
        return [_dict(i) async for i in client().list(TrainingRunResource, namespace=namespace, labels=selector)]


# --- TrainingSchedule ---------------------------------------------------------------------------------------


async def get_training_schedule(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _dict(await client().get(TrainingScheduleResource, name, namespace=namespace))
    except ApiError as exc:
        if is_not_found(exc):
            return None
        raise


# --- Jobs and pods ---------------------------------------------------------------------------------------------


async def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    """The Job as last watched (``cache``), or from the API outside a running operator."""
    if cache.bound():
        return cache.job(namespace, name)
    try:
        async with in_flight():
            return _dict(await client().get(Job, name, namespace=namespace))
    except ApiError as exc:
        if is_not_found(exc):
            return None
        raise


async def list_jobs(namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
    """The namespace's Jobs with ``labels``, from the API (a schedule's gate Jobs: few, read at its passes)."""
    selector: dict[str, Any] = dict(labels)
    async with in_flight():
        return [_dict(j) async for j in client().list(Job, namespace=namespace, labels=selector)]


async def list_job_pods(namespace: str, job_name: str, *, fresh: bool = False) -> list[dict[str, Any]]:
    """The Job's pods as last watched (``cache``), or from the API outside a running operator or when
    ``fresh`` (a final decision from the pods' state must not rest on a watch that lags a busy API server)."""
    if cache.bound() and not fresh:
        return cache.job_pods(namespace, job_name)
    async with in_flight():
        pods = client().list(Pod, namespace=namespace, labels={"batch.kubernetes.io/job-name": job_name})
        return [_dict(p) async for p in pods]


async def get_node(name: str) -> dict[str, Any] | None:
    """A Node from the API (read only for the node of a pod that looks lost: rare, so not watched)."""
    try:
        async with in_flight():
            return _dict(await client().get(Node, name))
    except ApiError as exc:
        if is_not_found(exc):
            return None
        raise


async def fail_pod(namespace: str, name: str, status_patch: dict[str, Any]) -> None:
    """End a pod whose kubelet is gone: write its status (phase Failed, a DisruptionTarget condition), then
    delete it without a grace period (no kubelet will confirm a graceful one). A missing pod is fine."""
    try:
        async with in_flight():
            done = await client().patch(Pod.Status, name, status_patch, namespace=namespace, patch_type=PatchType.MERGE)
        cache.wrote(_dict(done))
        async with in_flight():
            await client().delete(Pod, name, namespace=namespace, grace_period=0)
    except ApiError as exc:
        if not is_not_found(exc):
            raise


# --- children of any kind (the engine's create / patch / delete) -----------------------------------------------

_RESOURCES: dict[str, Any] = {
    "Job": Job,
    "TrainingRun": TrainingRunResource,
    "ModelVersion": ModelVersionResource,
    "TrainingSchedule": TrainingScheduleResource,
}


async def create(manifest: dict[str, Any]) -> dict[str, Any]:
    """Create ``manifest`` (a Job, TrainingRun or ModelVersion); ApiError (AlreadyExists ...) propagates.
    The result is written through to the cache; on AlreadyExists the cache's copy is refreshed from the
    API first (it lagged: the pass that follows must see the object)."""
    resource = _RESOURCES[manifest["kind"]]
    obj: Any = resource.from_dict(manifest)
    try:
        async with in_flight():
            created = _dict(await client().create(obj))
    except ApiError as exc:
        if is_already_exists(exc) and cache.bound():
            meta = manifest["metadata"]
            with contextlib.suppress(ApiError):
                async with in_flight():
                    found = _dict(await client().get(resource, meta["name"], namespace=meta.get("namespace")))
                cache.wrote(found)
        raise
    cache.wrote(created)
    return created


async def patch_child(kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
    """JSON merge patch; a top-level ``status`` key patches the status subresource instead. A missing
    object is fine (it is gone: the next pass sees that)."""
    resource = _RESOURCES[kind]
    if set(patch) == {"status"}:
        resource = resource.Status
    try:
        async with in_flight():
            done = await client().patch(resource, name, patch, namespace=namespace, patch_type=PatchType.MERGE)
        cache.wrote(_dict(done))
    except ApiError as exc:
        if not is_not_found(exc):
            raise


async def delete_child(kind: str, namespace: str, name: str) -> None:
    """Delete an object (a Job with its pods, in the background); a missing one is fine."""
    try:
        async with in_flight():
            await client().delete(_RESOURCES[kind], name, namespace=namespace, cascade=CascadeType.BACKGROUND)
        cache.deleted(kind, namespace, name)
    except ApiError as exc:
        if not is_not_found(exc):
            raise


async def pod_log_tail(namespace: str, pod: str, container: str, lines: int) -> str | None:
    """Last ``lines`` lines of a container's log; None when the log cannot be read."""
    try:
        async with in_flight():
            log_lines = client().log(pod, namespace=namespace, container=container, tail_lines=lines)
            out = [line async for line in log_lines]
    except (ApiError, OSError, ValueError):
        return None
    except Exception:  # the log endpoint is best-effort (httpx errors, node gone)
        return None
    return "".join(out)


# --- ModelVersions ------------------------------------------------------------------------------------------------


async def list_model_versions(namespace: str) -> list[dict[str, Any]]:
    """Every ModelVersion of the namespace (hand-made ones may lack the model label: filter by spec.model),
    as last watched (``cache``), or from the API outside a running operator."""
    if cache.bound():
        return cache.model_versions(namespace)
    async with in_flight():
        return [_dict(i) async for i in client().list(ModelVersionResource, namespace=namespace)]


async def patch_model_version_status(namespace: str, name: str, patch: dict[str, Any]) -> None:
    """JSON merge patch of the ModelVersion status subresource (never the spec)."""
    await patch_child("ModelVersion", namespace, name, {"status": patch})


async def get_secret_data(namespace: str, name: str) -> dict[str, str] | None:
    """The decoded data of a Secret (the MLflow mirror's credentials); None when it does not exist."""
    import base64

    try:
        async with in_flight():
            secret = await client().get(Secret, name, namespace=namespace)
    except ApiError as exc:
        if is_not_found(exc):
            return None
        raise
    out = {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.data or {}).items()}
    return out


async def kueue_admission_message(namespace: str, job_uid: str) -> str | None:
    """Why Kueue has not admitted a Job yet: the message of its Workload's ``QuotaReserved=False``
    condition (e.g. "couldn't assign flavors ...: insufficient quota for cpu ..."). None when there is no
    such Workload yet, Kueue is not installed, or the operator may not read Workloads — it is a hint only."""
    for resource in KUEUE_WORKLOADS:
        try:
            items = [
                _dict(i)
                async for i in client().list(resource, namespace=namespace, labels={KUEUE_JOB_UID_LABEL: job_uid})
            ]
        except Exception as exc:  # a hint only: nothing here may fail the run's reconcile
            # An API group that is not served answers a plain-text 404, which lightkube raises as its HTTP
            # library's HTTPStatusError (not ApiError); a refused or unreachable server gives no hint either.
            if getattr(getattr(exc, "response", None), "status_code", None) == 404:
                continue  # this API version (or Kueue) is not served
            log.debug("cannot read Kueue Workloads in %s: %s", namespace, exc)
            return None
        for workload in items:
            for cond in (workload.get("status") or {}).get("conditions") or ():
                if cond.get("type") == "QuotaReserved" and cond.get("status") == "False" and cond.get("message"):
                    return str(cond["message"])
        return None
    return None
