"""The plugin's pure core: comparison rows, alias history, the rollback target, alias outcomes, the
explanation of a run. No API calls here — ``kube.py`` fetches, ``cli.py`` prints."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

GROUP = "kubetrain.io"
VERSION = "v1alpha1"
MODEL_LABEL = "kubetrain.io/model"
RUN_LABEL = "kubetrain.io/run"
COMPONENT_LABEL = "app.kubernetes.io/component"
TRAINER_COMPONENT = "trainer"
TRAINER_CONTAINER = "trainer"
COND_ALIAS_REFUSED = "AliasRefused"

# Exit codes (documented in docs/plugin.md).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4
EXIT_TIMEOUT = 5
EXIT_FAILED = 6

MISSING = "-"
DIFF_MARK = "*"


class PluginError(Exception):
    """A failure with its exit code and a message for the user."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def name_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def status_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def condition(obj: Mapping[str, Any], ctype: str) -> dict[str, Any]:
    return next((dict(c) for c in status_of(obj).get("conditions") or () if c.get("type") == ctype), {})


def _cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


# ---- compare ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One compared field: its values per version (None = absent) and whether they differ."""

    section: str
    field: str
    values: tuple[Any, ...]

    @property
    def differs(self) -> bool:
        return len({json.dumps(v, sort_keys=True) for v in self.values}) > 1

    def dump(self) -> dict[str, Any]:
        return {"section": self.section, "field": self.field, "values": list(self.values), "differs": self.differs}


def _features(spec: Mapping[str, Any]) -> dict[str, str]:
    return {f.get("name", ""): f.get("dtype", "") for f in (spec.get("signature") or {}).get("features") or ()}


