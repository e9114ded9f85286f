"""Leader election with a ``coordination.k8s.io/v1`` Lease (the Kubernetes convention, as client-go's
``leaderelection`` does it; not kopf's peering, which is no lease: kopf#734).

Every replica competes for one Lease. The holder runs kopf; the others wait as standbys, serving their probes,
and look at the Lease every ``leader_retry_seconds``. A standby takes the Lease over when it has seen the
Lease unchanged for ``leaseDurationSeconds`` on ITS OWN monotonic clock (never by comparing the Lease's
``renewTime`` with its wall clock: clocks of two nodes differ). Every write is a replace carrying the
``resourceVersion`` that was read, so of two standbys racing for an expired Lease one wins and the other gets
409 and stays standby.

The leader renews every ``leader_renew_seconds``. When no renewal has succeeded for
``leader_renew_deadline_seconds`` (below the lease duration), or the Lease shows another holder, the process
EXITS at once with ``LOST_LEASE_EXIT_CODE``: the simplest way to stop every handler immediately; the
Deployment restarts the pod, which comes back as a standby. A standby can take over no sooner than the lease
duration after the leader's last successful renewal, and the leader stops at the latest the renew deadline
after it, so two replicas never reconcile at once (unless the leader's event loop is blocked for seconds).
On a clean stop (SIGTERM) the leader releases the Lease (no holder), so a standby takes over at its next look.

The decisions are pure functions (``observe``, ``decide``, ``lease_spec``, ``renew_overdue``) over a
``LeaseRecord``; ``LeaderElector`` does the I/O with its own lightkube client (each renewal may take the
time left before the renew deadline; not behind ``kube.in_flight``: a burst of reconciles must not delay a
renewal). The leader renews in a THREAD of its own with its own event loop and client (as client-go renews in
a goroutine of its own): in kopf's loop a renewal waited behind every ready callback, and an operator starved
of CPU (50m requested on a busy node) lost its Lease while it worked through a burst. The deadline timer lives
in that thread too, so it fires even while kopf's loop is blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .settings import Settings

log = logging.getLogger(__name__)

#: Exit status of a leader that lost its Lease (the pod restarts and comes back as a standby).
LOST_LEASE_EXIT_CODE = 3
FIELD_MANAGER = "kubetrain-operator"


@dataclass(frozen=True)
class LeaseRecord:
    """What the Lease says (``spec`` plus the ``resourceVersion`` a replace must carry)."""

    holder: str | None
    duration: float | None
    transitions: int
    acquire_time: str | None
    renew_time: str | None
    resource_version: str | None

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or None,
            duration=spec.get("leaseDurationSeconds"),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            resource_version=(lease.get("metadata") or {}).get("resourceVersion"),
        )

    def same_term(self, other: LeaseRecord) -> bool:
        """The same holder, renewal and version: nothing happened between two reads."""
        return (self.holder, self.renew_time, self.resource_version, self.transitions) == (
            other.holder,
            other.renew_time,
            other.resource_version,
            other.transitions,
        )


@dataclass(frozen=True)
class Observation:
    """The Lease as this replica last read it, and when (its monotonic clock) it first saw that version."""

    record: LeaseRecord | None
    seen_at: float


def observe(previous: Observation | None, record: LeaseRecord | None, now: float) -> Observation:
    """The new observation after reading ``record`` at ``now``: the time it was first seen is kept while the
    Lease does not change, and restarts when it does (that is how a standby sees the leader alive)."""
    if (
        previous is not None
        and previous.record is not None
        and record is not None
        and previous.record.same_term(record)
    ):
        return previous
    return Observation(record=record, seen_at=now)


def expired(obs: Observation, now: float, default_duration: float) -> bool:
    """No holder, or the Lease has not changed for its duration (as measured here)."""
    record = obs.record
    if record is None or not record.holder:
        return True
    duration = record.duration if record.duration and record.duration > 0 else default_duration
    return now >= obs.seen_at + duration


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet
    ACQUIRE = "acquire"  # free or expired: take it (a new term)
    RENEW = "renew"  # ours: extend it
    WAIT = "wait"  # another replica holds it


def decide(identity: str, obs: Observation, now: float, default_duration: float) -> Action:
    """What a replica does after reading the Lease."""
    if obs.record is None:
        return Action.CREATE
    if obs.record.holder == identity:
        return Action.RENEW
    if expired(obs, now, default_duration):
        return Action.ACQUIRE
    return Action.WAIT


def micro_time(at: dt.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(
    identity: str, record: LeaseRecord | None, action: Action, wall: dt.datetime, duration: float
) -> dict[str, Any]:
    """The Lease spec this replica writes for ``action`` (CREATE, ACQUIRE or RENEW)."""
    now = micro_time(wall)
    transitions = record.transitions if record else 0
    if action is Action.RENEW and record is not None:
        acquired = record.acquire_time or now
    elif action in (Action.CREATE, Action.ACQUIRE):
        acquired = now
        if record is not None and record.holder and record.holder != identity:
            transitions += 1  # a new holder: a leader transition (client-go counts these)
    else:
        raise ValueError(f"no Lease to write for {action}")
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration)),
        "acquireTime": acquired,
        "renewTime": now,
        "leaseTransitions": transitions,
    }


def released_spec(record: LeaseRecord, wall: dt.datetime) -> dict[str, Any]:
    """The Lease a leader leaves on a clean stop: no holder, so the next standby to look takes it."""
    return {
        "holderIdentity": None,
        "leaseDurationSeconds": 1,
        "acquireTime": record.acquire_time,
        "renewTime": micro_time(wall),
        "leaseTransitions": record.transitions,
    }


def renew_overdue(last_renewed: float, now: float, deadline: float) -> bool:
    """The leader must stop: its last successful renewal (the time it SENT it) is ``deadline`` old."""
    return now - last_renewed >= deadline


def new_identity(pod_name: str | None) -> str:
    """``<pod name>-<random>``: unique even when a restarted pod keeps its name, or two processes run on one
    host (the tests)."""
    base = (pod_name or socket.gethostname() or "kubetrain-operator")[:50]
    return f"{base}-{secrets.token_hex(4)}"


def _exit_lost(reason: str) -> None:
    log.error("leader election: lost the Lease (%s); exiting with %d to stop reconciling", reason, LOST_LEASE_EXIT_CODE)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(LOST_LEASE_EXIT_CODE)


class LeaderElector:
    """Acquire, renew and release the Lease. ``on_lost`` is called (once) when a leader must stop; the
    default exits the process."""

    def __init__(
        self,
        settings: Settings,
        identity: str | None = None,
        on_lost: Callable[[str], None] = _exit_lost,
        on_change: Callable[[bool, str | None], None] | None = None,
    ) -> None:
        self.identity = identity or new_identity(settings.pod_name)
        self.name = settings.leader_lease_name
        self.namespace = settings.lease_namespace
        self.duration = settings.leader_lease_seconds
        self.renew_interval = settings.leader_renew_seconds
        self.renew_deadline = settings.leader_renew_deadline_seconds
        self.retry_interval = settings.leader_retry_seconds
        self.on_lost = on_lost
        self.on_change = on_change
        self.leader = False
        self.holder: str | None = None
        self._obs: Observation | None = None
        self._last_renewed = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._lost = False
        self._conflict = False
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # --- I/O ---------------------------------------------------------------------------------------------

    def _api(self) -> Any:
        if self._client is None:
            import httpx2
            from lightkube import AsyncClient

            # The client's own bound is the whole renew deadline; each renewal is cut sooner, at the time left
            # before the deadline (``_renew_loop``), as client-go runs each try under the renew deadline's
            # context. Half the deadline per request (before 2026-12-07) gave a slow API server ONE try: a
            # renewal sent 3 s after the last one timed out at 8 s, the retry waited 2 s and the deadline
            # (10 s) came first; CI's demo leader exited that way while etcd was slow on a busy machine.
            self._client = AsyncClient(
                field_manager=FIELD_MANAGER, timeout=httpx2.Timeout(max(0.5, self.renew_deadline))
            )
        return self._client

    async def _read(self) -> LeaseRecord | None:
        from lightkube import ApiError
        from lightkube.resources.coordination_v1 import Lease

        try:
            lease = await self._api().get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return LeaseRecord.from_lease(lease.to_dict())

    async def _write(self, record: LeaseRecord | None, spec: dict[str, Any]) -> LeaseRecord:
        from lightkube.resources.coordination_v1 import Lease

        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        body: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta}
        body["spec"] = {k: v for k, v in spec.items() if v is not None}
        if record is None:
            meta["labels"] = {"app.kubernetes.io/name": "kubetrain", "app.kubernetes.io/component": "operator"}
            done = await self._api().create(Lease.from_dict(body))
        else:
            meta["resourceVersion"] = record.resource_version  # optimistic concurrency: 409 = lost the race
            done = await self._api().replace(Lease.from_dict(body))
        return LeaseRecord.from_lease(done.to_dict())

    async def try_once(self) -> bool:
        """One look at the Lease and, when the decision says so, one write. True when this replica holds the
        Lease afterwards. Never raises for API trouble (logged; the caller retries)."""
        from lightkube import ApiError

        loop = asyncio.get_running_loop()
        sent = loop.time()
        self._conflict = False
        try:
            # A leader that knows its last write replaces on top of it without reading first.
            if self.leader and self._obs is not None and self._obs.record is not None:
                record: LeaseRecord | None = self._obs.record
            else:
                record = await self._read()
                self._obs = observe(self._obs, record, loop.time())
            obs = self._obs if self._obs is not None else Observation(record, loop.time())
            self.holder = record.holder if record else None
            action = decide(self.identity, obs, loop.time(), self.duration)
            if action is Action.WAIT:
                return False
            sent = loop.time()
            spec = lease_spec(self.identity, record, action, dt.datetime.now(dt.UTC), self.duration)
            written = await self._write(record, spec)
        except ApiError as exc:
            if exc.status.code == 409:
                self._conflict = True
                log.info("leader election: the Lease changed under us (409); reading it again")
            else:
                log.warning("leader election: %s %s: %s", exc.status.code, exc.status.reason, exc.status.message)
            self._obs = None if self.leader else self._obs  # a leader reads afresh next time
            return False
        except Exception as exc:  # HTTP library errors (HTTPStatusError, timeouts, refused connections)
            log.warning("leader election: cannot reach the Lease %s/%s: %r", self.namespace, self.name, exc)
            self._obs = None if self.leader else self._obs
            return False
        self._obs = Observation(written, loop.time())
        self.holder = written.holder
        if action is not Action.RENEW:
            log.info(
                "leader election: %s acquired the Lease %s/%s (%s)",
                self.identity,
                self.namespace,
                self.name,
                action.value,
            )
        self._renewed(sent)
        return True

    # --- standby --------------------------------------------------------------------------------------------

    async def wait_for_leadership(self, stop: asyncio.Event | None = None) -> bool:
        """Look at the Lease every retry interval until this replica holds it (True) or ``stop`` is set."""
        log.info(
            "leader election: %s competing for the Lease %s/%s (lease %.0fs, renew %.0fs, retry %.0fs)",
            self.identity,
            self.namespace,
            self.name,
            self.duration,
            self.renew_interval,
            self.retry_interval,
        )
        waiting_logged: str | None = None
        while stop is None or not stop.is_set():
            if await self.try_once():
                return True
            if self.holder and self.holder != waiting_logged:
                log.info("leader election: standby; the Lease is held by %s", self.holder)
                waiting_logged = self.holder
            if stop is None:
                await asyncio.sleep(self.retry_interval)
            else:
                # asyncio.wait (not wait_for: its cancellation semantics changed across Pythons): no cancel.
                waiter = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter}, timeout=self.retry_interval)
                waiter.cancel()
        return False

    # --- leader -----------------------------------------------------------------------------------------------

    def _renewed(self, sent: float) -> None:
        """A write succeeded that was sent at ``sent``: this replica leads until ``sent + renew deadline``."""
        loop = asyncio.get_running_loop()
        self._last_renewed = sent
        if not self.leader:
            self.leader = True
            if self.on_change:
                self.on_change(True, self.identity)
        # A plain timer callback, not a task: nothing (kopf's shutdown included) can cancel it by accident,
        # and it fires even while a renewal request hangs.
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = loop.call_at(sent + self.renew_deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        if self.leader and renew_overdue(self._last_renewed, asyncio.get_running_loop().time(), self.renew_deadline):
            self._lose(f"no renewal succeeded for {self.renew_deadline:g}s")

    def _lose(self, reason: str) -> None:
        if self._lost:
            return
        self._lost = True
        self.leader = False
        if self.on_change:
            self.on_change(False, self.identity)
        self.on_lost(reason)

    async def start_renewing(self) -> threading.Thread:
        """Renew from now on in the thread ``kubetrain-leader`` (its own event loop and client: nothing kopf does
        delays a renewal, and kopf, which cancels on its way out every task created after it started, never
        sees it). The client and deadline timer of this loop are handed over to the thread's."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._client is not None:
            await self._client.close()
            self._client = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(started,), name="kubetrain-leader", daemon=True)
        self._thread.start()
        started.wait()
        return self._thread

    def _thread_main(self, started: threading.Event) -> None:
        loop = self._thread_loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._task = asyncio.current_task()
            # The deadline of the renewal done in the other loop (both loops run on time.monotonic()).
            self._deadline = loop.call_at(self._last_renewed + self.renew_deadline, self._check_deadline)
            started.set()
            try:
                await self._renew_loop()
            finally:
                if self._client is not None:
                    await self._client.close()
                    self._client = None

        try:
            loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass  # stop()
        finally:
            started.set()
            loop.close()

    async def _renew_once(self) -> bool:
        """One renewal, cut at the renew deadline: a request may take all the time left (a slow API server
        still gets it through), never more (the deadline timer has stopped the leader by then)."""
        loop = asyncio.get_running_loop()
        left = self._last_renewed + self.renew_deadline - loop.time()
        try:
            async with asyncio.timeout(max(0.05, left)):
                return await self.try_once()
        except TimeoutError:
            log.warning(
                "leader election: renewing the Lease %s/%s took longer than the %.1fs left before the deadline",
                self.namespace,
                self.name,
                left,
            )
            self._obs = None
            return False

    async def _renew_loop(self) -> None:
        interval = self.renew_interval
        loop = asyncio.get_running_loop()
        try:
            while self.leader:
                await asyncio.sleep(interval)
                started = loop.time()
                if await self._renew_once():
                    interval = self.renew_interval
                    continue
                if self.holder and self.holder != self.identity:
                    self._lose(f"the Lease is held by {self.holder}")
                    return
                # Not renewed: after a 409 read the Lease at once (someone else wrote it: maybe a new holder);
                # after a try that failed slowly (a timeout: the retry interval has passed already) try again at
                # once on a new connection; after a quick failure (refused) wait the retry interval (no tight
                # loop). The deadline timer is the bound.
                slow = loop.time() - started >= self.retry_interval
                interval = 0 if slow or (self._conflict and interval) else self.retry_interval
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug here must not leave a leader that no longer renews
            self._lose(f"the renewal loop failed: {exc!r}")
            raise

    async def stop(self, release: bool = True) -> None:
        """Stop renewing; when leading, hand the Lease back (no holder) so a standby takes over at once."""
        thread, loop, task = self._thread, self._thread_loop, self._task
        if thread is not None and loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the thread's loop is closed already (the renewal ended)
                loop.call_soon_threadsafe(task.cancel)
            await asyncio.to_thread(thread.join, 10)
            self._thread = self._thread_loop = self._task = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        was_leader = self.leader
        self.leader = False  # first: once the Lease is released a standby may lead, and /leader must not say 200
        if self.on_change:
            self.on_change(False, self.identity)
        if release and was_leader and not self._lost:
            try:
                record = self._obs.record if self._obs else None
                if record is None or record.holder != self.identity:
                    record = await self._read()
                if record is not None and record.holder == self.identity:
                    await self._write(record, released_spec(record, dt.datetime.now(dt.UTC)))
                    log.info("leader election: released the Lease %s/%s", self.namespace, self.name)
            except Exception as exc:  # the Lease then expires on its own
                log.warning("leader election: could not release the Lease: %r", exc)
        if self._client is not None:
            await self._client.close()
            self._client = None
