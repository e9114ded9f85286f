"""Where data comes from and artifacts go: env overrides, URIs, remote filesystems, CPU limits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubetrain_trainer import contract
from kubetrain_trainer.errors import ConfigInvalid, DataInvalid

from .conftest import spec_for, write_config


@pytest.mark.parametrize(
    ("raw", "expected"), [("2", 2), ("500m", 1), ("1500m", 1), ("1.5", 1), ("64", None), ("", None), ("lots", None)]
)
def test_cpu_limit_bounds_parallelism(monkeypatch: pytest.MonkeyPatch, raw: str, expected: int | None) -> None:
    import os

    from kubetrain_trainer.runner import cpu_limit

    visible = len(os.sched_getaffinity(0))
    monkeypatch.setenv(contract.ENV_CPU_LIMIT, raw)
    assert cpu_limit() == (min(expected, visible) if expected is not None else visible)


def test_run_name_and_output_uri_from_env(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    spec = spec_for((data_dir / "iris.csv").as_uri(), "species", "knn")
    cfg = write_config(tmp_path / "r.yaml", spec, name="from-metadata")
    base = tmp_path / "models"
    env = {contract.ENV_RUN_NAME: "from-env", contract.ENV_OUTPUT_URI: base.as_uri()}
    run = cli("run", "--config", str(cfg), env=env)
    assert run.code == 0, run.result
    assert (base / "from-env" / "model.joblib").is_file()
    assert run.result["model"]["uri"] == f"{base.as_uri()}/from-env/model.joblib"


def test_dataset_path_env_wins_and_format_comes_from_the_uri(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    mounted = tmp_path / "mounted-without-extension"
    mounted.write_bytes((data_dir / "iris.parquet").read_bytes())
    spec = spec_for("s3://bucket/iris.parquet", "species", "knn")
    cfg = write_config(tmp_path / "r.yaml", spec, name="s3-data")
    run = cli("validate", "--config", str(cfg), env={contract.ENV_DATASET_PATH: str(mounted)})
    assert run.code == 0, run.result
    assert run.result["dataset"]["format"] == "parquet"


def test_remote_fetch_and_upload_through_fsspec(tmp_path: Path) -> None:
    """s3:// goes through the same fsspec calls; the in-memory filesystem stands in for it here."""
    import fsspec
    from kubetrain_trainer.artifacts import upload_dir
    from kubetrain_trainer.data import fetch_remote

    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/data/iris.csv", b"a,b\n1,2\n")
    local = fetch_remote("memory://bucket/data/iris.csv", tmp_path)
    assert local.name == "iris.csv" and local.read_bytes() == b"a,b\n1,2\n"

    art = tmp_path / "art"
    art.mkdir()
    for name in (contract.MODEL_FILE, contract.CHECKSUM_FILE, contract.METADATA_FILE):
        (art / name).write_text(name)
    upload_dir(art, "memory://models/runs/r1")
    assert fs.cat("/models/runs/r1/metadata.json") == b"metadata.json"

    with pytest.raises(DataInvalid, match=r"dataset memory://bucket/missing\.csv not found"):
        fetch_remote("memory://bucket/missing.csv", tmp_path)


def test_failed_upload_removes_what_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused metadata.json upload is ConfigInvalid, and the model already uploaded is taken back."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem
    from kubetrain_trainer.artifacts import upload_dir

    put = MemoryFileSystem.put_file

    def refuse_metadata(self: Any, lpath: str, rpath: str, **kw: Any) -> Any:
        if rpath.endswith(contract.METADATA_FILE):
            raise PermissionError("Forbidden")
        return put(self, lpath, rpath, **kw)

    monkeypatch.setattr(MemoryFileSystem, "put_file", refuse_metadata)
    art = tmp_path / "art"
    art.mkdir()
    for name in (contract.MODEL_FILE, contract.CHECKSUM_FILE, contract.METADATA_FILE):
        (art / name).write_text(name)
    with pytest.raises(ConfigInvalid, match="access denied uploading artifacts to memory://models/partial/r1"):
        upload_dir(art, "memory://models/partial/r1")
    assert fsspec.filesystem("memory").find("/models/partial") == []


