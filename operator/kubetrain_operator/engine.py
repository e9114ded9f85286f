"""The one reconcile engine of every kind: gather → decide → act, level-based.

::

    watch event (the object, a child Job or pod, a related object)   requeue timer
                 │ routed to its owner: (kind, namespace, key)            │
                 ▼                                                        ▼
           trigger ── coalesced: one pass at a time per key, at most one queued behind it
                 │
                 ▼
        gather(key, memory) -> facts        reads only: the object and its children
                 │
                 ▼
        decide(facts, settings, now) -> Plan    pure: children to create/patch/delete, status, events,
                 │                              requeue, what to remember for the next pass
                 ▼
        act(facts, plan) -> requeue         writes: creations first — an AlreadyExists means the
                                            facts were stale, the rest of the plan is dropped and the key
                                            is reconciled again at once —, then patches, deletions, the
                                            status (only when it changed), Events

A pass that raises is retried with exponential backoff (2, 4, 8 … 300 s); an invalid spec is not an
exception but a decision (status Failed, no requeue). kopf's error classes are not used here: kopf's
change-detecting handlers are not used either, so kopf writes no annotations and adds no finalizer.

Adding a kind: write a ``Reconciler`` (its ``gather``/``decide``/``act``), register it with
``ENGINE.register``, route the kind's own watch events to ``ENGINE.trigger``; its child Jobs are routed by
their controller ownerReference, its pods by the label the reconciler names in ``pod_label``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import k8s, kube, metrics
from .settings import Settings, get_settings

log = logging.getLogger("kubetrain.engine")

#: Unexpected errors are retried with exponential backoff (2, 4, 8, ... s) up to this delay.
MAX_ERROR_DELAY = 300.0
#: The shortest requeue: a pass asked for "again at once" still yields to the event loop.
MIN_REQUEUE = 0.05
#: Passes in a row that may end in Again before the next ones back off.
MAX_AGAINS = 5


@dataclass(frozen=True)
class Child:
    """A child object to patch or delete."""

    kind: str
    namespace: str
    name: str


@dataclass
class Plan:
    """What one pass decided. Empty fields mean "nothing to do"."""

    create: list[dict[str, Any]] = field(default_factory=list)
    """Manifests to create if absent (create-if-absent; AlreadyExists → gather again)."""
    patch: list[tuple[Child, dict[str, Any]]] = field(default_factory=list)
    """Merge patches of children (Job spec fields, other objects' status)."""
    delete: list[Child] = field(default_factory=list)
    """Children to delete (a missing one is fine)."""
    status: dict[str, Any] = field(default_factory=dict)
    """Merge patch of the object's own status (empty: nothing changed)."""
    events: list[k8s.Event] = field(default_factory=list)
    """Events to post on the object after its status was written."""
    requeue: float | None = None
    """Seconds until the next pass even if nothing happens (None: wait for events)."""
    remember: dict[str, Any] = field(default_factory=dict)
    """Per-object memory for the next pass (e.g. when progress was read last)."""


class ObjectFacts:
    """Base of a kind's facts built around its object's ``body``: the metadata and the current status, as
    copies (a decide never mutates the body)."""

    body: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.body["metadata"])

    @property
    def current(self) -> dict[str, Any]:
        return dict(self.body.get("status") or {})


class Reconciler(Protocol):
    """One kind, as the engine drives it."""

    kind: str
    pod_label: str | None

    async def gather(self, namespace: str, key: str, memory: Mapping[str, Any], now: dt.datetime) -> Any | None:
        """The facts of ``key`` (None: the object is gone; the engine forgets it)."""

    def decide(self, facts: Any, settings: Settings, now: dt.datetime) -> Plan:
        """Pure: the plan for ``facts``."""

    async def act(self, facts: Any, plan: Plan, memory: dict[str, Any]) -> None:
        """The kind's own writes (status, events, metrics), after the engine applied the plan's children.
        May raise Again; may note in ``memory`` what failed (the next pass decides with it)."""

    def forget(self, namespace: str, key: str) -> None:
        """The object is gone (metrics gauges, caches)."""

    def key_of_child(self, labels: Mapping[str, str], owner: str) -> str:
        """The engine key of the owner ``owner`` of a child with ``labels``."""


@dataclass
class _State:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: bool = False
    requeue: asyncio.TimerHandle | None = None
    failures: int = 0
    agains: int = 0
    memory: dict[str, Any] = field(default_factory=dict)


class Again(Exception):
    """Reconcile again at once, dropping the rest of the plan: the facts were stale (a creation found the
    object already there) or an action failed in a way the next pass decides about."""


