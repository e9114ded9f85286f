"""The operator's settings: ``KUBETRAIN_<FIELD>`` environment variables, read ONCE at startup by
pydantic-settings (``Settings.from_env``). Handlers receive the object (``get_settings()``); nothing else reads
``os.environ``. A bad value is refused with the variable's name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from kubetrain_api.models import MLFLOW_URI_PATTERN
from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_TRAINER_IMAGE = "ghcr.io/kubetrain/trainer:0.1.0"
ENV_PREFIX = "KUBETRAIN_"


class Settings(BaseSettings):
    """Everything configurable about the operator (the variable of each field: ``KUBETRAIN_`` + its name in
    upper case)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore")

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of the trainer Job when the run names none."""
    image_pull_policy: str = "IfNotPresent"
    """imagePullPolicy of the trainer container."""
    default_cpu_request: str = "500m"
    default_memory_request: str = "512Mi"
    """Requests used when the run sets none."""
    default_cpu_limit: str = "1"
    default_memory_limit: str = "2Gi"
    """Limits used when the run sets none."""
    max_gpus: int = Field(default=16, ge=0)
    """Largest spec.resources.gpus accepted; more is ConfigInvalid."""
    default_output: str = "pvc://kubetrain-models/"
    """Output base when the run sets no spec.output."""
    pvc_mount_root: str = "/mnt/kubetrain/pvc"
    """Where each referenced claim is mounted in the trainer pod (no trailing slash)."""
    gpu_toleration_key: str = "nvidia.com/gpu"
    """Taint key tolerated automatically when gpus > 0."""
    metrics_port: int = Field(default=8080, ge=0, le=65535)
    """Port of /metrics and /healthz (0 = off)."""
    health_port: int = Field(default=8081, ge=0, le=65535)
    """Port of kopf's liveness endpoint /healthz (0 = off)."""
    progress_interval: float = Field(default=10.0, ge=0)
    """Seconds between progress reads of a running trainer's log (0 = off)."""
    node_lost_seconds: float = Field(default=300.0, ge=0)
    """Seconds a trainer pod's node may be not-Ready before the operator marks the pod Failed (a disruption:
    the Job replaces it without counting it against backoffLimit). 300 is Kubernetes' own NoExecute
    toleration; 0 = off (then only the node's deletion or its out-of-service taint frees the run)."""
    log_tail_lines: int = Field(default=40, ge=0)
    """Lines of the trainer's log kept in status.failure.logTail."""
    model_retention: int = 10
    """ModelVersions kept per model (0 or less: retention off)."""
    protected_aliases: Annotated[tuple[str, ...], NoDecode] = ("production",)
    """Aliases that only threshold-passing versions may hold (comma-separated)."""
    watch_cache: bool = True
    """Serve each pass's reads (its TrainingRun, Job, pods, the namespace's ModelVersions) from the watch
    streams kopf keeps open (``cache.py``: kopf indexes) instead of a GET/LIST per event; false reads them
    from the API at every pass (4 writes and ~12 reads per run instead of 3 and 0: bench/reports)."""
    reconcile_workers: int = Field(default=32, ge=1, le=1000)
    """Passes run at once (the engine's work queue is served by this many tasks; one pass at a time per
    object). The watch handlers only queue a key, so this bounds the memory of the work in progress after a
    restart or during a burst; the API requests of those passes are bounded separately (20 in flight). Raise
    it when the API server is far away (each pass then waits longer on its requests)."""
    watch_server_timeout: int = Field(default=300, ge=0)
    """Whole seconds (the API's ``timeoutSeconds`` is an integer) the API server keeps one watch request
    open before ending it cleanly; kopf then re-watches from the last resourceVersion (0 = the server's
    default)."""
    watch_client_timeout: float = Field(default=330.0, ge=0)
    """Seconds after which the operator itself abandons a watch request, whatever the server does: the
    bound on a watch that went silent without being closed (0 = none, then only kopf's 70 s inactivity
    timeout). Keep it above the server timeout."""

    leader_election: bool = False
    """Hold the Lease ``leader_lease_name`` before running any handler (the chart turns it on for its
    replicas; off by default: one process outside a cluster, and the tests' subprocesses)."""
    leader_lease_name: str = Field(default="kubetrain-operator", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Name of the coordination.k8s.io/v1 Lease the replicas compete for."""
    leader_lease_namespace: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Namespace of the Lease (default: the pod's own namespace, ``POD_NAMESPACE``)."""
    leader_lease_seconds: float = Field(default=15.0, gt=0)
    """``leaseDurationSeconds`` written in the Lease: a standby takes over this long after it last saw the
    Lease change. Lease, renew deadline and retry default to client-go's 15 / 10 / 2 s (which
    kube-controller-manager uses too); the tighter 10 / 8 s before let a leader on a busy 2-core node, where
    Lease writes took seconds, miss its deadline and restart."""
    leader_renew_seconds: float = Field(default=3.0, gt=0)
    """Seconds between the leader's renewals."""
    leader_renew_deadline_seconds: float = Field(default=10.0, gt=0)
    """The leader exits (non-zero) when no renewal has succeeded for this long: below the lease duration,
    so it stops before a standby can take over."""
    leader_retry_seconds: float = Field(default=2.0, gt=0)
    """Seconds between a standby's looks at the Lease (and between retries of a failed renewal)."""
    pod_name: str | None = Field(default=None, validation_alias=AliasChoices("POD_NAME", "pod_name"))
    """The pod's name (``POD_NAME``, the downward API): the start of the leader identity."""
    pod_namespace: str | None = Field(default=None, validation_alias=AliasChoices("POD_NAMESPACE", "pod_namespace"))
    """The pod's namespace (``POD_NAMESPACE``, the downward API): the Lease's default namespace."""

    mlflow_tracking_uri: str | None = Field(default=None, pattern=MLFLOW_URI_PATTERN, max_length=2048)
    """MLflow server of runs whose spec.tracking.mlflow names none (http(s)://, no credentials; unset = runs
    are tracked only when their spec says so)."""
    mlflow_experiment: str | None = Field(default=None, min_length=1, max_length=256)
    """MLflow experiment of runs whose spec names none (default: the run's spec.model)."""
    mlflow_required: bool = False
    """Runs whose spec does not say fail when MLflow cannot be used (TrackingFailed)."""
    mlflow_mirror: bool = True
    """Mirror Ready ModelVersions into the model registry of their MLflow server (the version's
    spec.tracking.mlflow, else its run's, else KUBETRAIN_MLFLOW_TRACKING_URI)."""
    mlflow_credentials_secret: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """``namespace/name`` of a Secret with MLFLOW_TRACKING_TOKEN (or _USERNAME and _PASSWORD) for the mirror
    when the version names none (its spec.envFrom Secrets are tried first)."""
    mlflow_resync_seconds: float = Field(default=60.0, gt=0)
    """Seconds between looks at the MLflow registry of a mirrored model: an alias changed in MLflow by hand is
    put back within this; also the longest backoff after a failure."""
    mlflow_timeout: float = Field(default=10.0, gt=0)
    """Seconds the mirror waits for one MLflow request."""

    @field_validator("protected_aliases", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("pvc_mount_root")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/") or "/"

    @model_validator(mode="after")
    def _leader_timings(self) -> Settings:
        # client-go's rule: renew interval < renew deadline < lease duration, or a leader that cannot renew
        # is still running when a standby takes over.
        if not (self.leader_renew_seconds < self.leader_renew_deadline_seconds < self.leader_lease_seconds):
            raise ValueError(
                "need leader_renew_seconds < leader_renew_deadline_seconds < leader_lease_seconds, got "
                f"{self.leader_renew_seconds} / {self.leader_renew_deadline_seconds} / {self.leader_lease_seconds}"
            )
        return self

    @property
    def lease_namespace(self) -> str:
        """Where the Lease lives: the setting, else the pod's namespace, else ``default``."""
        return self.leader_lease_namespace or self.pod_namespace or "default"

    @property
    def default_requests(self) -> dict[str, str]:
        return {"cpu": self.default_cpu_request, "memory": self.default_memory_request}

    @property
    def default_limits(self) -> dict[str, str]:
        return {"cpu": self.default_cpu_limit, "memory": self.default_memory_limit}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of the process environment, or of ``env`` alone; ValueError naming the variable."""
        try:
            if env is None:
                return cls()
            values = {name: env[var] for name, var in env_names().items() if env.get(var, "").strip()}
            return cls.model_validate(values)
        except ValidationError as exc:
            names = env_names()
            problems = "; ".join(
                f"{names.get(str(e['loc'][0]), str(e['loc'][0]))}={e['input']!r}: {e['msg']}" if e["loc"] else e["msg"]
                for e in exc.errors()
            )
            raise ValueError(f"invalid operator settings: {problems}") from None

    def summary(self) -> dict[str, Any]:
        """For the startup log line."""
        return self.model_dump()


def env_names() -> dict[str, str]:
    """Field name → environment variable (``KUBETRAIN_`` + the name; the downward API's ``POD_NAME`` and
    ``POD_NAMESPACE`` as they are)."""
    out = {}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        out[name] = str(alias.choices[0]) if isinstance(alias, AliasChoices) else ENV_PREFIX + name.upper()
    return out


_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings (read from the environment on first use, i.e. at startup)."""
    global _current
    if _current is None:
        _current = Settings.from_env()
    return _current


def set_settings(settings: Settings) -> None:
    """Replace the process-wide settings (tests)."""
    global _current
    _current = settings
