"""MLflow tracking of one run: the MLflow run is opened before training and filled in at the end.

Where the server is: ``spec.tracking.mlflow`` field by field over the operator's defaults
(``KUBETRAIN_MLFLOW_TRACKING_URI`` / ``_EXPERIMENT`` / ``_REQUIRED``); no URI, no tracking. Credentials
are MLflow's own variables (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``), which
the trainer gets through ``spec.envFrom``.

What goes where (one MLflow run per TrainingRun; a parallel search's pods other than index 0 log nothing)
    params    ``estimator``, ``task``, ``seed``, the final estimator's parameters (spec params, the
              search's choice, defaults) under their own names, ``search.*`` (strategy, space as JSON,
              trials, cv, scoring) and ``search.best.<name>``
    metrics   the Result's metrics (hold-out test metrics, ``cv_<metric>_mean/_std``, ``search_best_*``),
              and ``cv_<metric>_fold`` with one step per cross-validation fold
    children  one nested run per search trial (tag ``mlflow.parentRunId``): its params and mean/std score
    tags      ``mlflow.runName``, ``kubetrain.run.name/uid``, ``kubetrain.namespace``, ``kubetrain.model``,
              ``kubetrain.image``, ``kubetrain.dataset.uri/fingerprint``, ``kubetrain.model.uri/sha256``,
              ``kubetrain.outcome/reason``
    inputs    the dataset as an MLflow dataset (context ``training``) whose digest is the fingerprint's
              first 36 hex digits (MLflow's limit; the whole fingerprint is a tag)
    model     a link, not a copy: the tags ``kubetrain.model.uri``/``sha256`` name the kubetrain artifact,
              which stays the one checksummed copy (see docs/mlflow.md for why)

MLflow being down never stalls a run for long (one retry, 10 s timeouts unless the environment says
otherwise) and never fails it unless ``required``: the Result's ``tracking`` says what happened.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from . import contract
from .config import RunConfig
from .errors import TrainerError

#: MLflow's HTTP client defaults retry 7 times with exponential backoff and a 120 s timeout: minutes of a
#: stalled run when the server is down. These apply unless the environment (envFrom) sets them.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
MAX_CHILD_RUNS = 200  # trial runs logged per search (each costs a few requests)
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
DIGEST_LENGTH = 36  # MLflow's limit on a dataset digest


class TrackingFailed(TrainerError):
    reason = contract.REASON_TRACKING_FAILED


@dataclass(frozen=True)
class Target:
    """The effective MLflow settings of a run."""

    uri: str
    experiment: str
    required: bool


def target(cfg: RunConfig) -> Target | None:
    """spec.tracking.mlflow over the operator's defaults; None when no tracking URI is set anywhere."""
    spec = cfg.spec.tracking.mlflow if cfg.spec.tracking else None
    uri = (spec.tracking_uri if spec else None) or os.environ.get(contract.ENV_MLFLOW_TRACKING_URI) or None
    if not uri:
        return None
    experiment = (spec.experiment if spec else None) or os.environ.get(contract.ENV_MLFLOW_EXPERIMENT) or cfg.spec.model
    required = spec.required if spec and spec.required is not None else None
    if required is None:
        required = (os.environ.get(contract.ENV_MLFLOW_REQUIRED) or "").strip().lower() in ("1", "true", "yes")
    return Target(uri.rstrip("/"), experiment, required)


@dataclass
class Notes:
    """What the runner learns for MLflow besides the Result: filled in as the stages return."""

    model_params: dict[str, Any] = field(default_factory=dict)
    best_params: dict[str, Any] | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)  # {"params", "mean", "std"} in metric sign
    trial_metric: str | None = None
    cv_metric: str | None = None
    cv_folds: list[float] = field(default_factory=list)


@dataclass
class Tracker:
    """One MLflow run; ``failure`` is set (reason, message) once MLflow could not be used."""

    target: Target
    client: Any = None
    run_id: str | None = None
    experiment_id: str | None = None
    failure: tuple[str, str] | None = None

    @property
    def url(self) -> str | None:
        if self.run_id is None or self.experiment_id is None:
            return None
        return f"{self.target.uri}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def check_required(self) -> None:
        """TrackingFailed when tracking is required and MLflow could not be used."""
        if self.failure and self.target.required:
            raise TrackingFailed(f"spec.tracking.mlflow.required: {self.failure[1]}")

    def info(self) -> contract.Tracking:
        out: contract.Tracking = {"tracked": self.failure is None and self.run_id is not None}
        if self.run_id:
            out["run_id"] = self.run_id
        if self.experiment_id:
            out["experiment_id"] = self.experiment_id
        url = self.url
        if url:
            out["url"] = url
        reason, message = self.failure or (contract.TRACKING_REASON_LOGGED, f"MLflow run {self.run_id}")
        out["reason"] = reason
        out["message"] = message[: contract.TRACKING_MESSAGE_MAX]
        return out


