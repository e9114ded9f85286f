"""One training run: config → data → pipeline → evaluation → artifacts → result."""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import contract
from .config import RunConfig
from .errors import ConfigInvalid, DataInvalid

ProgressFn = Callable[[str, int], None]


def _noop(step: str, percent: int) -> None:
    return None


def cpu_limit() -> int:
    """Usable cores: ``$KUBETRAIN_CPU_LIMIT`` ("2", "500m", "1.5") bounded by what the process sees."""
    try:
        visible = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        visible = os.cpu_count() or 1
    raw = (os.environ.get(contract.ENV_CPU_LIMIT) or "").strip()
    if not raw:
        return max(1, visible)
    try:
        cores = float(raw[:-1]) / 1000 if raw.endswith("m") else float(raw)
    except ValueError:
        return max(1, visible)
    return max(1, min(visible, math.floor(cores)))


def completion_index() -> int | None:
    raw = os.environ.get(contract.ENV_JOB_COMPLETION_INDEX)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigInvalid(f"{contract.ENV_JOB_COMPLETION_INDEX}={raw!r} is not an integer") from None


@dataclass
class Outputs:
    """Where artifacts go locally, the URI the result reports, and a remote base to upload to."""

    run_dir: Path
    model_uri: str
    upload_to: str | None = None


def resolve_output(cfg: RunConfig, output_arg: str | None, scratch: Path) -> Outputs:
    from .data import check_bucket, check_uri_path, local_path

    env_dir = os.environ.get(contract.ENV_OUTPUT_DIR)
    spec_uri = cfg.spec.output.uri if cfg.spec.output else None
    base_uri = spec_uri or os.environ.get(contract.ENV_OUTPUT_URI) or None
    logical = f"{base_uri.rstrip('/')}/{cfg.name}/{contract.MODEL_FILE}" if base_uri else None
    if output_arg:
        run_dir = Path(output_arg).resolve() / cfg.name
        return Outputs(run_dir, (run_dir / contract.MODEL_FILE).as_uri())
    if env_dir:
        run_dir = Path(env_dir)
        return Outputs(run_dir, logical or (run_dir.resolve() / contract.MODEL_FILE).as_uri())
    if base_uri:
        field = "spec.output.uri" if spec_uri else contract.ENV_OUTPUT_URI
        check_uri_path(base_uri, field)
        local = local_path(base_uri, field)
        if local is not None:
            run_dir = local / cfg.name
            return Outputs(run_dir, logical or (run_dir / contract.MODEL_FILE).as_uri())
        if not base_uri.startswith("s3://"):
            raise ConfigInvalid(f"{field} {base_uri!r}: artifacts can go to pvc://, file:// or s3://")
        check_bucket(base_uri, field)
        return Outputs(
            scratch / "upload" / cfg.name, logical or base_uri, upload_to=f"{base_uri.rstrip('/')}/{cfg.name}"
        )
    run_dir = Path.cwd() / "kubetrain-runs" / cfg.name
    return Outputs(run_dir, (run_dir / contract.MODEL_FILE).as_uri())


@dataclass
class RunState:
    """What is known so far; becomes the result whatever happens."""

    task: str | None = None
    estimator: str | None = None
    primary_metric: str | None = None
    metrics: dict[str, float] | None = None
    model: dict[str, Any] | None = None
    best_params: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    signature: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def result(self, reason: str, message: str = "") -> contract.Result:
        from .artifacts import library_versions

        code = contract.EXIT_CODE_BY_REASON[reason]
        return contract.Result(
            outcome=contract.OUTCOME_SUCCEEDED if code == 0 else contract.OUTCOME_FAILED,
            reason=reason,
            message=message,
            exit_code=code,
            task=self.task,
            estimator=self.estimator,
            primary_metric=self.primary_metric,
            metrics=self.metrics,
            model=self.model,
            best_params=self.best_params,
            dataset=self.dataset,
            signature=self.signature,
            versions=library_versions(),
            timings={k: round(v, 3) for k, v in self.timings.items()} or None,
            warnings=self.warnings[:10] or None,
        )


