"""kopf's start-up readiness, moved from kopf's per-object workers to the engine (kopf 1.45; applied by
``__main__`` before kopf runs).

kopf runs no handler until every index is filled (what ``cache`` relies on after a restart): each object's
worker indexes its first event, drops its own toggle of one shared ``ToggleSet(all)`` (the *indexed set*),
then waits on that set until the whole set is on. Two costs, both measured with ``bench/operator_load.py``:

* kopf notifies ALL waiters on every toggle added or dropped, so with N objects present at start N waiting
  workers are woken N times each: at 2,000 runs + 2,000 versions 40 % of the start-up's CPU (py-spy). Here a
  change that leaves the set's state as it was wakes nobody; one that flips it wakes everyone, as before.
* every waiting worker holds its object's raw watch event (the whole object as listed, managedFields and
  all) until the last object is indexed: the start-up's memory peak grew with the objects present
  (5,000 runs + 5,000 versions: 735 MiB). Here kopf's workers do not wait: their handlers only queue a key
  (``engine.Engine.trigger``) and the worker ends, dropping its event; the engine's workers wait instead
  (``wait_indexed``) before their first pass, so no pass still runs before every index is filled.

Individual toggles (``Toggle.turn_to``) are untouched; kopf's other ToggleSet (``any``: operator paused)
keeps kopf's own waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kopf._cogs.aiokits import aiotoggles

logger = logging.getLogger(__name__)

_PATCHED = "_kubetrain_quiet"
_original_wait_for = aiotoggles.ToggleSet.wait_for
#: kopf's indexed set of the running operator (the newest ``ToggleSet(all)`` that got a toggle).
_indexed: aiotoggles.ToggleSet | None = None


def _is_indexed_set(toggles: Any) -> bool:
    # kopf makes exactly one ToggleSet(all): the operator's "everything indexed" readiness.
    return getattr(toggles, "_fn", None) is all


async def _make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> aiotoggles.Toggle:
    global _indexed
    if _is_indexed_set(self):
        _indexed = self
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggle(self: Any, toggle: aiotoggles.Toggle) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.discard(toggle)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggles(self: Any, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


async def _wait_for(self: Any, __state: bool) -> None:
    if __state and _is_indexed_set(self):
        return  # a kopf worker: its handlers only queue keys; the engine waits (wait_indexed)
    await _original_wait_for(self, __state)


async def wait_indexed() -> None:
    """Until every index of the running operator is filled by its initial listing (at once when kopf is not
    running with the patch applied: unit tests, scripts)."""
    indexed = _indexed
    if indexed is not None and not indexed.is_on():
        await _original_wait_for(indexed, True)


def apply() -> bool:
    """Replace ToggleSet's mutators and its wait (idempotent). False, and kopf left as it is, when kopf's
    ToggleSet is not the one this was written for (its internals changed)."""
    cls = aiotoggles.ToggleSet
    if getattr(cls, _PATCHED, False):
        return True
    probe = cls(all)
    if not (
        hasattr(probe, "_condition")
        and isinstance(getattr(probe, "_toggles", None), set)
        and getattr(probe, "_fn", None) is all
    ):
        logger.warning("kopf's ToggleSet has changed: its start-up readiness is left unpatched")
        return False
    cls.make_toggle = _make_toggle  # type: ignore[method-assign]
    cls.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    cls.drop_toggles = _drop_toggles  # type: ignore[method-assign]
    cls.wait_for = _wait_for  # type: ignore[method-assign]
    setattr(cls, _PATCHED, True)
    return True
