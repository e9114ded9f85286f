"""Invalid TrainingRun manifests shared by the model unit tests and the API-server tests.

Each case mutates the iris example and names the field that the error message must mention. ``server``
says whether the API server itself (CRD schema + CEL) refuses it; the rest are caught by the operator's
validation (the same pydantic models) and end the run as Failed/ConfigInvalid.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
_DELETE = object()


def load_example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.yaml"))


@dataclass(frozen=True)
class Case:
    id: str
    changes: dict[str, Any]
    field: str
    server: bool = True
    example: str = "iris-classification.yaml"  # the valid manifest the changes are made to

    def manifest(self, name: str | None = None) -> dict[str, Any]:
        obj = copy.deepcopy(load_example(self.example))
        if name:
            obj["metadata"]["name"] = name
        for path, value in self.changes.items():
            _set(obj, path, value)
        return obj


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = obj
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is _DELETE:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


D = _DELETE
INVALID: list[Case] = [
    Case("gpus-negative", {"spec.resources.gpus": -1}, "gpus"),
    Case("gpus-fractional", {"spec.resources.gpus": 0.5}, "gpus"),
    Case("gpus-too-many", {"spec.resources.gpus": 64}, "gpus"),
    Case("gpus-string", {"spec.resources.gpus": "two"}, "gpus"),
    Case("unknown-estimator", {"spec.estimator.name": "deep_magic"}, "estimator.name"),
    Case("estimator-task-mismatch", {"spec.estimator.name": "linear_regression"}, "estimator.name"),
    Case("isolation-forest-for-classification", {"spec.estimator.name": "isolation_forest"}, "estimator.name"),
    Case(
        "threshold-metric-not-computed",
        {"spec.evaluation.thresholds": [{"metric": "r2", "min": 0.5}]},
        "thresholds",
    ),
    Case("threshold-unknown-metric", {"spec.evaluation.thresholds": [{"metric": "vibes", "min": 1}]}, "metric"),
    Case("threshold-without-bound", {"spec.evaluation.thresholds": [{"metric": "accuracy"}]}, "thresholds"),
    Case("primary-metric-not-computed", {"spec.evaluation.primaryMetric": "rmse"}, "primaryMetric"),
    Case("empty-dataset-uri", {"spec.dataset.uri": ""}, "dataset.uri"),
    Case("relative-dataset-uri", {"spec.dataset.uri": "data/iris.csv"}, "dataset.uri"),
    Case("relative-file-uri", {"spec.dataset.uri": "file://data/iris.csv"}, "dataset.uri"),
    Case("dotdot-dataset-uri", {"spec.dataset.uri": "pvc://kubetrain-data/../secrets/x.csv"}, "dataset.uri"),
    Case("dotdot-output-uri", {"spec.output.uri": "pvc://kubetrain-models/../../etc"}, "output.uri"),
    Case("unsupported-scheme", {"spec.dataset.uri": "ftp://host/iris.csv"}, "dataset.uri"),
    Case("https-output", {"spec.output.uri": "https://example.com/models"}, "output.uri"),
    Case("unknown-format", {"spec.dataset.format": "xlsx"}, "format"),
    Case("missing-target-supervised", {"spec.dataset.target": D}, "target"),
    Case("missing-dataset", {"spec.dataset": D}, "dataset"),
    Case("missing-model", {"spec.model": D}, "model"),
    Case("model-name-uppercase", {"spec.model": "Iris_Model"}, "model"),
    Case("model-name-too-long", {"spec.model": "m" * 60}, "model"),
    Case("run-name-too-long", {"metadata.name": "r" * 60}, "name"),
    Case("unknown-spec-field", {"spec.epochs": 10}, "epochs"),
    Case("unknown-nested-field", {"spec.dataset.delimiter": ";"}, "delimiter"),
    Case("wrong-type-seed", {"spec.seed": "lucky"}, "seed"),
    Case("negative-backoff", {"spec.backoffLimit": -1}, "backoffLimit"),
    Case("test-fraction-too-large", {"spec.evaluation.testFraction": 0.9}, "testFraction"),
    Case("cv-folds-one", {"spec.evaluation.cvFolds": 1}, "cvFolds"),
    Case("limits-below-requests", {"spec.resources.limits.memory": "256Mi"}, "memory"),
    Case("bad-quantity", {"spec.resources.limits.cpu": "two cores"}, "cpu"),
    Case("image-with-shell", {"spec.image": "trainer:latest; rm -rf /"}, "image"),
    Case(
        "grid-with-distribution",
        {
            "spec.search": {
                "strategy": "grid",
                "space": {"C": {"distribution": "uniform", "low": 0, "high": 1}},
            }
        },
        "space",
        server=False,
    ),
    Case("search-empty-space", {"spec.search": {"strategy": "random", "space": {}}}, "space"),
    Case(
        "search-scoring-not-computed",
        {"spec.search": {"strategy": "grid", "space": {"max_depth": [2, 3]}, "scoring": "mae"}},
        "scoring",
    ),
    Case("bad-alias", {"spec.register.aliases": ["Production!"]}, "aliases"),
    Case("missing-max-missing-range", {"spec.dataset.validation.maxMissingFraction": 1.5}, "maxMissingFraction"),
    Case("target-excluded", {"spec.dataset.exclude": ["species"]}, "exclude"),
    Case(
        "env-from-both-refs",
        {"spec.envFrom": [{"secretRef": {"name": "s3"}, "configMapRef": {"name": "s3"}}]},
        "envFrom",
    ),
    Case("env-from-bad-name", {"spec.envFrom": [{"secretRef": {"name": "S3 Creds"}}]}, "envFrom"),
    Case("bad-service-account", {"spec.serviceAccountName": "Trainer_SA"}, "serviceAccountName"),
    Case("tracking-uri-scheme", {"spec.tracking": {"mlflow": {"trackingUri": "ftp://mlflow:5000"}}}, "trackingUri"),
    Case(
        "tracking-uri-credentials",
        {"spec.tracking": {"mlflow": {"trackingUri": "https://user:secret@mlflow.example.com"}}},
        "trackingUri",
    ),
    Case("tracking-uri-space", {"spec.tracking": {"mlflow": {"trackingUri": "http://ml flow:5000"}}}, "trackingUri"),
    Case("tracking-empty-experiment", {"spec.tracking": {"mlflow": {"experiment": ""}}}, "experiment"),
    Case("tracking-experiment-newline", {"spec.tracking": {"mlflow": {"experiment": "a\nb"}}}, "experiment"),
    Case("tracking-required-string", {"spec.tracking": {"mlflow": {"required": "yes"}}}, "required"),
    Case("tracking-unknown-field", {"spec.tracking": {"mlflow": {"token": "s3cr3t"}}}, "token"),
    Case("tracking-unknown-backend", {"spec.tracking": {"wandb": {}}}, "wandb"),
    Case("bad-pvc-claim", {"spec.dataset.uri": "pvc://Bad_Claim/iris.csv"}, "dataset.uri", server=False),
    Case(
        "param-object-value",
        {"spec.estimator.params": {"n_estimators": {"import": "os"}}},
        "params",
        server=False,
    ),
    # spec.register.promote (champion/challenger)
    Case("promote-unknown-metric", {"spec.register.promote": {"alias": "production", "metric": "auc"}}, "metric"),
    Case(
        "promote-metric-of-the-other-task",
        {"spec.register.promote": {"alias": "production", "metric": "r2"}},
        "spec.register.promote.metric",
    ),
    Case(
        "promote-unranked-metric",
        {"spec.register.promote": {"alias": "production", "metric": "anomaly_rate"}},
        "spec.register.promote.metric",
    ),
    Case(
        "promote-negative-min-improvement",
        {"spec.register.promote": {"alias": "production", "metric": "f1", "minImprovement": -0.01}},
        "minImprovement",
    ),
    Case(
        "promote-alias-also-claimed",
        {"spec.register.promote": {"alias": "candidate", "metric": "f1"}},
        "spec.register.promote.alias",
    ),
    Case(
        "promote-bad-alias",
        {"spec.register.promote": {"alias": "Production", "metric": "f1"}},
        "alias",
    ),
    Case(
        "promote-without-registration",
        {"spec.register.enabled": False, "spec.register.promote": {"alias": "production", "metric": "f1"}},
        "spec.register.enabled",
    ),
    Case(
        "promote-without-labels",
        {"spec.register.promote": {"alias": "production", "metric": "f1"}},
        "spec.dataset.target",
        example="log-anomaly.yaml",
    ),
]

# ModelVersion: the hand-registered example made wrong one field at a time.
MV = "modelversion-manual.yaml"
INVALID += [
    Case("mv-version-zero", {"spec.version": 0}, "version", example=MV),
    Case("mv-short-sha256", {"spec.artifact.sha256": "abc123"}, "sha256", example=MV),
    Case("mv-artifact-https", {"spec.artifact.uri": "https://example.com/model.joblib"}, "artifact.uri", example=MV),
    Case("mv-artifact-dotdot", {"spec.artifact.uri": "pvc://kubetrain-models/../etc/model.joblib"}, "uri", example=MV),
    Case("mv-repeated-alias", {"spec.aliases": ["candidate", "candidate"]}, "aliases", example=MV),
    Case("mv-unknown-deletion-policy", {"spec.deletionPolicy": "Shred"}, "deletionPolicy", example=MV),
    Case(
        "mv-env-from-both-refs",
        {"spec.envFrom": [{"secretRef": {"name": "s3"}, "configMapRef": {"name": "s3"}}]},
        "envFrom",
        example=MV,
    ),
    Case("mv-env-from-no-ref", {"spec.envFrom": [{}]}, "envFrom", example=MV),
    Case("mv-bad-service-account", {"spec.serviceAccountName": "Reader_SA"}, "serviceAccountName", example=MV),
]
