"""Acceptance on the real cluster (issue 14): what users look at.

* The four examples (iris, wine search, diabetes, log anomaly), applied unchanged, each write
  evaluation.json, the PNG plots and report.html next to the model on the models claim: evaluation.json
  matches what scikit-learn computes for the saved model on the same split, the PNGs are real PNGs
  (Pillow), report.html renders in headless Chromium without errors and shows the metric values that
  status shows; ``status.report`` and ``status.evaluation`` are on the run and on its ModelVersion.
* ``kubectl kubetrain why`` on a run that Kueue really keeps queued names Kueue's message.
* ``kubectl kubetrain logs -f`` follows a running trainer's log to its end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Cluster, wait_until
from tests.evaluation_checks import (
    CORE_FILES,
    EXPECTED_PLOTS,
    check_evaluation_matches_sklearn,
    check_pngs,
    check_report_in_chromium,
    holdout,
)

from .conftest import DATA_CLAIM, MODELS_CLAIM, Operator, Workspace, iris_run
from .test_kueue import kueue, team_queue  # noqa: F401  (fixtures: a LocalQueue on a real Kueue)
from .test_plugin import PLUGIN, plugin

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

EXAMPLES = REPO / "examples"
# example file → (run name, dataset file)
REPORTED = {
    "iris-classification.yaml": ("iris", "iris.csv"),
    "wine-search.yaml": ("wine-search", "wine.csv"),
    "diabetes-regression.yaml": ("diabetes", "diabetes.parquet"),
    "log-anomaly.yaml": ("log-anomaly", "logs-export.json"),
}


def test_every_example_writes_its_evaluation_and_report_next_to_the_model(
    workspace: Workspace, operator: Operator, tmp_path: Path
) -> None:
    ws = workspace
    for _, data in REPORTED.values():
        shutil.copy(EXAMPLES / "data" / data, ws.claim_dir(DATA_CLAIM) / data)
    t0 = time.monotonic()
    for file in REPORTED:
        ws.kubectl("apply", "-f", str(EXAMPLES / file))
    runs = {name: ws.wait_phase(name, ("Succeeded", "Failed"), timeout=420) for name, _ in REPORTED.values()}
    print(f"four examples: apply → all finished in {time.monotonic() - t0:.1f}s")
    for name, run in runs.items():
        assert run["status"]["phase"] == "Succeeded", (name, run["status"])

    for name, data in REPORTED.values():
        st = runs[name]["status"]
        run_dir = ws.claim_dir(MODELS_CLAIM) / name
        meta = json.loads((run_dir / "metadata.json").read_text())
        task = meta["task"]
        print(f"{name}: report {st.get('report')}; evaluation {json.dumps(st.get('evaluation'))}")
        assert st["report"] == f"pvc://{MODELS_CLAIM}/{name}/report.html", st
        reported = next(c for c in st["conditions"] if c["type"] == "Reported")
        assert (reported["status"], reported["reason"]) == ("True", "ReportWritten"), reported
        names = {p.name for p in run_dir.iterdir()}
        assert names >= CORE_FILES, names

        # evaluation.json: the items, equal to scikit-learn's numbers on the run's own hold-out split
        doc = check_evaluation_matches_sklearn(run_dir, *holdout(ws.claim_dir(DATA_CLAIM) / data, meta))
        assert doc["warnings"] == [], doc["warnings"]
        # the PNGs: real images of the stated kind; report.html in Chromium shows the metrics status shows
        pngs = check_pngs(run_dir, task)
        assert pngs == EXPECTED_PLOTS[task], pngs
        check_report_in_chromium(run_dir / "report.html", st["metrics"], tmp_path / name, pngs)
        keep = os.environ.get("KUBETRAIN_KEEP_REPORTS")
        if keep:
            shutil.copytree(run_dir, Path(keep) / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.joblib"))

        # status.evaluation: the summary of that document; the ModelVersion carries both
        summary = st["evaluation"]
        assert summary["task"] == task and summary["rows"] == doc["nTest"]
        top = [f["name"] for f in doc["featureImportance"]["features"][: len(summary["topFeatures"])]]
        assert [f["name"] for f in summary["topFeatures"]] == top
        if task == "classification":
            full = doc["classification"]["perClass"]
            assert [c["support"] for c in summary["perClass"]] == [c["support"] for c in full]
            for ours, theirs in zip(summary["perClass"], full, strict=True):
                assert ours["f1"] == pytest.approx(theirs["f1"], abs=1e-4)
        mv = _ready_version(ws, st["modelVersion"])
        assert mv["status"]["report"] == st["report"] and mv["status"]["evaluation"] == summary


def _ready_version(ws: Workspace, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = dict(ws.get("mv", name))
        return obj if (obj.get("status") or {}).get("phase") == "Ready" else None

    return wait_until(f"{name} Ready", ready, timeout=60)


def test_why_names_kueues_message_for_a_run_it_keeps_queued(
    cluster: Cluster,
    team_queue: str,  # noqa: F811
    workspace: Workspace,
    operator: Operator,
) -> None:
    ws, ns = workspace, workspace.namespace
    # 2 CPUs asked of a ClusterQueue with a quota of 1: Kueue never admits it, and says why
    big = {"requests": {"cpu": "2", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
    ws.apply(iris_run("too-big", queueName=team_queue, resources=big))
    ws.wait_phase("too-big", ("Queued",), timeout=90)

    def kueue_said() -> str | None:
        proc = plugin(cluster, ns, "why", "too-big")
        return proc.stdout if proc.returncode == 0 and "Kueue: QuotaReserved=False" in proc.stdout else None

    text = wait_until("why to show Kueue's QuotaReserved message", kueue_said, timeout=90, interval=2)
    print(text)
    lines = text.splitlines()
    assert lines[0].startswith("too-big: Queued"), lines[0]
    said = next(line for line in lines if line.startswith("Kueue: "))
    assert "cpu" in said and "quota" in said.lower(), said
    doc = json.loads(plugin(cluster, ns, "-o", "json", "why", "too-big").stdout)
    assert doc["kueue"] == said.removeprefix("Kueue: "), doc["kueue"]
    assert ws.run("too-big")["status"]["phase"] == "Queued"  # still: Kueue never admits it


def test_logs_follow_streams_a_running_trainer_to_its_end(
    cluster: Cluster, workspace: Workspace, operator: Operator
) -> None:
    ws, ns = workspace, workspace.namespace
    shutil.copy(EXAMPLES / "data" / "wine.csv", ws.claim_dir(DATA_CLAIM) / "wine.csv")
    doc = yaml.safe_load((EXAMPLES / "wine-search.yaml").read_text())
    doc["metadata"] = {"name": "wine-follow"}
    doc["spec"]["search"]["trials"] = 40  # a search of some seconds in one pod
    doc["spec"]["search"].pop("parallelism")
    ws.apply(doc)
    ws.wait_phase("wine-follow", ("Running",), timeout=300)
    t0 = time.monotonic()
    follower = subprocess.Popen(
        [str(PLUGIN), "--kubeconfig", cluster.kubeconfig, "-n", ns, "logs", "-f", "wine-follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cluster.env,
    )
    try:
        out, err = follower.communicate(timeout=600)
    finally:
        if follower.poll() is None:
            follower.kill()
    elapsed = time.monotonic() - t0
    run = ws.run("wine-follow")
    print(f"logs -f returned after {elapsed:.1f}s with exit {follower.returncode}; run {run['status']['phase']}")
    print(out[-3000:])
    assert follower.returncode == 0, err
    assert run["status"]["phase"] == "Succeeded", run["status"]
    lines = out.splitlines()
    assert lines[0].startswith("==> wine-follow-") and "(Running)" in lines[0], lines[0]
    # it kept reading until the trainer's last line: the result, written after the follow started
    result = json.loads(next(line for line in reversed(lines) if line.startswith('{"outcome"')))
    assert result["reason"] == "Trained" and result["report"]["uri"].endswith("/wine-follow/report.html")
    assert elapsed >= 3, "the follow returned at once: it did not follow"
