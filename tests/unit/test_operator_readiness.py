"""readiness.apply(): kopf's per-object workers no longer wait for every index (they only queue keys); the
engine's ``wait_indexed`` does; the ToggleSet wakes its waiters only when the set's overall state flips, and
still releases every waiter when it does (real kopf objects, no cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from kopf._cogs.aiokits import aiotoggles
from kubetrain_operator import readiness


@pytest.fixture(autouse=True)
def _no_indexed_set_left() -> Iterator[None]:
    """kopf's indexed set is process-wide (readiness._indexed): no test leaves one for the next."""
    readiness._indexed = None
    yield
    readiness._indexed = None


class CountingCondition(asyncio.Condition):
    def __init__(self) -> None:
        super().__init__()
        self.notified = 0

    def notify_all(self) -> None:
        self.notified += 1
        super().notify_all()


async def _start_up(objects: int) -> tuple[int, int, int]:
    """kopf's start-up pattern: a blocker and one toggle per object, each object's worker drops its toggle
    and waits for the whole set; the engine waits too (``wait_indexed``). Returns (workers that ended while
    the blocker held, engine waiters released before the blocker went, notify_all calls)."""
    toggles = aiotoggles.ToggleSet(all)
    condition = CountingCondition()
    toggles._condition = condition
    blocker = await toggles.make_toggle(name="blocker")
    released = 0

    async def worker(own: aiotoggles.Toggle) -> None:
        nonlocal released
        await toggles.drop_toggle(own)
        await toggles.wait_for(True)  # kopf's processing, before it runs the handlers
        released += 1

    engine_waiters = [asyncio.create_task(readiness.wait_indexed()) for _ in range(3)]
    tasks = [asyncio.create_task(worker(await toggles.make_toggle(name=f"o{i}"))) for i in range(objects)]
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    ended_early = released
    early = sum(t.done() for t in engine_waiters)
    await toggles.drop_toggle(blocker)
    await asyncio.wait_for(asyncio.gather(*engine_waiters), 10)
    return ended_early, early, condition.notified


def test_kopf_workers_do_not_wait_for_the_indexes_the_engine_does() -> None:
    assert readiness.apply() and readiness.apply()  # idempotent
    try:
        ended_early, early, notified = asyncio.run(_start_up(500))
    finally:
        readiness._indexed = None
    assert ended_early == 500, "each kopf worker ends (and drops its raw event) once its object is indexed"
    assert early == 0, "no engine pass may start before every index is filled"
    # Two flips: the blocker turns the empty set off, its drop turns it on. kopf's own: one per toggle made or
    # dropped (1,002 here), each waking every waiting worker.
    assert notified == 2


def test_without_a_running_operator_nothing_waits() -> None:
    readiness._indexed = None

    async def waited() -> bool:
        task = asyncio.ensure_future(readiness.wait_indexed())
        await asyncio.sleep(0.01)
        return task.done()

    assert asyncio.run(waited()), "unit tests and scripts (no kopf) must not wait for indexes"


def test_waiters_for_off_are_released_when_a_toggle_turns_the_set_off() -> None:
    assert readiness.apply()

    async def scenario() -> bool:
        toggles = aiotoggles.ToggleSet(all)  # empty: on
        waiter = asyncio.create_task(toggles.wait_for(False))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        on = await toggles.make_toggle(True)  # still on: nobody woken
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await toggles.make_toggle(False)  # flips to off
        await asyncio.wait_for(waiter, 5)
        await toggles.drop_toggle(on)
        return toggles.is_off()

    assert asyncio.run(scenario())
