"""memtrim and the engine's trim after a drained burst (no cluster)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest
from kubetrain_operator import engine, memtrim
from kubetrain_operator.engine import Engine, Plan
from kubetrain_operator.settings import Settings


def test_trim_gives_free_heap_pages_back() -> None:
    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    # 64 MiB in 16 KiB blocks (glibc's heap, not mmap'd chunks), then freed, all but the last (which pins
    # the heap's top, so only malloc_trim — not the automatic top trim — can return the rest).
    blocks = [bytearray(16 * 1024) for _ in range(4096)]
    keep = blocks[-1]
    del blocks
    before = rss_kib()
    assert memtrim.trim() in (True, False)
    after = rss_kib()
    assert keep is not None
    assert after < before - 32 * 1024, f"RSS {before} KiB -> {after} KiB: malloc_trim gave back too little"


class Counting:
    kind = "TrainingRun"
    pod_label: str | None = None

    def __init__(self) -> None:
        self.passes = 0

    async def gather(self, namespace: str, key: str, memory: Mapping[str, Any], now: dt.datetime) -> Any:
        self.passes += 1
        return {}

    def decide(self, facts: Any, settings: Settings, now: dt.datetime) -> Plan:
        return Plan()

    async def act(self, facts: Any, plan: Plan, memory: dict[str, Any]) -> None:
        pass

    def forget(self, namespace: str, key: str) -> None:
        pass

    def key_of_child(self, labels: Mapping[str, str], owner: str) -> str:
        return owner


def test_the_engine_trims_once_when_a_burst_drains(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(memtrim, "trim", lambda: trims.append(1) or True)
    monkeypatch.setattr(engine, "TRIM_AFTER_PASSES", 50)
    fake = Counting()
    eng = Engine(workers=4)
    eng.register(fake)

    async def main() -> None:
        for i in range(49):
            eng.trigger("TrainingRun", "ns", f"r{i}")
        await asyncio.sleep(0.05)
        assert not trims, "a small batch is no burst"
        for i in range(60):
            eng.trigger("TrainingRun", "ns", f"s{i}")
        await asyncio.sleep(0.05)
        assert len(trims) == 1
        for i in range(60):
            eng.trigger("TrainingRun", "ns", f"t{i}")
        await asyncio.sleep(0.05)
        assert len(trims) == 1, "at most once per TRIM_INTERVAL"
        await eng.stop()

    asyncio.run(main())
    assert fake.passes == 169
