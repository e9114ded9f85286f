"""The Kubernetes conventions every kind of the operator follows, written once: labels, owner references,
the restricted pod of the trainer image, conditions, Events, time stamps, pvc:// URIs, Job states and the
termination message of a pod. Pure functions of dicts (nothing here calls the API)."""

from __future__ import annotations

import datetime as dt
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kopf
from kubetrain_api.models import API_VERSION, GROUP
from kubetrain_trainer import contract

# ---- labels (one constant per label) ---------------------------------------------------------------------
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN = "kubetrain.io/run"
LABEL_RUN_UID = "kubetrain.io/run-uid"
LABEL_MODEL = "kubetrain.io/model"
LABEL_MODEL_VERSION = "kubetrain.io/model-version"
LABEL_KUBETRAIN_COMPONENT = "kubetrain.io/component"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"
APP_NAME = "kubetrain"
MANAGED_BY = "kubetrain"

#: app.kubernetes.io/component of the pods of the trainer image, per child.
COMPONENT_TRAINER = "trainer"
COMPONENT_VERIFY = "model-verify"
COMPONENT_CLEANUP = "model-cleanup"
COMPONENT_GATE = "schedule-gate"  # a TrainingSchedule's gate pod (spec.when)
CHILD_COMPONENTS = (COMPONENT_TRAINER, COMPONENT_VERIFY, COMPONENT_CLEANUP, COMPONENT_GATE)
#: The server-side label selector of the Jobs and pods the operator watches (all its children, no others).
OWNED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT} in ({','.join(CHILD_COMPONENTS)})"

#: The finalizer of ModelVersions with ``deletionPolicy: Delete`` (kopf's name before the engine: compatible).
FINALIZER = "kubetrain.io/finalizer"


def child_labels(component: str, **extra: str) -> dict[str, str]:
    """The labels of every child object (Job and pod) of ``component``."""
    return {LABEL_NAME: APP_NAME, LABEL_COMPONENT: component, LABEL_MANAGED_BY: MANAGED_BY, **extra}


# ---- owner references ---------------------------------------------------------------------------------------


def owner_reference(kind: str, meta: Mapping[str, Any], *, block_deletion: bool = True) -> dict[str, Any]:
    """The controller ownerReference to one of our objects (``meta``: its metadata)."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": block_deletion,
    }


def controller_of(obj: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(kind, name, uid) of the kubetrain object controlling ``obj``, or None."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller") and str(ref.get("apiVersion", "")).startswith(GROUP + "/"):
            return str(ref.get("kind")), str(ref.get("name")), str(ref.get("uid"))
    return None


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether ``obj`` is controlled by the object with ``uid`` (AlreadyExists → adopt only then)."""
    owner = controller_of(obj)
    return owner is not None and owner[2] == uid


# ---- the restricted pod of the trainer image -------------------------------------------------------------------

#: The trainer image's user (Dockerfile.trainer): every pod of the image runs as it.
IMAGE_UID = 10001
TMP_DIR = "/tmp"
TERMINATION_MESSAGE_PATH = contract.DEFAULT_TERMINATION_LOG


@dataclass(frozen=True)
class Volume:
    """A PersistentVolumeClaim mounted into a pod."""

    name: str
    claim: str
    mount_path: str
    read_only: bool


def restricted_container(name: str, image: str, pull_policy: str, **fields: Any) -> dict[str, Any]:
    """A container under the restricted Pod Security profile (read-only root, ``/tmp`` an emptyDir)."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": pull_policy,
        **fields,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def restricted_pod_spec(
    container: dict[str, Any], volumes: Sequence[Volume], service_account: str | None, tmp_size: str | None = None
) -> dict[str, Any]:
    """The pod spec of a restricted pod of the trainer image running ``container`` with ``volumes``."""
    container["volumeMounts"] = [{"name": "tmp", "mountPath": TMP_DIR}] + [
        {"name": v.name, "mountPath": v.mount_path, "readOnly": v.read_only} for v in volumes
    ]
    return {
        "restartPolicy": "Never",
        **service_account_fields(service_account),
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": tmp_size} if tmp_size else {}}]
        + [{"name": v.name, "persistentVolumeClaim": {"claimName": v.claim, "readOnly": v.read_only}} for v in volumes],
    }


def service_account_fields(name: str | None) -> dict[str, Any]:
    """Pod spec fields for a ServiceAccount the user names (IRSA, workload identity): its token is mounted
    only then, never the namespace's default one."""
    return (
        {"automountServiceAccountToken": True, "serviceAccountName": name}
        if name
        else {"automountServiceAccountToken": False}
    )


