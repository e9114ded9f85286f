"""The model registry's pure core: alias resolution, retention, serving hints and the ModelVersion Jobs.

Nothing here talks to the API; ``handlers/modelversion.py`` reads objects, calls these functions and
writes what they return. Every function is deterministic given its inputs (``now`` is passed in).

Alias rule ("the newest claim wins")
    A version *claims* an alias by listing it in ``spec.aliases``. The operator records each claim once in
    ``status.aliasClaims`` with ``time`` = the API server's ``managedFields`` time of the last write that
    touched ``spec.aliases`` (server clock, whole seconds; the first observation time when no such entry
    exists) and ``observed`` = when the operator first saw it (microseconds). Competing claims of one
    alias are ordered by ``(time, observed, version)``: the latest write wins, the operator's observation
    order breaks same-second ties, the higher version number breaks the rest. A claim keeps its time
    while the alias stays in the spec; removing and re-adding it makes a new claim.

Eligibility
    A version being deleted holds nothing. A ``Failed`` version (checksum mismatch, version conflict) is
    refused every alias. A *protected* alias (settings, default ``production``) additionally needs a
    ``Ready`` (verified) version whose run did not miss its thresholds (``status.passedThresholds`` is not
    false); while a version is still Pending/Verifying its protected claims wait, and the alias stays
    with the previous holder.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import k8s
from .status import PHASE_FAILED, PHASE_READY

COND_ALIAS_SUPERSEDED = "AliasSuperseded"
COND_ALIAS_REFUSED = "AliasRefused"
REASON_SUPERSEDED = "Superseded"
REASON_NOT_SUPERSEDED = "AllClaimsHeld"
REASON_REFUSED = "ProtectedAliasRefused"
REASON_NOT_REFUSED = "NoneRefused"
HISTORY_LIMIT = 50


# ---- a typed view of one ModelVersion -----------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One recorded claim of an alias (status.aliasClaims[])."""

    alias: str
    time: str
    observed: str
    generation: int | None = None

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alias": self.alias, "time": self.time, "observed": self.observed}
        if self.generation is not None:
            out["generation"] = self.generation
        return out


@dataclass(frozen=True)
class Check:
    """One recorded promotion-time check (status.aliasChecks[])."""

    alias: str
    claim: str
    job: str
    result: str
    message: str = ""


CHECK_PASSED, CHECK_FAILED = "Passed", "Failed"


@dataclass(frozen=True)
class VersionView:
    """What the registry needs to know about one ModelVersion object."""

    name: str
    model: str
    version: int
    uid: str = ""
    generation: int = 1
    spec_aliases: tuple[str, ...] = ()
    status_aliases: tuple[str, ...] = ()
    claims: tuple[Claim, ...] = ()
    phase: str | None = None
    passed_thresholds: bool | None = None
    deleting: bool = False
    from_run: bool = False
    history: tuple[dict[str, Any], ...] = ()
    aliases_write_time: str | None = None
    creation_timestamp: str = ""
    checks: tuple[Check, ...] = ()

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any]) -> VersionView:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        labels = meta.get("labels") or {}
        return cls(
            name=meta.get("name", ""),
            model=spec.get("model", ""),
            version=int(spec.get("version") or 0),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 1),
            spec_aliases=tuple(spec.get("aliases") or ()),
            status_aliases=tuple(status.get("aliases") or ()),
            claims=tuple(
                Claim(c["alias"], c.get("time", ""), c.get("observed", ""), c.get("generation"))
                for c in status.get("aliasClaims") or ()
                if c.get("alias")
            ),
            phase=status.get("phase"),
            passed_thresholds=status.get("passedThresholds"),
            deleting=bool(meta.get("deletionTimestamp")),
            from_run=bool(labels.get(k8s.LABEL_RUN_UID)),
            history=tuple(status.get("aliasHistory") or ()),
            aliases_write_time=aliases_write_time(meta),
            creation_timestamp=meta.get("creationTimestamp", ""),
            checks=tuple(
                Check(c["alias"], c.get("claim", ""), c.get("job", ""), c.get("result", ""), c.get("message", ""))
                for c in status.get("aliasChecks") or ()
                if c.get("alias")
            ),
        )


