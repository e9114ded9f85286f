"""Bad input at scale: a seeded batch of fuzzed specs through the real API server, then the operator.

Each manifest is refused by ``kubectl apply --dry-run=server`` with a ``spec.`` field named, or accepted;
the accepted ones are created for real (TrainingRuns suspended, so only the operator's own handling is
exercised) and the operator must give every one a status - Suspended, or Failed with a reason - without an
unhandled exception in its log."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz_specs import manifests

from .conftest import Operator, Workspace

pytestmark = pytest.mark.cluster
RUNS, VERSIONS = 40, 12
CRASH = re.compile(r"Traceback \(most recent call last\)|Unhandled|failed with an exception", re.I)


def _batch(kind: str, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(manifests(kind))
    def collect(doc: dict[str, Any]) -> None:
        if len(out) < n:
            out.append(doc)

    collect()
    return out


def _dry_run(ws: Workspace, doc: dict[str, Any]) -> tuple[bool, str]:
    proc = ws.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)
    return proc.returncode == 0, proc.stderr


def test_fuzzed_specs_are_refused_naming_a_field_or_handled_without_a_crash(
    workspace: Workspace, operator_factory: Callable[..., Operator]
) -> None:
    accepted: list[dict[str, Any]] = []
    refused = 0
    for kind, n in (("TrainingRun", RUNS), ("ModelVersion", VERSIONS)):
        for i, doc in enumerate(_batch(kind, n)):
            doc["metadata"] = {"name": f"fuzz-{kind.lower()}-{i}"}
            if kind == "TrainingRun":
                doc["spec"]["suspend"] = True
            ok, stderr = _dry_run(workspace, doc)
            if ok:
                accepted.append(doc)
                continue
            refused += 1
            assert re.search(r"\bspec(\.|\b)", stderr), f"refused without naming a field:\n{stderr}\n{doc}"
    print(f"fuzz: {refused} refused by the API server, {len(accepted)} accepted")
    assert refused > 0 and accepted, "the batch should hold both kinds of outcome"

    for doc in accepted:
        workspace.apply(doc)
    operator = operator_factory()
    pending = {(d["kind"], d["metadata"]["name"]) for d in accepted}
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + 180
    while pending and time.monotonic() < deadline:
        for kind, name in sorted(pending):
            obj = workspace.get(kind.lower(), name)
            phase = (obj.get("status") or {}).get("phase")
            settled = {"TrainingRun": ("Suspended", "Failed"), "ModelVersion": ("Ready", "Failed")}[kind]
            if phase in settled:
                pending.discard((kind, name))
                key = f"{kind}/{phase}/{((obj.get('status') or {}).get('failure') or {}).get('reason', '')}"
                outcomes[key] = outcomes.get(key, 0) + 1
        time.sleep(1)
    print("fuzz outcomes:", json.dumps(outcomes, sort_keys=True))
    assert not pending, f"never given a settled status: {sorted(pending)}"
    crashes = [line for line in operator.log_text().splitlines() if CRASH.search(line)]
    assert not crashes, "unhandled exceptions in the operator log:\n" + "\n".join(crashes[:20])
