"""Typed views of kubetrain's custom resources (group ``kubetrain.io``, version ``v1alpha1``).

These pydantic models are the single source of truth of the API: ``kubetrain_api.crdgen`` turns them
into the CRDs in ``crds/`` (structural schema, CEL rules, printer columns) and a test fails when the two
drift. The operator and the trainer parse every object through them, so a spec that the API server
accepts parses here too, and the rules the CRD cannot express (CEL has a cost budget) are checked in
``validate_training_run_spec`` with the same field paths in the message.

YAML uses camelCase; Python uses snake_case (``populate_by_name``). Unknown fields are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "kubetrain.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Name budgets. Child Job names are "<run>-<attempt hash>", pods add 6 more characters, and the
# "batch.kubernetes.io/job-name" label value must stay within 63 characters.
MAX_RUN_NAME = 52
MAX_MODEL_NAME = 50
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: Object names such as Secrets, ServiceAccounts and PriorityClasses (RFC 1123 subdomain).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ALIAS_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
# The digest of an image as the kubelet reports it in a pod's imageID.
IMAGE_DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
# An OCI reference: registry/path:tag or @sha256:digest, no whitespace or shell metacharacters.
IMAGE_PATTERN = r"^[a-z0-9]+([._:/-][a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
SHA256_PATTERN = r"^[a-f0-9]{64}$"
URI_PATTERN = r"^(pvc|file|s3|https)://[^\s]+$"
# CEL twins of _check_uri, so the API server refuses the same URIs the models do.
URI_RULES: list[Any] = [
    {"rule": "!self.matches('/[.][.]?(/|$)')", "message": "must not contain '.' or '..' path segments"},
    {
        "rule": "!self.startsWith('file://') || self.startsWith('file:///')",
        "message": "file:// URIs need an absolute path",
    },
]
OUTPUT_URI_PATTERN = r"^(pvc|file|s3)://[^\s]+$"

Task = Literal["classification", "regression", "anomalyDetection"]
DataFormat = Literal["csv", "parquet", "json", "jsonl"]
ColumnType = Literal["numeric", "categorical", "datetime", "text", "ignore"]
EstimatorName = Literal[
    "logistic_regression",
    "linear_regression",
    "ridge",
    "random_forest",
    "extra_trees",
    "hist_gradient_boosting",
    "knn",
    "isolation_forest",
    "xgboost",
]
MetricName = Literal[
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "log_loss",
    "r2",
    "rmse",
    "mae",
    "anomaly_rate",
]

# Which estimators serve which task, and which metrics a task computes. CEL rules in the CRD and the
# operator's validation both come from these tables.
ESTIMATOR_TASKS: dict[str, tuple[str, ...]] = {
    "logistic_regression": ("classification",),
    "linear_regression": ("regression",),
    "ridge": ("regression",),
    "random_forest": ("classification", "regression"),
    "extra_trees": ("classification", "regression"),
    "hist_gradient_boosting": ("classification", "regression"),
    "knn": ("classification", "regression"),
    "isolation_forest": ("anomalyDetection",),
    "xgboost": ("classification", "regression"),
}
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"),
    "regression": ("r2", "rmse", "mae"),
    "anomalyDetection": ("anomaly_rate", "precision", "recall", "f1"),
}
# The metric shown in `kubectl get tr` when the spec names none.
DEFAULT_PRIMARY_METRIC = {
    "classification": "accuracy",
    "regression": "r2",
    "anomalyDetection": "anomaly_rate",
}
MAX_GPUS = 16
#: Metrics where a smaller value is the better model (losses and errors); every other metric a promotion can
#: compare is better when larger. anomaly_rate ranks no model above another, so nothing is promoted by it.
LOWER_IS_BETTER: tuple[str, ...] = ("rmse", "mae", "log_loss")
UNRANKED_METRICS: tuple[str, ...] = ("anomaly_rate",)


def improvement(metric: str, challenger: float, champion: float) -> float:
    """How much better ``challenger`` is than ``champion`` on ``metric``, in the metric's own units: positive
    when the challenger is better (larger, or smaller for the LOWER_IS_BETTER metrics)."""
    return champion - challenger if metric in LOWER_IS_BETTER else challenger - champion


def primary_metric(metrics: Mapping[str, Any] | None, task: str | None, preferred: str | None = None) -> str | None:
    """``name=value`` of the headline metric (printer columns of runs and versions): ``preferred`` when
    computed, else the task's default, else the first of accuracy, r2, anomaly_rate, else the first by name."""
    numbers = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}
    if not numbers:
        return None
    candidates = [preferred, DEFAULT_PRIMARY_METRIC.get(task or ""), *DEFAULT_PRIMARY_METRIC.values(), *sorted(numbers)]
    name = next(n for n in candidates if n in numbers)
    return f"{name}={numbers[name]:.4g}"


TrainingRunPhase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended"]
ModelVersionPhase = Literal["Pending", "Verifying", "Ready", "Failed"]


class _Model(BaseModel):
    """Base: camelCase aliases, unknown fields refused, attribute docstrings become descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=False,
    )

    def dump(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase, no unset optionals."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _check_uri(value: str, field: str, allowed: tuple[str, ...]) -> str:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in allowed:
        raise ValueError(f"{field} must start with one of {', '.join(s + '://' for s in allowed)}; got {value!r}")
    if not rest or (rest.startswith("/") and scheme != "file"):
        raise ValueError(f"{field} {value!r} has an empty or malformed location")
    if scheme == "file" and not rest.startswith("/"):
        raise ValueError(f"{field} {value!r}: file:// URIs need an absolute path (file:///data/x.csv)")
    segments = rest.split("/")
    if ".." in segments or "." in segments:
        raise ValueError(f"{field} {value!r} must not contain '.' or '..' path segments")
    if any(ord(c) < 32 for c in value):
        raise ValueError(f"{field} contains control characters")
    if scheme == "pvc":
        claim = segments[0]
        if not re.match(DNS_LABEL, claim) or len(claim) > 63:
            raise ValueError(f"{field} {value!r}: {claim!r} is not a valid PersistentVolumeClaim name")
    if scheme == "s3" and not segments[0]:
        raise ValueError(f"{field} {value!r} names no bucket")
    return value


# --------------------------------------------------------------------------------------------------
# TrainingRun spec
# --------------------------------------------------------------------------------------------------


class DataValidation(_Model):
    """Rules the trainer checks on the data before it trains; each failure is DataInvalid."""

    required_columns: Annotated[list[Annotated[str, Field(min_length=1, max_length=253)]], Field(max_length=256)] = (
        Field(default_factory=list)
    )
    """Columns that must be present in the dataset."""
    min_rows: int = Field(default=10, ge=1, le=1_000_000_000)
    """Fewest rows (after dropping rows without a target) the run accepts."""
    max_missing_fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    """Largest fraction of missing values allowed in any used column (0..1)."""


class DatasetSpec(_Model):
    """Where the training data is and how to read it."""

    uri: str = Field(
        min_length=7,
        max_length=2048,
        pattern=URI_PATTERN,
        json_schema_extra={"x-kubernetes-validations": URI_RULES},
    )
    """Location of the data: pvc://claim/path, file:///abs/path (inside the image), s3://bucket/key or
    https://host/path. No '.' or '..' segments."""
    format: DataFormat | None = None
    """csv, parquet, json or jsonl; inferred from the URI's extension when omitted."""
    records_path: str | None = Field(default=None, min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.-]+$")
    """For a JSON document: the (dotted) key of the list that holds the records, e.g. 'logs'."""
    target: str | None = Field(default=None, min_length=1, max_length=253)
    """Column to predict. Required for classification and regression; optional labels for anomaly
    detection."""
    features: Annotated[list[Annotated[str, Field(min_length=1, max_length=253)]], Field(max_length=1024)] | None = None
    """Feature columns; default: every column except the target and the excluded ones."""
    exclude: Annotated[list[Annotated[str, Field(min_length=1, max_length=253)]], Field(max_length=1024)] = Field(
        default_factory=list
    )
    """Columns never used as features (identifiers, leaks)."""
    column_types: dict[Annotated[str, Field(max_length=253)], ColumnType] = Field(default_factory=dict, max_length=1024)
    """Overrides of inferred column types (numeric, categorical, datetime, text, ignore)."""
    validation: DataValidation = Field(default_factory=DataValidation)
    """Data validation rules."""

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return _check_uri(v, "spec.dataset.uri", ("pvc", "file", "s3", "https"))

    @model_validator(mode="after")
    def _target_not_excluded(self) -> DatasetSpec:
        if self.target and self.target in self.exclude:
            raise ValueError(f"spec.dataset.target {self.target!r} is also listed in spec.dataset.exclude")
        if self.target and self.features and self.target in self.features:
            raise ValueError(f"spec.dataset.target {self.target!r} is also listed in spec.dataset.features")
        return self


