"""kopf's start-up readiness without the quadratic wake-ups (kopf 1.45; applied by ``__main__`` before kopf runs).

kopf runs no handler until every index is filled (what ``cache`` relies on after a restart): each object's
worker indexes its first event, drops its own toggle of one shared ``ToggleSet(all)``, then waits on that
set's ``asyncio.Condition`` until the whole set is on. kopf notifies ALL waiters on every toggle added or
dropped, so with N objects present at start N waiting workers are woken N times each. Measured
(``bench/operator_load.py``, 2,000 runs + 2,000 versions, py-spy): 40 % of the start-up's CPU in
``Condition.notify_all`` and the woken waiters; 5,000 + 5,000 took 570 s of start-up and 735 MiB (every
waiting worker holds its raw event).

A waiter's predicate depends only on the set's overall state (``is_on()``), so a change that leaves the state
as it was wakes nobody here; a change that flips it wakes everyone, as before. Individual toggles
(``Toggle.turn_to``) are untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kopf._cogs.aiokits import aiotoggles

logger = logging.getLogger(__name__)

_PATCHED = "_kubetrain_quiet"


async def _make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> aiotoggles.Toggle:
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


def apply() -> bool:
    """Replace ToggleSet's three mutators (idempotent). False, and kopf left as it is, when kopf's ToggleSet
    is not the one this was written for (its internals changed)."""
    cls = aiotoggles.ToggleSet
    if getattr(cls, _PATCHED, False):
        return True
    probe = cls(all)
    if not (hasattr(probe, "_condition") and isinstance(getattr(probe, "_toggles", None), set)):
        logger.warning("kopf's ToggleSet has changed: its start-up readiness is left unpatched")
        return False
    cls.make_toggle = _make_toggle  # type: ignore[method-assign]
    cls.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    cls.drop_toggles = _drop_toggles  # type: ignore[method-assign]
    setattr(cls, _PATCHED, True)
    return True