def aliases_write_time(meta: Mapping[str, Any]) -> str | None:
    """The API server's time of the last write that owns ``spec.aliases`` (managedFields), or None."""
    best: str | None = None
    for entry in meta.get("managedFields") or ():
        if entry.get("subresource"):
            continue
        spec_fields = ((entry.get("fieldsV1") or {}).get("f:spec")) or {}
        if "f:aliases" in spec_fields and entry.get("time") and (best is None or entry["time"] > best):
            best = entry["time"]
    return best


def current_claims(view: VersionView, now: str) -> tuple[Claim, ...]:
    """The claims of ``view.spec_aliases``: recorded ones kept, new ones stamped now (see module doc)."""
    recorded = {c.alias: c for c in view.claims}
    out = []
    for alias in view.spec_aliases:
        claim = recorded.get(alias)
        if claim is None:
            claim = Claim(alias, view.aliases_write_time or now, now, view.generation)
        out.append(claim)
    return tuple(out)


# ---- alias resolution ---------------------------------------------------------------------------------


@dataclass
class AliasOutcome:
    """What one version should show after resolution."""

    aliases: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    superseded: dict[str, str] = field(default_factory=dict)
    """alias → name of the version holding it."""
    refused: dict[str, str] = field(default_factory=dict)
    """alias → why."""
    waiting: dict[str, str] = field(default_factory=dict)
    """alias → why (protected claim of a version not yet verified)."""
    new_events: list[dict[str, Any]] = field(default_factory=list)
    """aliasHistory entries to append (Assigned, Removed, Superseded, Refused)."""
    check: dict[str, Claim] = field(default_factory=dict)
    """alias → the claim whose promotion-time artifact check is still to be made (a check Job)."""


def needs_check(view: VersionView, alias: str, claim: Claim, protected: Iterable[str]) -> bool:
    """Whether granting ``alias`` to ``view`` for ``claim`` waits on a promotion-time artifact check."""
    if alias not in protected or alias in view.status_aliases:
        return False
    return not (view.from_run and claim.generation == 1)  # the trainer's read-back at registration


def check_of(view: VersionView, alias: str, claim: Claim) -> Check | None:
    return next((c for c in view.checks if c.alias == alias and c.claim == claim.observed), None)


def _refusal(
    view: VersionView, alias: str, protected: Iterable[str], claim: Claim | None = None
) -> tuple[str | None, str | None]:
    """(refused reason, waiting reason) of ``view`` claiming ``alias``; both None when it may hold it."""
    if view.phase == PHASE_FAILED:
        return f"{view.name} failed (phase Failed); a failed version holds no alias", None
    if alias in protected:
        if view.passed_thresholds is False:
            return f"{alias} is protected and {view.name} missed its run's thresholds", None
        if view.phase != PHASE_READY:
            return None, f"{alias} is protected: waits until {view.name} is verified (phase {view.phase or 'Pending'})"
        if claim is not None and needs_check(view, alias, claim, protected):
            check = check_of(view, alias, claim)
            if check is None:
                return None, f"{alias} is protected: waits for the check of {view.name}'s artifact at its location"
            if check.result != CHECK_PASSED:
                return f"{alias} is protected and the check of {view.name}'s artifact failed: {check.message}", None
    return None, None


def _last_action(history: Sequence[Mapping[str, Any]], alias: str) -> str | None:
    for event in reversed(history):
        if event.get("alias") == alias:
            return str(event.get("action"))
    return None


def resolve_aliases(views: Sequence[VersionView], protected: Iterable[str], now: str) -> dict[str, AliasOutcome]:
    """Effective aliases of every version of ONE model, keyed by version name.

    Idempotent: applied to its own output (recorded claims, status aliases, history) it adds no events.
    """
    protected = frozenset(protected)
    claims = {v.name: current_claims(v, now) for v in views}
    out = {v.name: AliasOutcome(claims=list(claims[v.name])) for v in views}
    by_alias: dict[str, list[tuple[VersionView, Claim]]] = {}
    for v in views:
        if v.deleting:
            continue
        for c in claims[v.name]:
            by_alias.setdefault(c.alias, []).append((v, c))

    holder: dict[str, VersionView] = {}
    for alias, claimants in by_alias.items():
        eligible = []
        for v, c in claimants:
            refused, waiting = _refusal(v, alias, protected, c)
            if refused:
                out[v.name].refused[alias] = refused
            elif waiting:
                out[v.name].waiting[alias] = waiting
                if v.phase == PHASE_READY and needs_check(v, alias, c, protected) and check_of(v, alias, c) is None:
                    out[v.name].check[alias] = c
            else:
                eligible.append((v, c))
        if eligible:
            winner, _ = max(eligible, key=lambda vc: (vc[1].time, vc[1].observed, vc[0].version))
            holder[alias] = winner
            out[winner.name].aliases.append(alias)
            for v, _c in eligible:
                if v is not winner:
                    out[v.name].superseded[alias] = winner.name

    for v in views:
        _history_events(v, out[v.name], holder, now)
    return out