class _Timer:
    def __init__(self, state: RunState, step: str) -> None:
        self.state, self.step = state, step

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.state.timings[self.step] = self.state.timings.get(self.step, 0.0) + time.perf_counter() - self.start


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, tuple):
            v = list(v)
        if isinstance(v, bool | int | float | str | list) or v is None:
            out[k] = v
        else:
            out[k] = repr(v)
    return out


def load_and_prepare(cfg: RunConfig, state: RunState, progress: ProgressFn, scratch: Path) -> Any:
    """Resolve, read and validate the data (ConfigInvalid / DataInvalid on problems)."""
    from .data import fingerprint, infer_format, read_table, resolve_dataset
    from .estimators import CATALOGUE
    from .features import prepare

    spec = cfg.spec
    if spec.estimator.name not in CATALOGUE:
        raise ConfigInvalid(f"spec.estimator.name: unknown estimator {spec.estimator.name!r}")
    _precheck_params(spec)
    progress("load", 5)
    with _Timer(state, "load"):
        path = resolve_dataset(spec.dataset.uri, scratch)
        try:
            fmt = infer_format(spec.dataset.uri, spec.dataset.format)
        except ConfigInvalid:
            if not os.environ.get(contract.ENV_DATASET_PATH):
                raise
            fmt = infer_format(str(path), None)  # the operator's resolved file may carry the extension
        df = read_table(path, fmt, spec.dataset.records_path)
    progress("validate", 20)
    with _Timer(state, "validate"):
        prepared = prepare(df, spec.dataset, spec.task)
        state.task = prepared.task
        state.warnings.extend(prepared.warnings)
        state.dataset = {
            "uri": spec.dataset.uri,
            "format": fmt,
            "rows": len(prepared.X),
            "columns": int(df.shape[1]),
            "features": len(prepared.columns),
        }
    with _Timer(state, "fingerprint"):
        state.dataset["fingerprint"] = "sha256:" + fingerprint(df)
    del df
    return prepared


def _precheck_params(spec: Any) -> None:
    """Unknown estimator params fail before any data is read (the task may not be known yet)."""
    from .estimators import CATALOGUE, RESERVED

    known: set[str] = set()
    for loader in CATALOGUE[spec.estimator.name].values():
        try:
            known |= set(loader()().get_params(deep=False))
        except ImportError:
            raise ConfigInvalid(
                f"spec.estimator.name: {spec.estimator.name} is not installed in this trainer image"
            ) from None
    for where, keys in (
        ("spec.estimator.params", spec.estimator.params),
        ("spec.search.space", (spec.search.space if spec.search else {})),
    ):
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ConfigInvalid(
                f"{where}: unknown parameter(s) {', '.join(unknown)} for {spec.estimator.name} "
                f"(valid: {', '.join(sorted(known - RESERVED))})"
            )


def build_pipeline(cfg: RunConfig, prepared: Any, n_jobs: int) -> Any:
    from sklearn.pipeline import Pipeline

    from .estimators import NATIVE_MISSING, NEEDS_SCALING, build_estimator
    from .features import build_preprocessor

    spec = cfg.spec
    est = build_estimator(
        spec.estimator.name, prepared.task, dict(spec.estimator.params), spec.seed, n_jobs, spec.resources.gpus
    )
    pre = build_preprocessor(
        prepared.columns,
        scale=spec.estimator.name in NEEDS_SCALING,
        native_missing=spec.estimator.name in NATIVE_MISSING,
    )
    return Pipeline([("preprocess", pre), ("model", est)])


def _split(cfg: RunConfig, prepared: Any, state: RunState) -> tuple[Any, Any, Any, Any]:
    from sklearn.model_selection import train_test_split

    from .features import CLASSIFICATION

    spec = cfg.spec
    X, y = prepared.X, prepared.y
    stratify = None
    if prepared.task == CLASSIFICATION:
        counts = y.value_counts()
        n_test = math.ceil(len(y) * spec.evaluation.test_fraction)
        if counts.min() >= 2 and n_test >= len(counts):
            stratify = y
        else:
            state.warnings.append("test split not stratified (a class has fewer than 2 rows)")
    if y is None:
        X_train, X_test = train_test_split(X, test_size=spec.evaluation.test_fraction, random_state=spec.seed)
        return X_train, X_test, None, None
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=spec.evaluation.test_fraction, random_state=spec.seed, stratify=stratify
    )
    if prepared.task == CLASSIFICATION and y_train.nunique() < 2:
        raise DataInvalid(f"target column {y.name!r}: the training split has a single class; add more rows")
    return X_train, X_test, y_train, y_test