def compare_rows(versions: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Side-by-side rows of metrics, params, dataset, signature, lineage and state of ``versions``."""
    specs = [dict(v.get("spec") or {}) for v in versions]
    statuses = [status_of(v) for v in versions]
    sources = [dict(s.get("source") or {}) for s in specs]
    rows: list[Row] = [
        Row("version", "model", tuple(s.get("model") for s in specs)),
        Row("version", "version", tuple(s.get("version") for s in specs)),
        Row("version", "phase", tuple(st.get("phase") for st in statuses)),
        Row("version", "aliases", tuple(", ".join(st.get("aliases") or ()) or None for st in statuses)),
        Row("version", "passedThresholds", tuple(st.get("passedThresholds") for st in statuses)),
    ]

    def keyed(section: str, maps: list[dict[str, Any]]) -> None:
        for key in sorted({k for m in maps for k in m}):
            rows.append(Row(section, key, tuple(m.get(key) for m in maps)))

    keyed("metrics", [dict(s.get("metrics") or {}) for s in specs])
    rows.append(Row("params", "estimator", tuple(src.get("estimator") for src in sources)))
    keyed("params", [dict(src.get("params") or {}) for src in sources])
    rows.append(Row("dataset", "uri", tuple(src.get("dataset") for src in sources)))
    rows.append(Row("dataset", "fingerprint", tuple(src.get("datasetFingerprint") for src in sources)))
    rows.append(Row("lineage", "trainingRun", tuple((src.get("trainingRun") or {}).get("name") for src in sources)))
    rows.append(Row("lineage", "image", tuple(src.get("image") for src in sources)))
    sigs = [dict(s.get("signature") or {}) for s in specs]
    rows.append(Row("signature", "task", tuple(sig.get("task") for sig in sigs)))
    rows.append(Row("signature", "target", tuple(sig.get("target") for sig in sigs)))
    features = [_features(s) for s in specs]
    rows.append(Row("signature", "features", tuple(len(f) if f else None for f in features)))
    for fname in sorted({k for f in features for k in f}):
        rows.append(Row("signature", f"feature {fname}", tuple(f.get(fname) for f in features)))
    keyed("runtime", [dict(s.get("runtime") or {}) for s in specs])
    rows.append(Row("artifact", "sha256", tuple((s.get("artifact") or {}).get("sha256") for s in specs)))
    return rows


def compare_table(names: Sequence[str], rows: Sequence[Row], only_differences: bool = False) -> str:
    """The rows as a plain table; a ``*`` in the first column marks a row whose values differ."""
    body = [
        [DIFF_MARK if r.differs else "", f"{r.section}.{r.field}", *(_cell(v) for v in r.values)]
        for r in rows
        if r.differs or not only_differences
    ]
    return tabulate(body, headers=["", "FIELD", *names], tablefmt="plain", disable_numparse=True)


def compare_document(names: Sequence[str], rows: Sequence[Row]) -> dict[str, Any]:
    return {"versions": list(names), "rows": [r.dump() for r in rows]}


# ---- history ------------------------------------------------------------------------------------------


def versions_of(objs: Iterable[Mapping[str, Any]], model: str) -> list[dict[str, Any]]:
    """The ModelVersions of ``model``, by version number."""
    mine = [dict(o) for o in objs if (o.get("spec") or {}).get("model") == model]
    return sorted(mine, key=lambda o: (int(o["spec"].get("version") or 0), name_of(o)))


def alias_events(versions: Sequence[Mapping[str, Any]], alias: str | None = None) -> list[dict[str, Any]]:
    """Every aliasHistory entry of the versions, oldest first (ties: version number, then recorded order)."""
    events = []
    for v in versions:
        number = int((v.get("spec") or {}).get("version") or 0)
        for i, e in enumerate(status_of(v).get("aliasHistory") or ()):
            if alias is None or e.get("alias") == alias:
                events.append(
                    {
                        "time": e.get("time", ""),
                        "version": number,
                        "name": name_of(v),
                        "alias": e.get("alias"),
                        "action": e.get("action"),
                        "message": e.get("message") or "",
                        "_order": i,
                    }
                )
    events.sort(key=lambda e: (_time_key(e["time"]), e["version"], e["_order"]))
    for e in events:
        del e["_order"]
    return events


def _time_key(value: str) -> str:
    """RFC 3339 times with and without fractions compare correctly as text once normalised."""
    if not value:
        return ""
    base, _, frac = value.rstrip("Z").partition(".")
    return f"{base}.{frac.ljust(6, '0')}Z"


def history_document(model: str, versions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "model": model,
        "versions": [
            {
                "name": name_of(v),
                "version": v["spec"].get("version"),
                "phase": status_of(v).get("phase"),
                "aliases": list(status_of(v).get("aliases") or ()),
                "primaryMetric": status_of(v).get("primaryMetric"),
                "created": (v.get("metadata") or {}).get("creationTimestamp"),
                "trainingRun": ((v["spec"].get("source") or {}).get("trainingRun") or {}).get("name"),
            }
            for v in versions
        ],
        "aliasMoves": alias_events(versions),
    }


def history_tables(doc: Mapping[str, Any]) -> str:
    versions = tabulate(
        [
            [
                v["version"],
                v["name"],
                _cell(v["phase"]),
                ", ".join(v["aliases"]) or MISSING,
                _cell(v["primaryMetric"]),
                _cell(v["trainingRun"]),
                _cell(v["created"]),
            ]
            for v in doc["versions"]
        ],
        headers=["VERSION", "NAME", "PHASE", "ALIASES", "METRIC", "RUN", "CREATED"],
        tablefmt="plain",
        disable_numparse=True,
    )
    moves = tabulate(
        [[e["time"], e["alias"], e["action"], e["name"], e["message"]] for e in doc["aliasMoves"]],
        headers=["TIME", "ALIAS", "ACTION", "VERSION", "MESSAGE"],
        tablefmt="plain",
        disable_numparse=True,
    )
    return f"{versions}\n\nAlias moves:\n{moves if doc['aliasMoves'] else '(none)'}"


# ---- aliases ------------------------------------------------------------------------------------------


def holder(versions: Sequence[Mapping[str, Any]], alias: str) -> dict[str, Any] | None:
    """The version whose status holds ``alias`` (at most one per model), or None."""
    return next((dict(v) for v in versions if alias in (status_of(v).get("aliases") or ())), None)


def rollback_target(versions: Sequence[Mapping[str, Any]], alias: str) -> tuple[dict[str, Any] | None, str]:
    """The version ``rollback`` returns ``alias`` to: the latest version other than the current holder that
    was ``Assigned`` the alias (from the versions' aliasHistory), and why — or (None, the reason there is
    none). A version that no longer exists, or is Failed, is skipped (it cannot hold the alias)."""
    current = holder(versions, alias)
    current_name = name_of(current) if current else None
    by_name = {name_of(v): v for v in versions}
    skipped = []
    for event in reversed(alias_events(versions, alias)):
        if event["action"] != "Assigned" or event["name"] == current_name:
            continue
        candidate = by_name.get(event["name"])
        if candidate is None or status_of(candidate).get("phase") == "Failed":
            skipped.append(event["name"])
            continue
        why = f"{event['name']} held {alias} before" + (f" {current_name}" if current_name else "")
        why += f" (assigned {event['time']})"
        return dict(candidate), why
    if skipped:
        return None, f"no earlier holder of {alias} can hold it again (failed: {', '.join(skipped)})"
    held = f"; {current_name} holds it now" if current_name else ""
    return None, f"no earlier holder of {alias} in the versions' aliasHistory{held}"


@dataclass(frozen=True)
class AliasOutcome:
    """What the operator made of a claim: ``held``, ``refused`` or ``pending`` (not decided yet)."""

    state: str
    message: str


def alias_outcome(obj: Mapping[str, Any], alias: str, generation: int) -> AliasOutcome:
    """The operator's answer to ``obj`` claiming ``alias`` in spec generation ``generation``."""
    st = status_of(obj)
    if int(st.get("observedGeneration") or 0) < generation:
        return AliasOutcome("pending", f"the operator has not observed generation {generation} yet")
    if alias in (st.get("aliases") or ()):
        return AliasOutcome("held", f"{name_of(obj)} holds {alias}")
    refused = condition(obj, COND_ALIAS_REFUSED)
    if refused.get("status") == "True":
        last: dict[str, Any] = next(
            (e for e in reversed(st.get("aliasHistory") or ()) if e.get("alias") == alias),
            {},
        )
        if last.get("action") == "Refused" or alias in (refused.get("message") or ""):
            return AliasOutcome("refused", str(last.get("message") or refused.get("message") or "refused"))
    if st.get("phase") == "Failed":
        return AliasOutcome("refused", f"{name_of(obj)} failed (phase Failed); a failed version holds no alias")
    superseded = condition(obj, "AliasSuperseded")
    if superseded.get("status") == "True" and alias in (superseded.get("message") or ""):
        return AliasOutcome("superseded", str(superseded.get("message")))
    return AliasOutcome("pending", f"{alias} not held yet (phase {st.get('phase') or 'Pending'})")


def with_alias(aliases: Sequence[str], alias: str) -> list[str]:
    return list(aliases) if alias in aliases else [*aliases, alias]


def without_alias(aliases: Sequence[str], alias: str) -> list[str]:
    return [a for a in aliases if a != alias]


def aliases_patch(obj: Mapping[str, Any], aliases: Sequence[str]) -> dict[str, Any]:
    """The merge patch a user would write (``kubectl patch --type=merge``), guarded by resourceVersion."""
    meta = obj.get("metadata") or {}
    return {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "spec": {"aliases": list(aliases)}}


# ---- why ----------------------------------------------------------------------------------------------


def _event_time(e: Mapping[str, Any]) -> str:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        if e.get(key):
            return str(e[key])
    return str((e.get("metadata") or {}).get("creationTimestamp") or "")


def explain_run(
    run: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    workload_message: str | None,
    log_tail: str | None,
) -> dict[str, Any]:
    """Everything ``why`` shows, as a document: a one-line verdict first."""
    st = status_of(run)
    phase = st.get("phase") or "Pending"
    failure = st.get("failure") or {}
    summary = condition(run, "Succeeded")
    if phase == "Failed":
        verdict = f"Failed: {failure.get('reason', summary.get('reason', ''))}: {failure.get('message', '')}"
    elif phase == "Succeeded":
        verdict = f"Succeeded: {st.get('primaryMetric') or ''} → {st.get('modelVersion') or 'not registered'}"
    else:
        verdict = f"{phase}: {summary.get('reason', '')}: {summary.get('message', '')}".rstrip(": ")
    gen = (run.get("metadata") or {}).get("generation")
    if gen is not None and int(st.get("observedGeneration") or 0) < int(gen):
        verdict += f" (the operator has not observed generation {gen} yet)"
    pod_rows = []
    for p in pods:
        pst = p.get("status") or {}
        waiting = ""
        for cs in pst.get("containerStatuses") or ():
            state = cs.get("state") or {}
            detail = state.get("waiting") or state.get("terminated") or {}
            if detail:
                waiting = f"{detail.get('reason', '')} {detail.get('message', '')}".strip()
                if "exitCode" in detail:
                    waiting += f" (exit {detail['exitCode']})"
        for c in pst.get("conditions") or ():
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                waiting = f"{c.get('reason', '')}: {c.get('message', '')}"
        pod_rows.append({"name": name_of(p), "phase": pst.get("phase"), "detail": waiting})
    return {
        "run": name_of(run),
        "phase": phase,
        "verdict": verdict,
        "failure": failure or None,
        "conditions": st.get("conditions") or [],
        "job": st.get("jobName"),
        "pods": pod_rows,
        "kueue": workload_message,
        "events": [
            {
                "time": _event_time(e),
                "type": e.get("type"),
                "reason": e.get("reason"),
                "object": f"{(e.get('involvedObject') or {}).get('kind', '')}/"
                f"{(e.get('involvedObject') or {}).get('name', '')}",
                "message": e.get("message") or e.get("note"),
            }
            for e in sorted(events, key=_event_time)
        ],
        "logTail": log_tail,
    }


def explain_text(doc: Mapping[str, Any]) -> str:
    out = [f"{doc['run']}: {doc['verdict']}"]
    if doc.get("kueue"):
        out.append(f"Kueue: {doc['kueue']}")
    if doc["conditions"]:
        out.append("\nConditions:")
        out.append(
            tabulate(
                [[c.get("type"), c.get("status"), c.get("reason"), c.get("message", "")] for c in doc["conditions"]],
                headers=["TYPE", "STATUS", "REASON", "MESSAGE"],
                tablefmt="plain",
            )
        )
    if doc["pods"]:
        out.append(f"\nPods of Job {doc['job']}:")
        out.append(
            tabulate(
                [[p["name"], _cell(p["phase"]), p["detail"]] for p in doc["pods"]],
                headers=["POD", "PHASE", "DETAIL"],
                tablefmt="plain",
            )
        )
    if doc["events"]:
        out.append("\nEvents:")
        out.append(
            tabulate(
                [
                    [e["time"], e["type"], e["reason"], e["object"], " ".join(str(e["message"] or "").split())]
                    for e in doc["events"]
                ],
                headers=["TIME", "TYPE", "REASON", "OBJECT", "MESSAGE"],
                tablefmt="plain",
            )
        )
    if doc.get("logTail"):
        out.append("\nLog tail:")
        out.append(str(doc["logTail"]).rstrip())
    return "\n".join(out)


def pod_order(pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Trainer pods in the order their logs are shown: completion index (Indexed Jobs), then start."""

    def key(p: Mapping[str, Any]) -> tuple[int, str, str]:
        ann = (p.get("metadata") or {}).get("annotations") or {}
        index = ann.get("batch.kubernetes.io/job-completion-index")
        return (
            int(index) if index is not None and str(index).isdigit() else 0,
            str((p.get("metadata") or {}).get("creationTimestamp") or ""),
            name_of(p),
        )

    return sorted((dict(p) for p in pods), key=key)
