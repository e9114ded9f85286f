"""The engine's loop with a fake kind (no cluster): coalescing, requeue, Again, backoff, forgetting, routing."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from kopf._cogs.aiokits import aiotoggles
from kubetrain_operator import engine, k8s, readiness
from kubetrain_operator.engine import Again, Engine, Plan
from kubetrain_operator.settings import Settings


@pytest.fixture(autouse=True)
def _no_indexed_set_left() -> Iterator[None]:
    """kopf's indexed set is process-wide (readiness._indexed): no test leaves one for the next."""
    readiness._indexed = None
    yield
    readiness._indexed = None


class Fake:
    kind = "TrainingRun"
    pod_label: str | None = k8s.LABEL_RUN

    def __init__(self, plans: list[Any]) -> None:
        self.plans = plans
        self.passes = 0
        self.acted: list[Plan] = []
        self.forgotten: list[str] = []

    async def gather(self, namespace: str, key: str, memory: Mapping[str, Any], now: dt.datetime) -> Any:
        self.passes += 1
        await asyncio.sleep(0.01)
        return None if not self.plans else dict(memory)

    def decide(self, facts: Any, settings: Settings, now: dt.datetime) -> Plan:
        step = self.plans.pop(0)
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, Plan)
        return step

    async def act(self, facts: Any, plan: Plan, memory: dict[str, Any]) -> None:
        self.acted.append(plan)
        if plan.status.get("again"):
            raise Again("stale")

    def forget(self, namespace: str, key: str) -> None:
        self.forgotten.append(key)

    def key_of_child(self, labels: Mapping[str, str], owner: str) -> str:
        return owner


def _run(fake: Fake, seconds: float, triggers: int = 1, workers: int = 4) -> Engine:
    eng = Engine(workers=workers)
    eng.register(fake)

    async def main() -> None:
        for _ in range(triggers):
            eng.trigger("TrainingRun", "ns", "a")
        await asyncio.sleep(seconds)
        await eng.stop()

    asyncio.run(main())
    return eng


def test_triggers_before_a_pass_coalesce_into_one_pass() -> None:
    fake = Fake([Plan(), Plan(), Plan(), Plan()])
    _run(fake, 0.05, triggers=5)
    assert fake.passes == 1  # queued once: the one pass sees the latest state


def test_triggers_during_a_pass_queue_exactly_one_more_pass() -> None:
    fake = Fake([Plan(), Plan(), Plan(), Plan()])
    eng = Engine(workers=4)
    eng.register(fake)

    async def main() -> None:
        eng.trigger("TrainingRun", "ns", "a")
        await asyncio.sleep(0.005)  # the pass is in its gather (10 ms)
        assert fake.passes == 1
        for _ in range(5):
            eng.trigger("TrainingRun", "ns", "a")
        await asyncio.sleep(0.1)
        await eng.stop()

    asyncio.run(main())
    assert fake.passes == 2  # the running one + one after it, never two at once


def test_trigger_returns_at_once_and_the_workers_bound_the_passes_in_progress() -> None:
    class Slow(Fake):
        def __init__(self) -> None:
            super().__init__([Plan() for _ in range(20)])
            self.now = 0
            self.most = 0

        async def gather(self, namespace: str, key: str, memory: Mapping[str, Any], now: dt.datetime) -> Any:
            self.passes += 1
            self.now += 1
            self.most = max(self.most, self.now)
            await asyncio.sleep(0.02)
            self.now -= 1
            return {}

    fake = Slow()
    eng = Engine(workers=3)
    eng.register(fake)

    async def main() -> None:
        for i in range(10):
            eng.trigger("TrainingRun", "ns", f"run-{i}")
        assert fake.passes == 0 and eng.depth() == 10  # nothing ran inside trigger
        await asyncio.sleep(0.3)
        assert eng.depth() == 0
        await eng.stop()

    asyncio.run(main())
    assert fake.passes == 10 and fake.most == 3