def _history_events(v: VersionView, o: AliasOutcome, holder: Mapping[str, VersionView], now: str) -> None:
    """The aliasHistory entries of one version's resolution (each move once)."""
    o.aliases.sort()
    before = set(v.status_aliases)
    after = set(o.aliases)
    for alias in sorted(before | set(v.spec_aliases) | set(o.refused)):
        last = _last_action(v.history, alias)
        if alias in after and alias not in before:
            o.new_events.append(_event(alias, "Assigned", now, f"{v.name} (version {v.version}) holds {alias}"))
        elif alias in o.superseded and (alias in before or last not in ("Superseded",)):
            w = holder[alias]
            o.new_events.append(
                _event(alias, "Superseded", now, f"{alias} moved to {w.name} (version {w.version}), a newer claim")
            )
        elif alias in o.refused and (alias in before or last != "Refused"):
            o.new_events.append(_event(alias, "Refused", now, o.refused[alias]))
        elif alias in before and alias not in after:
            why = "being deleted" if v.deleting else "no longer in spec.aliases"
            if alias in o.waiting:
                why = o.waiting[alias]
            o.new_events.append(_event(alias, "Removed", now, f"{alias} removed from {v.name}: {why}"))


def _event(alias: str, action: str, now: str, message: str) -> dict[str, Any]:
    return {"alias": alias, "action": action, "time": now, "message": message[: k8s.EVENT_MESSAGE_MAX]}


def alias_status_patch(obj: Mapping[str, Any], outcome: AliasOutcome, now: str) -> dict[str, Any] | None:
    """The status fields to patch for ``outcome`` on ``obj`` (aliases, aliasClaims, aliasHistory,
    AliasSuperseded/AliasRefused conditions), or None when nothing changes."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    conditions: list[dict[str, Any]] = [dict(c) for c in status.get("conditions") or ()]
    has = {c.get("type") for c in conditions}
    if outcome.superseded:
        msg = "; ".join(f"{a} is held by {w}" for a, w in sorted(outcome.superseded.items()))
        conditions = k8s.set_condition(
            conditions, COND_ALIAS_SUPERSEDED, "True", REASON_SUPERSEDED, msg, generation, now
        )
    elif COND_ALIAS_SUPERSEDED in has:
        conditions = k8s.set_condition(
            conditions, COND_ALIAS_SUPERSEDED, "False", REASON_NOT_SUPERSEDED, "", generation, now
        )
    if outcome.refused:
        msg = "; ".join(outcome.refused[a] for a in sorted(outcome.refused))
        conditions = k8s.set_condition(conditions, COND_ALIAS_REFUSED, "True", REASON_REFUSED, msg, generation, now)
    elif COND_ALIAS_REFUSED in has:
        conditions = k8s.set_condition(conditions, COND_ALIAS_REFUSED, "False", REASON_NOT_REFUSED, "", generation, now)
    history = [*list(status.get("aliasHistory") or ()), *outcome.new_events][-HISTORY_LIMIT:]
    desired = {
        "observedGeneration": generation,
        "aliases": outcome.aliases,
        "aliasClaims": [c.dump() for c in outcome.claims],
        "aliasHistory": history,
        "conditions": conditions,
    }
    current = {
        "observedGeneration": status.get("observedGeneration"),
        "aliases": list(status.get("aliases") or []),
        "aliasClaims": list(status.get("aliasClaims") or []),
        "aliasHistory": list(status.get("aliasHistory") or []),
        "conditions": list(status.get("conditions") or []),
    }
    return None if desired == current else desired
