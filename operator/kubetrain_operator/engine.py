"""The one reconcile engine of every kind: gather → decide → act, level-based.

::

    watch event (the object, a child Job or pod, a related object)   requeue timer
                 │ routed to its owner: (kind, namespace, key)            │
                 ▼                                                        ▼
           trigger ── returns at once: the key joins the work queue (a key is queued once; a key
                 │    triggered during its own pass is queued again when that pass ends; a key the engine
                 │    has not reconciled yet goes first: a new run gets its Job before older runs' follow-ups)
                 ▼
        RECONCILE_WORKERS tasks take keys off the queue: one pass at a time per key
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

The work queue is controller-runtime's: the watch handlers never wait for a pass, so kopf's per-object
workers (each holding its raw watch event) end at once, and the passes in progress — each with its facts, a
plan and API responses — are bounded by the number of workers, not by the number of objects that changed
(a restart with 5,000 runs present, a burst of 1,000 new ones).

Two lanes: a key with no pass yet (a new object, or one seen first after a restart) is served before the keys
that come back (their own status echo, a Job's or pod's update, a requeue timer). In a burst of new runs, FIFO
order made every new run wait behind the follow-ups of the runs before it (each Job creation brings its own
echo, the Job's and the pods' updates): a user's new run waited for other runs' status bookkeeping. The
follow-ups wait instead; nothing is dropped, the order only changes while new keys keep arriving.

A pass that raises is retried with exponential backoff (2, 4, 8 … 300 s); an invalid spec is not an
exception but a decision (status Failed, no requeue). kopf's error classes are not used here: kopf's
change-detecting handlers are not used either, so kopf writes no annotations and adds no finalizer.

Adding a kind: write a ``Reconciler`` (its ``gather``/``decide``/``act``), register it with
``ENGINE.register``, route the kind's own watch events to ``ENGINE.trigger``; its child Jobs are routed by
their controller ownerReference, its pods by the label the reconciler names in ``pod_label``.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import k8s, kube, memtrim, metrics, readiness
from .settings import Settings, get_settings

log = logging.getLogger("kubetrain.engine")

#: Unexpected errors are retried with exponential backoff (2, 4, 8, ... s) up to this delay.
MAX_ERROR_DELAY = 300.0
#: The shortest requeue: a pass asked for "again at once" still yields to the event loop.
MIN_REQUEUE = 0.05
#: Passes in a row that may end in Again before the next ones back off.
MAX_AGAINS = 5
#: When the queue drains after at least this many passes (a restart's listing, a burst), the C allocator is
#: asked to give its free pages back (``memtrim``), at most once per ``TRIM_INTERVAL`` seconds.
TRIM_AFTER_PASSES = 200
TRIM_INTERVAL = 30.0


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


Key = tuple[str, str, str]
"""(kind, namespace, key) of one engine object."""


@dataclass(slots=True)
class _State:
    requeue: asyncio.TimerHandle | None = None
    failures: int = 0
    agains: int = 0
    memory: dict[str, Any] = field(default_factory=dict)


class Again(Exception):
    """Reconcile again at once, dropping the rest of the plan: the facts were stale (a creation found the
    object already there) or an action failed in a way the next pass decides about."""


class Engine:
    """A work queue of keys served by ``workers`` tasks: one pass at a time per key, coalesced triggers,
    requeues, retried errors."""

    def __init__(self, workers: int | None = None) -> None:
        self.kinds: dict[str, Reconciler] = {}
        self.workers = workers
        self._states: dict[Key, _State] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # One token per queued key wakes one worker; the worker takes the oldest key of the first lane.
        self._queue: asyncio.Queue[None] | None = None
        self._lanes: tuple[collections.deque[Key], collections.deque[Key]] = (collections.deque(), collections.deque())
        self._queued: dict[Key, float] = {}  # key -> when it was queued (loop time)
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._passes_since_trim = 0
        self._last_trim = 0.0

    def register(self, reconciler: Reconciler) -> None:
        self.kinds[reconciler.kind] = reconciler

    def forget(self, kind: str, namespace: str, key: str) -> None:
        state = self._states.pop((kind, namespace, key), None)
        if state and state.requeue:
            state.requeue.cancel()
        self.kinds[kind].forget(namespace, key)

    def trigger(self, kind: str, namespace: str, key: str) -> None:
        """Queue a pass of the key and return at once. A key already queued is not queued twice (the one pass
        sees the latest state); a key in its pass now is queued again when that pass ends."""
        k = (kind, namespace, key)
        if k in self._running:
            self._dirty.add(k)
            return
        if k in self._queued:
            return
        queue = self._ensure_workers()
        self._queued[k] = self._loop.time() if self._loop else 0.0
        self._lanes[0 if k not in self._states else 1].append(k)
        queue.put_nowait(None)
        metrics.QUEUE_DEPTH.set(len(self._queued))

    def depth(self) -> int:
        """Keys waiting for a worker."""
        return len(self._queued)

    def _ensure_workers(self) -> asyncio.Queue[None]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            # A new event loop (a restarted operator in one process, unit tests): start over on it.
            self._loop, self._queue = loop, asyncio.Queue()
            self._queued.clear()
            for lane in self._lanes:
                lane.clear()
            self._running.clear()
            self._dirty.clear()
            count = self.workers or get_settings().reconcile_workers
            for i in range(count):
                self._spawn(self._work(self._queue), name=f"kubetrain-reconcile-{i}")
        return self._queue

    async def stop(self) -> None:
        """Cancel the workers and the requeue timers (the operator stops)."""
        for state in self._states.values():
            if state.requeue:
                state.requeue.cancel()
                state.requeue = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._queue, self._loop = None, None
        self._queued.clear()
        for lane in self._lanes:
            lane.clear()
        self._running.clear()
        self._dirty.clear()

    async def _work(self, queue: asyncio.Queue[None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await readiness.wait_indexed()  # after a restart: no pass before every index is filled
            await queue.get()
            k = self._lanes[0].popleft() if self._lanes[0] else self._lanes[1].popleft()
            queued_at = self._queued.pop(k)
            metrics.QUEUE_DEPTH.set(len(self._queued))
            kind, namespace, key = k
            metrics.QUEUE_WAIT.labels(kind).observe(loop.time() - queued_at)
            state = self._states.setdefault(k, _State())
            if state.requeue:  # this pass decides anew when to look next
                state.requeue.cancel()
                state.requeue = None
            self._running.add(k)
            try:
                delay = await self._pass(self.kinds[kind], namespace, key, state)
            finally:
                self._running.discard(k)
            if k in self._dirty:
                self._dirty.discard(k)
                self.trigger(kind, namespace, key)
            elif delay is not None and self._states.get(k) is state:
                self._requeue(k, state, delay)
            self._passes_since_trim += 1
            if not self._queued and not self._running:
                self._drained()

    def _drained(self) -> None:
        """The queue is empty and no pass runs: after a burst, hand the burst's freed memory back."""
        now = time.monotonic()
        if self._passes_since_trim >= TRIM_AFTER_PASSES and now - self._last_trim >= TRIM_INTERVAL:
            self._passes_since_trim, self._last_trim = 0, now
            memtrim.trim()

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

    def _requeue(self, k: Key, state: _State, delay: float) -> None:
        """Look at the object again after ``delay`` seconds even if nothing happens (like RequeueAfter)."""
        if state.requeue:
            state.requeue.cancel()

        def fire() -> None:
            state.requeue = None
            self.trigger(*k)

        state.requeue = asyncio.get_running_loop().call_later(max(MIN_REQUEUE, delay), fire)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def route_pod(self, labels: Mapping[str, str]) -> tuple[str, str] | None:
        """(kind, key) of the object a pod belongs to, by the label each kind names."""
        for reconciler in self.kinds.values():
            if reconciler.pod_label and labels.get(reconciler.pod_label):
                return reconciler.kind, labels[reconciler.pod_label]
        return None


def object_event(kind: str, type: str, namespace: str | None, name: str) -> None:
    """A kind's own watch event: a deleted object is forgotten (its children go by garbage collection),
    any other event queues one engine pass."""
    if not namespace:
        return
    if type == "DELETED":
        ENGINE.forget(kind, namespace, name)
        return
    ENGINE.trigger(kind, namespace, name)


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
