"""readiness.apply(): kopf's ToggleSet wakes its waiters only when the set's overall state flips, and still
releases every waiter when it does (real kopf objects, no cluster)."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles
from kubetrain_operator import readiness


class CountingCondition(asyncio.Condition):
    def __init__(self) -> None:
        super().__init__()
        self.notified = 0

    def notify_all(self) -> None:
        self.notified += 1
        super().notify_all()


async def _start_up(objects: int) -> tuple[int, int]:
    """kopf's start-up pattern: a blocker and one toggle per object, each object's worker drops its toggle
    and waits for the whole set; returns (workers released, notify_all calls)."""
    toggles = aiotoggles.ToggleSet(all)
    condition = CountingCondition()
    toggles._condition = condition
    blocker = await toggles.make_toggle(name="blocker")
    released = 0

    async def worker(own: aiotoggles.Toggle) -> None:
        nonlocal released
        await toggles.drop_toggle(own)
        await toggles.wait_for(True)
        released += 1

    tasks = [asyncio.create_task(worker(await toggles.make_toggle(name=f"o{i}"))) for i in range(objects)]
    await asyncio.sleep(0.05)
    assert released == 0, "no worker may run before the set is on"
    await toggles.drop_toggle(blocker)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    return released, condition.notified


def test_waiters_are_woken_only_when_the_set_flips() -> None:
    assert readiness.apply() and readiness.apply()  # idempotent
    released, notified = asyncio.run(_start_up(500))
    assert released == 500
    # Two flips: the blocker turns the empty set off, its drop turns it on. kopf's own: one per toggle made or
    # dropped (1,002 here), each waking every waiting worker.
    assert notified == 2


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