class EstimatorSpec(_Model):
    """The scikit-learn estimator, by catalogue name, with its parameters."""

    name: EstimatorName
    """Catalogue name: logistic_regression, linear_regression, ridge, random_forest, extra_trees,
    hist_gradient_boosting, knn, isolation_forest, xgboost (when installed in the image)."""
    params: dict[Annotated[str, Field(max_length=64, pattern=r"^[a-z_][a-z0-9_]*$")], Any] = Field(
        default_factory=dict, max_length=64
    )
    """Estimator parameters (JSON scalars or lists), checked against the estimator's signature."""

    @field_validator("params")
    @classmethod
    def _json_values(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, val in v.items():
            if isinstance(val, dict):
                raise ValueError(f"spec.estimator.params.{key}: values must be scalars or lists, not objects")
            if isinstance(val, list) and any(isinstance(x, dict | list) for x in val):
                raise ValueError(f"spec.estimator.params.{key}: lists must hold scalars")
        return v


class Distribution(_Model):
    """A random-search distribution for one parameter."""

    distribution: Literal["uniform", "loguniform", "randint"]
    """uniform, loguniform (both floats) or randint (integers, high exclusive)."""
    low: float
    """Lower bound."""
    high: float
    """Upper bound."""

    @model_validator(mode="after")
    def _bounds(self) -> Distribution:
        if self.high <= self.low:
            raise ValueError("high must be greater than low")
        if self.distribution == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


class SearchSpec(_Model):
    """Hyperparameter search over the estimator's parameters."""

    strategy: Literal["grid", "random"] = "grid"
    """grid tries every combination; random samples `trials` combinations."""
    space: dict[Annotated[str, Field(max_length=64, pattern=r"^[a-z_][a-z0-9_]*$")], Any] = Field(
        min_length=1, max_length=32
    )
    """Parameter name → list of candidate values, or (random only) a distribution
    {distribution: uniform|loguniform|randint, low, high}."""
    trials: int = Field(default=10, ge=1, le=1000)
    """Number of sampled combinations (random search)."""
    cv: int = Field(default=3, ge=2, le=20)
    """Cross-validation folds used to score each candidate."""
    scoring: MetricName | None = None
    """Metric that ranks candidates; default: the primary metric of the task."""
    parallelism: int = Field(default=1, ge=1, le=32)
    """Pods that share the candidates (an Indexed Job); 1 = one pod."""

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, val in v.items():
            if isinstance(val, list):
                if not val:
                    raise ValueError(f"spec.search.space.{key} must list at least one value")
                if len(val) > 100:
                    raise ValueError(f"spec.search.space.{key} lists more than 100 values")
                if any(isinstance(x, dict | list) for x in val):
                    raise ValueError(f"spec.search.space.{key}: candidate values must be scalars")
                out[key] = val
            elif isinstance(val, dict):
                try:
                    out[key] = Distribution.model_validate(val).dump()
                except ValueError as exc:
                    raise ValueError(f"spec.search.space.{key}: {exc}") from None
            elif isinstance(val, Distribution):
                out[key] = val.dump()
            else:
                raise ValueError(f"spec.search.space.{key} must be a list of values or a distribution")
        return out

    @model_validator(mode="after")
    def _grid_has_no_distributions(self) -> SearchSpec:
        if self.strategy == "grid":
            for key, val in self.space.items():
                if isinstance(val, dict):
                    raise ValueError(f"spec.search.space.{key}: grid search needs a list of values")
        return self


class Threshold(_Model):
    """A gate on one evaluation metric: the run fails with BelowThreshold when it is not met."""

    metric: MetricName
    """Metric name; must be one the task computes."""
    min: float | None = None
    """Smallest acceptable value (inclusive)."""
    max: float | None = None
    """Largest acceptable value (inclusive)."""

    @model_validator(mode="after")
    def _has_bound(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError(f"threshold on {self.metric} needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"threshold on {self.metric}: min is greater than max")
        return self


class EvaluationSpec(_Model):
    """How the model is evaluated, and the thresholds that gate registration."""

    test_fraction: float = Field(default=0.2, ge=0.05, le=0.5)
    """Fraction of rows held out for the test split (0.05..0.5)."""
    cv_folds: int = Field(default=0, ge=0, le=20)
    """Cross-validation folds on the training split for cv scores; 0 = none, else 2..20."""
    metrics: Annotated[list[MetricName], Field(max_length=16)] = Field(default_factory=list)
    """Extra metrics to compute; the task's defaults are always computed."""
    primary_metric: MetricName | None = None
    """Headline metric shown by `kubectl get tr`; default per task (accuracy, r2, anomaly_rate)."""
    thresholds: Annotated[list[Threshold], Field(max_length=16)] = Field(default_factory=list)
    """Gates: every threshold must hold for the run to succeed and be registered."""

    @field_validator("cv_folds")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v == 1:
            raise ValueError("spec.evaluation.cvFolds must be 0 (none) or between 2 and 20")
        return v


class OutputSpec(_Model):
    """Where the model artifacts are written."""

    uri: str = Field(
        min_length=7,
        max_length=2048,
        pattern=OUTPUT_URI_PATTERN,
        json_schema_extra={"x-kubernetes-validations": URI_RULES},
    )
    """Base location (pvc://claim/path, file:///abs/path or s3://bucket/prefix); the run writes to
    <uri>/<run name>/."""

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return _check_uri(v, "spec.output.uri", ("pvc", "file", "s3"))


Quantity = Annotated[
    str | int,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]


class ResourceList(_Model):
    """CPU and memory quantities."""

    cpu: Quantity | None = None
    """CPU quantity, e.g. 500m or 2."""
    memory: Quantity | None = None
    """Memory quantity, e.g. 512Mi or 4Gi."""

    @field_validator("cpu", "memory")
    @classmethod
    def _qty(cls, v: str | int | None) -> str | int | None:
        if v is None:
            return v
        if isinstance(v, bool):
            raise ValueError("must be a quantity such as 500m or 2Gi")
        if isinstance(v, int):
            if v <= 0:
                raise ValueError("must be positive")
            return v
        if not re.match(QUANTITY_PATTERN, v):
            raise ValueError(f"{v!r} is not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 4Gi)")
        if parse_quantity(v) <= 0:
            raise ValueError(f"{v!r} must be positive")
        return v


class ResourcesSpec(_Model):
    """Compute resources of the trainer container."""

    requests: ResourceList | None = None
    """Requested CPU and memory (scheduling)."""
    limits: ResourceList | None = None
    """CPU and memory limits (memory over the limit ends in OOMKilled)."""
    gpus: int = Field(default=0, ge=0, le=MAX_GPUS)
    """Whole NVIDIA GPUs, set as the nvidia.com/gpu limit; the GPU toleration is added for you."""

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> ResourcesSpec:
        if self.requests and self.limits:
            for res in ("cpu", "memory"):
                req, lim = getattr(self.requests, res), getattr(self.limits, res)
                if req is not None and lim is not None and parse_quantity(lim) < parse_quantity(req):
                    raise ValueError(
                        f"spec.resources.limits.{res} ({lim}) is below spec.resources.requests.{res} ({req})"
                    )
        return self


class Toleration(_Model):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=316)
    """Taint key; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (default Equal)."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value for Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """For NoExecute: how long the pod stays bound after the taint appears."""


class LocalObjectRef(_Model):
    """A Secret or ConfigMap in the run's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Object name."""


class EnvFromSource(_Model):
    """A Secret or a ConfigMap whose keys become environment variables of the trainer (exactly one)."""

    secret_ref: LocalObjectRef | None = None
    """Secret whose keys become variables (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)."""
    config_map_ref: LocalObjectRef | None = None
    """ConfigMap whose keys become variables (e.g. AWS_ENDPOINT_URL for MinIO, AWS_DEFAULT_REGION)."""

    @model_validator(mode="after")
    def _one(self) -> EnvFromSource:
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError("spec.envFrom entries need exactly one of secretRef or configMapRef")
        return self


class PromoteSpec(_Model):
    """Champion/challenger promotion: the new version (the challenger) takes ``alias`` only when it beats the
    version holding it (the champion) on ``metric``, both scored by the trainer on this run's hold-out split."""

    alias: str = Field(min_length=1, max_length=63, pattern=ALIAS_PATTERN)
    """The alias to promote to, e.g. production."""
    metric: MetricName
    """Metric both models are scored on; one the run's task computes. Higher is better, except for rmse, mae
    and log_loss (lower is better); anomaly_rate ranks nothing and is refused."""
    min_improvement: float = Field(default=0.0, ge=0.0, le=1e9)
    """How much better (in the metric's units) the challenger must score than the champion; a tie never
    promotes. 0 = any strict improvement."""

    @field_validator("metric")
    @classmethod
    def _ranked(cls, v: str) -> str:
        if v in UNRANKED_METRICS:
            raise ValueError(f"spec.register.promote.metric: {v} does not rank models (choose a scored metric)")
        return v


class RegisterSpec(_Model):
    """How a successful run is registered as a ModelVersion."""

    enabled: bool = True
    """Create a ModelVersion when the run succeeds."""
    aliases: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=63, pattern=ALIAS_PATTERN)]], Field(max_length=16)
    ] = Field(default_factory=list)
    """Aliases the new ModelVersion asks for (e.g. candidate)."""
    promote: PromoteSpec | None = None
    """Move an alias to the new version only when it beats the version holding it (champion/challenger)."""

    @model_validator(mode="after")
    def _promote_alias_is_not_claimed(self) -> RegisterSpec:
        if self.promote is not None:
            if not self.enabled:
                raise ValueError("spec.register.promote needs spec.register.enabled (a promotion registers)")
            if self.promote.alias in self.aliases:
                raise ValueError(
                    f"spec.register.promote.alias {self.promote.alias!r} is also listed in spec.register.aliases "
                    "(which would claim it unconditionally)"
                )
        return self


