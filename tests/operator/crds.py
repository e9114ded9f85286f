"""Install the CRDs of crds/ (exactly as generated) for the operator tests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _established(crd: dict[str, Any]) -> bool:
    conds = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conds)


def install_crds(kubectl: Any, timeout: float = 60) -> None:
    """``kubectl apply`` crds/ and wait until every CRD is Established; a refused CRD fails the tests.

    Polled rather than ``kubectl wait --for=condition=Established``: on a fresh API server a new CRD has
    ``status.conditions: null`` for a moment, and kubectl wait (like a jsonpath filter) then fails at once
    ("<nil> is of the type <nil>, expected []interface{}") instead of waiting."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    deadline = time.monotonic() + timeout
    for crd in ("trainingruns.kubetrain.io", "modelversions.kubetrain.io", "trainingschedules.kubetrain.io"):
        while not _established(json.loads(kubectl("get", f"crd/{crd}", "-o", "json").stdout)):
            if time.monotonic() > deadline:
                raise AssertionError(f"crd/{crd} not Established after {timeout:.0f}s")
            time.sleep(0.3)