def open_run(cfg: RunConfig) -> Tracker | None:
    """The run's MLflow run (status RUNNING), or a Tracker that says why there is none; None without a
    target or for a parallel search's pod other than index 0."""
    tgt = target(cfg)
    index = os.environ.get(contract.ENV_JOB_COMPLETION_INDEX)
    if tgt is None or index not in (None, "", "0"):
        return None
    tracker = Tracker(tgt)
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        tracker.failure = (
            contract.TRACKING_REASON_NOT_INSTALLED,
            "this trainer image has no MLflow client (install the kubetrain[mlflow] extra)",
        )
        return tracker
    try:
        client = MlflowClient(tracking_uri=tgt.uri)
        tracker.client = client
        tracker.experiment_id = _experiment_id(client, tgt.experiment)
        tags = {"mlflow.runName": cfg.name, **_identity_tags(cfg)}
        run = client.create_run(tracker.experiment_id, tags=tags, run_name=cfg.name)
        tracker.run_id = run.info.run_id
    except Exception as exc:
        tracker.failure = classify(exc, tgt.uri)
        _warn(tracker.failure[1])
    return tracker


def finish(tracker: Tracker | None, cfg: RunConfig, result: contract.Result, notes: Notes) -> contract.Result:
    """Log everything about the finished run and end the MLflow run; the Result gains ``tracking``.
    A required tracking that fails here turns a success into TrackingFailed."""
    if tracker is None:
        return result
    if tracker.failure is None and tracker.run_id is not None:
        try:
            _log_all(tracker, cfg, result, notes)
        except Exception as exc:
            tracker.failure = classify(exc, tracker.target.uri)
            _warn(tracker.failure[1])
            _try_terminate(tracker, "FAILED")
    result = replace(result, tracking=tracker.info())
    if tracker.failure and tracker.target.required and result.outcome == contract.OUTCOME_SUCCEEDED:
        return replace(
            result,
            outcome=contract.OUTCOME_FAILED,
            reason=contract.REASON_TRACKING_FAILED,
            exit_code=contract.EXIT_TRACKING_FAILED,
            message=f"spec.tracking.mlflow.required: {tracker.failure[1]}",
        )
    return result


def classify(exc: BaseException, uri: str) -> tuple[str, str]:
    """(reason, one-line message) of an MLflow client failure."""
    text = " ".join(str(exc).split())
    status = _http_status(exc)
    if status in (401, 403) or "UNAUTHENTICATED" in text or "PERMISSION_DENIED" in text:
        return contract.TRACKING_REASON_REFUSED, (
            f"MLflow at {uri} refused the credentials (HTTP {status or 401}); set MLFLOW_TRACKING_TOKEN or "
            f"MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD through spec.envFrom: {text[:200]}"
        )
    if _is_connection_error(exc) or "failed with exception" in text or "timeout exception" in text:
        cause = text.rpartition("(Caused by ")[2].rstrip(")") if "(Caused by " in text else text
        return contract.TRACKING_REASON_UNREACHABLE, f"MLflow at {uri} is unreachable ({cause[:250]})"
    if status == 404 or "failed with error code 404" in text:
        return contract.TRACKING_REASON_ERROR, f"{uri} does not answer as an MLflow tracking server (HTTP 404)"
    return contract.TRACKING_REASON_ERROR, f"MLflow at {uri}: {type(exc).__name__}: {text[:250]}"


# ---- internals ---------------------------------------------------------------------------------------


def _warn(message: str) -> None:
    print(f"kubetrain: tracking: {message}", file=sys.stderr)


def _http_status(exc: BaseException) -> int | None:
    text = str(exc)
    for code in (401, 403, 404):
        if f"error code {code} " in text:
            return code
    get = getattr(exc, "get_http_status_code", None)
    if callable(get) and getattr(exc, "error_code", None) not in (None, "INTERNAL_ERROR"):
        try:
            status = int(get())
        except (TypeError, ValueError):
            return None
        return status if status != 500 else None
    return None


def _is_connection_error(exc: BaseException) -> bool:
    import requests

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, requests.exceptions.ConnectionError | requests.exceptions.Timeout | OSError):
            return True
        current = current.__cause__ or current.__context__
    return False


def _experiment_id(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc):  # another run created it first
            raise
        return str(client.get_experiment_by_name(name).experiment_id)


def _identity_tags(cfg: RunConfig) -> dict[str, str]:
    tags = {
        "kubetrain.run.name": cfg.name,
        "kubetrain.model": cfg.spec.model,
        "kubetrain.dataset.uri": cfg.spec.dataset.uri,
        "mlflow.source.type": "JOB",
        "mlflow.source.name": "kubetrain",
    }
    if cfg.uid:
        tags["kubetrain.run.uid"] = cfg.uid
    if cfg.namespace:
        tags["kubetrain.namespace"] = cfg.namespace
    image = os.environ.get(contract.ENV_IMAGE)
    if image:
        tags["kubetrain.image"] = image
    return tags


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text[:MAX_PARAM_VALUE]


