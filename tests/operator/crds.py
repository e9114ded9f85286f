"""Install the CRDs of crds/ (exactly as generated) for the operator tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def install_crds(kubectl: Any) -> None:
    """``kubectl apply`` crds/ and wait until both CRDs are Established; a refused CRD fails the tests."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    for crd in ("trainingruns.kubetrain.io", "modelversions.kubetrain.io"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