# MLflow tracking: an http(s) server, no user:password@ in the URI (credentials come through spec.envFrom).
MLFLOW_URI_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
MLFLOW_EXPERIMENT_PATTERN = r"^[^\x00-\x1f\x7f]+$"


class MlflowTracking(_Model):
    """An MLflow tracking server the trainer logs the run to. Credentials (MLFLOW_TRACKING_TOKEN, or
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD) come through spec.envFrom, never here."""

    tracking_uri: str | None = Field(default=None, min_length=8, max_length=2048, pattern=MLFLOW_URI_PATTERN)
    """http:// or https:// address of the MLflow server, without credentials; default: the operator's
    (KUBETRAIN_MLFLOW_TRACKING_URI)."""
    experiment: str | None = Field(default=None, min_length=1, max_length=256, pattern=MLFLOW_EXPERIMENT_PATTERN)
    """MLflow experiment (created when missing); default: the operator's, else spec.model."""
    required: bool | None = Field(default=None, strict=True)
    """Fail the run (TrackingFailed) when MLflow cannot be reached or refuses the run; default false (the
    run succeeds with the Tracked condition False and the reason)."""


class TrackingSpec(_Model):
    """Experiment tracking of the run."""

    mlflow: MlflowTracking | None = None
    """Log params, metrics, tags, the dataset and a link to the model to an MLflow tracking server."""


class TrainingRunSpec(_Model):
    """Desired state of a TrainingRun: what to train, on which data, with which resources."""

    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME, pattern=DNS_LABEL)
    """Registered model name (a DNS label); successful runs become its ModelVersions."""
    dataset: DatasetSpec
    """Training data."""
    task: Task | None = None
    """classification, regression or anomalyDetection; inferred from the data when omitted."""
    estimator: EstimatorSpec
    """Estimator from the catalogue, with parameters."""
    search: SearchSpec | None = None
    """Optional hyperparameter search."""
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Evaluation and thresholds."""
    output: OutputSpec | None = None
    """Where artifacts go; default: the operator's configured output location."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """CPU, memory and GPUs of the trainer."""
    node_selector: dict[Annotated[str, Field(max_length=316)], Annotated[str, Field(max_length=63)]] | None = Field(
        default=None, max_length=32
    )
    """Node labels the trainer pod must match."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    """Tolerations of the trainer pod."""
    affinity: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Pod affinity (core/v1 Affinity), passed through."""
    priority_class_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    """PriorityClass of the trainer pod."""
    queue_name: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
    """Kueue LocalQueue; the Job is created suspended with kueue.x-k8s.io/queue-name for Kueue to admit."""
    image: str | None = Field(default=None, max_length=512, pattern=IMAGE_PATTERN)
    """Trainer image override; custom images must follow the trainer contract."""
    env_from: Annotated[list[EnvFromSource], Field(max_length=8)] | None = None
    """Secrets/ConfigMaps whose keys become the trainer's environment, e.g. S3 credentials and endpoint.
    The operator's own KUBETRAIN_* variables always take precedence."""
    service_account_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    """ServiceAccount of the trainer pod (e.g. for IRSA or workload identity); its token is mounted only when
    this is set."""
    backoff_limit: int = Field(default=2, ge=0, le=10)
    """Retries of a crashed trainer pod (data, config and threshold failures never retry)."""
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    """Wall-clock limit of the Job; exceeded → Failed with DeadlineExceeded."""
    startup_deadline_seconds: int = Field(default=600, ge=10, le=24 * 3600)
    """How long a pod may stay unscheduled or fail to start (image pull) before the run fails."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=30 * 24 * 3600)
    """Delete the child Job (never the TrainingRun) this long after the run finishes."""
    suspend: bool = False
    """Suspend the run (its pods are deleted); set back to false to resume."""
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    """Random seed for splits, estimators and search."""
    registration: RegisterSpec = Field(default_factory=RegisterSpec, alias="register")
    """Registration as a ModelVersion."""
    tracking: TrackingSpec | None = None
    """Experiment tracking (MLflow); default: the operator's (KUBETRAIN_MLFLOW_TRACKING_URI)."""

    @model_validator(mode="after")
    def _cross_field(self) -> TrainingRunSpec:
        errors = cross_field_errors(self)
        if errors:
            raise ValueError("; ".join(errors))
        return self