class Engine:
    """Serialises and coalesces the passes of each (kind, namespace, key); requeues; retries errors."""

    def __init__(self) -> None:
        self.kinds: dict[str, Reconciler] = {}
        self._states: dict[tuple[str, str, str], _State] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def register(self, reconciler: Reconciler) -> None:
        self.kinds[reconciler.kind] = reconciler

    def forget(self, kind: str, namespace: str, key: str) -> None:
        state = self._states.pop((kind, namespace, key), None)
        if state and state.requeue:
            state.requeue.cancel()
        self.kinds[kind].forget(namespace, key)

    async def trigger(self, kind: str, namespace: str, key: str) -> None:
        """Reconcile now, unless a pass is already queued behind the running one (it sees the latest state)."""
        state = self._states.setdefault((kind, namespace, key), _State())
        if state.pending:
            return
        state.pending = True
        async with state.lock:
            state.pending = False
            delay = await self._pass(self.kinds[kind], namespace, key, state)
        if delay is not None and (kind, namespace, key) in self._states:
            self._requeue(kind, namespace, key, state, delay)

    async def _pass(self, reconciler: Reconciler, namespace: str, key: str, state: _State) -> float | None:
        try:
            async with metrics.timed(reconciler.kind):
                delay = await self._reconcile(reconciler, namespace, key, state)
        except Exception:
            state.failures += 1
            delay = min(MAX_ERROR_DELAY, 2.0 ** min(state.failures, 10))
            log.exception(
                "%s %s/%s: reconcile failed (%d in a row); retrying in %.0fs",
                reconciler.kind,
                namespace,
                key,
                state.failures,
                delay,
            )
            return delay
        state.failures = 0
        return delay

    async def _reconcile(self, reconciler: Reconciler, namespace: str, key: str, state: _State) -> float | None:
        now = k8s.now()
        facts = await reconciler.gather(namespace, key, state.memory, now)
        if facts is None:
            self.forget(reconciler.kind, namespace, key)
            return None
        plan = reconciler.decide(facts, get_settings(), now)
        state.memory.update(plan.remember)
        try:
            await apply_children(plan)
            await reconciler.act(facts, plan, state.memory)
        except Again as exc:
            state.agains += 1
            # Bounded: facts that stay stale (they should not) back off like errors after a few passes.
            delay = (
                MIN_REQUEUE if state.agains <= MAX_AGAINS else min(MAX_ERROR_DELAY, 2.0 ** (state.agains - MAX_AGAINS))
            )
            log.info("%s %s/%s: %s; reconciling again in %.2fs", reconciler.kind, namespace, key, exc, delay)
            return delay
        state.agains = 0
        return plan.requeue

    def _requeue(self, kind: str, namespace: str, key: str, state: _State, delay: float) -> None:
        """Look at the object again after ``delay`` seconds even if nothing happens (like RequeueAfter)."""
        if state.requeue:
            state.requeue.cancel()

        def fire() -> None:
            state.requeue = None
            task = asyncio.ensure_future(self.trigger(kind, namespace, key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        state.requeue = asyncio.get_running_loop().call_later(max(MIN_REQUEUE, delay), fire)

    def route_pod(self, labels: Mapping[str, str]) -> tuple[str, str] | None:
        """(kind, key) of the object a pod belongs to, by the label each kind names."""
        for reconciler in self.kinds.values():
            if reconciler.pod_label and labels.get(reconciler.pod_label):
                return reconciler.kind, labels[reconciler.pod_label]
        return None


async def object_event(kind: str, type: str, namespace: str | None, name: str) -> None:
    """A kind's own watch event: a deleted object is forgotten (its children go by garbage collection),
    any other event is one engine pass."""
    if not namespace:
        return
    if type == "DELETED":
        ENGINE.forget(kind, namespace, name)
        return
    await ENGINE.trigger(kind, namespace, name)


async def apply_children(plan: Plan) -> None:
    """Creations, then patches and deletions of children. Raises Again on AlreadyExists."""
    for manifest in plan.create:
        try:
            await kube.create(manifest)
        except Exception as exc:
            if kube.is_already_exists(exc):
                raise Again(f"{manifest['kind']} {manifest['metadata']['name']} already exists") from exc
            raise
        if manifest["kind"] == "Job":
            metrics.JOBS_CREATED.labels(manifest["metadata"].get("namespace") or "").inc()
    for child, patch in plan.patch:
        await kube.patch_child(child.kind, child.namespace, child.name, patch)
    for child in plan.delete:
        await kube.delete_child(child.kind, child.namespace, child.name)


ENGINE = Engine()