def train(
    cfg: RunConfig,
    output_arg: str | None = None,
    progress: ProgressFn = _noop,
    validate_only: bool = False,
) -> contract.Result:
    """The whole run. Raises TrainerError subclasses; the caller turns them into results."""
    from threadpoolctl import threadpool_limits

    state = RunState(estimator=cfg.spec.estimator.name)
    t0 = time.perf_counter()
    n_jobs = cpu_limit()
    index = completion_index()
    with tempfile.TemporaryDirectory(prefix="kubetrain-") as scratch_name:
        scratch = Path(scratch_name)
        outputs = resolve_output(cfg, output_arg, scratch)
        try:
            return _train(cfg, state, outputs, progress, validate_only, n_jobs, index, scratch, threadpool_limits)
        except BaseException as exc:
            state.timings["total"] = time.perf_counter() - t0
            exc.state = state  # type: ignore[attr-defined]
            raise


def _train(
    cfg: RunConfig,
    state: RunState,
    outputs: Outputs,
    progress: ProgressFn,
    validate_only: bool,
    n_jobs: int,
    index: int | None,
    scratch: Path,
    threadpool_limits: Any,
) -> contract.Result:
    from .artifacts import library_versions, save_artifacts, upload_dir
    from .estimators import estimator_class
    from .evaluation import DEFAULT_PRIMARY, check_thresholds, compute_metrics, metric_names, score_sign, scorer_for
    from .search import build_space, candidates, collect_shares, cv_splitter, run_share, search_in_process

    t0 = time.perf_counter()
    spec = cfg.spec
    prepared = load_and_prepare(cfg, state, progress, scratch)
    sig = prepared.signature
    state.signature = {
        "features": [{"name": f["name"], "dtype": f["dtype"]} for f in sig["features"]],
        "target": sig["target"],
    }
    task = prepared.task
    estimator_class(spec.estimator.name, task)  # estimator/task mismatch after inference
    has_labels = prepared.y is not None
    names = metric_names(task, list(spec.evaluation.metrics), has_labels)
    primary = spec.evaluation.primary_metric or DEFAULT_PRIMARY[task]
    state.primary_metric = primary
    if primary not in names:
        names.append(primary)
    for th in spec.evaluation.thresholds:
        if th.metric not in names:
            raise ConfigInvalid(f"spec.evaluation.thresholds: {th.metric} is not computed for {task}")
    n_classes = int(prepared.y.nunique()) if has_labels else 0
    search = spec.search
    parallel = search is not None and search.parallelism > 1 and index is not None
    search_jobs = n_jobs if search else 1
    pipeline = build_pipeline(cfg, prepared, 1 if search and search_jobs > 1 else n_jobs)
    space = build_space(dict(search.space), pipeline.named_steps["model"], search.strategy) if search else {}
    scoring = scorer_for(task, search.scoring or primary, n_classes, has_labels) if search else None
    cv_scoring = scorer_for(task, primary, n_classes, has_labels) if spec.evaluation.cv_folds else None
    if index is not None and search is not None and index >= search.parallelism:
        raise ConfigInvalid(
            f"{contract.ENV_JOB_COMPLETION_INDEX}={index} but spec.search.parallelism is {search.parallelism}"
        )

    with _Timer(state, "split"):
        X_train, X_test, y_train, y_test = _split(cfg, prepared, state)
    if validate_only:
        state.timings["total"] = time.perf_counter() - t0
        progress("done", 100)
        return state.result(contract.REASON_VALID, f"config and data are valid ({task}, {len(prepared.X)} rows)")

    metrics: dict[str, float] = {}
    with threadpool_limits(limits=n_jobs):
        if search is not None:
            progress("search", 30)
            cv = cv_splitter(task, search.cv, spec.seed)
            with _Timer(state, "search"):
                if parallel:
                    assert index is not None
                    cands = candidates(space, search.strategy, search.trials, spec.seed)
                    run_share(
                        pipeline,
                        cands,
                        index,
                        search.parallelism,
                        X_train,
                        y_train,
                        scoring,
                        cv,
                        n_jobs,
                        outputs.run_dir,
                    )
                    if index != 0:
                        state.timings["total"] = time.perf_counter() - t0
                        progress("done", 100)
                        share = len(range(index, len(cands), search.parallelism))
                        return state.result(
                            contract.REASON_TRIALS_COMPLETED,
                            f"scored {share} of {len(cands)} candidates (share {index})",
                        )
                    timeout = float(
                        os.environ.get(contract.ENV_TRIALS_TIMEOUT) or contract.DEFAULT_TRIALS_TIMEOUT_SECONDS
                    )
                    rows = collect_shares(outputs.run_dir, search.parallelism, len(cands), timeout)
                    best = cands[rows[0]["candidate"]]
                    pipeline.set_params(**best)
                    best_score = rows[0]["mean"]
                    best_params = {k.removeprefix("model__"): v for k, v in best.items()}
                else:
                    searcher = search_in_process(pipeline, space, search, scoring, cv, search_jobs, spec.seed)
                    searcher.fit(X_train, y_train)
                    best_score = float(searcher.best_score_)
                    best_params = {k.removeprefix("model__"): v for k, v in searcher.best_params_.items()}
                    pipeline = searcher.best_estimator_
            metric = search.scoring or primary
            metrics[f"search_best_{metric}"] = round(score_sign(metric) * best_score, 6)
            state.best_params = _json_params(best_params)
        progress("train", 45)
        with _Timer(state, "train"):
            if search is None or parallel:
                pipeline.fit(X_train, y_train)
        if spec.evaluation.cv_folds:
            from sklearn.model_selection import cross_val_score

            progress("evaluate", 70)
            with _Timer(state, "cv"):
                scores = cross_val_score(
                    pipeline,
                    X_train,
                    y_train,
                    scoring=cv_scoring,
                    cv=cv_splitter(task, spec.evaluation.cv_folds, spec.seed),
                    n_jobs=1,
                )
                sign = score_sign(primary)
                metrics[f"cv_{primary}_mean"] = round(sign * float(scores.mean()), 6)
                metrics[f"cv_{primary}_std"] = round(float(scores.std()), 6)
        progress("evaluate", 80)
        with _Timer(state, "evaluate"):
            test_metrics, warns = compute_metrics(task, pipeline, X_test, y_test, names)
            state.warnings.extend(warns)
            metrics = {**test_metrics, **metrics}
    state.metrics = metrics
    check_thresholds(list(spec.evaluation.thresholds), metrics)

    progress("save", 90)
    with _Timer(state, "save"):
        final_est = pipeline.named_steps["model"]
        state.timings["total"] = time.perf_counter() - t0
        metadata = {
            "schema_version": 1,
            "run": {"name": cfg.name, "namespace": cfg.namespace, "uid": cfg.uid},
            "model_name": spec.model,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "task": task,
            "estimator": {
                "name": spec.estimator.name,
                "class": f"{type(final_est).__module__}.{type(final_est).__qualname__}",
                "params": _json_params(final_est.get_params(deep=False)),
            },
            "best_params": state.best_params,
            "metrics": metrics,
            "primary_metric": primary,
            "signature": prepared.signature,
            "dataset": state.dataset,
            "dropped_columns": prepared.dropped,
            "versions": library_versions(),
            "timings": {k: round(v, 3) for k, v in state.timings.items()},
            "seed": spec.seed,
            "config": cfg.raw_spec,
        }
        ref = save_artifacts(outputs.run_dir, pipeline, metadata, outputs.model_uri)
        if outputs.upload_to:
            upload_dir(outputs.run_dir, outputs.upload_to)
    state.model = ref
    state.timings["total"] = time.perf_counter() - t0
    progress("done", 100)
    headline = f"{primary}={metrics[primary]:.4g}" if primary in metrics else ""
    return state.result(contract.REASON_TRAINED, f"trained {spec.estimator.name} ({task}) {headline}".strip())


def print_err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
