"""The ModelVersion's phases, conditions, reasons and the status pieces derived from its spec (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetrain_api.models import primary_metric as headline_metric

PHASE_PENDING = "Pending"
PHASE_VERIFYING = "Verifying"
PHASE_READY = "Ready"
PHASE_FAILED = "Failed"

COND_ARTIFACT_VERIFIED = "ArtifactVerified"
COND_READY = "Ready"

REASON_VERIFIED_BY_TRAINER = "VerifiedByTrainer"
REASON_VERIFIED = "Verified"
REASON_VERIFYING = "Verifying"
REASON_CHECKSUM_MISMATCH = "ChecksumMismatch"
REASON_VERIFY_FAILED = "VerifyFailed"
REASON_VERSION_CONFLICT = "VersionConflict"
REASON_INVALID_SPEC = "InvalidSpec"


def primary_metric(spec: Mapping[str, Any]) -> str | None:
    """``name=value`` of the headline metric (the one rule of ``kubetrain_api.models.primary_metric``)."""
    return headline_metric(spec.get("metrics"), (spec.get("signature") or {}).get("task"))


def artifact_dir(uri: str) -> str:
    """The directory of the model file an artifact URI names (the URI itself when it names a directory:
    a last path segment without a dot)."""
    scheme, sep, rest = uri.rstrip("/").partition("://")
    head, slash, last = rest.rpartition("/")
    if slash and head.strip("/") and "." in last:
        return f"{scheme}{sep}{head}"
    return uri.rstrip("/")


def serving_hint(spec: Mapping[str, Any]) -> dict[str, Any]:
    """KServe hint: ``modelFormat: {name: sklearn, version: <major>}``, ``storageUri`` = the artifact's
    directory (it holds exactly one model file, model.joblib), and the runtime versions to match."""
    runtime = spec.get("runtime") or {}
    model_format = {"name": "sklearn"}
    sk = runtime.get("scikitLearn")
    if sk:
        model_format["version"] = str(sk).split(".")[0]
    hint: dict[str, Any] = {"modelFormat": model_format, "storageUri": artifact_dir(spec["artifact"]["uri"])}
    if runtime:
        hint["runtime"] = dict(runtime)
    return hint


def verify_failure_reason(message: str) -> str:
    """Status reason for a failed verification, from the trainer's result message."""
    return REASON_CHECKSUM_MISMATCH if "checksum mismatch" in message.lower() else REASON_VERIFY_FAILED


def report_fields(run: Mapping[str, Any] | None) -> dict[str, Any]:
    """``report`` and ``evaluation`` of a run-created version, copied from its TrainingRun's status (the
    trainer wrote report.html and evaluation.json next to the model); {} when the run has neither."""
    st = (run or {}).get("status") or {}
    return {k: st[k] for k in ("report", "evaluation") if st.get(k)}