def cross_field_errors(spec: TrainingRunSpec) -> list[str]:
    """Rules that span fields. The CRD carries the same rules as CEL where the cost budget allows."""
    errors: list[str] = []
    task = spec.task
    est_tasks = ESTIMATOR_TASKS[spec.estimator.name]
    if task is not None and task not in est_tasks:
        errors.append(
            f"spec.estimator.name: {spec.estimator.name} does not support task {task} (supports {', '.join(est_tasks)})"
        )
    if task in ("classification", "regression") and not spec.dataset.target:
        errors.append(f"spec.dataset.target is required for task {task}")
    if task is None and not spec.dataset.target and "anomalyDetection" not in est_tasks:
        errors.append(f"spec.dataset.target is required for estimator {spec.estimator.name}")
    possible_tasks = (task,) if task else est_tasks
    computable = {m for t in possible_tasks for m in TASK_METRICS[t]}
    for i, th in enumerate(spec.evaluation.thresholds):
        if th.metric not in computable:
            errors.append(
                f"spec.evaluation.thresholds[{i}].metric: {th.metric} is not computed for "
                f"{'/'.join(possible_tasks)} (choose from {', '.join(sorted(computable))})"
            )
    named = [("spec.evaluation.primaryMetric", spec.evaluation.primary_metric)]
    named += [("spec.search.scoring", spec.search.scoring if spec.search else None)]
    named += [(f"spec.evaluation.metrics[{i}]", metric) for i, metric in enumerate(spec.evaluation.metrics)]
    for path, metric in named:
        if metric and metric not in computable:
            errors.append(f"{path}: {metric} is not computed for {'/'.join(possible_tasks)}")
    promote = spec.registration.promote
    if promote is not None:
        if promote.metric not in computable:
            errors.append(
                f"spec.register.promote.metric: {promote.metric} is not computed for {'/'.join(possible_tasks)} "
                f"(choose from {', '.join(sorted(computable - set(UNRANKED_METRICS)))})"
            )
        if not spec.dataset.target:
            errors.append("spec.register.promote needs spec.dataset.target (labels to score both models)")
    if spec.search and spec.search.strategy == "grid" and spec.search.parallelism > 1:
        size = 1
        for values in spec.search.space.values():
            size *= len(values) if isinstance(values, list) else 1
        if spec.search.parallelism > size:
            errors.append(f"spec.search.parallelism ({spec.search.parallelism}) exceeds the grid's {size} candidates")
    return errors


# --------------------------------------------------------------------------------------------------
# Shared status pieces
# --------------------------------------------------------------------------------------------------


class Condition(_Model):
    """A metav1.Condition."""

    type: str = Field(max_length=316)
    """Condition type, e.g. Succeeded, JobCreated, Ready."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str = Field(max_length=1024)
    """CamelCase reason."""
    message: str = Field(default="", max_length=32768)
    """Human-readable detail."""
    last_transition_time: str
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The spec generation the condition was computed from."""


MetricMap = dict[Annotated[str, Field(max_length=64)], float]


class ModelRef(_Model):
    """A model artifact."""

    uri: str = Field(max_length=2048)
    """Where the model file is (…/model.joblib)."""
    sha256: str = Field(pattern=SHA256_PATTERN)
    """sha256 of the model file."""
    size: int | None = Field(default=None, ge=0)
    """Size in bytes."""
    format: Literal["joblib", "skops"] = "joblib"
    """Serialisation format."""


class Failure(_Model):
    """Why a run failed."""

    reason: str = Field(max_length=128)
    """CamelCase reason: DataInvalid, ConfigInvalid, BelowThreshold, BackoffLimitExceeded,
    DeadlineExceeded, Unschedulable, ImagePullFailed, StartupDeadlineExceeded, OOMKilled, JobDeleted, ..."""
    message: str = Field(default="", max_length=8192)
    """What went wrong, naming the field, column or rule."""
    exit_code: int | None = None
    """Exit code of the last trainer container, when it ran."""
    log_tail: str | None = Field(default=None, max_length=4096)
    """Last lines of the trainer's output, when it crashed."""


class Disruption(_Model):
    """A trainer pod the run lost to something other than the trainer (its node died), replaced by the Job
    without counting against backoffLimit."""

    pod: str = Field(max_length=253)
    """The lost pod."""
    node: str = Field(default="", max_length=253)
    """The node it ran on."""
    reason: str = Field(max_length=128)
    """CamelCase reason, e.g. NodeLost."""
    message: str = Field(default="", max_length=1024)
    """What happened and what the operator did."""
    time: str | None = None
    """When the operator acted."""


class Progress(_Model):
    """Progress reported by the trainer."""

    step: str = Field(max_length=64)
    """Current step (load, validate, train, evaluate, save)."""
    percent: int = Field(ge=0, le=100)
    """Rough completion percentage."""


PromotionDecision = Literal["Promoted", "ChampionKept"]


class Promotion(_Model):
    """A champion/challenger decision (spec.register.promote), as recorded on the run and on its new version."""

    alias: str = Field(max_length=63)
    """The alias decided on."""
    metric: str = Field(max_length=64)
    """The metric both models were scored on."""
    decision: PromotionDecision
    """Promoted (the new version takes the alias) or ChampionKept (the holder keeps it)."""
    reason: str = Field(max_length=64)
    """CamelCase why: BeatChampion, NoChampion, NotBetter, ChampionNotScored, ChampionChanged."""
    message: str = Field(default="", max_length=1024)
    """Both scores, the margin and the hold-out, in words."""
    challenger: str | None = Field(default=None, max_length=253)
    """The new ModelVersion."""
    challenger_score: float | None = None
    """The new model's score on the hold-out split."""
    champion: str | None = Field(default=None, max_length=253)
    """The ModelVersion that held the alias when the trainer Job was created (absent: none held it)."""
    champion_score: float | None = None
    """The champion's score on the same hold-out split (absent: not scored, see reason)."""
    min_improvement: float | None = None
    """The margin the challenger had to beat."""
    holdout_fingerprint: str | None = Field(default=None, max_length=80)
    """sha256 of the hold-out rows (index and values) both models were scored on."""
    time: str | None = Field(default=None, max_length=64)
    """When the decision was made (RFC 3339)."""


