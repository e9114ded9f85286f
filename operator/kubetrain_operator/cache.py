"""The engine's reads, served from the watch streams kopf already keeps open (an informer-like cache).

Every pass used to GET its object and its Job and LIST the Job's pods (and every ModelVersion of the
namespace) although the watch event that caused the pass had just carried them. Here kopf *indexes* keep
the latest copy of every TrainingRun, ModelVersion, our Jobs and their pods (the server-side label
selector of ``startup`` already limits Jobs and pods to ours), stripped of what no pass reads
(``managedFields``, the last-applied annotation, the Job's pod template spec, the pod spec), each kept as
compact JSON bytes with its resourceVersion and name (``Entry``) and decoded by the read that wants it — a
copy as plain dicts costs ~10 KB of Python objects per object, the bytes ~1-2 KB (bench/reports: the memory
test with 5,000 runs and 5,000 versions present), and no reader can change the cached copy:

* kopf updates an index from each watch event *before* the handlers of that event run, removes an object
  on its DELETED event, and runs no handler at all until every index is filled by its initial listing —
  so a pass never sees a half-listed cluster after a restart (no Job is created twice for lack of a look);
* our own writes (creations, status and spec patches) are written through into a short-lived overlay, so
  the next pass sees them before their watch events arrive; an overlay entry goes when the watch delivers
  that version or a newer one (resourceVersion compared as etcd's integers), at the latest after
  ``OVERLAY_SECONDS``; an AlreadyExists refreshes the entry from the API (see ``kube.create``);
* a pass that still decides on a stale copy is safe: a creation of something that exists ends in
  AlreadyExists → ``Again``; patches are JSON merge patches of fields the operator owns (idempotent).

Outside a running operator (no kopf indexes bound: unit tests, scripts) ``kube`` reads from the API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import kopf
from kubetrain_api.models import GROUP, VERSION

from .k8s import LABEL_JOB_NAME

#: How long one of our writes is trusted over an older watched copy (the watch normally catches up in ms).
OVERLAY_SECONDS = 60.0
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_INDEXES = ("kubetrain_runs", "kubetrain_versions", "kubetrain_jobs", "kubetrain_pods")


class Entry(NamedTuple):
    """One cached object: its resourceVersion and name (read without decoding) and its stripped JSON."""

    rv: int
    name: str
    data: bytes


def pack(kind: str, body: Mapping[str, Any]) -> Entry:
    """The cache entry of a watched object (stripped, compact JSON)."""
    stripped = strip(kind, body)
    data = json.dumps(stripped, separators=(",", ":"), ensure_ascii=False).encode()
    return Entry(_rv(stripped), str(stripped["metadata"].get("name") or ""), data)


def unpack(entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(entry.data)
    return out


@dataclass(slots=True)
class _Written:
    entry: Entry
    until: float


_indices: dict[str, Any] = {}
_overlay: dict[tuple[str, str, str], _Written] = {}
#: The index holding each kind we write (pods are never written).
_INDEX_OF = {"TrainingRun": "kubetrain_runs", "Job": "kubetrain_jobs", "ModelVersion": "kubetrain_versions"}
#: Expired overlay entries of objects no pass reads again are dropped this often.
SWEEP_SECONDS = 5.0
_last_sweep = 0.0


def bind(kwargs: Mapping[str, Any]) -> None:
    """Take kopf's index objects from a handler's kwargs (the startup handler's): from now on reads are
    served from them."""
    for name in _INDEXES:
        if name in kwargs:
            _indices[name] = kwargs[name]


def unbind() -> None:
    _indices.clear()
    _overlay.clear()


def bound() -> bool:
    return len(_indices) == len(_INDEXES)


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:  # not etcd's integer: the watched copy wins
        return 0


def _meta(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations")
    if annotations and _LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != _LAST_APPLIED}
    return meta


def strip(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """What the passes read of an object: no managedFields; a Job without its pod template's spec; a pod
    with metadata and status only (plus its node)."""
    out: dict[str, Any] = {k: v for k, v in body.items() if k != "metadata"}
    out["metadata"] = _meta(body)
    if kind == "Job":
        spec = dict(out.get("spec") or {})
        template = spec.get("template") or {}
        spec["template"] = {"metadata": template.get("metadata") or {}}
        out["spec"] = spec
    elif kind == "Pod":
        node = (body.get("spec") or {}).get("nodeName")
        out["spec"] = {"nodeName": node} if node else {}
    return out


def _seen(kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> None:
    """A watched version of an object: our overlay of it goes once the watch caught up with it."""
    key = (kind, namespace, name)
    written = _overlay.get(key)
    if written is not None and _rv(body) >= written.entry.rv:
        del _overlay[key]


def _watched_rv(kind: str, namespace: str, name: str) -> int:
    """The newest resourceVersion the watch delivered of an object (-1: none)."""
    index = _INDEX_OF.get(kind)
    if index is None or index not in _indices:
        return -1
    if kind == "ModelVersion":
        entries = [e for e in _store(index, namespace) if e.name == name]
    else:
        entries = _store(index, (namespace, name))
    return max((e.rv for e in entries), default=-1)


def wrote(obj: Mapping[str, Any]) -> None:
    """Write-through: ``obj`` is what the API returned for one of our creations or patches. Kept only while the
    watch has not delivered that version: when the watch event of our own write came first (it often does
    under load), an entry kept now would never be dropped by ``_seen``."""
    if not bound() or not obj:
        return
    meta = obj.get("metadata") or {}
    kind, namespace, name = str(obj.get("kind") or ""), meta.get("namespace") or "", meta.get("name") or ""
    if not (kind and name):
        return
    now = time.monotonic()
    entry = pack(kind, obj)
    if _watched_rv(kind, namespace, name) >= entry.rv:
        _overlay.pop((kind, namespace, name), None)
    else:
        _overlay[(kind, namespace, name)] = _Written(entry, now + OVERLAY_SECONDS)
    _sweep(now)


def _sweep(now: float) -> None:
    """Drop expired entries (objects that no pass read again after the entry expired)."""
    global _last_sweep
    if now - _last_sweep < SWEEP_SECONDS:
        return
    _last_sweep = now
    for key in [k for k, w in _overlay.items() if w.until < now]:
        del _overlay[key]


def deleted(kind: str, namespace: str, name: str) -> None:
    """We deleted it: forget our own copy (the watch's DELETED removes the indexed one)."""
    _overlay.pop((kind, namespace, name), None)


def _pick(kind: str, namespace: str, name: str, watched: Iterable[Entry]) -> dict[str, Any] | None:
    best = max(watched, key=lambda e: e.rv, default=None)
    written = _overlay.get((kind, namespace, name))
    if written is not None and time.monotonic() <= written.until and (best is None or best.rv < written.entry.rv):
        return unpack(written.entry)
    if written is not None:
        del _overlay[(kind, namespace, name)]
    return unpack(best) if best is not None else None


def _store(index: str, key: Any) -> list[Entry]:
    idx = _indices[index]
    return list(idx[key]) if key in idx else []


def training_run(namespace: str, name: str) -> dict[str, Any] | None:
    return _pick("TrainingRun", namespace, name, _store("kubetrain_runs", (namespace, name)))


def job(namespace: str, name: str) -> dict[str, Any] | None:
    return _pick("Job", namespace, name, _store("kubetrain_jobs", (namespace, name)))


def job_pods(namespace: str, job_name: str) -> list[dict[str, Any]]:
    return [unpack(e) for e in _store("kubetrain_pods", (namespace, job_name))]


def model_versions(namespace: str) -> list[dict[str, Any]]:
    """Every ModelVersion of the namespace: the watched copies, with our newer writes over them."""
    by_name: dict[str, list[Entry]] = {}
    for entry in _store("kubetrain_versions", namespace):
        by_name.setdefault(entry.name, []).append(entry)
    names = set(by_name) | {n for (k, ns, n) in list(_overlay) if k == "ModelVersion" and ns == namespace}
    out = [_pick("ModelVersion", namespace, name, by_name.get(name, ())) for name in sorted(names)]
    return [o for o in out if o is not None]


# --- the kopf indexes (async: kopf would run sync handlers in threads) ----------------------------------------


@kopf.index(GROUP, VERSION, "trainingruns", id="kubetrain_runs")
async def _index_runs(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[Any, Any] | None:
    if not namespace:
        return None
    _seen("TrainingRun", namespace, name, body)
    return {(namespace, name): pack("TrainingRun", body)}


@kopf.index(GROUP, VERSION, "modelversions", id="kubetrain_versions")
async def _index_versions(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[Any, Any] | None:
    if not namespace:
        return None
    _seen("ModelVersion", namespace, name, body)
    return {namespace: pack("ModelVersion", body)}


@kopf.index("batch", "v1", "jobs", id="kubetrain_jobs")
async def _index_jobs(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[Any, Any] | None:
    if not namespace:
        return None
    _seen("Job", namespace, name, body)
    return {(namespace, name): pack("Job", body)}


@kopf.index("", "v1", "pods", id="kubetrain_pods")
async def _index_pods(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[Any, Any] | None:
    job_name = labels.get(LABEL_JOB_NAME)
    if not namespace or not job_name:
        return None
    return {(namespace, job_name): pack("Pod", body)}