@pytest.mark.parametrize(
    "uri",
    ["data.csv", "file://relative/x.csv", "file:///a/../b.csv", "pvc://claim/./x.csv", "ftp://h/x.csv", "pvc:///x"],
)
def test_uri_checks(uri: str) -> None:
    from kubetrain_trainer.data import check_uri_path

    with pytest.raises(ConfigInvalid):
        check_uri_path(uri, "spec.dataset.uri")


def _on_read_only_mount(ro: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run the trainer CLI in a private mount namespace where ``ro`` is a read-only bind mount (a real EROFS)."""
    script = f'mount --bind "{ro}" "{ro}" && mount -o remount,bind,ro "{ro}" && exec "$@"'
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETRAIN_")}
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", sys.executable, "-m",
         "kubetrain_trainer", *argv],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)")
def test_output_on_a_read_only_filesystem_fails_at_once_and_terminally(data_dir: Path, tmp_path: Path) -> None:
    """The trainer's root filesystem is read-only in its container: an output there is ConfigInvalid (not a
    retried InternalError), found before training, and the message says where it may write instead."""
    ro = tmp_path / "ro"
    ro.mkdir()
    spec = spec_for((data_dir / "iris.csv").as_uri(), "species", "knn", output={"uri": (ro / "models").as_uri()})
    cfg = write_config(tmp_path / "r.yaml", spec, name="writes-ro")
    proc = _on_read_only_mount(ro, "run", "--config", str(cfg))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == contract.EXIT_CONFIG_INVALID, (proc.stdout, proc.stderr)
    assert result["reason"] == contract.REASON_CONFIG_INVALID
    assert "Read-only file system" in result["message"] and str(ro / "models") in result["message"], result
    assert "spec.output.uri" in result["message"] and "/tmp" in result["message"], result
    assert "fit" not in (result.get("timings") or {}), result  # refused before training
    assert not (ro / "models").exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)")
def test_a_full_output_volume_fails_clearly_and_leaves_no_partial_artifact(data_dir: Path, tmp_path: Path) -> None:
    """A real ENOSPC: the output is a 96 KiB tmpfs (in a private mount namespace), big enough for the
    write probe and some files, too small for a 300-tree forest. The run fails ConfigInvalid naming the
    place and "full", and the volume holds nothing of the run (the temp dir is removed)."""
    full = tmp_path / "full"
    full.mkdir()
    spec = spec_for(
        (data_dir / "iris.csv").as_uri(), "species", "random_forest", {"n_estimators": 300},
        output={"uri": (full / "models").as_uri()},
    )  # fmt: skip
    cfg = write_config(tmp_path / "f.yaml", spec, name="fills-up")
    script = f'mount -t tmpfs -o size=96k tmpfs "{full}" && "$@"; code=$?; ls -aR "{full}" >&2; exit $code'
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETRAIN_")}
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", sys.executable, "-m",
         "kubetrain_trainer", "run", "--config", str(cfg)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == contract.EXIT_CONFIG_INVALID, (result, proc.stderr[-2000:])
    assert result["reason"] == contract.REASON_CONFIG_INVALID and "model" not in result, result
    assert "No space left on device" in result["message"] and "output volume is full" in result["message"], result
    assert str(full / "models" / "fills-up") in result["message"], result
    listing = proc.stderr.split(f"{full}:", 1)[1]  # `ls -aR` of the volume, after the run
    assert "fills-up" not in listing and ".tmp-" not in listing, listing


def test_write_errors_map_to_config_invalid_only_when_the_place_is_unwritable(tmp_path: Path) -> None:
    import errno

    from kubetrain_trainer.artifacts import unwritable

    err = unwritable(OSError(errno.EACCES, "Permission denied"), tmp_path)
    assert err is not None and "fsGroup" in str(err) and f"uid {os.getuid()}" in str(err)
    full = unwritable(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert full is not None and "the output volume is full" in str(full)  # terminal: a person must make room
    assert unwritable(OSError(errno.EIO, "Input/output error"), tmp_path) is None  # retryable
