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
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.unit.test_install_artifacts import REPO, _bins

pytestmark = pytest.mark.slow
CHECKOV = Path(sys.executable).parent / "checkov"
ALLOW = yaml.safe_load((REPO / "tests" / "security" / "checkov-allowlist.yaml").read_text())


@dataclass
class Scan:
    passed: int = 0
    failed: set[str] = field(default_factory=set)


def _checkov(directory: Path) -> dict[str, Scan]:
    """One checkov run over ``directory``; the findings of each of its sub-folders (one per scanned target).

    One run for all targets: checkov spends most of its time loading its checks (three runs took 4 min here,
    one 1.6 min), and its findings per file are the same either way."""
    if not CHECKOV.exists():
        pytest.fail("checkov is missing: it is in the dev extra (make venv)")
    isolate = ["unshare", "-n"] if shutil.which("unshare") else []
    proc = subprocess.run(
        [*isolate, str(CHECKOV), "-d", str(directory), "--framework", "kubernetes", "--skip-download",
         "--compact", "-o", "json"],
        capture_output=True, text=True, timeout=900, env={"PATH": "/usr/bin:/bin", "HOME": str(directory)},
    )  # fmt: skip
    text = proc.stdout
    assert "{" in text, f"checkov printed no report ({proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(text[text.index("{") :])
    scans = {target.name: Scan() for target in directory.iterdir() if target.is_dir()}
    for outcome in ("passed", "failed"):
        for check in report["results"][f"{outcome}_checks"]:
            target = check["file_path"].strip("/").split("/")[0]
            assert target in scans, f"checkov reported a file outside the targets: {check['file_path']}"
            if outcome == "passed":
                scans[target].passed += 1
            else:
                scans[target].failed.add(f"{check['check_id']} {check['resource'].split('.')[0]}")
    print("checkov:", report["summary"])
    return scans


def _render(directory: Path, *extra: str) -> None:
    helm = _bins()["helm"]
    out = subprocess.run(
        [helm, "template", "kt", str(REPO / "helm" / "kubetrain"), "--kube-version", "1.37.2", "--namespace",
         "kubetrain-system", *extra],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    directory.mkdir()
    for i, doc in enumerate(d for d in yaml.safe_load_all(out) if d):
        (directory / f"{i:02d}-{doc['kind']}.yaml").write_text(yaml.safe_dump(doc))


DIGEST = "sha256:" + "a" * 64


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scan]:
    """checkov's findings for the rendered chart, the chart pinned by digest, and the golden trainer Job."""
    root = tmp_path_factory.mktemp("checkov")
    _render(root / "chart")
    _render(root / "pinned", "--set", f"image.digest={DIGEST}")
    job = json.loads((REPO / "tests" / "golden" / "iris-job.json").read_text())
    (root / "job").mkdir()
    (root / "job" / "job.yaml").write_text(yaml.safe_dump(job))
    return _checkov(root)


def test_the_chart_has_no_findings_beyond_the_allow_list(scans: dict[str, Scan]) -> None:
    chart = scans["chart"]
    print("chart:", chart)
    assert chart.failed == set(ALLOW["chart"]), (
        f"unexpected {chart.failed - set(ALLOW['chart'])}, gone {set(ALLOW['chart']) - chart.failed}"
    )
    assert chart.passed >= 100


def test_a_digest_pinned_chart_clears_the_digest_finding(scans: dict[str, Scan]) -> None:
    pinned = scans["pinned"]
    assert pinned.passed >= 100, pinned
    assert "CKV_K8S_43 Deployment" not in pinned.failed, pinned.failed
    assert "CKV_K8S_43 Deployment" in scans["chart"].failed  # the same chart unpinned has it


def test_the_operators_trainer_job_has_no_findings_beyond_the_allow_list(scans: dict[str, Scan]) -> None:
    job = scans["job"]
    print("job:", job)
    assert job.failed == set(ALLOW["job"]), (
        f"unexpected {job.failed - set(ALLOW['job'])}, gone {set(ALLOW['job']) - job.failed}"
    )
    assert job.passed >= 80
