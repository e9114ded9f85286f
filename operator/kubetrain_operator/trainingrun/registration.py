"""The ModelVersion of a succeeded TrainingRun, built by pure functions (decide.py creates it exactly once).

1. A ModelVersion labelled ``kubetrain.io/run-uid=<uid>`` already exists → adopt it (a previous attempt
   created it and the operator died before recording it).
2. Else the next version number is max(version)+1 over the model's ModelVersions, listed FROM THE API
   (never a cache), skipping names already taken; ``<model>-v<n>`` is created; AlreadyExists → the facts
   were stale: gather again, which picks the next free number.

The ModelVersion has no ownerReference: a version outlives the run that trained it. Its own lifecycle
(verification, aliases, retention) belongs to the ModelVersion controller.
"""

from __future__ import annotations

from typing import Any

from kubetrain_api.models import API_VERSION, ModelVersion, Signature, TrainingRun
from kubetrain_trainer import contract
from pydantic import ValidationError

from .. import k8s
from . import promotion

_RUNTIME_KEYS = {"python": "python", "sklearn": "scikitLearn", "joblib": "joblib", "pandas": "pandas", "numpy": "numpy"}


def model_version_name(model: str, version: int) -> str:
    return f"{model}-v{version}"


def next_version(existing: list[dict[str, Any]], model: str) -> int:
    """max(spec.version)+1 over the ModelVersions of ``model`` (1 for the first), past names already taken."""
    versions = [
        int((mv.get("spec") or {}).get("version") or 0)
        for mv in existing
        if (mv.get("spec") or {}).get("model") == model
    ]
    taken = {(mv.get("metadata") or {}).get("name") for mv in existing}
    version = max(versions, default=0) + 1
    while model_version_name(model, version) in taken:
        version += 1
    return version


def adopted(existing: list[dict[str, Any]], uid: str) -> str | None:
    """The name of the ModelVersion an earlier pass created for the run ``uid``, if any."""
    for mv in existing:
        if ((mv.get("metadata") or {}).get("labels") or {}).get(k8s.LABEL_RUN_UID) == uid:
            return str(mv["metadata"]["name"])
    return None


def signature_of(result: contract.Result) -> dict[str, Any] | None:
    """The model's signature as the API's ``Signature`` accepts it ({features: [{name, dtype}], target}), from
    the trainer's result; None when the result has none (an older trainer image) or it does not fit."""
    raw = getattr(result, "signature", None)
    if not isinstance(raw, dict):
        return None
    features = [
        {"name": f.get("name"), "dtype": f.get("dtype")} for f in raw.get("features") or [] if isinstance(f, dict)
    ]
    try:
        sig = Signature.model_validate({"features": features, "target": raw.get("target"), "task": raw.get("task")})
    except ValidationError:
        return None
    return sig.model_dump(by_alias=True, exclude_none=True, mode="json")


def build_model_version(
    run: TrainingRun,
    uid: str,
    result: contract.Result,
    version: int,
    image: str,
    promoted: dict[str, Any] | None = None,
    *,
    image_digest: str | None = None,
) -> dict[str, Any]:
    """The ModelVersion manifest for a successful run (validated through the typed API). With a promotion
    record (spec.register.promote) it carries the decision as an annotation, and claims the alias when the
    decision is Promoted."""
    name = run.metadata["name"]
    manifest: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": model_version_name(run.spec.model, version),
            "namespace": run.metadata.get("namespace"),
            "labels": {
                k8s.LABEL_MODEL: run.spec.model,
                k8s.LABEL_RUN: name,
                k8s.LABEL_RUN_UID: uid,
                k8s.LABEL_MANAGED_BY: k8s.MANAGED_BY,
            },
        },
        "spec": model_version_spec(run, uid, result, version, image, image_digest),
    }
    if promoted is not None:
        manifest["metadata"]["annotations"] = {promotion.ANNOTATION_PROMOTION: promotion.annotation(promoted)}
        if promotion.promoted(promoted):
            manifest["spec"]["aliases"].append(str(promoted["alias"]))
    return ModelVersion.model_validate(manifest).model_dump(by_alias=True, exclude_none=True, mode="json")


def model_version_spec(
    run: TrainingRun, uid: str, result: contract.Result, version: int, image: str, image_digest: str | None = None
) -> dict[str, Any]:
    """artifact, lineage, runtime, metrics and signature of the run's model, and the aliases it asks for."""
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
    if image_digest:
        spec["source"]["imageDigest"] = image_digest
    fingerprint = (result.dataset or {}).get("fingerprint")
    if fingerprint:
        spec["source"]["datasetFingerprint"] = str(fingerprint)[:128]
    runtime = {_RUNTIME_KEYS[k]: str(v) for k, v in (result.versions or {}).items() if k in _RUNTIME_KEYS}
    if runtime:
        spec["runtime"] = runtime
    if result.metrics:
        spec["metrics"] = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    signature = signature_of(result)
    if signature:
        spec["signature"] = signature
    return spec
