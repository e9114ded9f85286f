"""TrainingSchedule gates (spec.when) on the real control plane and real nodes: each gated tick runs one
short gate pod of the trainer image, then trains or skips.

- ``dataChanged``: the first tick trains (no baseline), a tick on the unchanged file skips with
  DataUnchanged, and after the file changed the next tick trains again (DataChanged).
- ``drift``: the first tick trains (no version holds ``production`` yet) and the new version takes the
  alias; a tick on the same data skips with NoDrift and its PSI; after one feature is shifted by two
  standard deviations the PSI crosses the threshold and the tick trains (Drifted).

Skips are visible as the decision in status, an Event and ``kubetrain_schedule_ticks_total``; the drift is in
``kubetrain_model_drift_psi``; no tick gets two gate Jobs, and decided gate Jobs are deleted. (Bad ``when``
values are refused by the API server: ``test_trainingschedule.BAD``.)"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Operator, Workspace, iris_frame
from .test_trainingschedule import QUIET, children, decision, event_seen, ready, schedule, ts, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(720)]

STEP = 20


def gated(name: str, data: str, when: dict[str, Any], **template: Any) -> dict[str, Any]:
    doc = schedule(name, STEP, concurrencyPolicy="Forbid", when=when)
    spec = doc["spec"]["runTemplate"]["spec"]
    spec["dataset"]["uri"] = f"pvc://kubetrain-data/{data}"
    spec.update(activeDeadlineSeconds=300, **template)
    return doc


def decisions_seen(ws: Workspace, name: str, reason: str, timeout: float) -> dict[str, Any]:
    """The schedule's lastDecision once its reason is ``reason``."""

    def check() -> dict[str, Any] | None:
        last = decision(ws, name)
        return last if last.get("reason") == reason else None

    return dict(wait_for(f"{name}: a {reason} decision", check, timeout))


def gate_events(ws: Workspace, name: str) -> list[str]:
    selector = f"involvedObject.kind=TrainingSchedule,involvedObject.name={name},reason=GateStarted"
    return [e["message"] for e in ws.get("events", "--field-selector", selector)["items"]]


def assert_one_gate_job_per_tick(ws: Workspace, name: str) -> None:
    started = gate_events(ws, name)
    jobs = [m.split("gate Job ")[1].split()[0] for m in started]
    assert len(jobs) == len(set(jobs)), started


def test_data_changed_and_drift_gates(workspace: Workspace, operator_factory: Any) -> None:
    ws = workspace
    frame = iris_frame()
    ws.write_csv("gated.csv", frame)
    ws.write_csv("drift.csv", frame)
    operator: Operator = operator_factory(**QUIET)
    ready(operator)
    ws.apply(gated("changed", "gated.csv", {"dataChanged": True}))
    ws.apply(
        gated(
            "drift",
            "drift.csv",
            {"drift": {"threshold": 0.2, "against": "production"}},
            register={"enabled": True, "aliases": ["production"]},
        )
    )

    # dataChanged: a first run trains and records the dataset's fingerprint.
    first = wait_for("a first run of changed", lambda: children(ws, "changed"), 90)[0]["metadata"]["name"]
    run = ws.wait_phase(first, ("Succeeded", "Failed"), timeout=240)
    assert run["status"]["phase"] == "Succeeded", run["status"]
    fingerprint = run["status"]["datasetFingerprint"]
    size = (ws.claim_dir("kubetrain-data") / "gated.csv").stat().st_size
    assert fingerprint.startswith("sha256:") and fingerprint.endswith(f";size={size}"), fingerprint

    # An unchanged file: skipped, DataUnchanged, with both fingerprints; an Event and the metric say so.
    skip = decisions_seen(ws, "changed", "DataUnchanged", 150)
    assert skip["decision"] == "Skipped"
    assert skip["gate"]["fingerprint"] == skip["gate"]["previousFingerprint"] == fingerprint
    assert skip["gate"]["previousRun"] == first
    assert event_seen(ws, "changed", "DataUnchanged")
    assert operator.metric("kubetrain_schedule_ticks_total", decision="skipped", reason="DataUnchanged") >= 1
    assert len(children(ws, "changed")) == 1

    # The file changes: the next tick trains.
    changed = frame.copy()
    changed.loc[0, "sepal_length"] = 7.7
    ws.write_csv("gated.csv", changed)
    started = decisions_seen(ws, "changed", "DataChanged", 150)
    assert started["decision"] == "Started" and started["gate"]["fingerprint"] != fingerprint
    second = ws.wait_phase(started["run"], ("Succeeded", "Failed"), timeout=240)
    assert second["status"]["phase"] == "Succeeded"
    assert second["status"]["datasetFingerprint"] == started["gate"]["fingerprint"]

    # drift: the first tick had no version holding production, so it trained (as changed's first tick, which
    # had no fingerprint to compare with); its version holds the alias now.
    assert operator.metric("kubetrain_schedule_ticks_total", decision="started", reason="NoBaseline") >= 2
    no_drift = decisions_seen(ws, "drift", "NoDrift", 240)
    gate = no_drift["gate"]
    assert gate["maxPsi"] < 0.2 and gate["threshold"] == 0.2 and gate["against"].startswith("iris-v"), gate
    assert gate["top"] and gate["top"][0]["psi"] == gate["maxPsi"]
    assert event_seen(ws, "drift", "NoDrift")
    assert operator.metric("kubetrain_model_drift_psi", schedule="drift", feature="max") == pytest.approx(
        gate["maxPsi"], abs=1e-6
    )
    runs_before = len(children(ws, "drift"))

    # petal_length shifted by two standard deviations: PSI far above the threshold, the tick trains.
    shifted = frame.copy()
    shifted["petal_length"] = shifted["petal_length"] + 2 * float(frame["petal_length"].std())
    ws.write_csv("drift.csv", shifted)
    drifted = decisions_seen(ws, "drift", "Drifted", 150)
    assert drifted["decision"] == "Started" and drifted["gate"]["maxPsi"] >= 0.2
    assert drifted["gate"]["top"][0]["feature"] == "petal_length", drifted["gate"]
    assert len(children(ws, "drift")) == runs_before + 1
    assert operator.metric("kubetrain_model_drift_psi", schedule="drift", feature="petal_length") >= 0.2
    assert operator.metric("kubetrain_schedule_ticks_total", decision="started", reason="Drifted") >= 1

    # One gate Job per tick; decided gate Jobs are deleted (only a pending one may remain).
    for name in ("changed", "drift"):
        assert_one_gate_job_per_tick(ws, name)

        def cleaned(name: str = name) -> bool:
            jobs = ws.get("jobs", "-l", f"kubetrain.io/schedule={name},app.kubernetes.io/component=schedule-gate")
            pending = ((ts(ws, name).get("status") or {}).get("gate") or {}).get("job")
            return all(j["metadata"]["name"] == pending for j in jobs["items"])

        wait_for(f"{name}'s decided gate Jobs deleted", cleaned, 60)
