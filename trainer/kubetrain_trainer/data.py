"""Finding, reading and validating the training data."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import contract
from .errors import ConfigInvalid, DataInvalid

FORMATS_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".xz")
CREDENTIALS_HINT = (
    "check the credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
    "or a role) and the endpoint (AWS_ENDPOINT_URL)"
)


# ---- locations --------------------------------------------------------------------------------------


def check_uri_path(uri: str, field: str) -> tuple[str, str]:
    """(scheme, rest) of a URI, refusing relative paths and '.'/'..' segments."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise ConfigInvalid(f"{field} {uri!r} is not a URI (use file:///abs/path, pvc://claim/path, s3://, https://)")
    if scheme not in ("file", "pvc", "s3", "https"):
        raise ConfigInvalid(f"{field} {uri!r}: unsupported scheme {scheme!r}")
    path_part = urllib.parse.urlsplit(uri).path if scheme == "https" else rest
    segments = path_part.split("/")
    if ".." in segments or "." in segments:
        raise ConfigInvalid(f"{field} {uri!r} must not contain '.' or '..' path segments")
    if scheme == "file" and not rest.startswith("/"):
        raise ConfigInvalid(f"{field} {uri!r}: file:// URIs need an absolute path (file:///data/x.csv)")
    if scheme == "pvc" and (not rest or rest.startswith("/")):
        raise ConfigInvalid(f"{field} {uri!r}: expected pvc://claim/path")
    return scheme, rest


def local_path(uri: str, field: str) -> Path | None:
    """The local path of a file:// or pvc:// URI; None for remote schemes."""
    scheme, rest = check_uri_path(uri, field)
    if scheme == "file":
        return Path(urllib.parse.unquote(rest))
    if scheme == "pvc":
        root = Path(os.environ.get(contract.ENV_PVC_ROOT) or contract.DEFAULT_PVC_ROOT)
        return root / urllib.parse.unquote(rest)
    return None


def fetch_remote(uri: str, dest_dir: Path) -> Path:
    """Download an s3:// or https:// object into ``dest_dir`` (credentials come from the environment)."""
    name = Path(urllib.parse.urlsplit(uri).path).name or "data"
    dest = dest_dir / name
    try:
        if uri.startswith("https://"):
            try:
                import fsspec

                with fsspec.open(uri, "rb") as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except ImportError:
                from urllib.request import urlopen

                with urlopen(uri, timeout=60) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        else:
            try:
                import fsspec
            except ImportError:
                raise ConfigInvalid("s3:// needs fsspec and s3fs (pip install 'kubetrain[trainer,s3]')") from None
            with fsspec.open(uri, "rb") as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (ConfigInvalid, DataInvalid):
        raise
    except ImportError as exc:
        raise ConfigInvalid(f"cannot read {uri}: missing optional dependency ({exc.name})") from None
    except FileNotFoundError as exc:
        cause = hidden_cause(exc)
        if cause is not None:
            raise DataInvalid(f"cannot read dataset {uri}: {type(cause).__name__}: {_short(cause)}") from None
        raise DataInvalid(f"dataset {uri} not found ({_short(exc)})") from None
    except PermissionError as exc:
        hint = f"; {CREDENTIALS_HINT}" if uri.startswith("s3://") else ""
        raise DataInvalid(f"access denied reading dataset {uri} ({_short(exc)}){hint}") from None
    except Exception as exc:
        raise DataInvalid(f"cannot read dataset {uri}: {type(exc).__name__}: {_short(exc)}") from None
    return dest


def hidden_cause(exc: BaseException) -> BaseException | None:
    """The connection or TLS failure behind a FileNotFoundError, or None for a real "not found".

    fsspec's HTTP filesystem raises FileNotFoundError for *any* failure of its request (an untrusted
    certificate, a refused connection, an unknown host) with the real error chained; reporting those as
    "not found" would send the user looking for a file that is there.
    """
    seen: set[int] = set()
    cur = exc.__cause__ or exc.__context__
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and not isinstance(cur, FileNotFoundError):
            return cur  # ssl.SSLError, ConnectionError, aiohttp's ClientOSError family, socket.gaierror
        cur = cur.__cause__ or cur.__context__
    return None


def check_bucket(uri: str, field: str) -> None:
    """Fail before training when an s3:// output's bucket does not exist (HEAD bucket, a 404).

    Any other answer (403: wrong credentials, or a writer not allowed to look at the bucket) is left to
    the upload itself, so write-only credentials keep working.
    """
    bucket = uri.removeprefix("s3://").split("/", 1)[0]
    try:
        import fsspec

        fs, _ = fsspec.core.url_to_fs(uri)
    except ImportError:
        raise ConfigInvalid("s3:// needs fsspec and s3fs (pip install 'kubetrain[trainer,s3]')") from None
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise ConfigInvalid(f"{field} {uri!r}: bucket {bucket!r} does not exist") from None
    except Exception:
        return


def infer_format(path_or_uri: str, declared: str | None) -> str:
    if declared:
        return declared
    name = path_or_uri.lower()
    for comp in COMPRESSION_SUFFIXES:
        name = name.removesuffix(comp)
    suffix = os.path.splitext(name)[1]
    fmt = FORMATS_BY_SUFFIX.get(suffix)
    if fmt is None:
        raise ConfigInvalid(
            f"cannot infer the format of {path_or_uri!r} from its extension; set spec.dataset.format "
            "(csv, parquet, json, jsonl)"
        )
    return fmt


# ---- reading --------------------------------------------------------------------------------------


def read_table(path: Path, fmt: str, records_path: str | None = None) -> pd.DataFrame:
    """Read a local file into a DataFrame; any parse problem is DataInvalid naming the file."""
    if not path.exists():
        raise DataInvalid(f"dataset file {path} does not exist")
    if path.is_dir():
        raise DataInvalid(f"dataset path {path} is a directory, expected a file")
    if not os.access(path, os.R_OK):
        raise DataInvalid(f"dataset file {path} is not readable")
    if path.stat().st_size == 0:
        raise DataInvalid(f"dataset file {path} is empty")
    try:
        if fmt == "csv":
            df = _read_csv(path)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            df = pq.read_table(path).to_pandas()
        elif fmt == "json":
            df = _read_json_document(path, records_path)
        elif fmt == "jsonl":
            df = _read_jsonl(path)
        else:  # pragma: no cover - the API only allows the four formats
            raise ConfigInvalid(f"unsupported format {fmt!r}")
    except (DataInvalid, ConfigInvalid):
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise DataInvalid(f"cannot read {path.name} as {fmt}: {type(exc).__name__}: {_short(exc)}") from None
    if df.shape[1] == 0:
        raise DataInvalid(f"dataset {path.name} has no columns")
    if df.columns.duplicated().any():
        dup = df.columns[df.columns.duplicated()][0]
        raise DataInvalid(f"dataset {path.name} has duplicate column {dup!r}")
    df.columns = [str(c) for c in df.columns]
    return df


def _read_csv(path: Path) -> pd.DataFrame:
    sep = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
    try:
        import pyarrow  # noqa: F401

        return pd.read_csv(path, engine="pyarrow", sep=sep)
    except ImportError:  # pragma: no cover
        return pd.read_csv(path, sep=sep)


def _open_text(path: Path) -> Any:
    name = path.name.lower()
    if name.endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_json_document(path: Path, records_path: str | None) -> pd.DataFrame:
    with _open_text(path) as fh:
        try:
            doc = json.load(fh)
        except json.JSONDecodeError as exc:
            raise DataInvalid(
                f"{path.name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
    records = find_records(doc, records_path, path.name)
    return records_to_frame(records, path.name)


def find_records(doc: Any, records_path: str | None, source: str) -> list[Any]:
    """The record list of a JSON document: the document itself, ``records_path``, or the only
    list-of-objects value of the top-level object."""
    if records_path:
        node = doc
        for key in records_path.split("."):
            if not isinstance(node, dict) or key not in node:
                raise DataInvalid(f"{source}: recordsPath {records_path!r} not found (no key {key!r})")
            node = node[key]
        if not isinstance(node, list):
            raise DataInvalid(f"{source}: recordsPath {records_path!r} is a {type(node).__name__}, expected a list")
        return node
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        candidates = [k for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(candidates) == 1:
            return list(doc[candidates[0]])
        if len(candidates) > 1:
            raise DataInvalid(
                f"{source}: several keys hold record lists ({', '.join(candidates)}); set spec.dataset.recordsPath"
            )
        # column orientation: {"a": [..], "b": [..]} with equal lengths
        if doc and all(isinstance(v, list) for v in doc.values()) and len({len(v) for v in doc.values()}) == 1:
            return [dict(zip(doc.keys(), row, strict=True)) for row in zip(*doc.values(), strict=True)]
        raise DataInvalid(
            f"{source}: no list of records found; set spec.dataset.recordsPath to the key that holds them"
        )
    raise DataInvalid(f"{source}: a JSON dataset must be a list of records or an object holding one")


def records_to_frame(records: list[Any], source: str) -> pd.DataFrame:
    if not records:
        raise DataInvalid(f"{source}: the record list is empty")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataInvalid(f"{source}: record {bad} is a {type(records[bad]).__name__}, expected an object")
    return pd.json_normalize(records)


def _read_jsonl(path: Path) -> pd.DataFrame:
    records: list[Any] = []
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataInvalid(f"{path.name} line {lineno} is not valid JSON: {exc.msg}") from None
    return records_to_frame(records, path.name)


# ---- fingerprint ------------------------------------------------------------------------------------


def fingerprint(df: pd.DataFrame) -> str:
    """sha256 over the canonical data: column names, dtypes and values in row order."""
    h = hashlib.sha256()
    h.update(f"{df.shape[0]}x{df.shape[1]}".encode())
    for name in df.columns:
        col = df[name]
        h.update(b"\0" + str(name).encode() + b"\0" + str(col.dtype).encode())
        if col.dtype.kind in "biuf" and not isinstance(col.dtype, pd.CategoricalDtype):
            arr = col.to_numpy()
            h.update(np.ascontiguousarray(arr).view(np.uint8).data)
        else:
            h.update(np.ascontiguousarray(pd.util.hash_pandas_object(col, index=False).to_numpy()).view(np.uint8).data)
    return h.hexdigest()


def resolve_dataset(uri: str, scratch: Path) -> Path:
    """The local file for the dataset: ``$KUBETRAIN_DATASET_PATH``, the resolved URI, or a download."""
    check_uri_path(uri, "spec.dataset.uri")
    env = os.environ.get(contract.ENV_DATASET_PATH)
    if env:
        return Path(env)
    local = local_path(uri, "spec.dataset.uri")
    if local is not None:
        return local
    scratch.mkdir(parents=True, exist_ok=True)
    return fetch_remote(uri, Path(tempfile.mkdtemp(dir=scratch)))


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
