"""The trainer Job of a TrainingRun, built by a pure function of (run, uid, settings).

Nothing here talks to the API server: ``build_trainer_job`` returns the manifest as a dict, so unit
tests (and a golden file) pin it down exactly.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubetrain_api.models import API_VERSION, TrainingRun, parse_quantity
from kubetrain_trainer import contract

from .. import k8s
from ..settings import Settings
from .promotion import Champion

TRAINER_CONTAINER = "trainer"


def job_name(run_name: str, uid: str) -> str:
    """``<run name>-<4 hex of sha256(uid)>``: stable for a run, new for a re-created run of the same name.

    Run names are at most 52 characters (CRD), so this is at most 57, and pod names of a non-indexed Job
    (``<job>-<5 random>``) keep the job-name label within 63.
    """
    return f"{run_name}-{hashlib.sha256(uid.encode()).hexdigest()[:4]}"


def _pvc_parts(uri: str) -> tuple[str, str]:
    return k8s.pvc_parts(uri) or ("", "")


def effective_output(run: TrainingRun, settings: Settings) -> str:
    """The output base URI: the spec's, else the operator's default."""
    return run.spec.output.uri if run.spec.output else settings.default_output


def output_problem(uri: str, field: str = "spec.output.uri") -> str | None:
    """Why an output base cannot outlive the trainer's pod, or None when it can (pvc://, s3://).

    A file:// path is a directory inside the pod: its root filesystem is read-only and its only writable
    place, /tmp, is an emptyDir deleted with the pod, and no volume is mounted anywhere else but the claims
    of pvc:// URIs. A model written there would be registered and then gone.
    """
    if not uri.startswith("file://"):
        return None
    return (
        f"{field} {uri!r}: a file:// path is inside the trainer pod, which keeps nothing after it ends (its "
        "only writable place, /tmp, is deleted with the pod), so the model would be lost; write to a "
        "PersistentVolumeClaim (pvc://<claim>/<path>) or an object store (s3://<bucket>/<prefix>) instead"
    )


def claim_mounts(run: TrainingRun, settings: Settings, champion: Champion | None = None) -> list[k8s.Volume]:
    """Claims the pod needs: the dataset's and the champion's (read-only unless also the output's) and the
    output's."""
    writable: set[str] = set()
    claims: list[str] = []
    out = effective_output(run, settings)
    if out.startswith("pvc://"):
        claim = _pvc_parts(out)[0]
        writable.add(claim)
        claims.append(claim)
    for uri in (run.spec.dataset.uri, champion.uri if champion else ""):
        if uri.startswith("pvc://"):
            claim = _pvc_parts(uri)[0]
            if claim and claim not in claims:
                claims.append(claim)
    return [
        k8s.Volume(f"pvc-{i}", claim, f"{settings.pvc_mount_root}/{claim}", claim not in writable)
        for i, claim in enumerate(sorted(claims))
    ]


def dataset_path(run: TrainingRun, settings: Settings) -> str | None:
    """Path of a pvc:// dataset inside the pod; None for other schemes (the trainer fetches those)."""
    if not run.spec.dataset.uri.startswith("pvc://"):
        return None
    claim, path = _pvc_parts(run.spec.dataset.uri)
    return f"{settings.pvc_mount_root}/{claim}/{path}"


def output_dir(run: TrainingRun, settings: Settings) -> str | None:
    """This run's artifact directory inside the pod (``<output>/<run name>``); None for s3:// (uploaded)."""
    out = effective_output(run, settings)
    name = run.metadata["name"]
    if out.startswith("pvc://"):
        claim, path = _pvc_parts(out)
        return "/".join(p for p in (settings.pvc_mount_root, claim, path, name) if p)
    if out.startswith("file://"):
        return f"{out.removeprefix('file://').rstrip('/')}/{name}"
    return None


def config_json(run: TrainingRun, uid: str) -> str:
    """The TrainingRun manifest the trainer reads from KUBETRAIN_CONFIG (spec with defaults resolved)."""
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "TrainingRun",
        "metadata": {"name": run.metadata["name"], "namespace": run.metadata.get("namespace"), "uid": uid},
        "spec": run.spec.dump(),
    }
    return json.dumps(manifest, separators=(",", ":"), sort_keys=True)


def trainer_env(
    run: TrainingRun, uid: str, settings: Settings, champion: Champion | None = None
) -> list[dict[str, Any]]:
    """The trainer container's environment (names from the trainer contract); the champion of
    spec.register.promote when a version holds its alias."""
    env: list[dict[str, Any]] = [
        {"name": contract.ENV_CONFIG, "value": config_json(run, uid)},
        {"name": contract.ENV_RUN_NAME, "value": run.metadata["name"]},
        {"name": contract.ENV_OUTPUT_URI, "value": effective_output(run, settings)},
        {"name": contract.ENV_PVC_ROOT, "value": settings.pvc_mount_root},
        {"name": contract.ENV_TERMINATION_LOG, "value": k8s.TERMINATION_MESSAGE_PATH},
        {
            "name": contract.ENV_CPU_LIMIT,
            "valueFrom": {"resourceFieldRef": {"containerName": TRAINER_CONTAINER, "resource": "limits.cpu"}},
        },
        {"name": "HOME", "value": k8s.TMP_DIR},
        {"name": contract.ENV_IMAGE, "value": run.spec.image or settings.trainer_image},
    ]
    env.extend(tracking_env(settings))
    ds = dataset_path(run, settings)
    if ds:
        env.append({"name": contract.ENV_DATASET_PATH, "value": ds})
    out = output_dir(run, settings)
    if out:
        env.append({"name": contract.ENV_OUTPUT_DIR, "value": out})
    if champion is not None:
        env.extend(champion.env())
    return env


