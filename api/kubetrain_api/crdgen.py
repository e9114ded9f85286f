"""Generate the CustomResourceDefinitions in ``crds/`` from the pydantic models.

``python -m kubetrain_api.crdgen --out crds [--chart helm/kubetrain/crds]`` writes them;
``--check`` exits non-zero when the files on disk differ (CI's drift check).

pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no
``$ref``, no ``anyOf`` with ``null``, unknown-field preservation spelled out. This module inlines
references, unwraps optionals, keeps descriptions, bounds and enums, and adds the CEL rules, printer
columns and names that only a CRD has.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from . import models as m

_KEEP = {
    "type",
    "description",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "format",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict) and "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target.update(extra)
        return target
    return node


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    node = _resolve(node, defs)
    node = dict(node)
    if node.get("x-kubernetes-int-or-string"):
        ios: dict[str, Any] = {"x-kubernetes-int-or-string": True}
        for key in ("description", "pattern"):
            if key in node:
                ios[key] = node[key]
        return ios
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = [o for o in node.pop(key) if o.get("type") != "null"]
            if len(options) == 1:
                inner = _resolve(options[0], defs)
                merged = dict(inner)
                # The outer node's description/default win over the inner definition's.
                for k, v in node.items():
                    if k in ("description", "default", "title") or k not in merged:
                        merged[k] = v
                return structural(merged, defs)
            else:
                # A true union (e.g. list of values or a distribution): keep it open.
                desc = node.get("description")
                union: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
                if desc:
                    union["description"] = desc
                return union
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = _resolve(node.pop("allOf")[0], defs)
        inner = dict(inner)
        inner.update({k: v for k, v in node.items()})
        node = inner
    if node.get("default", "missing") is None:
        node.pop("default")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: dict[str, Any] = {}
    typ = node.get("type")
    if typ is None and not node.get("x-kubernetes-preserve-unknown-fields"):
        # Any: accept every JSON value.
        out["x-kubernetes-preserve-unknown-fields"] = True
    for key, value in node.items():
        if key in _KEEP:
            out[key] = value
    if "description" in out:
        out["description"] = " ".join(str(out["description"]).split())
    if typ == "object":
        props = node.get("properties")
        if props:
            out["properties"] = {name: structural(sub, defs) for name, sub in props.items()}
            required = [r for r in node.get("required", []) if r in props]
            if required:
                out["required"] = required
        addl = node.get("additionalProperties")
        if isinstance(addl, dict):
            sub = structural(addl, defs)
            out["additionalProperties"] = sub
        elif not props and (addl is True or addl is None):
            # A free-form map (estimator params, search space): any JSON value, checked by the models.
            out["additionalProperties"] = {"x-kubernetes-preserve-unknown-fields": True}
        untyped_values = out.get("additionalProperties") == {"x-kubernetes-preserve-unknown-fields": True}
        if "propertyNames" in node and not untyped_values:
            # (CEL cannot type maps of untyped values; the models check those keys.)
            pn = node["propertyNames"]
            if "maxLength" in pn:
                # Structural schemas cannot bound keys; CEL can.
                rule = f"self.all(k, k.size() <= {pn['maxLength']})"
                out.setdefault("x-kubernetes-validations", []).append(
                    {"rule": rule, "message": f"keys must be at most {pn['maxLength']} characters"}
                )
    elif typ == "array":
        items = node.get("items", {})
        out["items"] = structural(items, defs) if items else {"x-kubernetes-preserve-unknown-fields": True}
    return out


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return structural(raw, defs)


def _q(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _cel_map(mapping: dict[str, tuple[str, ...]]) -> str:
    return "{" + ", ".join(f"'{k}': {_q(v)}" for k, v in mapping.items()) + "}"


def _immutability_rule(fields: list[tuple[str, bool]]) -> str:
    parts = []
    for name, required in fields:
        if required:
            parts.append(f"self.{name} == oldSelf.{name}")
        else:
            parts.append(
                f"(has(self.{name}) == has(oldSelf.{name}) && (!has(self.{name}) || self.{name} == oldSelf.{name}))"
            )
    return " && ".join(parts)


# Spec fields that may change after a run was created; everything else is immutable (re-run = new run).
TRAININGRUN_MUTABLE = (
    "suspend",
    "ttlSecondsAfterFinished",
    "activeDeadlineSeconds",
    "nodeSelector",
    "tolerations",
    "affinity",
    "priorityClassName",
    "queueName",
    "register",
    "backoffLimit",
    "startupDeadlineSeconds",
)


def training_run_rules(spec_schema: dict[str, Any]) -> list[dict[str, str]]:
    metrics_by_estimator = {
        est: tuple(dict.fromkeys(metric for t in tasks for metric in m.TASK_METRICS[t]))
        for est, tasks in m.ESTIMATOR_TASKS.items()
    }
    by_task = _tasks_to_estimators()
    allowed = (
        f"(has(self.task) ? {_cel_map(m.TASK_METRICS)}[self.task] : "
        f"{_cel_map(metrics_by_estimator)}[self.estimator.name])"
    )
    rules = [
        {
            "rule": f"!has(self.task) || self.estimator.name in {_cel_map(by_task)}[self.task]",
            "message": "spec.estimator.name does not support spec.task (classification: "
            + ", ".join(by_task["classification"])
            + "; regression: "
            + ", ".join(by_task["regression"])
            + "; anomalyDetection: isolation_forest)",
            "fieldPath": ".estimator.name",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "has(self.dataset.target) || (has(self.task) ? self.task == 'anomalyDetection' : "
            "self.estimator.name == 'isolation_forest')",
            "message": "spec.dataset.target is required for classification and regression",
            "fieldPath": ".dataset.target",
            "reason": "FieldValueRequired",
        },
        {
            "rule": "!has(self.evaluation) || !has(self.evaluation.thresholds) || "
            f"self.evaluation.thresholds.all(t, t.metric in {allowed})",
            "message": "spec.evaluation.thresholds names a metric the task does not compute (classification: "
            + ", ".join(m.TASK_METRICS["classification"])
            + "; regression: "
            + ", ".join(m.TASK_METRICS["regression"])
            + "; anomalyDetection: "
            + ", ".join(m.TASK_METRICS["anomalyDetection"])
            + ")",
            "fieldPath": ".evaluation.thresholds",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!has(self.evaluation) || !has(self.evaluation.primaryMetric) || "
            f"self.evaluation.primaryMetric in {allowed}",
            "message": "spec.evaluation.primaryMetric is not computed for the task",
            "fieldPath": ".evaluation.primaryMetric",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": f"!has(self.search) || !has(self.search.scoring) || self.search.scoring in {allowed}",
            "message": "spec.search.scoring is not computed for the task",
            "fieldPath": ".search.scoring",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": f"!has(self.register) || !has(self.register.promote) || self.register.promote.metric in {allowed}",
            "message": "spec.register.promote.metric is not computed for the task (classification: "
            + ", ".join(m.TASK_METRICS["classification"])
            + "; regression: "
            + ", ".join(m.TASK_METRICS["regression"])
            + ")",
            "fieldPath": ".register.promote.metric",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!has(self.register) || !has(self.register.promote) || has(self.dataset.target)",
            "message": "spec.register.promote needs spec.dataset.target (labels to score both models)",
            "fieldPath": ".dataset.target",
            "reason": "FieldValueRequired",
        },
        {
            "rule": "(has(self.register) && has(self.register.promote)) == "
            "(has(oldSelf.register) && has(oldSelf.register.promote)) && "
            "(!has(self.register) || !has(self.register.promote) || self.register.promote == oldSelf.register.promote)",
            "message": "spec.register.promote is immutable (the trainer Job scored the champion for it)",
            "fieldPath": ".register.promote",
            "reason": "FieldValueForbidden",
        },
        {
            "rule": "!has(self.evaluation) || !has(self.evaluation.cvFolds) || self.evaluation.cvFolds != 1",
            "message": "spec.evaluation.cvFolds must be 0 (none) or between 2 and 20",
            "fieldPath": ".evaluation.cvFolds",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!has(self.dataset.target) || !has(self.dataset.exclude) || "
            "!(self.dataset.target in self.dataset.exclude)",
            "message": "spec.dataset.target must not be listed in spec.dataset.exclude",
            "fieldPath": ".dataset.exclude",
            "reason": "FieldValueInvalid",
        },
    ]
    immutable = [
        (name, name in spec_schema.get("required", []))
        for name in spec_schema["properties"]
        if name not in TRAININGRUN_MUTABLE
    ]
    rules.append(
        {
            "rule": _immutability_rule(immutable),
            "message": "spec is immutable after creation except "
            + ", ".join(TRAININGRUN_MUTABLE)
            + "; create a new TrainingRun to train again",
            "reason": "FieldValueForbidden",
        }
    )
    return rules


def _tasks_to_estimators() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {t: [] for t in m.TASK_METRICS}
    for est, tasks in m.ESTIMATOR_TASKS.items():
        for t in tasks:
            out[t].append(est)
    return {t: tuple(v) for t, v in out.items()}


QUANTITY_RULE = (
    "!has(self.requests) || !has(self.limits) || !has(self.requests.{r}) || !has(self.limits.{r}) || "
    "quantity(string(self.limits.{r})).compareTo(quantity(string(self.requests.{r}))) >= 0"
)


def _add_rules(schema: dict[str, Any], path: list[str], rules: list[dict[str, str]]) -> None:
    node = schema
    for part in path:
        node = node["properties"][part]
    node.setdefault("x-kubernetes-validations", []).extend(rules)


def training_run_spec_schema() -> dict[str, Any]:
    """The TrainingRun spec with every CEL rule (also the runTemplate.spec of a TrainingSchedule)."""
    spec = _schema_of(m.TrainingRunSpec)
    spec["x-kubernetes-validations"] = training_run_rules(spec)
    _add_rules(
        spec,
        ["resources"],
        [
            {
                "rule": QUANTITY_RULE.format(r=r),
                "message": f"spec.resources.limits.{r} must be at least spec.resources.requests.{r}",
                "fieldPath": f".limits.{r}",
                "reason": "FieldValueInvalid",
            }
            for r in ("cpu", "memory")
        ],
    )
    spec["properties"]["envFrom"]["items"]["x-kubernetes-validations"] = env_from_rules()
    _add_rules(spec, ["register"], register_rules())
    _add_rules(spec, ["register", "promote"], promote_rules())
    _add_rules(
        spec,
        ["evaluation"],
        [
            {
                "rule": "!has(self.thresholds) || self.thresholds.all(t, has(t.min) || has(t.max))",
                "message": "spec.evaluation.thresholds: each threshold needs min or max",
                "fieldPath": ".thresholds",
                "reason": "FieldValueRequired",
            }
        ],
    )
    return spec


def training_run_crd() -> dict[str, Any]:
    spec = training_run_spec_schema()
    status = _schema_of(m.TrainingRunStatus)
    return _crd(
        kind="TrainingRun",
        plural="trainingruns",
        short="tr",
        spec=spec,
        status=status,
        description=m.TrainingRun.__doc__ or "",
        name_rule=m.MAX_RUN_NAME,
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
            {"name": "Metric", "type": "string", "jsonPath": ".status.primaryMetric"},
            {"name": "Duration", "type": "string", "jsonPath": ".status.duration"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Start", "type": "date", "jsonPath": ".status.startTime", "priority": 1},
            {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
            {"name": "Reason", "type": "string", "jsonPath": ".status.failure.reason", "priority": 1},
            {"name": "Model-URI", "type": "string", "jsonPath": ".status.model.uri", "priority": 1},
        ],
    )


def register_rules() -> list[dict[str, Any]]:
    """CEL of spec.register: the promoted alias is not also claimed unconditionally; promotion registers."""
    return [
        {
            "rule": "!has(self.promote) || !has(self.aliases) || !(self.promote.alias in self.aliases)",
            "message": "spec.register.promote.alias must not also be listed in spec.register.aliases "
            "(which would claim it unconditionally)",
            "fieldPath": ".promote.alias",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!has(self.promote) || !has(self.enabled) || self.enabled",
            "message": "spec.register.promote needs spec.register.enabled (a promotion registers)",
            "fieldPath": ".enabled",
            "reason": "FieldValueInvalid",
        },
    ]


def promote_rules() -> list[dict[str, Any]]:
    """CEL of spec.register.promote: the metric must rank models."""
    return [
        {
            "rule": f"!(self.metric in {_q(m.UNRANKED_METRICS)})",
            "message": "spec.register.promote.metric: anomaly_rate does not rank models (choose a scored metric)",
            "fieldPath": ".metric",
            "reason": "FieldValueInvalid",
        }
    ]


def env_from_rules() -> list[dict[str, Any]]:
    """CEL of one spec.envFrom entry (TrainingRun and ModelVersion): exactly one of the two references."""
    return [
        {
            "rule": "has(self.secretRef) != has(self.configMapRef)",
            "message": "spec.envFrom entries need exactly one of secretRef or configMapRef",
            "reason": "FieldValueInvalid",
        }
    ]


def model_version_crd() -> dict[str, Any]:
    spec = _schema_of(m.ModelVersionSpec)
    status = _schema_of(m.ModelVersionStatus)
    spec["x-kubernetes-validations"] = [
        {
            "rule": "self.model == oldSelf.model && self.version == oldSelf.version "
            "&& self.artifact == oldSelf.artifact",
            "message": "spec.model, spec.version and spec.artifact are immutable; register a new version instead",
            "reason": "FieldValueForbidden",
        }
    ]
    spec["properties"]["envFrom"]["items"]["x-kubernetes-validations"] = env_from_rules()
    _add_rules(
        spec,
        ["aliases"],
        [
            {
                "rule": "self.all(a, self.exists_one(b, a == b))",
                "message": "spec.aliases must not repeat an alias",
            }
        ],
    )
    return _crd(
        kind="ModelVersion",
        plural="modelversions",
        short="mv",
        spec=spec,
        status=status,
        description=m.ModelVersion.__doc__ or "",
        name_rule=253,
        columns=[
            {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
            {"name": "Version", "type": "integer", "jsonPath": ".spec.version"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Aliases", "type": "string", "jsonPath": ".status.aliases"},
            {"name": "Metric", "type": "string", "jsonPath": ".status.primaryMetric"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Run", "type": "string", "jsonPath": ".spec.source.trainingRun.name", "priority": 1},
            {"name": "URI", "type": "string", "jsonPath": ".spec.artifact.uri", "priority": 1},
        ],
    )


def time_zones() -> list[str]:
    """The IANA zone names of the tz database the operator ships (the tzdata package), sorted."""
    import importlib.resources

    return sorted(importlib.resources.files("tzdata").joinpath("zones").read_text().split())


def training_schedule_rules() -> dict[str, list[dict[str, str]]]:
    """CEL of spec.schedule and spec.timeZone: the same patterns the model checks, the zone in the tz database."""
    shapes = " || ".join(f"self.matches('{p}')" for p in (m.CRON_PATTERN, m.MACRO_PATTERN, m.EVERY_PATTERN))
    return {
        "schedule": [
            {
                "rule": shapes.replace("\\", "\\\\"),
                "message": "spec.schedule must be a 5-field cron expression with values in range (minute hour "
                "day-of-month month day-of-week, e.g. '0 2 * * *'), one of "
                + ", ".join(m.SCHEDULE_MACROS)
                + ", or '@every <duration>' such as '@every 15m'",
                "reason": "FieldValueInvalid",
            },
            {
                "rule": f"!self.matches('{m.EVERY_TOO_SHORT_PATTERN}')".replace("\\", "\\\\"),
                "message": f"spec.schedule: @every must be at least {m.EVERY_MIN_SECONDS}s",
                "reason": "FieldValueInvalid",
            },
        ],
        "timeZone": [
            {
                "rule": f"self in {_q(time_zones())}",
                "message": "spec.timeZone must be a time zone of the IANA tz database, e.g. UTC or Europe/Berlin",
                "reason": "FieldValueInvalid",
            }
        ],
    }


def training_schedule_crd() -> dict[str, Any]:
    spec = _schema_of(m.TrainingScheduleSpec)
    status = _schema_of(m.TrainingScheduleStatus)
    for name, rules in training_schedule_rules().items():
        spec["properties"][name]["x-kubernetes-validations"] = rules
    template = spec["properties"]["runTemplate"]["properties"]
    run_spec = training_run_spec_schema()
    # The template is a TrainingRun spec at creation: every rule but the immutability one (oldSelf).
    rules = run_spec["x-kubernetes-validations"]
    run_spec["x-kubernetes-validations"] = [r for r in rules if "oldSelf" not in r["rule"]]
    run_spec["description"] = template["spec"].get("description", "")
    template["spec"] = run_spec
    return _crd(
        kind="TrainingSchedule",
        plural="trainingschedules",
        short="ts",
        spec=spec,
        status=status,
        description=m.TrainingSchedule.__doc__ or "",
        name_rule=m.MAX_SCHEDULE_NAME,
        columns=[
            {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
            {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
            {"name": "Last", "type": "date", "jsonPath": ".status.lastScheduleTime"},
            {"name": "Next", "type": "string", "jsonPath": ".status.nextScheduleTime"},
            {"name": "Last-Decision", "type": "string", "jsonPath": ".status.lastDecision.reason"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Active", "type": "string", "jsonPath": ".status.active", "priority": 1},
            {"name": "Missed", "type": "integer", "jsonPath": ".status.missed.count", "priority": 1},
            {"name": "Time-Zone", "type": "string", "jsonPath": ".spec.timeZone", "priority": 1},
        ],
    )


def _crd(
    *,
    kind: str,
    plural: str,
    short: str,
    spec: dict[str, Any],
    status: dict[str, Any],
    description: str,
    name_rule: int,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    spec["description"] = " ".join((spec.get("description") or "").split())
    status["description"] = " ".join((status.get("description") or "").split())
    root: dict[str, Any] = {
        "type": "object",
        "description": " ".join(description.split()),
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion of the object (kubetrain.io/v1alpha1).",
            },
            "kind": {"type": "string", "description": f"Kind of the object ({kind})."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if name_rule < 253:
        root["x-kubernetes-validations"] = [
            {
                "rule": f"self.metadata.name.size() <= {name_rule}",
                "message": f"metadata.name must be at most {name_rule} characters (child Job and pod names "
                "are derived from it)",
                "reason": "FieldValueInvalid",
            }
        ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{m.GROUP}",
            "labels": {"app.kubernetes.io/name": "kubetrain", "app.kubernetes.io/part-of": "kubetrain"},
        },
        "spec": {
            "group": m.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["kubetrain"],
            },
            "versions": [
                {
                    "name": m.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `make crds` (python -m kubetrain_api.crdgen) from api/kubetrain_api/models.py.\n"
    header += "# Do not edit by hand: a test fails when this file drifts from the models.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=120, allow_unicode=True)


def all_crds() -> dict[str, str]:
    return {
        "kubetrain.io_trainingruns.yaml": render(training_run_crd()),
        "kubetrain.io_modelversions.yaml": render(model_version_crd()),
        "kubetrain.io_trainingschedules.yaml": render(training_schedule_crd()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", action="append", default=[], help="directory to write (repeatable)")
    parser.add_argument("--chart", action="append", default=[], help="chart crds/ directory (repeatable)")
    parser.add_argument("--check", action="store_true", help="fail when files differ instead of writing")
    args = parser.parse_args(argv)
    targets = [Path(p) for p in args.out + args.chart] or [Path("crds")]
    drift = []
    for directory in targets:
        for name, text in all_crds().items():
            path = directory / name
            if args.check:
                if not path.exists() or path.read_text() != text:
                    drift.append(str(path))
            else:
                directory.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if drift:
        print("CRDs drifted from the models (run `make crds`): " + ", ".join(drift), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