def fail_fast_policy(container: str | None) -> dict[str, Any]:
    """podFailurePolicy: the trainer's terminal exit codes fail the Job at once; disruptions do not count."""
    on_exit: dict[str, Any] = {"operator": "In", "values": list(contract.TERMINAL_EXIT_CODES)}
    if container:
        on_exit = {"containerName": container, **on_exit}
    return {
        "rules": [
            {"action": "FailJob", "onExitCodes": on_exit},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


# ---- pvc:// URIs ------------------------------------------------------------------------------------------------


def pvc_parts(uri: str) -> tuple[str, str] | None:
    """``pvc://claim/a/b`` → ("claim", "a/b"); None for other schemes."""
    if not uri.startswith("pvc://"):
        return None
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    return claim, path.strip("/")


def pvc_mount(uri: str, mount_root: str) -> tuple[str, str, str] | None:
    """(claim, mount path of the claim, local path of the URI) of a pvc:// URI; None for other schemes."""
    parts = pvc_parts(uri)
    if parts is None:
        return None
    claim, path = parts
    mount = f"{mount_root.rstrip('/')}/{claim}"
    return claim, mount, posixpath.join(mount, path) if path else mount


# ---- time -------------------------------------------------------------------------------------------------------


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(value: dt.datetime, *, micro: bool = False) -> str:
    """RFC 3339 in UTC, whole seconds (``micro``: microseconds), as the API server writes times."""
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# ---- conditions (metav1.Condition) ----------------------------------------------------------------------------

#: metav1.Condition's limit for ``message``; every message the operator writes in status is capped at it.
MESSAGE_MAX = 32768


def condition(
    previous: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> dict[str, Any]:
    """The condition ``type_``; its lastTransitionTime moves only when ``status`` differs from ``previous``'s."""
    old = next((c for c in previous if c.get("type") == type_), None)
    kept = old.get("lastTransitionTime") if old and old.get("status") == status else None
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:MESSAGE_MAX],
        "lastTransitionTime": kept or now,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set in place (appended when absent)."""
    new = condition(conditions, type_, status, reason, message, generation, now)
    out = [new if c.get("type") == type_ else dict(c) for c in conditions]
    return out if any(c.get("type") == type_ for c in conditions) else [*out, new]


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch turning ``current`` into ``desired`` (top-level keys; None deletes)."""
    patch = {key: value for key, value in desired.items() if current.get(key) != value}
    patch.update({key: None for key in current if key not in desired})
    return patch


# ---- Events ------------------------------------------------------------------------------------------------------

EVENT_MESSAGE_MAX = 1024


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on an object."""

    type: str
    reason: str
    message: str

    @classmethod
    def normal(cls, reason: str, message: str) -> Event:
        return cls("Normal", reason, message)

    @classmethod
    def warning(cls, reason: str, message: str) -> Event:
        return cls("Warning", reason, message)


def post_event(obj: Mapping[str, Any], event: Event) -> None:
    """Post ``event`` on ``obj`` (kopf sends it in the background)."""
    body: Any = dict(obj)
    kopf.event(body, type=event.type, reason=event.reason, message=event.message[:EVENT_MESSAGE_MAX])


# ---- Jobs and pods -----------------------------------------------------------------------------------------------

JOB_RUNNING = "running"
JOB_SUCCEEDED = "succeeded"
JOB_FAILED = "failed"


def job_condition(job: Mapping[str, Any], *types: str) -> dict[str, Any] | None:
    """The first condition of ``job`` whose type is one of ``types`` and whose status is True."""
    for cond in (job.get("status") or {}).get("conditions") or ():
        if cond.get("type") in types and cond.get("status") == "True":
            return dict(cond)
    return None


def job_state(job: Mapping[str, Any]) -> str:
    """JOB_SUCCEEDED, JOB_FAILED or JOB_RUNNING (the Job controller's verdict, its early targets included)."""
    if job_condition(job, "Complete", "SuccessCriteriaMet"):
        return JOB_SUCCEEDED
    if job_condition(job, "Failed", "FailureTarget"):
        return JOB_FAILED
    return JOB_RUNNING


def container_status(pod: Mapping[str, Any], container: str) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or ():
        if cs.get("name") == container:
            return dict(cs)
    return {}


def terminated(pod: Mapping[str, Any], container: str) -> dict[str, Any]:
    """The container's ``terminated`` state (current, else the last one); {} when it never ended."""
    cs = container_status(pod, container)
    return dict((cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {})


def termination_message(pod: Mapping[str, Any], container: str) -> str:
    """What the container left in its termination message (the trainer's result, or the kubelet's log tail)."""
    return str(terminated(pod, container).get("message") or "")


def created(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("creationTimestamp") or "")
