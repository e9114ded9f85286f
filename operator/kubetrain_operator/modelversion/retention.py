"""Retention: which versions of a model are deleted (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from .aliases import VersionView
from .status import PHASE_FAILED, PHASE_READY


def select_for_deletion(views: Sequence[VersionView], keep: int) -> list[str]:
    """Names of versions of ONE model that retention deletes: beyond the ``keep`` highest version numbers,
    created by the operator from a run (hand-registered versions belong to their author / Argo CD), not
    holding or claiming an alias, not Pending/Verifying, not already being deleted."""
    keep = max(1, keep)
    ordered = sorted(views, key=lambda v: v.version, reverse=True)
    doomed = []
    for v in ordered[keep:]:
        if v.deleting or not v.from_run or v.status_aliases or v.spec_aliases:
            continue
        if v.phase not in (PHASE_READY, PHASE_FAILED):
            continue
        doomed.append(v.name)
    return sorted(doomed)
