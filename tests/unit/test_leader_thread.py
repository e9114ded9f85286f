"""The leader renews in a thread of its own (operator/kubetrain_operator/leader.py): a main event loop that is
blocked, as kopf's is when the operator is starved of CPU in a burst, neither delays a renewal nor keeps the
renew deadline from stopping a leader that cannot renew. The Lease is an in-memory fake here (``_read`` and
``_write`` overridden); the Lease on a real API server is tests/operator/test_leader.py's."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from kubetrain_operator import leader
from kubetrain_operator.leader import LeaseRecord
from kubetrain_operator.settings import Settings

FAST = {
    "KUBETRAIN_LEADER_RENEW_SECONDS": "0.05",
    "KUBETRAIN_LEADER_RENEW_DEADLINE_SECONDS": "0.4",
    "KUBETRAIN_LEADER_LEASE_SECONDS": "1",
    "KUBETRAIN_LEADER_RETRY_SECONDS": "0.05",
}


class FakeLease(leader.LeaderElector):
    """The Lease in memory; every write records the thread it came from. ``fail`` makes writes raise."""

    def __init__(self, lost: list[str]) -> None:
        super().__init__(Settings.from_env(FAST), identity="me", on_lost=lost.append)
        self.record: LeaseRecord | None = None
        self.writes: list[tuple[str, str | None]] = []
        self.fail = False

    async def _read(self) -> LeaseRecord | None:
        return self.record

    async def _write(self, record: LeaseRecord | None, spec: dict[str, Any]) -> LeaseRecord:
        self.writes.append((threading.current_thread().name, spec.get("holderIdentity")))
        if self.fail:
            raise ConnectionError("the API server does not answer")
        rv = str(int(record.resource_version or "0") + 1) if record else "1"
        self.record = LeaseRecord.from_lease({"metadata": {"resourceVersion": rv}, "spec": spec})
        return self.record


def test_renewals_go_on_while_the_main_loop_is_blocked_and_stop_releases_the_lease() -> None:
    lost: list[str] = []
    elector = FakeLease(lost)

    async def main() -> None:
        assert await elector.wait_for_leadership()
        await elector.start_renewing()
        time.sleep(1.0)  # noqa: ASYNC251 (on purpose) the main loop blocked for 2.5 renew deadlines (kopf working through a burst)
        assert elector.leader and not lost
        await elector.stop(release=True)

    asyncio.run(main())
    renewals = [w for w in elector.writes if w[0] == "kubetrain-leader"]
    assert len(renewals) >= 5 and all(holder == "me" for _, holder in renewals), elector.writes
    # The release (no holder) came from the main thread after the renewal thread ended.
    assert elector.writes[-1] == (threading.main_thread().name, None)
    assert not lost and not elector.leader
    assert not any(t.name == "kubetrain-leader" for t in threading.enumerate())


def test_the_deadline_stops_a_leader_that_cannot_renew_even_while_the_main_loop_is_blocked() -> None:
    lost: list[str] = []
    elector = FakeLease(lost)

    async def main() -> None:
        assert await elector.wait_for_leadership()
        elector.fail = True
        await elector.start_renewing()
        time.sleep(1.0)  # noqa: ASYNC251 blocked well past the deadline: only the thread can notice
        assert lost == ["no renewal succeeded for 0.4s"], lost
        await elector.stop(release=True)

    asyncio.run(main())
    assert not elector.leader
    failed = [w for w in elector.writes if w[0] == "kubetrain-leader"]
    assert len(failed) >= 3, elector.writes  # it kept retrying until the deadline
    # Once lost, nothing is released: the Lease may be someone else's by now.
    assert all(thread == "kubetrain-leader" for thread, _ in elector.writes[1:]), elector.writes


class SlowLease(FakeLease):
    """Writes that take ``delays`` seconds each in turn (then answer at once); ``fail_slow`` makes the first
    slow write end in an error, as a request that timed out does."""

    def __init__(self, lost: list[str], delays: list[float], fail_slow: bool = False) -> None:
        super().__init__(lost)
        self.delays = delays
        self.fail_slow = fail_slow

    async def _write(self, record: LeaseRecord | None, spec: dict[str, Any]) -> LeaseRecord:
        if threading.current_thread().name == "kubetrain-leader" and self.delays:
            await asyncio.sleep(self.delays.pop(0))
            if self.fail_slow:
                self.fail_slow = False
                self.writes.append((threading.current_thread().name, "timed out"))
                raise TimeoutError("ReadTimeout")
        return await super()._write(record, spec)


def test_a_slow_renewal_may_take_the_time_left_before_the_deadline() -> None:
    # Deadline 0.4 s, renewal every 0.05 s: a write that takes 0.3 s (three quarters of the deadline; the API
    # server under load) still renews; half the deadline per request used to cut it and lose the Lease.
    lost: list[str] = []
    elector = SlowLease(lost, delays=[0.3])

    async def main() -> None:
        assert await elector.wait_for_leadership()
        await elector.start_renewing()
        await asyncio.sleep(1.0)
        assert elector.leader and not lost, lost
        await elector.stop(release=True)

    asyncio.run(main())
    assert not lost


def test_the_lease_client_lets_a_request_take_the_whole_renew_deadline(monkeypatch: Any) -> None:
    import lightkube

    made: list[Any] = []
    monkeypatch.setattr(lightkube, "AsyncClient", lambda **kw: made.append(kw) or object())
    elector = leader.LeaderElector(Settings.from_env({}), identity="me")
    elector._api()
    (kwargs,) = made
    assert kwargs["timeout"].read == elector.renew_deadline == 10.0


def test_a_renewal_that_failed_slowly_is_retried_at_once() -> None:
    # Retry interval 0.3 s: after a try that hung 0.25 s and failed (a read timeout), waiting the retry
    # interval (0.05 + 0.25 + 0.3 = 0.6 s) would pass the 0.4 s deadline; the retry goes at once instead.
    lost: list[str] = []
    elector = SlowLease(lost, delays=[0.25], fail_slow=True)
    elector.retry_interval = 0.2

    async def main() -> None:
        assert await elector.wait_for_leadership()
        await elector.start_renewing()
        await asyncio.sleep(1.0)
        assert elector.leader and not lost, (lost, elector.writes)
        await elector.stop(release=True)

    asyncio.run(main())
    assert ("kubetrain-leader", "timed out") in elector.writes
    assert not lost


def test_a_renewal_that_hangs_is_cut_at_the_deadline() -> None:
    lost: list[str] = []
    elector = SlowLease(lost, delays=[30.0])

    async def main() -> None:
        assert await elector.wait_for_leadership()
        await elector.start_renewing()
        await asyncio.sleep(1.0)
        assert lost == ["no renewal succeeded for 0.4s"], lost
        await elector.stop(release=True)

    asyncio.run(main())
    assert not elector.leader