class TrackingStatus(_Model):
    """Where the run is tracked (MLflow)."""

    mlflow_run_id: str | None = Field(default=None, max_length=64)
    """The MLflow run id."""
    experiment_id: str | None = Field(default=None, max_length=64)
    """The MLflow experiment id."""
    url: str | None = Field(default=None, max_length=2048)
    """The run's page in the MLflow UI."""


#: Bounds of ``EvaluationSummary`` (it travels in the trainer's 4 KiB termination message).
SUMMARY_MAX_CLASSES = 10
SUMMARY_MAX_FEATURES = 5
SUMMARY_MAX_NAME = 63


class ClassScore(_Model):
    """Hold-out scores of one class."""

    label: str = Field(max_length=SUMMARY_MAX_NAME)
    """The class label (as text, cut to 63 characters)."""
    precision: float | None = None
    """Precision of the class."""
    recall: float | None = None
    """Recall of the class."""
    f1: float | None = None
    """F1 of the class."""
    support: int = Field(ge=0)
    """Hold-out rows of the class."""
    roc_auc: float | None = None
    """Area under the ROC curve (binary: of the positive class; multi-class: one-vs-rest)."""


class FeatureScore(_Model):
    """Permutation importance of one input column on the hold-out."""

    name: str = Field(max_length=SUMMARY_MAX_NAME)
    """Column name (cut to 63 characters)."""
    mean: float | None = None
    """Mean drop of the score when the column is permuted."""
    std: float | None = None
    """Its standard deviation over the repeats."""


class ResidualSummary(_Model):
    """Regression residuals (actual - predicted) on the hold-out."""

    p05: float | None = None
    """5th percentile."""
    median: float | None = None
    """Median."""
    p95: float | None = None
    """95th percentile."""
    mean_absolute: float | None = None
    """Mean absolute residual."""


class AnomalySummary(_Model):
    """Anomaly detection's contamination cut on the hold-out."""

    flagged: int = Field(ge=0)
    """Hold-out rows flagged as anomalies."""
    flagged_fraction: float | None = None
    """Their fraction."""
    contamination: float | None = None
    """The estimator's contamination (absent for "auto")."""
    offset: float | None = None
    """The estimator's offset_ (decision_function = score_samples - offset)."""


class EvaluationSummary(_Model):
    """A bounded summary of evaluation.json (next to the model, with report.html): headline per-class
    scores, the top features and the task's key numbers."""

    task: Task
    """The task evaluated."""
    rows: int | None = Field(default=None, ge=0)
    """Hold-out rows the detail was computed on."""
    classes: int | None = Field(default=None, ge=0)
    """Number of classes (perClass lists at most 10 of them)."""
    per_class: Annotated[list[ClassScore], Field(max_length=SUMMARY_MAX_CLASSES)] | None = None
    """Per-class precision, recall, f1, support and ROC AUC (classification), in label order."""
    top_features: Annotated[list[FeatureScore], Field(max_length=SUMMARY_MAX_FEATURES)] | None = None
    """The most important input columns by permutation importance, most important first."""
    importance_scoring: str | None = Field(default=None, max_length=64)
    """What the permutation importance scored (accuracy, r2, ...)."""
    residuals: ResidualSummary | None = None
    """Residual quantiles (regression)."""
    anomaly: AnomalySummary | None = None
    """The contamination cut (anomaly detection)."""
    incomplete: bool | None = None
    """True when part of the detail could not be computed (evaluation.json's warnings say which)."""


class TrainingRunStatus(_Model):
    """Observed state of a TrainingRun; written by the operator only."""

    phase: TrainingRunPhase | None = None
    """Pending, Queued, Running, Succeeded, Failed or Suspended."""
    observed_generation: int | None = None
    """The spec generation this status reflects."""
    conditions: list[Condition] = Field(default_factory=list)
    """Standard conditions; Succeeded is the summary that `kubectl wait` uses."""
    job_name: str | None = None
    """Name of the trainer Job."""
    attempts: int | None = None
    """Pods started so far (1 + retries)."""
    start_time: str | None = None
    """When the trainer Job started."""
    completion_time: str | None = None
    """When the run reached Succeeded or Failed."""
    duration: str | None = None
    """Wall time of the run, e.g. 1m12s."""
    progress: Progress | None = None
    """Last progress the trainer reported."""
    metrics: MetricMap | None = None
    """Evaluation metrics of the trained model."""
    primary_metric: str | None = None
    """Headline metric, formatted as name=value, for `kubectl get`."""
    model: ModelRef | None = None
    """The trained model artifact."""
    model_version: str | None = None
    """Name of the ModelVersion this run registered."""
    failure: Failure | None = None
    """Why the run failed."""
    disruptions: list[Disruption] | None = Field(default=None, max_length=10)
    """Trainer pods lost to their node (newest last, at most 10); each was replaced by the Job."""
    task: Task | None = None
    """The task (as inferred when the spec omits it)."""
    promotion: Promotion | None = None
    """The champion/challenger decision of spec.register.promote."""
    trainer_image_digest: str | None = Field(default=None, pattern=IMAGE_DIGEST_PATTERN)
    """Digest (sha256:...) of the trainer image the pod really ran, from the pod's imageID: what a tag
    pointed at when the run trained."""
    dataset_fingerprint: str | None = Field(default=None, max_length=256)
    """The dataset's source fingerprint as the trainer read it (method:value;size=bytes: ETag for object
    stores and HTTPS, sha256 for files), compared by a schedule's spec.when.dataChanged."""

    tracking: TrackingStatus | None = None
    """The MLflow run of this run (the Tracked condition says whether tracking worked)."""

    report: str | None = Field(default=None, max_length=2048)
    """URI of the model report (report.html, next to the model with evaluation.json and the PNG plots);
    absent when it could not be written (the Reported condition says why)."""
    evaluation: EvaluationSummary | None = None
    """Summary of the evaluation detail (evaluation.json next to the model)."""


class TrainingRun(_Model):
    """A request to train a model: the operator runs a trainer Job and reports back."""

    api_version: Literal["kubetrain.io/v1alpha1"] = "kubetrain.io/v1alpha1"
    kind: Literal["TrainingRun"] = "TrainingRun"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: TrainingRunSpec
    status: TrainingRunStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _name(cls, v: dict[str, Any]) -> dict[str, Any]:
        name = v.get("name")
        if name is not None:
            if not isinstance(name, str) or not re.match(DNS_LABEL, name):
                raise ValueError(f"metadata.name {name!r} must be a DNS label (lowercase letters, digits, '-')")
            if len(name) > MAX_RUN_NAME:
                raise ValueError(f"metadata.name {name!r} is longer than {MAX_RUN_NAME} characters")
        return v


# --------------------------------------------------------------------------------------------------
# ModelVersion
# --------------------------------------------------------------------------------------------------


class Artifact(_Model):
    """The model file this version points at."""

    uri: str = Field(
        min_length=7,
        max_length=2048,
        pattern=OUTPUT_URI_PATTERN,
        json_schema_extra={"x-kubernetes-validations": URI_RULES},
    )
    """Location of the model file (…/model.joblib) or of its directory."""
    sha256: str = Field(pattern=SHA256_PATTERN)
    """sha256 of the model file; checked before anything trusts it."""
    format: Literal["joblib", "skops"] = "joblib"
    """Serialisation format."""
    size: int | None = Field(default=None, ge=0)
    """Size in bytes."""

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return _check_uri(v, "spec.artifact.uri", ("pvc", "file", "s3"))