def test_keys_never_reconciled_go_before_keys_that_come_back() -> None:
    # One worker. Three runs reconciled once each come back (their Jobs' updates); then three new runs are
    # created. The new ones are served first, each in the order it came; the returning ones after them.
    class Order(Fake):
        def __init__(self) -> None:
            super().__init__([Plan() for _ in range(20)])
            self.order: list[str] = []

        async def gather(self, namespace: str, key: str, memory: Mapping[str, Any], now: dt.datetime) -> Any:
            self.order.append(key)
            await asyncio.sleep(0.01)
            return {}

    fake = Order()
    eng = Engine(workers=1)
    eng.register(fake)

    async def main() -> None:
        for i in range(3):
            eng.trigger("TrainingRun", "ns", f"old-{i}")
        await asyncio.sleep(0.1)
        assert fake.order == ["old-0", "old-1", "old-2"]
        for i in range(3):
            eng.trigger("TrainingRun", "ns", f"old-{i}")  # a follow-up of each
            eng.trigger("TrainingRun", "ns", f"new-{i}")
        await asyncio.sleep(0.2)
        await eng.stop()

    asyncio.run(main())
    assert fake.order[3:] == ["new-0", "new-1", "new-2", "old-0", "old-1", "old-2"], fake.order


def test_no_pass_runs_before_every_index_is_filled() -> None:
    assert readiness.apply()
    fake = Fake([Plan()])
    eng = Engine(workers=2)
    eng.register(fake)

    async def main() -> None:
        indexed = aiotoggles.ToggleSet(all)  # kopf's: one toggle per resource still listing
        listing = await indexed.make_toggle(name="trainingruns listing")
        eng.trigger("TrainingRun", "ns", "a")  # a handler of the initial listing queues its key
        await asyncio.sleep(0.05)
        assert fake.passes == 0
        await indexed.drop_toggle(listing)
        await asyncio.sleep(0.05)
        await eng.stop()

    try:
        asyncio.run(main())
    finally:
        readiness._indexed = None
    assert fake.passes == 1


def test_a_key_forgotten_during_its_pass_is_not_requeued() -> None:
    fake = Fake([Plan(requeue=0.01), Plan()])
    eng = Engine(workers=2)
    eng.register(fake)

    async def main() -> None:
        eng.trigger("TrainingRun", "ns", "a")
        await asyncio.sleep(0.005)
        eng.forget("TrainingRun", "ns", "a")  # a DELETED event while the pass runs
        await asyncio.sleep(0.1)
        await eng.stop()

    asyncio.run(main())
    assert fake.passes == 1 and not eng._states


def test_requeue_and_memory_reach_the_next_pass() -> None:
    fake = Fake([Plan(requeue=0.05, remember={"n": 1}), Plan()])
    _run(fake, 0.3)
    assert fake.passes == 2 and len(fake.acted) == 2


def test_again_reconciles_at_once_and_errors_back_off() -> None:
    fake = Fake([Plan(status={"again": True}), Plan()])
    _run(fake, 0.3)
    assert fake.passes == 2
    failing = Fake([RuntimeError("boom"), Plan()])
    _run(failing, 0.3)
    assert failing.passes == 1  # the retry waits 2 s (backoff), not a tight loop


def test_a_gone_object_is_forgotten() -> None:
    fake = Fake([])
    eng = _run(fake, 0.05)
    assert fake.forgotten == ["a"] and not eng._states


def test_children_route_to_their_owner_by_owner_reference_or_label() -> None:
    eng = Engine()
    eng.register(Fake([]))
    assert eng.route_pod({k8s.LABEL_RUN: "iris"}) == ("TrainingRun", "iris")
    assert eng.route_pod({"other": "x"}) is None
    assert engine.MIN_REQUEUE < 0.1 and engine.MAX_ERROR_DELAY == 300.0
