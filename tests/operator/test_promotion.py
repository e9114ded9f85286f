"""Champion/challenger promotion (spec.register.promote) end to end on the real control plane and real nodes:
a worse challenger leaves `production` on the champion, a better one takes it, both scored on the same
hold-out (same fingerprint); a challenger below its thresholds is never promoted; a tampered champion
artifact fails the run clearly. One module-scoped story (champion, then challengers) to keep the wall time
small: the runs of one stage train in parallel."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import wait_until

from .conftest import MODELS_CLAIM, Operator, Workspace, iris_run

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

PROMOTE = {"alias": "production", "metric": "accuracy"}
# Measured on iris (seed 7, testFraction 0.25): accuracy 0.63 (stump), 0.92 (depth 2), 0.97 (depth 5).
STUMP = {"n_estimators": 1, "max_depth": 1}
SHALLOW = {"n_estimators": 3, "max_depth": 2}
DEEP = {"n_estimators": 30, "max_depth": 5}


def _run(name: str, params: dict[str, Any], min_accuracy: float = 0.5) -> dict[str, Any]:
    return iris_run(
        name,
        estimator={"name": "random_forest", "params": params},
        evaluation={
            "testFraction": 0.25,
            "primaryMetric": "accuracy",
            "thresholds": [{"metric": "accuracy", "min": min_accuracy}],
        },
        register={"aliases": ["candidate"], "promote": PROMOTE},
        activeDeadlineSeconds=300,
    )


def _finished(ws: Workspace, name: str, timeout: float = 150) -> dict[str, Any]:
    """The run's status once it finished."""
    return dict(ws.wait_phase(name, ("Succeeded", "Failed"), timeout=timeout)["status"])


def _promoted(ws: Workspace, name: str, timeout: float = 120) -> dict[str, Any]:
    """The run once its decision is recorded (written with the ModelVersion's name)."""

    def check() -> dict[str, Any] | None:
        st = ws.run(name).get("status") or {}
        return st if st.get("promotion") else None

    return wait_until(f"{name} records its promotion decision", check, timeout)


def _mv(ws: Workspace, name: str) -> dict[str, Any]:
    return dict(ws.get("modelversion", name))


def _holder(ws: Workspace) -> str | None:
    holders = [
        m["metadata"]["name"]
        for m in ws.get("modelversions")["items"]
        if "production" in (m.get("status") or {}).get("aliases", [])
    ]
    assert len(holders) <= 1, holders
    return holders[0] if holders else None


def _wait_holder(ws: Workspace, name: str, timeout: float = 120) -> None:
    wait_until(f"production held by {name}", lambda: _holder(ws) == name or None, timeout)


def _mv_settled(ws: Workspace, name: str, timeout: float = 120) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        mv = _mv(ws, name)
        st = mv.get("status") or {}
        return mv if st.get("phase") == "Ready" and st.get("promotion") else None

    return wait_until(f"{name} Ready with its promotion", check, timeout)


