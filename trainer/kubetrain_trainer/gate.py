"""``python -m kubetrain_trainer gate``: what a TrainingSchedule's tick needs to decide whether to train.

Reads the TrainingRun manifest of the tick (``KUBETRAIN_CONFIG``, as a run would) and reports, never trains:

- the dataset's source fingerprint (``profile.source_fingerprint``: ETag and size for object stores and
  HTTPS, sha256 of the bytes for files), without reading the table;
- with ``KUBETRAIN_DRIFT_REFERENCE_*`` (the ModelVersion holding ``spec.when.drift.against``): that version's
  model file is checked against its sha256 (never unpickled), its ``profile.json`` against the sha256
  ``metadata.json`` lists, then the data is loaded and validated as a run would and the PSI of each
  feature computed against the profile.

The result (``contract.Result.gate``) goes to the termination message; exit 0 whatever it found. Bad data,
an unreachable store or a reference that fails its checksum end like a run's failure (exit 10-13).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import contract
from .artifacts import ArtifactRef, artifact_ref_from_env
from .config import RunConfig
from .errors import ConfigInvalid, VerifyFailed

#: The ModelVersion whose training-data profile the data is compared with.
Reference = ArtifactRef


def reference_from_env() -> Reference | None:
    return artifact_ref_from_env(
        contract.ENV_DRIFT_REFERENCE_URI,
        contract.ENV_DRIFT_REFERENCE_SHA256,
        contract.ENV_DRIFT_REFERENCE_NAME,
        "reference",
    )


def dataset_fingerprint(cfg: RunConfig) -> str:
    """The dataset's source fingerprint as text; ``$KUBETRAIN_DATASET_PATH`` (a mounted claim) wins."""
    from .profile import fingerprint_text, source_fingerprint

    env = os.environ.get(contract.ENV_DATASET_PATH)
    uri = Path(env).resolve().as_uri() if env else cfg.spec.dataset.uri
    return fingerprint_text(source_fingerprint(uri), contract.GATE_FINGERPRINT_MAX)


def _artifact_dir(ref: Reference, scratch: Path) -> Path:
    """A local directory holding the reference's model.joblib, metadata.json and profile.json."""
    from .data import local_path

    field = contract.ENV_DRIFT_REFERENCE_URI
    uri = ref.uri.rstrip("/")
    base = uri.rsplit("/", 1)[0] if uri.endswith(".joblib") else uri
    local = local_path(base, field)
    if local is not None:
        return local
    if not base.startswith("s3://"):
        raise ConfigInvalid(f"{field} {ref.uri!r}: a reference is read from pvc://, file:// or s3://")
    import fsspec

    dest = scratch / "reference"
    dest.mkdir(parents=True, exist_ok=True)
    fs, root = fsspec.core.url_to_fs(base)
    for name in (contract.MODEL_FILE, contract.METADATA_FILE, contract.PROFILE_FILE):
        try:
            fs.get_file(f"{root}/{name}", str(dest / name))
        except FileNotFoundError:
            if name == contract.MODEL_FILE:
                raise VerifyFailed(f"reference {ref.name}: model not found at {ref.uri}") from None
    return dest


def reference_profile(ref: Reference, scratch: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(profile, None), or (None, why there is none). A model or profile whose sha256 does not match is
    VerifyFailed: the gate does not compare against an artifact it cannot trust."""
    from .artifacts import sha256_file

    directory = _artifact_dir(ref, scratch)
    model = directory / contract.MODEL_FILE
    if not model.is_file():
        raise VerifyFailed(f"reference {ref.name}: model file {model} not found")
    actual = sha256_file(model)
    if actual != ref.sha256.strip().lower():
        raise VerifyFailed(
            f"reference {ref.name}: checksum mismatch for {contract.MODEL_FILE}: expected {ref.sha256}, got {actual}"
        )
    try:
        metadata = json.loads((directory / contract.METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None, f"reference {ref.name} has no readable {contract.METADATA_FILE}"
    entry = metadata.get("profile") if isinstance(metadata, dict) else None
    if not isinstance(entry, dict) or not entry.get("sha256"):
        return None, f"reference {ref.name} has no feature profile (trained before profiles were stored)"
    path = directory / str(entry.get("file") or contract.PROFILE_FILE)
    if not path.is_file():
        raise VerifyFailed(f"reference {ref.name}: {path.name} listed in {contract.METADATA_FILE} but missing")
    digest = sha256_file(path)
    if digest != str(entry["sha256"]).lower():
        raise VerifyFailed(
            f"reference {ref.name}: checksum mismatch for {path.name}: expected {entry['sha256']}, got {digest}"
        )
    return json.loads(path.read_text()), None


def run_gate(cfg: RunConfig, scratch: Path) -> contract.Result:
    """The gate's result (raises TrainerError subclasses on bad config, data or reference)."""
    from . import stages
    from .profile import drift

    fingerprint = dataset_fingerprint(cfg)
    report: contract.GateReport = {"fingerprint": fingerprint}
    message = f"dataset {cfg.spec.dataset.uri}: fingerprint {fingerprint}"
    ref = reference_from_env()
    if ref is not None:
        profile, problem = reference_profile(ref, scratch)
        if profile is None:
            report["problem"] = (problem or "")[: contract.PROMOTION_PROBLEM_MAX]
            message += f"; no drift check: {problem}"
        else:
            prepared = stages.prepare(cfg, stages.load(cfg, scratch))
            found = drift(profile, prepared.X, top=contract.GATE_TOP_FEATURES)
            report["drift"] = {
                "against": ref.name[:253],
                "max_psi": round(found.max_psi, 6),
                "top": [{"feature": f[: contract.GATE_NAME_MAX], "psi": round(v, 6)} for f, v in found.top],
                "missing_features": [f[: contract.GATE_NAME_MAX] for f in found.missing_features][
                    : contract.GATE_TOP_FEATURES
                ],
                "rows": len(prepared.X),
            }
            top = ", ".join(f"{f}={v:.3g}" for f, v in found.top[:3])
            message += f"; PSI against {ref.name}: max {found.max_psi:.4g} ({top})"
    return contract.Result(
        outcome=contract.OUTCOME_SUCCEEDED,
        reason=contract.REASON_GATE_CHECKED,
        message=message,
        exit_code=contract.EXIT_OK,
        dataset={"uri": cfg.spec.dataset.uri, "source": fingerprint},
        gate=report,
    )
