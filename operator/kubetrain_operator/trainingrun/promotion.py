"""Champion/challenger promotion (``spec.register.promote``), as pure functions.

1. At Job creation gather lists the namespace's ModelVersions; ``champion_of`` picks the version that holds
   the alias now (the champion), and the Job passes its artifact URI and sha256 to the trainer
   (``contract.ENV_CHAMPION_*``). The trainer checks the sha256 before it loads the file, and scores the new
   model (the challenger) and the champion on the same hold-out split (``Result.promotion``).
2. At registration ``decide_promotion`` turns those scores into the decision: the new version claims the
   alias (``spec.aliases``, so the ModelVersion controller moves it: the newest claim wins) only when it beat
   the champion by ``minImprovement`` in the metric's direction — and only when the champion it beat still
   holds the alias. No champion: the new version takes it (it passed its thresholds, or it would not be
   registered). Anything short of evidence (no scores, a champion that could not be scored) keeps the
   champion.
3. The decision (both scores, the margin, the hold-out's fingerprint) goes into the run's
   ``status.promotion``, an Event, and the ModelVersion (annotation ``ANNOTATION_PROMOTION``, which its
   controller copies into the version's ``status.promotion`` and ``aliasHistory``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubetrain_api.models import PromoteSpec, Promotion, improvement
from kubetrain_trainer import contract

from .. import k8s

#: The decision, as JSON, on the ModelVersion a promoting run creates (read by the ModelVersion controller).
ANNOTATION_PROMOTION = "kubetrain.io/promotion"

DECISION_PROMOTED = "Promoted"
DECISION_CHAMPION_KEPT = "ChampionKept"
REASON_BEAT_CHAMPION = "BeatChampion"
REASON_NO_CHAMPION = "NoChampion"
REASON_NOT_BETTER = "NotBetter"
REASON_CHAMPION_NOT_SCORED = "ChampionNotScored"
REASON_CHAMPION_CHANGED = "ChampionChanged"


@dataclass(frozen=True)
class Champion:
    """The ModelVersion holding the alias: what the trainer needs to load and check it."""

    name: str
    uri: str
    sha256: str

    def env(self) -> list[dict[str, Any]]:
        """The trainer container's variables naming this champion."""
        return [
            {"name": contract.ENV_CHAMPION_NAME, "value": self.name},
            {"name": contract.ENV_CHAMPION_URI, "value": self.uri},
            {"name": contract.ENV_CHAMPION_SHA256, "value": self.sha256},
        ]


def champion_of(versions: Sequence[Mapping[str, Any]], model: str, alias: str) -> Champion | None:
    """The live version of ``model`` whose status holds ``alias`` (status.aliases: the effective holder)."""
    for mv in versions:
        meta, spec, status = mv.get("metadata") or {}, mv.get("spec") or {}, mv.get("status") or {}
        if spec.get("model") != model or meta.get("deletionTimestamp"):
            continue
        artifact = spec.get("artifact") or {}
        if alias in (status.get("aliases") or ()) and artifact.get("uri") and artifact.get("sha256"):
            return Champion(str(meta.get("name")), str(artifact["uri"]), str(artifact["sha256"]))
    return None


def decide_promotion(
    promote: PromoteSpec,
    scores: Mapping[str, Any] | None,
    holder: Champion | None,
    challenger: str,
    now: str,
) -> dict[str, Any]:
    """The Promotion record (camelCase, valid for ``kubetrain_api.models.Promotion``) of a registered run.

    ``scores`` is the trainer's ``Result.promotion``; ``holder`` the version holding the alias now.
    """
    scores = dict(scores or {})
    metric = promote.metric
    record = _scored_record(promote, scores, challenger, now)
    ch, cs = record.get("challengerScore"), record.get("championScore")
    scored = record.get("champion")
    holdout = f" on hold-out {str(scores.get('holdout') or 'unknown')[:23]}…"
    ch_text = f"{challenger} {metric}={_fmt(ch)}"

    if holder is None:
        why = f"no version held {promote.alias}"
        if scored:
            why = f"{scored} no longer holds {promote.alias}"
        return _decided(record, DECISION_PROMOTED, REASON_NO_CHAMPION, f"{ch_text}: {why}; promoted")
    record["champion"] = holder.name
    stale = not scored or scored != holder.name or scores.get("champion_sha256") not in (None, holder.sha256)
    if stale:
        record.pop("championScore", None)
        moved = f"the trainer scored {scored}" if scored else "the trainer scored no champion"
        message = f"{promote.alias} is held by {holder.name} and {moved}; {holder.name} keeps it"
        return _decided(record, DECISION_CHAMPION_KEPT, REASON_CHAMPION_CHANGED, message)
    if ch is None or cs is None:
        problem = str(scores.get("problem") or "no scores reported")[: contract.PROMOTION_PROBLEM_MAX]
        message = f"{holder.name} keeps {promote.alias}: not compared ({problem})"
        return _decided(record, DECISION_CHAMPION_KEPT, REASON_CHAMPION_NOT_SCORED, message)
    delta = improvement(metric, ch, cs)
    comparison = (
        f"{ch_text} vs champion {holder.name} {metric}={_fmt(cs)} (improvement {delta:+.4g}, "
        f"minImprovement {promote.min_improvement:g}){holdout}"
    )
    if delta > 0 and delta >= promote.min_improvement:
        return _decided(record, DECISION_PROMOTED, REASON_BEAT_CHAMPION, f"{comparison}; promoted")
    return _decided(record, DECISION_CHAMPION_KEPT, REASON_NOT_BETTER, f"{comparison}; {holder.name} keeps it")


def _scored_record(promote: PromoteSpec, scores: Mapping[str, Any], challenger: str, now: str) -> dict[str, Any]:
    """The record's facts before the decision: what was compared, the scores the trainer reported."""
    record: dict[str, Any] = {
        "alias": promote.alias,
        "metric": promote.metric,
        "challenger": challenger,
        "minImprovement": promote.min_improvement,
        "time": now,
    }
    ch, cs = _number(scores.get("challenger")), _number(scores.get("champion_score"))
    if ch is not None:
        record["challengerScore"] = ch
    if cs is not None:
        record["championScore"] = cs
    if scores.get("holdout"):
        record["holdoutFingerprint"] = str(scores["holdout"])[:80]
    if scores.get("champion"):
        record["champion"] = str(scores["champion"])[:253]
    return record


def _decided(record: dict[str, Any], decision: str, reason: str, message: str) -> dict[str, Any]:
    out = {**record, "decision": decision, "reason": reason, "message": message[:1024]}
    return Promotion.model_validate(out).dump()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def promoted(record: Mapping[str, Any] | None) -> bool:
    return bool(record and record.get("decision") == DECISION_PROMOTED)


def annotation(record: Mapping[str, Any]) -> str:
    return json.dumps(dict(record), separators=(",", ":"), sort_keys=True)


def from_annotation(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Promotion record on a run-created ModelVersion, or None (absent, or not a valid record)."""
    meta = obj.get("metadata") or {}
    if not (meta.get("labels") or {}).get(k8s.LABEL_RUN_UID):
        return None
    raw = (meta.get("annotations") or {}).get(ANNOTATION_PROMOTION)
    if not raw:
        return None
    try:
        return Promotion.model_validate(json.loads(raw)).dump()
    except ValueError:
        return None


def event(record: Mapping[str, Any]) -> k8s.Event:
    """The Event of a decision: ``Promoted`` or ``ChampionKept`` (both Normal: keeping the champion is the
    system working)."""
    return k8s.Event.normal(str(record["decision"]), str(record.get("message") or ""))
