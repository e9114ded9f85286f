"""The operator's settings: read from the environment ONCE at startup (``Settings.from_env``).

Handlers receive the object (``get_settings()``); nothing else reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TRAINER_IMAGE = "ghcr.io/kubetrain/trainer:0.1.0"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {raw!r}")
    return value


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """Everything configurable about the operator."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of the trainer Job when the run names none (KUBETRAIN_TRAINER_IMAGE)."""
    image_pull_policy: str = "IfNotPresent"
    """imagePullPolicy of the trainer container (KUBETRAIN_IMAGE_PULL_POLICY)."""
    default_requests: dict[str, str] = field(default_factory=lambda: {"cpu": "500m", "memory": "512Mi"})
    """Requests used when the run sets none (KUBETRAIN_DEFAULT_CPU_REQUEST, KUBETRAIN_DEFAULT_MEMORY_REQUEST)."""
    default_limits: dict[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "2Gi"})
    """Limits used when the run sets none (KUBETRAIN_DEFAULT_CPU_LIMIT, KUBETRAIN_DEFAULT_MEMORY_LIMIT)."""
    max_gpus: int = 16
    """Largest spec.resources.gpus accepted (KUBETRAIN_MAX_GPUS); more is ConfigInvalid."""
    default_output: str = "pvc://kubetrain-models/"
    """Output base when the run sets no spec.output (KUBETRAIN_DEFAULT_OUTPUT)."""
    pvc_mount_root: str = "/mnt/kubetrain/pvc"
    """Where each referenced claim is mounted in the trainer pod (KUBETRAIN_PVC_MOUNT_ROOT)."""
    gpu_toleration_key: str = "nvidia.com/gpu"
    """Taint key tolerated automatically when gpus > 0 (KUBETRAIN_GPU_TOLERATION_KEY)."""
    metrics_port: int = 8080
    """Port of /metrics and /healthz (KUBETRAIN_METRICS_PORT; 0 = off)."""
    health_port: int = 8081
    """Port of kopf's liveness endpoint /healthz (KUBETRAIN_HEALTH_PORT; 0 = off)."""
    progress_interval: float = 10.0
    """Seconds between progress reads of a running trainer's log (KUBETRAIN_PROGRESS_INTERVAL; 0 = off)."""
    log_tail_lines: int = 40
    """Lines of the trainer's log kept in status.failure.logTail (KUBETRAIN_LOG_TAIL_LINES)."""
    model_retention: int = 10
    """ModelVersions kept per model (KUBETRAIN_MODEL_RETENTION); used by the ModelVersion controller."""
    protected_aliases: tuple[str, ...] = ("production",)
    """Aliases that only threshold-passing versions may hold (KUBETRAIN_PROTECTED_ALIASES, comma-separated)."""
    watch_server_timeout: int = 300
    """Whole seconds (the API's ``timeoutSeconds`` is an integer) the API server keeps one watch request
    open before ending it cleanly; kopf then re-watches from the last resourceVersion
    (KUBETRAIN_WATCH_SERVER_TIMEOUT; 0 = the server's default)."""
    watch_client_timeout: float = 330.0
    """Seconds after which the operator itself abandons a watch request, whatever the server does: the
    bound on a watch that went silent without being closed (KUBETRAIN_WATCH_CLIENT_TIMEOUT; 0 = none,
    then only kopf's 70 s inactivity timeout). Keep it above the server timeout."""
    test_exit_after_job_create: bool = False
    """TEST HOOK: exit the process right after creating a Job, before status is written
    (KUBETRAIN_TEST_EXIT_AFTER_JOB_CREATE=1). Used only by the idempotency test."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e: Mapping[str, str] = os.environ if env is None else env
        d = cls()
        return cls(
            trainer_image=e.get("KUBETRAIN_TRAINER_IMAGE") or d.trainer_image,
            image_pull_policy=e.get("KUBETRAIN_IMAGE_PULL_POLICY") or d.image_pull_policy,
            default_requests={
                "cpu": e.get("KUBETRAIN_DEFAULT_CPU_REQUEST") or d.default_requests["cpu"],
                "memory": e.get("KUBETRAIN_DEFAULT_MEMORY_REQUEST") or d.default_requests["memory"],
            },
            default_limits={
                "cpu": e.get("KUBETRAIN_DEFAULT_CPU_LIMIT") or d.default_limits["cpu"],
                "memory": e.get("KUBETRAIN_DEFAULT_MEMORY_LIMIT") or d.default_limits["memory"],
            },
            max_gpus=_int(e, "KUBETRAIN_MAX_GPUS", d.max_gpus),
            default_output=e.get("KUBETRAIN_DEFAULT_OUTPUT") or d.default_output,
            pvc_mount_root=(e.get("KUBETRAIN_PVC_MOUNT_ROOT") or d.pvc_mount_root).rstrip("/"),
            gpu_toleration_key=e.get("KUBETRAIN_GPU_TOLERATION_KEY") or d.gpu_toleration_key,
            metrics_port=_int(e, "KUBETRAIN_METRICS_PORT", d.metrics_port),
            health_port=_int(e, "KUBETRAIN_HEALTH_PORT", d.health_port),
            progress_interval=float(e.get("KUBETRAIN_PROGRESS_INTERVAL") or d.progress_interval),
            log_tail_lines=_int(e, "KUBETRAIN_LOG_TAIL_LINES", d.log_tail_lines),
            model_retention=_int(e, "KUBETRAIN_MODEL_RETENTION", d.model_retention),
            protected_aliases=_list(e, "KUBETRAIN_PROTECTED_ALIASES", d.protected_aliases),
            watch_server_timeout=_int(e, "KUBETRAIN_WATCH_SERVER_TIMEOUT", d.watch_server_timeout, minimum=0),
            watch_client_timeout=_float(e, "KUBETRAIN_WATCH_CLIENT_TIMEOUT", d.watch_client_timeout),
            test_exit_after_job_create=e.get("KUBETRAIN_TEST_EXIT_AFTER_JOB_CREATE") == "1",
        )

    def summary(self) -> dict[str, Any]:
        """For the startup log line."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("test_") or v}


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