def _events(ws: Workspace, kind: str, name: str, reason: str, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        selector = f"involvedObject.kind={kind},involvedObject.name={name},reason={reason}"
        items = list(ws.get("events", "--field-selector", selector)["items"])
        if items or time.monotonic() > deadline:
            return items
        time.sleep(0.5)


def test_champion_challenger_promotion(workspace: Workspace, operator_factory: Callable[..., Operator]) -> None:
    ws = workspace
    operator_factory(KUBETRAIN_PROGRESS_INTERVAL="3600")
    t0 = time.monotonic()

    # 1. No champion yet: the first run that passes its thresholds takes production.
    ws.apply(_run("champ", SHALLOW))
    champ = _promoted(ws, "champ", 180)
    assert champ["phase"] == "Succeeded"
    first = champ["promotion"]
    assert (first["decision"], first["reason"]) == ("Promoted", "NoChampion"), first
    assert first["challenger"] == champ["modelVersion"] == "iris-v1" and "championScore" not in first
    assert first["challengerScore"] == champ["metrics"]["accuracy"]
    holdout = first["holdoutFingerprint"]
    assert holdout.startswith("sha256:")
    _wait_holder(ws, "iris-v1")
    print(f"champion promoted after {time.monotonic() - t0:.0f}s")

    # The promotion is immutable once the trainer was started for it.
    refused = ws.kubectl(
        "patch",
        "tr",
        "champ",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"register": {"promote": {**PROMOTE, "metric": "f1"}}}}),
        check=False,
    )
    assert refused.returncode != 0 and "spec.register.promote is immutable" in refused.stderr, refused.stderr

    # 2. In parallel: a worse challenger (passes its thresholds, scores lower) and one below its thresholds.
    ws.apply(_run("worse", STUMP))
    ws.apply(_run("below", STUMP, min_accuracy=0.9))
    worse, below = _promoted(ws, "worse", 180), _finished(ws, "below")
    kept = worse["promotion"]
    assert (kept["decision"], kept["reason"]) == ("ChampionKept", "NotBetter"), kept
    assert kept["champion"] == "iris-v1" and kept["challenger"] == worse["modelVersion"] == "iris-v2"
    # Both scores, on the same hold-out: the champion scores exactly what its own run measured there.
    assert kept["holdoutFingerprint"] == holdout
    assert kept["championScore"] == first["challengerScore"]
    assert kept["challengerScore"] == worse["metrics"]["accuracy"] < kept["championScore"]
    assert below["phase"] == "Failed" and below["failure"]["reason"] == "BelowThreshold"
    assert not below.get("modelVersion") and not below.get("promotion")
    mv2 = _mv_settled(ws, "iris-v2")
    assert mv2["status"]["promotion"] == kept
    assert "production" not in mv2["spec"]["aliases"] and "production" not in mv2["status"].get("aliases", [])
    assert [h["action"] for h in mv2["status"]["aliasHistory"] if h["alias"] == "production"] == ["ChampionKept"]
    champ_history = _mv(ws, "iris-v1")["status"]["aliasHistory"]
    assert any(h["action"] == "ChampionKept" and "kept over iris-v2" in h["message"] for h in champ_history), (
        champ_history
    )
    assert _holder(ws) == "iris-v1"
    assert _events(ws, "TrainingRun", "worse", "ChampionKept"), "no ChampionKept Event on the run"
    assert not _events(ws, "TrainingRun", "below", "Promoted", timeout=1)
    print(f"worse challenger kept out after {time.monotonic() - t0:.0f}s")

    # 3. A better challenger takes production; the champion's history says it moved.
    ws.apply(_run("better", DEEP))
    better = _promoted(ws, "better", 180)
    won = better["promotion"]
    assert (won["decision"], won["reason"]) == ("Promoted", "BeatChampion"), won
    assert won["holdoutFingerprint"] == holdout and won["championScore"] == first["challengerScore"]
    assert won["challengerScore"] > won["championScore"]
    _wait_holder(ws, better["modelVersion"])
    mv3 = _mv_settled(ws, better["modelVersion"])
    assert mv3["status"]["promotion"] == won
    # Both in the one status patch that made it Ready with the alias: the decision and the move.
    assert sorted(h["action"] for h in mv3["status"]["aliasHistory"] if h["alias"] == "production") == [
        "Assigned",
        "Promoted",
    ]
    assert _mv(ws, "iris-v1")["status"]["aliasHistory"][-1]["action"] == "Superseded"
    assert _events(ws, "TrainingRun", "better", "Promoted"), "no Promoted Event on the run"
    print(f"better challenger promoted after {time.monotonic() - t0:.0f}s")

    # 4. The champion's file is swapped behind the registry's back: the next challenger fails clearly.
    model = ws.claim_dir(MODELS_CLAIM) / "better" / "model.joblib"
    model.write_bytes(model.read_bytes() + b"tampered")
    ws.apply(_run("after-tamper", DEEP))
    failed = _finished(ws, "after-tamper")
    assert failed["phase"] == "Failed" and failed["failure"]["reason"] == "VerifyFailed", failed
    assert f"champion {better['modelVersion']}: checksum mismatch" in failed["failure"]["message"]
    assert "not loaded" in failed["failure"]["message"] and not failed.get("modelVersion")
    assert _holder(ws) == better["modelVersion"]
    print(f"promotion story done in {time.monotonic() - t0:.0f}s")
