"""One training run: config → data → pipeline → evaluation → artifacts → result.

``train`` calls the stages of ``kubetrain_trainer.stages`` in order, records what each returns in a
``RunFacts``, and lets ``outcome.result_of`` turn any exception into the run's result.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import contract, reporting, stages, tracking
from .artifacts import check_writable
from .config import RunConfig
from .errors import ConfigInvalid
from .features import Prepared
from .outcome import RunFacts, result_of

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


@dataclass(frozen=True)
class RunContext:
    """What every stage of one invocation may need besides the data."""

    cfg: RunConfig
    outputs: Outputs
    scratch: Path
    progress: ProgressFn
    n_jobs: int
    index: int | None


def train(
    cfg: RunConfig,
    output_arg: str | None = None,
    progress: ProgressFn = _noop,
    validate_only: bool = False,
) -> contract.Result:
    """The whole run, as a result: failures become results with the facts known when they happened."""
    facts = RunFacts(estimator=cfg.spec.estimator.name, started=time.perf_counter())
    tracker, notes = None, tracking.Notes()
    with tempfile.TemporaryDirectory(prefix="kubetrain-") as scratch_name, result_of(facts) as outcome:
        scratch = Path(scratch_name)
        ctx = RunContext(
            cfg, resolve_output(cfg, output_arg, scratch), scratch, progress, cpu_limit(), completion_index()
        )
        if not validate_only:
            with facts.timed("tracking"):
                tracker = tracking.open_run(cfg)
            if tracker is not None:
                tracker.check_required()  # before any training: a required MLflow that is down fails fast
        outcome.result = _run(ctx, facts, validate_only, notes)
    if tracker is None:
        return outcome.final
    started = time.perf_counter()
    result = tracking.finish(tracker, cfg, outcome.final, notes)
    if result.timings is not None:
        timings = {
            **result.timings,
            "tracking": round(result.timings.get("tracking", 0.0) + time.perf_counter() - started, 3),
        }
        result = replace(result, timings=timings)
    return result


def _run(ctx: RunContext, facts: RunFacts, validate_only: bool, notes: tracking.Notes) -> contract.Result:
    from threadpoolctl import threadpool_limits

    if not validate_only and ctx.outputs.upload_to is None:
        check_writable(ctx.outputs.run_dir)  # before hours of training, not after
    prepared, dataset = _load_and_prepare(ctx, facts)
    plan = stages.plan(ctx.cfg, prepared, ctx.n_jobs, ctx.index)
    facts.primary_metric = plan.primary
    setup = stages.build(ctx.cfg, prepared, plan)
    with facts.timed("split"):
        data = stages.split(ctx.cfg, prepared)
    facts.warnings.extend(data.warnings)
    if validate_only:
        ctx.progress("done", 100)
        return facts.result(contract.REASON_VALID, f"config and data are valid ({plan.task}, {len(prepared.X)} rows)")
    with threadpool_limits(limits=ctx.n_jobs):
        fitted = _fit_and_evaluate(ctx, facts, plan, setup, data, notes)
    if isinstance(fitted, stages.ShareScored):
        ctx.progress("done", 100)
        return facts.result(contract.REASON_TRIALS_COMPLETED, fitted.message)
    pipeline, evaluation = fitted.pipeline, fitted.evaluation
    notes.model_params = stages.json_params(pipeline.named_steps["model"].get_params(deep=False))
    stages.gate(ctx.cfg, evaluation)
    if ctx.cfg.spec.registration.promote is not None:
        ctx.progress("evaluate", 85)
        with facts.timed("challenge"), threadpool_limits(limits=ctx.n_jobs):
            champion = stages.champion_from_env()
            facts.promotion = stages.challenge(ctx.cfg, plan, evaluation, data, champion, ctx.scratch)
    trained = stages.Trained(pipeline, plan, prepared, evaluation, dataset, facts.best_params)
    ctx.progress("save", 90)
    with facts.timed("report"), threadpool_limits(limits=ctx.n_jobs):
        described = _describe(ctx, trained, data, notes)
    with facts.timed("save"):
        meta = stages.metadata(ctx.cfg, trained, facts.rounded_timings())
        profile, meta["profile"] = stages.profile_document(prepared)
        out = ctx.outputs
        documents = {contract.PROFILE_FILE: profile}
        saved = stages.save(
            out.run_dir, out.model_uri, out.upload_to, pipeline, meta, documents=documents, files=described.files
        )
    facts.model = saved.model
    ctx.progress("done", 100)
    metrics = evaluation.metrics
    headline = f"{plan.primary}={metrics[plan.primary]:.4g}" if plan.primary in metrics else ""
    name = ctx.cfg.spec.estimator.name
    result = facts.result(contract.REASON_TRAINED, f"trained {name} ({plan.task}) {headline}".strip())
    return replace(result, evaluation=described.summary, report=described.report_info(out.model_uri))


def _describe(
    ctx: RunContext, trained: stages.Trained, data: stages.Split, notes: tracking.Notes
) -> reporting.Described:
    """evaluation.json, the plots and report.html of the trained model (never raises: see ``reporting``)."""
    from .artifacts import library_versions

    cfg = ctx.cfg
    lineage = {
        "trainingRun": f"{cfg.namespace}/{cfg.name}" if cfg.namespace else cfg.name,
        "uid": cfg.uid,
        "model": cfg.spec.model,
        "estimator": cfg.spec.estimator.name,
        "image": os.environ.get(contract.ENV_IMAGE),
        "modelUri": ctx.outputs.model_uri,
        "seed": cfg.spec.seed,
    }
    return reporting.describe(
        trained.pipeline,
        data.X_test,
        data.y_test,
        trained.plan.task,
        ctx.scratch / "report",
        seed=cfg.spec.seed,
        title=f"{cfg.spec.model}: {cfg.name}",
        params=notes.model_params,
        metrics=trained.evaluation.metrics,
        dataset=trained.dataset.to_dict(),
        library_versions=library_versions(),
        lineage={k: v for k, v in lineage.items() if v is not None},
    )


def _load_and_prepare(ctx: RunContext, facts: RunFacts) -> tuple[Prepared, stages.DatasetInfo]:
    """check → load → prepare → fingerprint, each recorded as soon as it is known."""
    stages.check_estimator(ctx.cfg)
    ctx.progress("load", 5)
    with facts.timed("load"):
        loaded = stages.load(ctx.cfg, ctx.scratch)
    ctx.progress("validate", 20)
    with facts.timed("validate"):
        prepared = stages.prepare(ctx.cfg, loaded)
        facts.task = prepared.task
        facts.warnings.extend(prepared.warnings)
        dataset = stages.describe(ctx.cfg, loaded, prepared)
        facts.dataset = dataset.to_dict()
        sig = stages.signature(prepared)
        facts.signature = sig.signature
        if sig.problem:
            facts.warnings.append(sig.problem)
    with facts.timed("fingerprint"):
        dataset = replace(dataset, fingerprint=stages.fingerprint(loaded), source=_source_fingerprint(ctx, facts))
        facts.dataset = dataset.to_dict()
    return prepared, dataset


def _source_fingerprint(ctx: RunContext, facts: RunFacts) -> str | None:
    """The dataset location's fingerprint (what a schedule's dataChanged gate compares); a store that cannot
    say is a warning, not a failed run."""
    from .errors import TrainerError
    from .gate import dataset_fingerprint

    try:
        return dataset_fingerprint(ctx.cfg)
    except (TrainerError, OSError, ValueError) as exc:
        facts.warnings.append(f"no dataset source fingerprint: {' '.join(str(exc).split())[:200]}")
        return None


@dataclass(frozen=True)
class Fitted:
    pipeline: Any
    evaluation: stages.Evaluation


def _fit_and_evaluate(
    ctx: RunContext,
    facts: RunFacts,
    plan: stages.Plan,
    setup: stages.Setup,
    data: stages.Split,
    notes: tracking.Notes,
) -> Fitted | stages.ShareScored:
    """search (when asked) → fit → cross-validate → evaluate."""
    searched = None
    pipeline = setup.pipeline
    if ctx.cfg.spec.search is not None:
        ctx.progress("search", 30)
        with facts.timed("search"):
            found = stages.search(ctx.cfg, plan, setup, data, ctx.outputs.run_dir)
        if isinstance(found, stages.ShareScored):
            return found
        searched, pipeline = found, found.pipeline
        facts.best_params = found.best_params
        notes.trials, notes.trial_metric, notes.best_params = list(found.trials), found.metric, found.best_params
    ctx.progress("train", 45)
    with facts.timed("train"):
        if searched is None or not searched.refitted:
            pipeline = stages.fit(pipeline, data)
    cv: dict[str, float] = {}
    if ctx.cfg.spec.evaluation.cv_folds:
        ctx.progress("evaluate", 70)
        with facts.timed("cv"):
            notes.cv_folds = stages.cv_fold_scores(ctx.cfg, plan, setup, pipeline, data)
            notes.cv_metric = plan.primary
            cv = stages.cv_summary(plan, notes.cv_folds)
    ctx.progress("evaluate", 80)
    with facts.timed("evaluate"):
        evaluation = replace(stages.evaluate(plan, pipeline, data), search=searched.metrics if searched else {}, cv=cv)
    facts.warnings.extend(evaluation.warnings)
    facts.metrics = evaluation.metrics
    return Fitted(pipeline, evaluation)
