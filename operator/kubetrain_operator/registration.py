"""Registration of a succeeded TrainingRun as a ModelVersion — exactly once, even across restarts.

1. A ModelVersion labelled ``kubetrain.io/run-uid=<uid>`` already exists → adopt it (a previous attempt
   created it and the operator died before recording it).
2. Else the next version number is max(version)+1 over the model's ModelVersions, listed FROM THE API
   (never a cache), and ``<model>-v<n>`` is created; AlreadyExists → try n+1.

The ModelVersion has no ownerReference: a version outlives the run that trained it. Its own lifecycle
(verification, aliases, retention) belongs to the ModelVersion controller.
"""

from __future__ import annotations

from typing import Any

from kubetrain_api.models import API_VERSION, ModelVersion, TrainingRun
from kubetrain_trainer import contract

from . import kube
from .jobs import LABEL_MODEL, LABEL_RUN, LABEL_RUN_UID, MANAGED_BY

MAX_CREATE_ATTEMPTS = 20
_RUNTIME_KEYS = {"python": "python", "sklearn": "scikitLearn", "joblib": "joblib", "pandas": "pandas", "numpy": "numpy"}


def model_version_name(model: str, version: int) -> str:
    return f"{model}-v{version}"


def next_version(existing: list[dict[str, Any]], model: str) -> int:
    """max(spec.version)+1 over the ModelVersions of ``model`` (1 for the first)."""
    versions = [
        int((mv.get("spec") or {}).get("version") or 0)
        for mv in existing
        if (mv.get("spec") or {}).get("model") == model
    ]
    return max(versions, default=0) + 1


def build_model_version(
    run: TrainingRun, uid: str, result: contract.Result, version: int, image: str
) -> dict[str, Any]:
    """The ModelVersion manifest for a successful run (validated through the typed API)."""
    name = run.metadata["name"]
    model = result.model or {}
    spec: dict[str, Any] = {
        "model": run.spec.model,
        "version": version,
        "artifact": {
            "uri": model["uri"],
            "sha256": model["sha256"],
            "format": model.get("format") or contract.MODEL_FORMAT,
        },
        "source": {
            "trainingRun": {"name": name, "uid": uid},
            "image": image,
            "dataset": run.spec.dataset.uri,
            "estimator": result.estimator or run.spec.estimator.name,
            "params": result.best_params if result.best_params is not None else dict(run.spec.estimator.params),
        },
        "aliases": list(run.spec.registration.aliases),
    }
    # How to read the artifact, should the version ever need verifying (e.g. its run was deleted first).
    if run.spec.env_from:
        spec["envFrom"] = [e.dump() for e in run.spec.env_from]
    if run.spec.service_account_name:
        spec["serviceAccountName"] = run.spec.service_account_name
    if model.get("size") is not None:
        spec["artifact"]["size"] = int(model["size"])
    fingerprint = (result.dataset or {}).get("fingerprint")
    if fingerprint:
        spec["source"]["datasetFingerprint"] = str(fingerprint)[:128]
    runtime = {_RUNTIME_KEYS[k]: str(v) for k, v in (result.versions or {}).items() if k in _RUNTIME_KEYS}
    if runtime:
        spec["runtime"] = runtime
    if result.metrics:
        spec["metrics"] = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    signature = getattr(result, "signature", None)
    if isinstance(signature, dict):
        spec["signature"] = signature
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": model_version_name(run.spec.model, version),
            "namespace": run.metadata.get("namespace"),
            "labels": {
                LABEL_MODEL: run.spec.model,
                LABEL_RUN: name,
                LABEL_RUN_UID: uid,
                "app.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "spec": spec,
    }
    return ModelVersion.model_validate(manifest).model_dump(by_alias=True, exclude_none=True, mode="json")


async def register(run: TrainingRun, uid: str, result: contract.Result, image: str) -> str:
    """Create (or adopt) the ModelVersion of a succeeded run; returns its name."""
    namespace = run.metadata["namespace"]
    adopted = await kube.list_model_versions(namespace, {LABEL_RUN_UID: uid})
    if adopted:
        return str(adopted[0]["metadata"]["name"])
    version = next_version(await kube.list_model_versions(namespace, {}), run.spec.model)
    for _ in range(MAX_CREATE_ATTEMPTS):
        manifest = build_model_version(run, uid, result, version, image)
        manifest.pop("status", None)
        try:
            created = await kube.create_model_version(manifest)
        except Exception as exc:
            if kube.is_already_exists(exc):
                version += 1
                continue
            raise
        return str(created["metadata"]["name"])
    raise RuntimeError(f"could not find a free version number for model {run.spec.model} after {version}")