def tracking_env(settings: Settings) -> list[dict[str, Any]]:
    """The operator's MLflow defaults; the trainer applies spec.tracking.mlflow over them field by field."""
    env: list[dict[str, Any]] = []
    if settings.mlflow_tracking_uri:
        env.append({"name": contract.ENV_MLFLOW_TRACKING_URI, "value": settings.mlflow_tracking_uri})
    if settings.mlflow_experiment:
        env.append({"name": contract.ENV_MLFLOW_EXPERIMENT, "value": settings.mlflow_experiment})
    if settings.mlflow_required:
        env.append({"name": contract.ENV_MLFLOW_REQUIRED, "value": "true"})
    return env


def resources(run: TrainingRun, settings: Settings) -> dict[str, Any]:
    """requests/limits with the operator's defaults filled in; GPUs as nvidia.com/gpu limits."""
    spec = run.spec.resources
    requests = dict(settings.default_requests)
    limits = dict(settings.default_limits)
    if spec.requests:
        requests.update({k: str(v) for k, v in spec.requests.dump().items()})
    if spec.limits:
        limits.update({k: str(v) for k, v in spec.limits.dump().items()})
    # A request above the default limit would be refused: an explicit request raises a default limit.
    for res in ("cpu", "memory"):
        if parse_quantity(requests[res]) > parse_quantity(limits[res]):
            if spec.limits and getattr(spec.limits, res) is not None:
                requests[res] = limits[res]
            else:
                limits[res] = requests[res]
    if spec.gpus:
        limits["nvidia.com/gpu"] = str(spec.gpus)
    return {"requests": requests, "limits": limits}


def tolerations(run: TrainingRun, settings: Settings) -> list[dict[str, Any]]:
    out = [t.dump() for t in run.spec.tolerations or []]
    if run.spec.resources.gpus > 0 and not any(t.get("key") == settings.gpu_toleration_key for t in out):
        out.append({"key": settings.gpu_toleration_key, "operator": "Exists", "effect": "NoSchedule"})
    return out


def labels(run: TrainingRun) -> dict[str, str]:
    return k8s.child_labels(
        k8s.COMPONENT_TRAINER, **{k8s.LABEL_RUN: run.metadata["name"], k8s.LABEL_MODEL: run.spec.model}
    )


def desired_suspend(run: TrainingRun) -> bool | None:
    """The Job's spec.suspend the operator wants; None = leave it to Kueue (queued run, not suspended)."""
    if run.spec.suspend:
        return True
    if run.spec.queue_name:
        return None
    return False


def trainer_container(run: TrainingRun, uid: str, settings: Settings, champion: Champion | None) -> dict[str, Any]:
    """The trainer container: the contract's command and environment, the run's resources."""
    spec = run.spec
    return k8s.restricted_container(
        TRAINER_CONTAINER,
        spec.image or settings.trainer_image,
        settings.image_pull_policy,
        command=list(contract.RUN_COMMAND),
        env=trainer_env(run, uid, settings, champion),
        **({"envFrom": [e.dump() for e in spec.env_from]} if spec.env_from else {}),
        resources=resources(run, settings),
    )


def trainer_pod_spec(run: TrainingRun, uid: str, settings: Settings, champion: Champion | None) -> dict[str, Any]:
    """The restricted pod spec with the run's scheduling fields."""
    spec = run.spec
    pod_spec = k8s.restricted_pod_spec(
        trainer_container(run, uid, settings, champion),
        claim_mounts(run, settings, champion),
        spec.service_account_name,
    )
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    tols = tolerations(run, settings)
    if tols:
        pod_spec["tolerations"] = tols
    if spec.affinity:
        pod_spec["affinity"] = spec.affinity
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    return pod_spec


def trainer_job_spec(run: TrainingRun, uid: str, settings: Settings, champion: Champion | None) -> dict[str, Any]:
    spec = run.spec
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "podFailurePolicy": k8s.fail_fast_policy(TRAINER_CONTAINER),
        "suspend": bool(spec.suspend or spec.queue_name),
        "template": {"metadata": {"labels": labels(run)}, "spec": trainer_pod_spec(run, uid, settings, champion)},
    }
    parallelism = spec.search.parallelism if spec.search else 1
    if parallelism > 1:
        job_spec.update(completionMode="Indexed", completions=parallelism, parallelism=parallelism)
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return job_spec


def build_trainer_job(
    run: TrainingRun, uid: str, settings: Settings, champion: Champion | None = None
) -> dict[str, Any]:
    """The trainer Job manifest of ``run`` (whose metadata.uid is ``uid``); ``champion`` is the version
    holding the alias of spec.register.promote, scored by the trainer beside the new model."""
    name = run.metadata["name"]
    job_labels = labels(run)
    if run.spec.queue_name:
        job_labels[k8s.LABEL_QUEUE] = run.spec.queue_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, uid),
            "namespace": run.metadata.get("namespace"),
            "labels": job_labels,
            "annotations": {k8s.LABEL_RUN_UID: uid},
            "ownerReferences": [k8s.owner_reference("TrainingRun", {"name": name, "uid": uid})],
        },
        "spec": trainer_job_spec(run, uid, settings, champion),
    }