def _params(cfg: RunConfig, result: contract.Result, notes: Notes) -> dict[str, str]:
    spec = cfg.spec
    params: dict[str, Any] = {k: v for k, v in notes.model_params.items()}
    params.update(estimator=spec.estimator.name, seed=spec.seed)
    if result.task:
        params["task"] = result.task
    if spec.search is not None:
        params.update(
            {
                "search.strategy": spec.search.strategy,
                "search.space": dict(spec.search.space),
                "search.cv": spec.search.cv,
                "search.scoring": spec.search.scoring or result.primary_metric or "",
            }
        )
        if spec.search.strategy == "random":
            params["search.trials"] = spec.search.trials
    for k, v in (notes.best_params or result.best_params or {}).items():
        params[f"search.best.{k}"] = v
    return {k: _param(v) for k, v in params.items()}


def _tags(cfg: RunConfig, result: contract.Result) -> dict[str, str]:
    tags = {"kubetrain.outcome": result.outcome, "kubetrain.reason": result.reason}
    dataset = result.dataset or {}
    if dataset.get("fingerprint"):
        tags["kubetrain.dataset.fingerprint"] = str(dataset["fingerprint"])
    model = result.model or {}
    for key in ("uri", "sha256"):
        if model.get(key):
            tags[f"kubetrain.model.{key}"] = str(model[key])
    return tags


def _dataset_input(cfg: RunConfig, result: contract.Result) -> Any | None:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    info = result.dataset or {}
    fp = str(info.get("fingerprint") or "")
    if not fp:
        return None
    uri = cfg.spec.dataset.uri
    scheme = uri.partition("://")[0]
    source_type = {"s3": "s3", "https": "http", "file": "local"}.get(scheme, scheme)
    profile: dict[str, Any] = {k: info[k] for k in ("rows", "columns", "features", "format") if k in info}
    profile["fingerprint"] = fp
    name = uri.rstrip("/").rsplit("/", 1)[-1] or cfg.spec.model
    dataset = Dataset(
        name=name[:500],
        digest=fp.removeprefix("sha256:")[:DIGEST_LENGTH],
        source_type=source_type,
        source=json.dumps({"uri": uri}),
        profile=json.dumps(profile),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


def _log_all(tracker: Tracker, cfg: RunConfig, result: contract.Result, notes: Notes) -> None:
    from mlflow.entities import Metric, Param, RunTag

    client, run_id = tracker.client, tracker.run_id
    assert client is not None and run_id is not None
    now = _now_ms()
    metrics = [Metric(k, float(v), now, 0) for k, v in (result.metrics or {}).items()]
    if notes.cv_metric:
        metrics += [Metric(f"cv_{notes.cv_metric}_fold", s, now, i) for i, s in enumerate(notes.cv_folds)]
    params = [Param(k, v) for k, v in _params(cfg, result, notes).items()]
    tags = [RunTag(k, v) for k, v in _tags(cfg, result).items()]
    for start in range(0, max(len(params), len(metrics), len(tags), 1), 100):  # MLflow's batch limits
        client.log_batch(
            run_id,
            metrics=metrics[start : start + 100],
            params=params[start : start + 100],
            tags=tags[start : start + 100],
        )
    dataset = _dataset_input(cfg, result)
    if dataset is not None:
        client.log_inputs(run_id, datasets=[dataset])
    _log_trials(tracker, cfg, notes)
    client.set_terminated(run_id, "FINISHED" if result.outcome == contract.OUTCOME_SUCCEEDED else "FAILED")


def _log_trials(tracker: Tracker, cfg: RunConfig, notes: Notes) -> None:
    from mlflow.entities import Metric, Param

    client = tracker.client
    metric = notes.trial_metric or "score"
    base = {k: v for k, v in _identity_tags(cfg).items() if k.startswith("kubetrain.")}
    for i, trial in enumerate(notes.trials[:MAX_CHILD_RUNS]):
        name = f"{cfg.name}-trial-{i}"
        tags = {"mlflow.parentRunId": tracker.run_id, "mlflow.runName": name, "kubetrain.trial": str(i), **base}
        child = client.create_run(tracker.experiment_id, tags=tags, run_name=name)
        now = _now_ms()
        client.log_batch(
            child.info.run_id,
            metrics=[
                Metric(f"cv_{metric}_mean", float(trial["mean"]), now, 0),
                Metric(f"cv_{metric}_std", float(trial["std"]), now, 0),
            ],
            params=[Param(k, _param(v)) for k, v in trial["params"].items()],
        )
        client.set_terminated(child.info.run_id, "FINISHED")


def _try_terminate(tracker: Tracker, status: str) -> None:
    try:
        if tracker.client is not None and tracker.run_id is not None:
            tracker.client.set_terminated(tracker.run_id, status)
    except Exception:  # best effort: MLflow is already known to be failing
        pass


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
