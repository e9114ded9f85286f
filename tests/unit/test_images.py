"""What each image installs (Dockerfile.operator: `.[operator]`, Dockerfile.trainer: `.[trainer,s3]`) and how the
Dockerfiles are layered, checked in clean virtualenvs without a container engine: each extra works on its own, and
the operator never pulls in the ML libraries. The built images themselves are run in tests/images/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
HEAVY = ("sklearn", "pandas", "numpy", "scipy", "pyarrow", "joblib")

pytestmark = pytest.mark.slow


def _venv(tmp: Path, extra: str) -> Path:
    venv = tmp / f"venv-{extra.replace(',', '-')}"
    subprocess.run([str(UV), "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(UV), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), f"{REPO}[{extra}]"],
        check=True,
        timeout=900,
    )
    return venv / "bin" / "python"


def test_dockerfiles_install_the_extras_these_tests_use() -> None:
    operator = (REPO / "Dockerfile.operator").read_text()
    assert re.search(r'pip install .*"\.\[operator\]"', operator)
    assert re.search(r"python -c .*optional-dependencies.*\boperator >/tmp/requirements.txt", operator)
    trainer = (REPO / "Dockerfile.trainer").read_text()
    assert "ARG EXTRAS=trainer,s3,mlflow\n" in trainer and re.search(r'pip install .*"\.\[\$\{EXTRAS\}\]"', trainer)
    assert re.search(r'python -c .*optional-dependencies.*"\$\{EXTRAS\}" >/tmp/requirements.txt', trainer)
    for name in ("Dockerfile.operator", "Dockerfile.trainer"):
        text = (REPO / name).read_text()
        assert "USER 10001" in text, f"{name} must run as non-root"
        # Read-only root filesystem: no bytecode written at run time, HOME in the writable /tmp.
        assert re.search(r"^ENV .*PYTHONDONTWRITEBYTECODE=1 .*HOME=/tmp", text, re.M), name


@pytest.mark.parametrize("name", ["Dockerfile.operator", "Dockerfile.trainer"])
def test_dockerfiles_install_dependencies_before_copying_the_sources(name: str) -> None:
    """A code change must rebuild only the last layers: the dependencies come from pyproject.toml alone."""
    lines = [line for line in (REPO / name).read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim", "the default base stays the public image"
    assert [line for line in lines if line.startswith("FROM")] == ["FROM ${BASE_IMAGE} AS build", "FROM ${BASE_IMAGE}"]

    def index(pattern: str) -> int:
        (found,) = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        return found

    deps = index(r"pip install .*--prefix=/deps -r /tmp/requirements.txt")
    assert index(r"^COPY pyproject.toml ") < deps
    for tree in ("api", "operator", "trainer", "README.md"):
        assert deps < index(rf"^COPY {tree} "), f"{tree} is copied before the dependencies are installed"
    package = index(r"pip install .*--no-deps .*--prefix=/app")
    assert package > index(r"^COPY trainer ")
    # In the final stage the dependencies are one layer and our packages the last one.
    assert index(r"^COPY --from=build /deps /usr/local$") < index(r"^COPY --from=build /app /usr/local$")
    assert lines[-1] == "COPY --from=build /app /usr/local"


def test_operator_image_works_without_ml_libraries(tmp_path: Path) -> None:
    python = _venv(tmp_path, "operator")
    # VmHWM (the peak RSS of this process image), not ru_maxrss: the latter keeps the high-water mark of the
    # forked pytest process from before exec.
    probe = (
        "import sys; import kubetrain_operator.__main__, kubetrain_operator.handlers; "
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; print('heavy', heavy); "
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')); "
        "print('rss_mb', int(hwm.split()[1]) // 1024)"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "heavy []" in out, out
    for module in HEAVY:
        found = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode == 0
        assert not found, f"{module} is installed in the operator image"
    rss = int(out.split("rss_mb")[1])
    print(f"operator image: imports use {rss} MB RSS")
    assert rss < 150, out
    help_text = subprocess.run(
        [str(python), "-m", "kubetrain_operator", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--all-namespaces" in help_text


def test_trainer_image_trains_on_its_own(tmp_path: Path) -> None:
    python = _venv(tmp_path, "trainer,s3")
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(python), "-m", "kubetrain_trainer", "run", "--config", str(REPO / "examples" / "iris-classification.yaml"),
         "--output", str(out)],
        capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "KUBETRAIN_DATASET_PATH": str(REPO / "examples" / "data" / "iris.csv"),
             "KUBETRAIN_TERMINATION_LOG": str(tmp_path / "result.json")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "iris" / "model.joblib").is_file()
    assert '"Succeeded"' in (tmp_path / "result.json").read_text()
