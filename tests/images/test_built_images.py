"""The images themselves: built from Dockerfile.trainer and Dockerfile.operator by hack/build-images (buildah, on the
local python:3.11-slim stand-in), then run the way the kubelet runs them — with runc, as uid 10001, on a read-only
root filesystem with a tmpfs at /tmp, no network, and a writable /dev/termination-log.

Cold, the first build takes minutes (the base image, then every dependency); afterwards hack/build-images answers
from its OCI archive cache in seconds, which one test checks. Skipped only where buildah or runc is missing
(`make tools` installs them) or without root (buildah's system storage).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_IMAGES = REPO / "hack" / "build-images"
HEAVY = ("sklearn", "pandas", "numpy", "scipy", "pyarrow", "joblib", "mlflow")
UID = 10001

_missing = [tool for tool in ("buildah", "runc") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_missing), reason=f"{' and '.join(_missing)} not installed (run `make tools`)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah's system storage and runc need root"),
]


def build_images(*names: str, env: dict[str, str] | None = None, repo: Path = REPO) -> tuple[dict[str, str], str]:
    """Run hack/build-images; return its stdout assignments and its stderr (progress, buildah's steps)."""
    proc = subprocess.run(
        [str(repo / "hack" / "build-images"), *names],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    lines = proc.stdout.splitlines()
    assert all(re.fullmatch(r"[A-Z_]+=\S+", line) for line in lines), proc.stdout
    return dict(line.split("=", 1) for line in lines), proc.stderr


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    return build_images()[0]


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=True, timeout=300).stdout


def image_config(image: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
    return config


def diff_ids(image: str) -> list[str]:
    ids: list[str] = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["rootfs"]["diff_ids"]
    return ids


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    termination_log: str


def run_container(
    tmp: Path,
    image: str,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    entrypoint: list[str] | None = None,
    binds: dict[str, Path] | None = None,
    timeout: float = 600,
) -> Ran:
    """Run ``image`` under runc as the kubelet would with a restricted securityContext: uid/gid 10001, read-only
    root, tmpfs /tmp, a writable /dev/termination-log, no network; the image's entrypoint (or ``entrypoint``) with
    ``args`` (default: the image's CMD)."""
    config = image_config(image)
    ctr = buildah("from", "--pull=never", "--quiet", image).strip()
    try:
        rootfs = buildah("mount", ctr).strip()
        token = uuid.uuid4().hex[:10]
        bundle = tmp / f"bundle-{token}"
        bundle.mkdir()
        subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
        spec = json.loads((bundle / "config.json").read_text())
        log = tmp / f"termination-log-{token}"
        log.touch()
        os.chown(log, UID, UID)
        mounts = [
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/dev/termination-log", "type": "bind", "source": str(log), "options": ["rbind", "rw"]},
        ]
        for dest, source in (binds or {}).items():
            mounts.append({"destination": dest, "type": "bind", "source": str(source), "options": ["rbind", "rw"]})
        image_env = dict(e.split("=", 1) for e in config.get("Env", []))
        spec["process"].update(
            terminal=False,
            user={"uid": UID, "gid": UID},
            args=[
                *(config.get("Entrypoint", []) if entrypoint is None else entrypoint),
                *(config.get("Cmd", []) if args is None else args),
            ],
            env=[f"{k}={v}" for k, v in {**image_env, **(env or {})}.items()],
            cwd=config.get("WorkingDir") or "/",
        )
        spec["root"] = {"path": rootfs, "readonly": True}
        spec["mounts"] += mounts
        spec["hostname"] = "trainer"
        (bundle / "config.json").write_text(json.dumps(spec))
        proc = subprocess.run(
            ["runc", "run", "--bundle", str(bundle), f"kubetrain-test-{token}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Ran(proc.returncode, proc.stdout, proc.stderr, log.read_text())
    finally:
        subprocess.run(["buildah", "umount", ctr], capture_output=True)
        subprocess.run(["buildah", "rm", ctr], capture_output=True)


def archive_config_digest(archive: Path) -> str:
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> Any:
            member = tar.extractfile("blobs/" + digest.replace(":", "/"))
            assert member is not None
            return json.load(member)

        (manifest,) = json.load(tar.extractfile("index.json"))["manifests"]  # type: ignore[arg-type]
        assert manifest["annotations"]["org.opencontainers.image.ref.name"]  # what `ctr images import` names it
        return str(blob(manifest["digest"])["config"]["digest"])


def test_build_prints_the_names_the_chart_defaults_to_and_the_ids(built: dict[str, str]) -> None:
    assert set(built) == {
        f"{kind}_{key}" for kind in ("TRAINER", "OPERATOR") for key in ("IMAGE", "ARCHIVE", "IMAGE_ID")
    }
    assert built["TRAINER_IMAGE"] == "ghcr.io/kubetrain/trainer:0.1.0"
    assert built["OPERATOR_IMAGE"] == "ghcr.io/kubetrain/operator:0.1.0"
    values = (REPO / "helm" / "kubetrain" / "values.yaml").read_text()
    assert f"trainerImage: {built['TRAINER_IMAGE']}\n" in values
    assert "repository: ghcr.io/kubetrain/operator\n" in values
    assert 'appVersion: "0.1.0"\n' in (REPO / "helm" / "kubetrain" / "Chart.yaml").read_text()
    from kubetrain_operator.settings import DEFAULT_TRAINER_IMAGE

    assert built["TRAINER_IMAGE"] == DEFAULT_TRAINER_IMAGE
    for kind in ("TRAINER", "OPERATOR"):
        archive = Path(built[f"{kind}_ARCHIVE"])
        assert archive.is_file() and archive.stat().st_size > 10_000_000
        with tarfile.open(archive) as tar:
            (manifest,) = json.load(tar.extractfile("index.json"))["manifests"]  # type: ignore[arg-type]
        assert manifest["annotations"]["org.opencontainers.image.ref.name"] == built[f"{kind}_IMAGE"]
        # The id containerd gives the imported image (its config digest) is the image buildah built.
        assert built[f"{kind}_IMAGE_ID"] == archive_config_digest(archive)
        assert (
            built[f"{kind}_IMAGE_ID"]
            == "sha256:"
            + buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", built[f"{kind}_IMAGE"]).strip()
        )


def test_base_python_has_the_stdlib_modules_of_python_slim(tmp_path: Path) -> None:
    probe = (
        "import ssl, sqlite3, ctypes, lzma, bz2, zlib, readline, uuid, decimal, sys, sysconfig, pip; "
        "print(sys.executable, sys.prefix, sysconfig.get_config_var('prefix'), ssl.OPENSSL_VERSION); "
        "import os; print('externally-managed', os.path.exists(sysconfig.get_path('stdlib') + '/EXTERNALLY-MANAGED'))"
    )
    base = "docker.io/library/python:3.11-slim"
    config = image_config(base)
    assert config["Cmd"] == ["python3"] and "LANG=C.UTF-8" in config["Env"]
    ran = run_container(tmp_path, base, ["-c", probe], entrypoint=["python3"])
    assert ran.returncode == 0, ran.stderr
    assert "/usr/local/bin/python3 /usr/local /usr/local OpenSSL 3" in ran.stdout
    assert "externally-managed False" in ran.stdout


def test_trainer_image_trains_iris_as_10001_on_a_read_only_root(built: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(REPO / "examples" / "data" / "iris.csv", data / "iris.csv")
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, UID, UID)
    run = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "iris-image", "namespace": "default", "uid": str(uuid.uuid4())},
        "spec": {
            "model": "iris",
            "dataset": {"uri": "pvc://data/iris.csv", "target": "species"},
            "estimator": {"name": "random_forest", "params": {"n_estimators": 10}},
            "evaluation": {"primaryMetric": "accuracy", "thresholds": [{"metric": "accuracy", "min": 0.8}]},
            "seed": 7,
        },
    }
    ran = run_container(
        tmp_path,
        built["TRAINER_IMAGE"],
        ["run"],
        env={
            "KUBETRAIN_CONFIG": json.dumps(run),
            "KUBETRAIN_DATASET_PATH": "/data/iris.csv",
            "KUBETRAIN_OUTPUT_DIR": "/out/iris-image",
            "KUBETRAIN_OUTPUT_URI": "file:///out/",
            "KUBETRAIN_CPU_LIMIT": "1",
        },
        binds={"/data": data, "/out": out},
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert image_config(built["TRAINER_IMAGE"])["User"] == f"{UID}:{UID}"
    result = json.loads(ran.termination_log)
    assert result["outcome"] == "Succeeded" and result["reason"] == "Trained", result
    assert result["metrics"]["accuracy"] >= 0.8
    assert result["versions"]["python"].startswith("3.11.")
    model = out / "iris-image" / "model.joblib"
    assert model.is_file() and model.stat().st_uid == UID
    assert json.loads((out / "iris-image" / "metadata.json").read_text())


def test_trainer_image_cannot_write_outside_tmp(built: dict[str, str], tmp_path: Path) -> None:
    probe = (
        "import os, socket\n"
        "open('/tmp/ok', 'w').write('x')\n"
        "for path in ('/usr/local/lib/x', '/x', '/home/x'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "    except OSError as e:\n"
        "        print(path, e.strerror)\n"
        "print('uid', os.getuid(), os.getgid(), 'home', os.environ['HOME'])\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 80), timeout=2)\n"
        "except OSError as e:\n"
        "    print('network', type(e).__name__)\n"
    )
    config = image_config(built["TRAINER_IMAGE"])
    ran = run_container(tmp_path, built["TRAINER_IMAGE"], ["-c", probe], entrypoint=["python"])
    assert ran.returncode == 0, ran.stderr
    assert "/usr/local/lib/x Read-only file system" in ran.stdout
    assert "/x Read-only file system" in ran.stdout
    assert "uid 10001 10001 home /tmp" in ran.stdout
    assert "network OSError" in ran.stdout or "network TimeoutError" in ran.stdout
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]


def test_operator_image_prints_help_and_imports_no_ml_library(built: dict[str, str], tmp_path: Path) -> None:
    ran = run_container(tmp_path, built["OPERATOR_IMAGE"], ["--help"])
    assert ran.returncode == 0, ran.stderr
    assert "--all-namespaces" in ran.stdout
    assert image_config(built["OPERATOR_IMAGE"])["Cmd"] == ["--all-namespaces"]
    assert image_config(built["OPERATOR_IMAGE"])["User"] == f"{UID}:{UID}"
    probe = (
        "import importlib.util, sys; import kubetrain_operator.__main__, kubetrain_operator.handlers; "
        f"print('imported', [m for m in {HEAVY!r} if m in sys.modules]); "
        f"print('installed', [m for m in {HEAVY!r} if importlib.util.find_spec(m)]); "
        "print('uid', __import__('os').getuid())"
    )
    ran = run_container(tmp_path, built["OPERATOR_IMAGE"], ["-c", probe], entrypoint=["python"])
    assert ran.returncode == 0, ran.stderr
    assert "imported []\ninstalled []\nuid 10001\n" in ran.stdout, ran.stdout


def test_warm_build_is_a_cache_hit_in_seconds(built: dict[str, str]) -> None:
    start = time.monotonic()
    again, progress = build_images()
    elapsed = time.monotonic() - start
    assert again == built
    assert progress.count(": cached (") == 2, progress
    assert "STEP" not in progress, progress
    print(f"warm hack/build-images: {elapsed:.1f} s")
    assert elapsed < 15


def test_a_source_change_rebuilds_only_the_last_layer(built: dict[str, str], tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    copy.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("Dockerfile.trainer", "Dockerfile.operator", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, copy / name)
    for tree in ("api", "operator", "trainer", "cli", "hack", "helm"):
        shutil.copytree(REPO / tree, copy / tree, ignore=ignore)
    init = copy / "trainer" / "kubetrain_trainer" / "__init__.py"
    init.write_text(init.read_text() + f"\n# a change {uuid.uuid4().hex}\n")
    image = f"localhost/kubetrain-test/trainer:{uuid.uuid4().hex[:8]}"
    env = {"KUBETRAIN_IMAGE_CACHE": str(tmp_path / "cache"), "KUBETRAIN_TRAINER_IMAGE": image}
    start = time.monotonic()
    try:
        changed, progress = build_images("trainer", env=env, repo=copy)
        elapsed = time.monotonic() - start
        assert changed["TRAINER_IMAGE"] == image and changed["TRAINER_IMAGE_ID"] != built["TRAINER_IMAGE_ID"]
        before, after = diff_ids(built["TRAINER_IMAGE"]), diff_ids(image)
        assert len(before) == len(after)
        assert after[:-1] == before[:-1], "layers below the sources were rebuilt"
        assert after[-1] != before[-1]
        # buildah reused the dependency layer of the build stage (the one that downloads and installs them).
        deps_step = re.search(r"STEP \d+/\d+: RUN pip install --no-cache-dir \"setuptools.*\n(.*)\n", progress)
        assert deps_step and "Using cache" in deps_step.group(1), progress[-4000:]
        print(f"trainer rebuild after a source change: {elapsed:.1f} s")
    finally:
        subprocess.run(["buildah", "rmi", image], capture_output=True)


@pytest.mark.skipif(
    shutil.which("containerd") is None or shutil.which("ctr") is None, reason="containerd not installed"
)
def test_containerd_imports_the_archive_under_its_name_with_the_printed_id(
    built: dict[str, str], tmp_path: Path
) -> None:
    """`ctr -n k8s.io images import` (what the dev cluster's nodes do) names the image after the archive's ref and
    keeps the config digest that hack/build-images printed: the id the kubelet reports for it. A private containerd
    (own socket, root and state, CRI plugin off) so that no node of a running dev cluster is touched."""
    root = tmp_path / "ctrd"
    root.mkdir()
    sock = root / "containerd.sock"
    (root / "config.toml").write_text(
        f'version = 2\nroot = "{root}/root"\nstate = "{root}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
    )
    log = (root / "containerd.log").open("w")
    daemon = subprocess.Popen(["containerd", "--config", str(root / "config.toml")], stdout=log, stderr=log)
    ctr = ["ctr", "--address", str(sock), "-n", "k8s.io"]
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([*ctr, "version"], capture_output=True).returncode != 0:
            assert daemon.poll() is None and time.monotonic() < deadline, (root / "containerd.log").read_text()[-2000:]
            time.sleep(0.3)
        subprocess.run(
            [*ctr, "images", "import", built["OPERATOR_ARCHIVE"]], check=True, capture_output=True, timeout=300
        )
        listed = subprocess.run([*ctr, "images", "ls"], check=True, capture_output=True, text=True).stdout
        row = next(line.split() for line in listed.splitlines() if line.startswith(built["OPERATOR_IMAGE"] + " "))
        manifest = json.loads(subprocess.run([*ctr, "content", "get", row[2]], check=True, capture_output=True).stdout)
        assert manifest["config"]["digest"] == built["OPERATOR_IMAGE_ID"]
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