class RunRef(_Model):
    """The TrainingRun that produced a version."""

    name: str = Field(max_length=253)
    """TrainingRun name."""
    uid: str | None = Field(default=None, max_length=64)
    """TrainingRun uid."""


class Source(_Model):
    """Lineage: where a version came from."""

    training_run: RunRef | None = None
    """The TrainingRun (absent for hand-registered versions)."""
    image: str | None = Field(default=None, max_length=512)
    """Trainer image."""
    image_digest: str | None = Field(default=None, pattern=IMAGE_DIGEST_PATTERN)
    """Digest (sha256:...) of the trainer image the run's pod ran (from the pod's imageID)."""
    dataset: str | None = Field(default=None, max_length=2048)
    """Dataset URI."""
    dataset_fingerprint: str | None = Field(default=None, max_length=128)
    """sha256 fingerprint of the training data."""
    estimator: str | None = Field(default=None, max_length=64)
    """Estimator name."""
    params: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Estimator parameters (after search)."""


class Runtime(_Model):
    """Library versions the model was trained with (serving must match)."""

    python: str | None = Field(default=None, max_length=32)
    """Python version."""
    scikit_learn: str | None = Field(default=None, max_length=32, alias="scikitLearn")
    """scikit-learn version."""
    joblib: str | None = Field(default=None, max_length=32)
    """joblib version."""
    pandas: str | None = Field(default=None, max_length=32)
    """pandas version."""
    numpy: str | None = Field(default=None, max_length=32)
    """numpy version."""


class FeatureSpec(_Model):
    """One input feature."""

    name: str = Field(max_length=253)
    """Column name."""
    dtype: str = Field(max_length=64)
    """pandas dtype."""


class Signature(_Model):
    """The model's input and output."""

    features: Annotated[list[FeatureSpec], Field(max_length=4096)] = Field(default_factory=list)
    """Input features with their dtypes."""
    target: str | None = Field(default=None, max_length=253)
    """Predicted column."""
    task: Task | None = None
    """Task of the model."""


class MlflowRegistry(_Model):
    """The MLflow server whose model registry mirrors this version. Credentials come from a Secret (named
    here, or a secretRef of spec.envFrom holding MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD), never from the spec itself."""

    tracking_uri: str | None = Field(default=None, min_length=8, max_length=2048, pattern=MLFLOW_URI_PATTERN)
    """http:// or https:// address of the MLflow server, without credentials; default: the producing run's
    spec.tracking.mlflow.trackingUri, else the operator's (KUBETRAIN_MLFLOW_TRACKING_URI)."""
    credentials_secret: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    """A Secret of this namespace with MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD, for the mirror; default: spec.envFrom's Secrets, else the operator's."""
    mirror: bool = Field(default=True, strict=True)
    """Mirror this version into MLflow's model registry (false: never, even with an operator default)."""


class ModelVersionTracking(_Model):
    """Where the version is mirrored (MLflow's model registry)."""

    mlflow: MlflowRegistry | None = None
    """The MLflow registry mirror of this version."""


class ModelVersionSpec(_Model):
    """A registered version of a model."""

    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME, pattern=DNS_LABEL)
    """Registered model name."""
    version: int = Field(ge=1, le=1_000_000)
    """Version number within the model, from 1."""
    artifact: Artifact
    """The model file."""
    source: Source | None = None
    """Lineage."""
    runtime: Runtime | None = None
    """Library versions."""
    metrics: MetricMap | None = None
    """Evaluation metrics."""
    signature: Signature | None = None
    """Input and output schema."""
    aliases: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=63, pattern=ALIAS_PATTERN)]], Field(max_length=16)
    ] = Field(default_factory=list)
    """Aliases this version asks for (production, candidate, ...); edit to promote."""
    deletion_policy: Literal["Retain", "Delete"] = "Retain"
    """Retain keeps the artifact when the ModelVersion is deleted; Delete removes it with a cleanup Job."""
    env_from: Annotated[list[EnvFromSource], Field(max_length=8)] | None = None
    """Secrets/ConfigMaps whose keys become the environment of the verification Job, e.g. S3 credentials and
    endpoint for an s3:// artifact. Copied from the TrainingRun for run-created versions."""
    service_account_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    """ServiceAccount of the verification Job (e.g. for IRSA or workload identity); its token is mounted only
    when this is set. Copied from the TrainingRun for run-created versions."""
    tracking: ModelVersionTracking | None = None
    """The MLflow registry mirror (default: the producing run's tracking server, else the operator's)."""

    @field_validator("aliases")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("spec.aliases must not repeat an alias")
        return v


class AliasEvent(_Model):
    """One move of an alias."""

    alias: str = Field(max_length=63)
    """The alias."""
    action: Literal["Assigned", "Removed", "Superseded", "Refused", "Promoted", "ChampionKept"]
    """What happened to it on this version."""
    time: str
    """When (RFC 3339)."""
    message: str | None = Field(default=None, max_length=1024)
    """Detail, e.g. which version took it."""


class AliasClaim(_Model):
    """When this version claimed an alias in spec.aliases, as the operator recorded it (newest claim wins)."""

    alias: str = Field(max_length=63)
    """The alias."""
    time: str = Field(max_length=64)
    """When the claim was written: the API server's managedFields time of the last spec.aliases write
    (RFC 3339, seconds), else the operator's first observation."""
    observed: str = Field(max_length=64)
    """When the operator first saw the claim (RFC 3339 with microseconds); breaks ties of ``time``."""
    generation: int | None = Field(default=None, ge=0)
    """metadata.generation at which the operator first saw the claim."""


class AliasCheck(_Model):
    """The check of a protected alias's claim: the artifact at its final location, just before the grant."""

    alias: str = Field(max_length=63)
    """The protected alias claimed."""
    claim: str = Field(max_length=64)
    """The claim it checked (its ``observed`` time in aliasClaims): a new claim is checked again."""
    job: str = Field(max_length=63)
    """The check Job (``python -m kubetrain_trainer verify`` on the artifact: exists, sha256, loads)."""
    result: Literal["Passed", "Failed"]
    """Passed: the alias may be granted; Failed: the claim is refused with the message."""
    message: str = Field(default="", max_length=1024)
    """What the check found."""
    time: str = Field(max_length=64)
    """When the operator recorded the result."""


class ServingHint(_Model):
    """Where a serving runtime (KServe) finds the model."""

    model_format: dict[str, str] | None = None
    """KServe modelFormat: {name: sklearn, version: <scikit-learn major>}."""
    storage_uri: str | None = Field(default=None, max_length=2048)
    """Directory with exactly one model file."""
    runtime: Runtime | None = None
    """Runtime versions to check serving compatibility."""


class ModelVersionTrackingStatus(_Model):
    """The version's mirror in MLflow's model registry."""

    tracking_uri: str | None = Field(default=None, max_length=2048)
    """The MLflow server."""
    registered_model: str | None = Field(default=None, max_length=256)
    """The MLflow registered model (same name as spec.model)."""
    version: str | None = Field(default=None, max_length=32)
    """The MLflow model version mirroring this ModelVersion (MLflow numbers its versions itself)."""
    url: str | None = Field(default=None, max_length=2048)
    """The version's page in the MLflow UI."""
    mlflow_run_id: str | None = Field(default=None, max_length=64)
    """The MLflow run the version came from (the producing TrainingRun's status.tracking)."""
    aliases: Annotated[list[Annotated[str, Field(max_length=63)]], Field(max_length=16)] = Field(default_factory=list)
    """The aliases last set on this version in MLflow."""
    last_sync_time: str | None = Field(default=None, max_length=64)
    """When the mirror last matched the cluster (RFC 3339)."""
    restored: str | None = Field(default=None, max_length=1024)
    """The last correction of a change made in MLflow outside kubetrain (what was found, what was put back)."""


