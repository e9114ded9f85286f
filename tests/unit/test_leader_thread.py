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
