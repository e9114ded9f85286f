"""A TrainingSchedule's gates (``spec.when``), as pure functions: the gate Job of a tick and its verdict.

At a tick with gates, ``decide`` starts the tick's gate Job (``gate_job``: the trainer image's ``gate``
command on the template's dataset, with the version holding ``drift.against`` as the reference) instead
of the run, and records it in ``status.gate``. The Job's name is derived from the tick (``gate_job_name``),
so a restart adopts the Job it already made. Once the Job has finished, ``verdict`` turns its result into
the tick's decision: start the run, or skip it (DataUnchanged, NoDrift, GateFailed). A gate that fails (bad
data, unreachable store, a reference that fails its checksum) skips the tick with a Warning: training on
data the gate could not read would fail the same way, and training blindly is what the gate is there to
avoid. The next tick checks again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetrain_api.models import TrainingRun, WhenSpec
from kubetrain_trainer import contract

from .. import k8s
from ..settings import Settings
from ..trainingrun import children as run_children
from ..trainingrun.promotion import Champion, champion_of
from .schedule import run_name

GATE_CONTAINER = "gate"
GATE_SUFFIX = "-gate"
GATE_DEADLINE_SECONDS = 600
GATE_TTL_SECONDS = 3600
#: Features per schedule in the kubetrain_model_drift_psi gauge (besides 'max'): bounded cardinality.
GAUGE_TOP_FEATURES = 3
#: The Job's label naming its schedule (the child runs carry the same label).
LABEL_SCHEDULE = "kubetrain.io/schedule"
ANNOTATION_TICK = "kubetrain.io/scheduled-time"

# Reasons of gated ticks (status.lastDecision.reason).
R_DATA_UNCHANGED, R_NO_DRIFT, R_GATE_FAILED, R_GATE_PENDING = "DataUnchanged", "NoDrift", "GateFailed", "GatePending"
R_DATA_CHANGED, R_DRIFTED, R_NO_BASELINE = "DataChanged", "Drifted", "NoBaseline"


def has_gates(when: WhenSpec | None) -> bool:
    return when is not None and (when.data_changed or when.drift is not None)


def gate_job_name(schedule_name: str, tick: Any) -> str:
    """``<child run name>-gate`` (at most 57 characters: pod names keep the job-name label within 63; a
    trainer Job's suffix is 4 hex digits, so the two never collide)."""
    return run_name(schedule_name, tick) + GATE_SUFFIX


def reference_of(versions: Sequence[Mapping[str, Any]], model: str, when: WhenSpec | None) -> Champion | None:
    """The ModelVersion holding ``drift.against`` now (None without a drift gate or a holder)."""
    if when is None or when.drift is None:
        return None
    return champion_of(versions, model, when.drift.against)


def last_fingerprint(runs: Sequence[Mapping[str, Any]]) -> tuple[str | None, str | None]:
    """(fingerprint, run) of the newest Succeeded child (``runs`` sorted by tick) that records one."""
    for run in reversed(runs):
        status = run.get("status") or {}
        if status.get("phase") == "Succeeded" and status.get("datasetFingerprint"):
            return str(status["datasetFingerprint"]), str(run["metadata"]["name"])
    return None, None


def gate_job(body: Mapping[str, Any], tick: Any, settings: Settings, reference: Champion | None) -> dict[str, Any]:
    """The tick's gate Job: the template's pod (image, dataset claim, envFrom, service account, resources,
    scheduling) running ``contract.GATE_COMMAND``, owned by the schedule, no retries, a deadline."""
    meta = body["metadata"]
    name = gate_job_name(meta["name"], tick)
    run = TrainingRun.model_validate(
        {"metadata": {"name": run_name(meta["name"], tick), "namespace": meta["namespace"]},
         "spec": body["spec"]["runTemplate"]["spec"]}
    )  # fmt: skip
    uid = str(meta.get("uid") or "")
    pod = run_children.trainer_pod_spec(run, uid, settings, reference)
    container = pod["containers"][0]
    env = [e for e in container["env"] if not e["name"].startswith("KUBETRAIN_CHAMPION_")]
    for var in env:  # the CPU limit is read from this container
        ref = (var.get("valueFrom") or {}).get("resourceFieldRef")
        if ref:
            ref["containerName"] = GATE_CONTAINER
    if reference is not None:
        env += [
            {"name": contract.ENV_DRIFT_REFERENCE_NAME, "value": reference.name},
            {"name": contract.ENV_DRIFT_REFERENCE_URI, "value": reference.uri},
            {"name": contract.ENV_DRIFT_REFERENCE_SHA256, "value": reference.sha256},
        ]
    container.update(name=GATE_CONTAINER, command=list(contract.GATE_COMMAND), env=env)
    labels = k8s.child_labels(k8s.COMPONENT_GATE, **{LABEL_SCHEDULE: meta["name"]})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": dict(labels),
            "annotations": {ANNOTATION_TICK: k8s.format_time(tick)},
            "ownerReferences": [k8s.owner_reference("TrainingSchedule", meta, block_deletion=False)],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": GATE_DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": GATE_TTL_SECONDS,
            "podFailurePolicy": k8s.fail_fast_policy(GATE_CONTAINER),
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


@dataclass(frozen=True)
class Verdict:
    """A gated tick's decision: train or not, why, and what the gate found (status GateResult shape)."""

    train: bool
    reason: str
    message: str
    gate: dict[str, Any] = field(default_factory=dict)
    warning: bool = False


@dataclass(frozen=True)
class GateJob:
    """What gather found of a gate Job: its state and its pod's termination message."""

    name: str
    state: str  # k8s.JOB_RUNNING / JOB_SUCCEEDED / JOB_FAILED
    message: str = ""
    tick: str = ""


def verdict(
    when: WhenSpec, job: GateJob | None, previous: tuple[str | None, str | None], reference: str | None
) -> Verdict:
    """The decision of a tick whose gate Job finished (or vanished). ``previous`` is (fingerprint, run) of
    the last successful run; ``reference`` the version the drift was computed against. Every set gate must
    pass (data changed, and drifted) for the tick to train."""
    if job is None:
        return Verdict(False, R_GATE_FAILED, "the gate Job disappeared before it reported; the tick is skipped",
                       warning=True)  # fmt: skip
    result = contract.parse_result(job.message)
    gate: dict[str, Any] = {"job": job.name}
    if job.state != k8s.JOB_SUCCEEDED or result is None or result.gate is None:
        why = f"{result.reason}: {result.message}" if result else (job.message.strip()[-500:] or "no result")
        return Verdict(False, R_GATE_FAILED,
                       f"gate Job {job.name} failed ({why}); the tick is skipped, the next tick checks again",
                       gate, warning=True)  # fmt: skip
    report = result.gate
    fingerprint = report.get("fingerprint")
    gate["fingerprint"] = fingerprint
    prev_fp, prev_run = previous
    if prev_fp:
        gate.update(previousFingerprint=prev_fp, previousRun=prev_run)
    reasons: list[str] = []
    train_reason = R_DATA_CHANGED if prev_fp or when.drift is not None else R_NO_BASELINE
    if when.data_changed:
        if prev_fp and fingerprint == prev_fp:
            message = f"dataset fingerprint {fingerprint} equals the last successful run's ({prev_run})"
            return Verdict(False, R_DATA_UNCHANGED, message, gate)
        reasons.append(f"dataset fingerprint {fingerprint} differs from {prev_run}'s" if prev_fp else
                       "no successful run records a dataset fingerprint yet")  # fmt: skip
    if when.drift is not None:
        drifted = _drift_verdict(when.drift.threshold, when.drift.against, report, gate, reference)
        if not drifted.train:
            return drifted
        train_reason = drifted.reason
        reasons.append(drifted.message)
    return Verdict(True, train_reason, "; ".join(reasons), gate)


def _drift_verdict(
    threshold: float, alias: str, report: contract.GateReport, gate: dict[str, Any], reference: str | None
) -> Verdict:
    """The drift gate's part (``gate`` is filled in): NoDrift below the threshold, Drifted at or above it,
    NoBaseline when the gate had no profile to compare with."""
    gate["threshold"] = threshold
    drift = report.get("drift")
    if drift is None:
        return Verdict(True, R_NO_BASELINE, report.get("problem") or f"no version holds alias {alias}", gate)
    max_psi = float(drift.get("max_psi") or 0.0)
    top = [{"feature": str(t["feature"])[:253], "psi": float(t["psi"])} for t in drift.get("top") or []]
    gate.update(against=drift.get("against") or reference, maxPsi=max_psi, top=top[:10])
    if drift.get("missing_features"):
        gate["missingFeatures"] = list(drift["missing_features"])[:20]
    described = ", ".join(f"{t['feature']}={t['psi']:.3g}" for t in top[:3])
    where = f"largest PSI {max_psi:.4g} ({described}) against {gate['against']}"
    if max_psi < threshold:
        return Verdict(False, R_NO_DRIFT, f"{where} is below the threshold {threshold:g}", gate)
    return Verdict(True, R_DRIFTED, f"{where} reaches the threshold {threshold:g}", gate)


def gate_job_facts(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> GateJob:
    """A gate Job as gather saw it: state, and the termination message of its newest finished pod."""
    message = ""
    for pod in sorted(pods, key=k8s.created, reverse=True):
        message = k8s.termination_message(pod, GATE_CONTAINER)
        if message:
            break
    meta = job.get("metadata") or {}
    tick = str((meta.get("annotations") or {}).get(ANNOTATION_TICK) or "")
    return GateJob(str(meta.get("name")), k8s.job_state(job), message, tick)