class ModelVersionStatus(_Model):
    """Observed state of a ModelVersion; written by the operator only."""

    phase: ModelVersionPhase | None = None
    """Pending, Verifying, Ready or Failed."""
    observed_generation: int | None = None
    """The spec generation this status reflects."""
    conditions: list[Condition] = Field(default_factory=list)
    """ArtifactVerified, Ready, AliasSuperseded, ..."""
    aliases: list[str] = Field(default_factory=list)
    """Aliases this version holds now (an alias belongs to one version of a model at a time)."""
    alias_history: list[AliasEvent] = Field(default_factory=list)
    """Each move of an alias on this version, oldest first (the last 50 are kept)."""
    alias_claims: Annotated[list[AliasClaim], Field(max_length=16)] = Field(default_factory=list)
    """The claims of spec.aliases with their times; the operator orders competing claims by them."""
    alias_checks: Annotated[list[AliasCheck], Field(max_length=16)] = Field(default_factory=list)
    """The artifact checks of protected-alias claims (one per claim), made when the alias is claimed."""
    serving: ServingHint | None = None
    """KServe-ready storage hint."""
    verification_job: str | None = None
    """Name of the verification Job (hand-registered versions)."""
    passed_thresholds: bool | None = None
    """Whether the producing run met its thresholds (protected aliases need it)."""
    primary_metric: str | None = None
    """Headline metric, formatted as name=value."""
    promotion: Promotion | None = None
    """The champion/challenger decision of the run that registered this version (spec.register.promote)."""
    report: str | None = Field(default=None, max_length=2048)
    """URI of the model report (report.html) of the run that registered this version."""
    evaluation: EvaluationSummary | None = None
    """Summary of the evaluation detail of the run that registered this version (evaluation.json next to
    the model has it whole)."""

    tracking: ModelVersionTrackingStatus | None = None
    """The version's mirror in MLflow's model registry (the Tracked condition says whether it is in sync)."""


class ModelVersion(_Model):
    """A version of a registered model: artifact, lineage, metrics and aliases."""

    api_version: Literal["kubetrain.io/v1alpha1"] = "kubetrain.io/v1alpha1"
    kind: Literal["ModelVersion"] = "ModelVersion"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelVersionSpec
    status: ModelVersionStatus | None = None


# --------------------------------------------------------------------------------------------------
# Quantities
# --------------------------------------------------------------------------------------------------

_SUFFIX = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "u": 1e-6,
    "n": 1e-9,
}


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a float (cores or bytes)."""
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"([+-]?[0-9]*\.?[0-9]+)([a-zA-Z]*|[eE][-+]?[0-9]+)", value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a quantity")
    number, suffix = m.groups()
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return float(number + suffix)
    if suffix not in _SUFFIX:
        raise ValueError(f"{value!r} has an unknown suffix {suffix!r}")
    return float(number) * _SUFFIX[suffix]


# --------------------------------------------------------------------------------------------------
# TrainingSchedule
# --------------------------------------------------------------------------------------------------


def _cron_field(value: str, names: str = "") -> str:
    """RE2 of one cron field: ``*``, a value or a range, an optional ``/step``, comma-separated."""
    atom = f"({value}{'|' + names if names else ''})"
    item = rf"(\*|{atom}(-{atom})?)(/[1-9][0-9]*)?"
    return f"{item}(,{item})*"


_MONTHS = "(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_DAYS = "(?i:sun|mon|tue|wed|thu|fri|sat)"
#: A 5-field cron expression (minute hour day-of-month month day-of-week) with each value in range.
CRON_PATTERN = (
    r"^\s*"
    + r"\s+".join(
        [
            _cron_field("[0-5]?[0-9]"),
            _cron_field("[01]?[0-9]|2[0-3]"),
            _cron_field("0?[1-9]|[12][0-9]|3[01]"),
            _cron_field("0?[1-9]|1[0-2]", _MONTHS),
            _cron_field("[0-7]", _DAYS),
        ]
    )
    + r"\s*$"
)
SCHEDULE_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
MACRO_PATTERN = r"^\s*@(yearly|annually|monthly|weekly|daily|midnight|hourly)\s*$"
#: ``@every <duration>``: whole hours, minutes and seconds, Go-style (1h30m, 90s, 15m).
EVERY_PATTERN = r"^\s*@every\s+([0-9]+h([0-9]+m)?([0-9]+s)?|[0-9]+m([0-9]+s)?|[0-9]+s)\s*$"
EVERY_MIN_SECONDS = 10
#: ``@every`` durations below EVERY_MIN_SECONDS (zero hours and minutes, at most 9 seconds).
EVERY_TOO_SHORT_PATTERN = r"^\s*@every\s+(0+h)?(0+m)?(0*[0-9]s)?\s*$"
#: What an IANA time-zone name looks like (the zone itself is checked against the tz database).
TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
ConcurrencyPolicy = Literal["Allow", "Forbid", "Replace"]
ScheduleDecision = Literal["Started", "Skipped", "Suspended", "Invalid"]
#: Gate reasons of a tick's decision (status.lastDecision.reason).
GATE_REASONS = ("DataUnchanged", "NoDrift", "GateFailed", "GatePending", "DataChanged", "Drifted", "NoBaseline")
MAX_SCHEDULE_NAME = 63


def every_seconds(expression: str) -> int | None:
    """Seconds of an ``@every`` schedule (None for cron expressions and macros)."""
    if re.match(EVERY_PATTERN, expression) is None:
        return None
    seconds = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * seconds[unit] for n, unit in re.findall(r"([0-9]+)([hms])", expression))


class TemplateMetadata(_Model):
    """Labels and annotations every child TrainingRun gets (its name is derived from the tick)."""

    labels: dict[Annotated[str, Field(max_length=316)], Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=64
    )
    """Labels of each child run (e.g. kueue.x-k8s.io/queue-name, team)."""
    annotations: dict[Annotated[str, Field(max_length=316)], Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, max_length=64
    )
    """Annotations of each child run."""


class RunTemplate(_Model):
    """The TrainingRun each tick creates."""

    metadata: TemplateMetadata = Field(default_factory=TemplateMetadata)
    """Labels and annotations of the child runs."""
    spec: TrainingRunSpec
    """A complete TrainingRun spec, validated as one."""


class DriftGate(_Model):
    """Train only when the data drifted from the training data of the version holding an alias."""

    threshold: float = Field(le=100, json_schema_extra={"minimum": 0, "exclusiveMinimum": True})
    """Train when the largest per-feature population stability index (PSI) reaches this (> 0; 0.1 is a
    moderate shift, 0.25 a large one)."""
    against: str = Field(min_length=1, max_length=63, pattern=ALIAS_PATTERN)
    """The alias (e.g. production) of the ModelVersion whose training-data profile the data is compared with.
    No version holds it yet: the tick trains."""

    @field_validator("threshold")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"spec.when.drift.threshold must be greater than 0, not {v}")
        return v


class WhenSpec(_Model):
    """Gates of a TrainingSchedule's ticks: all that are set must pass for the tick to train."""

    data_changed: bool = False
    """Skip the tick when the dataset's fingerprint (object-store ETag and size, HTTPS ETag or Last-Modified
    and size, sha256 of a file's bytes; computed in the trainer image) equals the last successful run's."""
    drift: DriftGate | None = None
    """Skip the tick unless the data drifted (PSI per feature) from the version holding ``against``."""


