"""Saving the fitted pipeline atomically, and verifying saved models."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import contract
from .errors import ArtifactLost, ConfigInvalid, VerifyFailed


@dataclass(frozen=True)
class ArtifactRef:
    """A ModelVersion's artifact as the operator passes it to the trainer: the version's name, the model's URI
    and its sha256 (a champion for spec.register.promote, a drift gate's reference)."""

    name: str
    uri: str
    sha256: str


def artifact_ref_from_env(uri_var: str, sha_var: str, name_var: str, default_name: str) -> ArtifactRef | None:
    """The reference in ``uri_var``/``sha_var``/``name_var``; None when the operator passed none. URI and sha256
    come together: one without the other is ConfigInvalid."""
    uri = os.environ.get(uri_var) or ""
    sha = os.environ.get(sha_var) or ""
    if not uri and not sha:
        return None
    if not uri or not sha:
        raise ConfigInvalid(f"{uri_var} and {sha_var} come together")
    return ArtifactRef(os.environ.get(name_var) or default_name, uri, sha)


def library_versions() -> dict[str, str]:
    import joblib
    import numpy
    import pandas
    import sklearn

    return {
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "joblib": joblib.__version__,
        "pandas": pandas.__version__,
        "numpy": numpy.__version__,
    }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")


#: errors that say "this place cannot be written by this process": fixing them needs a spec or volume
#: change, so they are ConfigInvalid (terminal), never a retried InternalError.
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_FULL = (errno.ENOSPC, errno.EDQUOT)


def unwritable(exc: OSError, where: Path) -> ConfigInvalid | None:
    """The clear, terminal error for a write refused at ``where``; None for other OS errors."""
    if exc.errno in _FULL:
        return ConfigInvalid(
            f"cannot write artifacts to {where}: {exc.strerror} (the output volume is full); nothing was "
            "registered and no partial artifact is left: free space on the volume or use a larger claim"
        )
    if exc.errno not in _UNWRITABLE:
        return None
    if exc.errno == errno.EROFS:
        hint = (
            "only /tmp and mounted volumes are writable in the trainer container (read-only root filesystem): "
            "set spec.output.uri to a pvc:// claim or an s3:// bucket"
        )
    else:
        hint = (
            f"the trainer runs as uid {os.getuid()}: give the volume's pod an fsGroup or make the directory "
            "writable for that user"
        )
    return ConfigInvalid(f"cannot write artifacts to {where}: {exc.strerror}; {hint}")


def check_writable(run_dir: Path) -> None:
    """Fail before training when the artifacts could not be written there (read-only or foreign directory).

    Probes the nearest existing ancestor with a temporary directory and leaves nothing behind: a run that
    fails later (bad data, ...) must not leave an empty output directory."""
    parent = run_dir.parent
    probe_in = parent
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    try:
        tempfile.TemporaryDirectory(dir=probe_in, prefix=".kubetrain-probe-").cleanup()
    except OSError as exc:
        err = unwritable(exc, parent)
        if err is None:
            raise
        raise err from None


@dataclass(frozen=True)
class Saved:
    """What ``save_artifacts`` wrote: the model reference and every file, in write order."""

    model: dict[str, Any]  # {uri, sha256, size, format}, also under "model" in metadata.json
    files: tuple[str, ...]  # file names in the run directory; metadata.json last (it marks completion)


def save_artifacts(
    run_dir: Path,
    pipeline: Any,
    metadata: dict[str, Any],
    model_uri: str,
    documents: Mapping[str, Any] | None = None,
    files: Mapping[str, Path] | None = None,
) -> Saved:
    """Write model.joblib, model.joblib.sha256, each of ``documents`` (file name → JSON value), copies of
    ``files`` (file name → a local file, e.g. evaluation.json and the report) and metadata.json into
    ``run_dir`` atomically.

    Everything is written and fsynced in a temp dir next to ``run_dir`` first. A fresh ``run_dir`` is
    one rename; an existing one (a parallel search's trials, or an earlier attempt) gets each file by
    rename, metadata.json last, so readers never see a half-written file.
    """
    parent = run_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.tmp-", dir=parent))
    except OSError as exc:
        err = unwritable(exc, parent)
        if err is None:
            raise
        raise err from None
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; serving pods read the directory
    try:
        saved = _write_all(tmp, pipeline, metadata, model_uri, documents or {}, files or {})
        _move_into_place(tmp, run_dir, saved.files)
        _fsync_dir(parent)
        return saved
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # no partial artifact: nothing at run_dir was replaced yet
        err = unwritable(exc, run_dir)
        if err is None:
            raise
        raise err from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_all(
    tmp: Path,
    pipeline: Any,
    metadata: dict[str, Any],
    model_uri: str,
    documents: Mapping[str, Any],
    files: Mapping[str, Path],
) -> Saved:
    import joblib

    model_path = tmp / contract.MODEL_FILE
    joblib.dump(pipeline, model_path)
    _fsync_file(model_path)
    digest = sha256_file(model_path)
    (tmp / contract.CHECKSUM_FILE).write_text(f"{digest}  {contract.MODEL_FILE}\n")
    ref = {"uri": model_uri, "sha256": digest, "size": model_path.stat().st_size, "format": contract.MODEL_FORMAT}
    reserved = {contract.MODEL_FILE, contract.CHECKSUM_FILE, contract.METADATA_FILE}
    for name in (*documents, *files):
        if name in reserved or "/" in name or (name in documents and name in files):
            raise ValueError(f"artifact file name {name!r} is reserved, repeated or not a plain file name")
    for name, doc in documents.items():
        _write_json(tmp / name, doc)
    for name, source in files.items():
        shutil.copyfile(source, tmp / name)
    _write_json(tmp / contract.METADATA_FILE, {**metadata, "model": ref})
    written = (contract.MODEL_FILE, contract.CHECKSUM_FILE, *documents, *files, contract.METADATA_FILE)
    for name in written[1:]:
        _fsync_file(tmp / name)
    _fsync_dir(tmp)
    return Saved(ref, written)


def _move_into_place(tmp: Path, run_dir: Path, files: tuple[str, ...]) -> None:
    try:
        os.rename(tmp, run_dir)
    except OSError:
        if not run_dir.is_dir():
            raise
        for name in files:
            os.replace(tmp / name, run_dir / name)
        _fsync_dir(run_dir)
        tmp.rmdir()


def upload_dir(local_dir: Path, remote_base: str, files: Sequence[str] | None = None) -> None:
    """Copy artifacts (``files``, default the model, its checksum and metadata.json) to an object store
    (s3://), metadata.json last: its presence marks completion.

    A missing bucket or denied access is ConfigInvalid (no retry); other errors (network, 5xx) stay
    retryable. On any failure the objects this call already wrote are removed (best effort).
    """
    import fsspec

    from .data import CREDENTIALS_HINT

    fs, root = fsspec.core.url_to_fs(remote_base)
    names = [n for n in (files or (contract.MODEL_FILE, contract.CHECKSUM_FILE)) if n != contract.METADATA_FILE]
    names.append(contract.METADATA_FILE)
    written: list[str] = []
    try:
        for name in names:
            dest = f"{root.rstrip('/')}/{name}"
            fs.put_file(str(local_dir / name), dest)
            written.append(dest)
    except BaseException as exc:
        for dest in reversed(written):
            with contextlib.suppress(Exception):
                fs.rm_file(dest)
        detail = " ".join(str(exc).split())[:300]
        if isinstance(exc, FileNotFoundError):
            raise ConfigInvalid(f"cannot upload artifacts to {remote_base}: not found ({detail})") from None
        if isinstance(exc, PermissionError):
            raise ConfigInvalid(
                f"access denied uploading artifacts to {remote_base} ({detail}); {CREDENTIALS_HINT}"
            ) from None
        raise


def read_back(location: str | Path, sha256: str) -> None:
    """Read the model back from its final location (a directory, or an s3:// prefix) and check its sha256
    and metadata.json: a run reports success only for an artifact that is really there. Raises
    ``ArtifactLost`` (InternalError, so retried) naming the location otherwise."""
    where = str(location)
    try:
        if isinstance(location, Path):
            actual = sha256_file(location / contract.MODEL_FILE)
            has_meta = (location / contract.METADATA_FILE).is_file()
        else:
            import fsspec

            fs, root = fsspec.core.url_to_fs(location)
            fs.invalidate_cache()  # an earlier listing must not stand in for the object store's answer
            digest = hashlib.sha256()
            with fs.open(f"{root.rstrip('/')}/{contract.MODEL_FILE}", "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            actual = digest.hexdigest()
            has_meta = fs.exists(f"{root.rstrip('/')}/{contract.METADATA_FILE}")
    except OSError as exc:
        raise ArtifactLost(
            f"the model written to {where} cannot be read back from there ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}); the run is not reported as succeeded"
        ) from None
    if actual != sha256:
        raise ArtifactLost(
            f"the model read back from {where} has sha256 {actual[:12]}, not the {sha256[:12]} just written; "
            "the run is not reported as succeeded"
        )
    if not has_meta:
        raise ArtifactLost(f"{contract.METADATA_FILE} is missing at {where} after it was written")


# ---- verify -----------------------------------------------------------------------------------------


def load_checked_model(path: Path, sha256: str, what: str) -> Any:
    """``joblib.load`` of ``path`` (model.joblib, or the directory holding it) only once its sha256 equals
    ``sha256``: a mismatch is VerifyFailed and the file is never unpickled."""
    model_path = path / contract.MODEL_FILE if path.is_dir() else path
    if not model_path.is_file():
        raise VerifyFailed(f"{what}: model file {model_path} not found")
    expected = sha256.strip().lower()
    actual = sha256_file(model_path)
    if actual != expected:
        raise VerifyFailed(
            f"{what}: checksum mismatch for {model_path.name}: expected {expected}, got {actual}; not loaded"
        )
    import joblib

    try:
        return joblib.load(model_path)
    except Exception as exc:
        raise VerifyFailed(
            f"{what}: cannot load {model_path.name}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from None


def _expected_sha(model_dir: Path, given: str | None) -> tuple[str, str]:
    if given:
        return given.strip().lower(), "given"
    meta = model_dir / contract.METADATA_FILE
    if meta.is_file():
        try:
            sha = json.loads(meta.read_text())["model"]["sha256"]
            return str(sha).lower(), contract.METADATA_FILE
        except (ValueError, KeyError, TypeError):
            pass
    side = model_dir / contract.CHECKSUM_FILE
    if side.is_file():
        first = side.read_text().split()
        if first:
            return first[0].lower(), contract.CHECKSUM_FILE
    raise VerifyFailed(
        f"no checksum to verify against: pass --sha256 or provide {contract.METADATA_FILE} / {contract.CHECKSUM_FILE}"
    )


def _smoke_input(model: Any, signature: dict[str, Any] | None) -> Any:
    import numpy as np
    import pandas as pd

    features = (signature or {}).get("features") or []
    if features:
        row: dict[str, Any] = {}
        for f in features:
            kind, dtype = f.get("kind"), str(f.get("dtype", ""))
            if kind == "datetime" or dtype.startswith("datetime"):
                row[f["name"]] = pd.Timestamp("2000-01-01")
            elif kind in ("categorical", "text") or dtype in ("object", "str", "string"):
                row[f["name"]] = "x"
            elif dtype == "bool":
                row[f["name"]] = False
            else:
                row[f["name"]] = 0.0
        frame = pd.DataFrame([row, row])
        for f in features:
            dtype = str(f.get("dtype", ""))
            if dtype.startswith(("int", "uint", "float")):
                frame[f["name"]] = frame[f["name"]].astype(dtype)
        return frame
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        return pd.DataFrame(np.zeros((2, len(names))), columns=list(names))
    n = getattr(model, "n_features_in_", None)
    if n is None:
        raise VerifyFailed("model records no input signature (metadata.json, feature_names_in_ or n_features_in_)")
    return np.zeros((2, int(n)))


def verify_model(path: Path, sha256: str | None, uri: str | None = None) -> dict[str, Any]:
    """Checksum, loadability and a smoke prediction; raises VerifyFailed, returns facts for the result."""
    model_path = path / contract.MODEL_FILE if path.is_dir() else path
    model_dir = model_path.parent
    if not model_path.is_file():
        raise VerifyFailed(f"model file {model_path} not found")
    expected, source = _expected_sha(model_dir, sha256)
    actual = sha256_file(model_path)
    if actual != expected:
        raise VerifyFailed(f"checksum mismatch for {model_path.name}: expected {expected} ({source}), got {actual}")
    metadata: dict[str, Any] = {}
    meta_path = model_dir / contract.METADATA_FILE
    if meta_path.is_file():
        try:
            metadata = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise VerifyFailed(f"{contract.METADATA_FILE} is not valid JSON: {exc}") from None
    import joblib

    try:
        model = joblib.load(model_path)
    except Exception as exc:
        raise VerifyFailed(
            f"cannot load {model_path.name}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from None
    if not hasattr(model, "predict"):
        raise VerifyFailed(f"{model_path.name} holds a {type(model).__name__}, which has no predict()")
    try:
        pred = model.predict(_smoke_input(model, metadata.get("signature")))
    except VerifyFailed:
        raise
    except Exception as exc:
        raise VerifyFailed(
            f"smoke prediction failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from None
    if len(pred) != 2:
        raise VerifyFailed(f"smoke prediction returned {len(pred)} values for 2 rows")
    return {
        "model": {
            "uri": uri or model_path.resolve().as_uri(),
            "sha256": actual,
            "size": model_path.stat().st_size,
            "format": contract.MODEL_FORMAT,
        },
        "task": (metadata.get("signature") or {}).get("task"),
        "estimator": (metadata.get("estimator") or {}).get("name"),
        "metrics": metadata.get("metrics"),
        "trained_with": metadata.get("versions"),
    }
