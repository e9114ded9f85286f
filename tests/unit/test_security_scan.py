"""checkov, a widely used Kubernetes static analyser, on the rendered chart and on the golden trainer Job.

Every finding must be in tests/security/checkov-allowlist.yaml with its reason, and every allow-listed
finding must still be reported, so the list says exactly where we differ from checkov's defaults and why.
checkov runs in a network namespace of its own (``unshare -n``) with ``--skip-download``: it must not try
to reach its vendor's API, and nothing here depends on it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_install_artifacts import REPO, _bins

pytestmark = pytest.mark.slow
CHECKOV = Path(sys.executable).parent / "checkov"
ALLOW = yaml.safe_load((REPO / "tests" / "security" / "checkov-allowlist.yaml").read_text())


def _checkov(directory: Path) -> tuple[dict[str, Any], set[str]]:
    if not CHECKOV.exists():
        pytest.fail("checkov is missing: it is in the dev extra (make venv)")
    isolate = ["unshare", "-n"] if shutil.which("unshare") else []
    proc = subprocess.run(
        [*isolate, str(CHECKOV), "-d", str(directory), "--framework", "kubernetes", "--skip-download",
         "--quiet", "--compact", "-o", "json"],
        capture_output=True, text=True, timeout=900, env={"PATH": "/usr/bin:/bin", "HOME": str(directory)},
    )  # fmt: skip
    text = proc.stdout
    report = json.loads(text[text.index("{") :])
    failed = {f"{c['check_id']} {c['resource'].split('.')[0]}" for c in report["results"]["failed_checks"]}
    return report["summary"], failed


def _render(tmp_path: Path, *extra: str) -> Path:
    helm = _bins()["helm"]
    out = subprocess.run(
        [helm, "template", "kt", str(REPO / "helm" / "kubetrain"), "--kube-version", "1.37.2", "--namespace",
         "kubetrain-system", *extra],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    directory = tmp_path / "chart"
    directory.mkdir()
    for i, doc in enumerate(d for d in yaml.safe_load_all(out) if d):
        (directory / f"{i:02d}-{doc['kind']}.yaml").write_text(yaml.safe_dump(doc))
    return directory


def test_the_chart_has_no_findings_beyond_the_allow_list(tmp_path: Path) -> None:
    summary, failed = _checkov(_render(tmp_path))
    print("chart:", summary)
    assert failed == set(ALLOW["chart"]), (
        f"unexpected {failed - set(ALLOW['chart'])}, gone {set(ALLOW['chart']) - failed}"
    )
    assert summary["passed"] >= 100


def test_a_digest_pinned_chart_clears_the_digest_finding(tmp_path: Path) -> None:
    digest = "sha256:" + "a" * 64
    _, failed = _checkov(_render(tmp_path, "--set", f"image.digest={digest}"))
    assert "CKV_K8S_43 Deployment" not in failed, failed


def test_the_operators_trainer_job_has_no_findings_beyond_the_allow_list(tmp_path: Path) -> None:
    job = json.loads((REPO / "tests" / "golden" / "iris-job.json").read_text())
    directory = tmp_path / "job"
    directory.mkdir()
    (directory / "job.yaml").write_text(yaml.safe_dump(job))
    summary, failed = _checkov(directory)
    print("job:", summary)
    assert failed == set(ALLOW["job"]), f"unexpected {failed - set(ALLOW['job'])}, gone {set(ALLOW['job']) - failed}"
    assert summary["passed"] >= 80