class TrainingScheduleSpec(_Model):
    """When to train and what: a cron-like schedule that creates TrainingRuns from a template."""

    schedule: str = Field(min_length=1, max_length=128)
    """A 5-field cron expression (minute hour day-of-month month day-of-week, e.g. '0 2 * * *'), a macro
    (@hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually) or '@every <duration>' (e.g.
    '@every 6h', at least 10s)."""
    time_zone: str = Field(default="UTC", min_length=1, max_length=64, pattern=TIME_ZONE_PATTERN)
    """IANA time zone the cron expression is evaluated in (e.g. Europe/Berlin); daylight-saving changes
    follow cron's rules."""
    concurrency_policy: ConcurrencyPolicy = "Allow"
    """What a tick does while a run of this schedule is still active: Allow (start another), Forbid (skip
    the tick) or Replace (delete the active run, start the new one)."""
    starting_deadline_seconds: int | None = Field(default=None, ge=1, le=366 * 24 * 3600)
    """A tick not started within this many seconds of its time is skipped (missed)."""
    catch_up: int = Field(default=1, ge=0, le=100)
    """After the operator was away: how many of the missed ticks (the newest) to start; 0 starts none."""
    suspend: bool = False
    """Stop creating runs (running ones are left alone); ticks missed meanwhile are caught up on resume
    as after downtime (catchUp, startingDeadlineSeconds)."""
    successful_runs_history_limit: int = Field(default=3, ge=0, le=100)
    """Succeeded child runs to keep (older ones are deleted, with their Jobs; their ModelVersions stay)."""
    failed_runs_history_limit: int = Field(default=1, ge=0, le=100)
    """Failed child runs to keep."""
    run_template: RunTemplate
    """The TrainingRun each tick creates."""
    when: WhenSpec | None = None
    """Gates checked at each tick before training (a short gate pod of the trainer image): skip the tick
    when the data did not change, or did not drift from the training data of a registered version."""

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        if not any(re.match(p, v) for p in (CRON_PATTERN, MACRO_PATTERN, EVERY_PATTERN)):
            raise ValueError(
                f"spec.schedule {v!r} must be a 5-field cron expression with values in range, one of "
                f"{', '.join(SCHEDULE_MACROS)}, or '@every <duration>' such as @every 15m"
            )
        seconds = every_seconds(v)
        if seconds is not None and seconds < EVERY_MIN_SECONDS:
            raise ValueError(f"spec.schedule: @every must be at least {EVERY_MIN_SECONDS}s, not {v.strip()!r}")
        return v


class DriftFeature(_Model):
    """One feature's PSI against the reference profile."""

    feature: str = Field(max_length=253)
    """The column."""
    psi: float
    """Its population stability index."""


class GateResult(_Model):
    """What the gate pod of a tick found (spec.when)."""

    job: str | None = Field(default=None, max_length=63)
    """The gate Job (deleted once decided)."""
    fingerprint: str | None = Field(default=None, max_length=256)
    """The dataset's fingerprint now (method:value;size=bytes)."""
    previous_fingerprint: str | None = Field(default=None, max_length=256)
    """The last successful run's dataset fingerprint (absent: no successful run records one)."""
    previous_run: str | None = Field(default=None, max_length=253)
    """That run."""
    against: str | None = Field(default=None, max_length=253)
    """The ModelVersion whose training-data profile the data was compared with."""
    max_psi: float | None = None
    """The largest per-feature PSI."""
    threshold: float | None = None
    """spec.when.drift.threshold at the time."""
    top: Annotated[list[DriftFeature], Field(max_length=10)] = Field(default_factory=list)
    """The features with the largest PSI, largest first."""
    missing_features: Annotated[list[Annotated[str, Field(max_length=253)]], Field(max_length=20)] = Field(
        default_factory=list
    )
    """Profiled features the new data lacks (not scored)."""


class PendingGate(_Model):
    """A tick waiting for its gate pod."""

    tick: str = Field(max_length=64)
    """The tick (RFC 3339)."""
    job: str = Field(max_length=63)
    """The gate Job."""
    started: str | None = Field(default=None, max_length=64)
    """When the gate Job was created (RFC 3339)."""


class ScheduleDecisionStatus(_Model):
    """What the operator last decided about a tick."""

    decision: ScheduleDecision
    """Started, Skipped, Suspended or Invalid."""
    reason: str = Field(max_length=128)
    """CamelCase reason: Scheduled, CaughtUp, Replaced, ConcurrencyForbid, MissedDeadline, Suspended,
    InvalidSchedule, InvalidSpec; with spec.when: DataUnchanged, NoDrift, GateFailed, GatePending (skipped),
    DataChanged, Drifted, NoBaseline (started)."""
    message: str = Field(default="", max_length=4096)
    """Human-readable detail."""
    tick: str | None = None
    """The tick the decision is about (RFC 3339)."""
    run: str | None = Field(default=None, max_length=253)
    """The TrainingRun started for the tick."""
    time: str | None = None
    """When the decision was made (RFC 3339)."""
    gate: GateResult | None = None
    """What the tick's gate pod found (spec.when)."""


class MissedTicks(_Model):
    """Ticks that passed while the operator was away (or past startingDeadlineSeconds), last time it happened."""

    count: int = Field(ge=0)
    """Ticks missed (counting stops at 1000: then capped is true)."""
    capped: bool = False
    """More ticks were missed than counted."""
    started: int = Field(default=0, ge=0)
    """How many of them were started (at most catchUp)."""
    first: str | None = None
    """The oldest missed tick that was counted (RFC 3339)."""
    last: str | None = None
    """The newest missed tick (RFC 3339)."""
    time: str | None = None
    """When the operator noticed (RFC 3339)."""


class TrainingScheduleStatus(_Model):
    """Observed state of a TrainingSchedule; written by the operator only."""

    observed_generation: int | None = None
    """The spec generation this status reflects."""
    last_schedule_time: str | None = None
    """The newest tick the operator has decided about (started, skipped or missed), RFC 3339."""
    next_schedule_time: str | None = None
    """When the next tick is due (absent while suspended or when the schedule never fires)."""
    active: Annotated[list[Annotated[str, Field(max_length=253)]], Field(max_length=1000)] = Field(default_factory=list)
    """Child runs that have not finished."""
    last_decision: ScheduleDecisionStatus | None = None
    """The last tick decision (printer column LAST-DECISION)."""
    missed: MissedTicks | None = None
    """The last time ticks were missed."""
    gate: PendingGate | None = None
    """A tick whose gate pod has not finished (spec.when)."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready: the schedule and template are valid and the operator schedules them."""


class TrainingSchedule(_Model):
    """Train on a schedule: every tick creates a TrainingRun from a template (owned by the schedule)."""

    api_version: Literal["kubetrain.io/v1alpha1"] = "kubetrain.io/v1alpha1"
    kind: Literal["TrainingSchedule"] = "TrainingSchedule"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: TrainingScheduleSpec
    status: TrainingScheduleStatus | None = None
