"""The stages of one training run, each a function from small typed inputs to a small typed output.

    check → load → prepare (+ describe, fingerprint) → plan → build → split
          → search → fit → cross_validate → evaluate → gate → save

Stages raise ``TrainerError`` subclasses for bad config or data and never record run state; the runner
(``runner.train``) calls them in order, records what they return in ``RunFacts``, and turns whatever
they raise into the result (``outcome.result_of``).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from kubetrain_api.models import DEFAULT_PRIMARY_METRIC, UNRANKED_METRICS
from kubetrain_api.models import Signature as ApiSignature
from pydantic import ValidationError

from . import contract
from .artifacts import (
    ArtifactRef,
    Saved,
    artifact_ref_from_env,
    library_versions,
    read_back,
    save_artifacts,
    upload_dir,
)
from .config import RunConfig
from .errors import ConfigInvalid, DataInvalid
from .evaluation import check_thresholds, compute_metrics, metric_names, score_champion, score_sign, scorer_for
from .features import CLASSIFICATION, Prepared

# ---- check and load -----------------------------------------------------------------------------------


def check_estimator(cfg: RunConfig) -> None:
    """A known, installed estimator with known params; fails before any data is read (the task may
    not be known yet, so every task's class of the estimator is asked)."""
    from .estimators import CATALOGUE, RESERVED

    spec = cfg.spec
    if spec.estimator.name not in CATALOGUE:
        raise ConfigInvalid(f"spec.estimator.name: unknown estimator {spec.estimator.name!r}")
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


@dataclass(frozen=True)
class Loaded:
    """The dataset as read, before any validation."""

    frame: pd.DataFrame
    format: str


def load(cfg: RunConfig, scratch: Path) -> Loaded:
    """Resolve the dataset (``$KUBETRAIN_DATASET_PATH`` wins; remote URIs are downloaded to ``scratch``)
    and read it (ConfigInvalid / DataInvalid on problems)."""
    from .data import infer_format, read_table, resolve_dataset

    dataset = cfg.spec.dataset
    path = resolve_dataset(dataset.uri, scratch)
    try:
        fmt = infer_format(dataset.uri, dataset.format)
    except ConfigInvalid:
        if not os.environ.get(contract.ENV_DATASET_PATH):
            raise
        fmt = infer_format(str(path), None)  # the operator's resolved file may carry the extension
    return Loaded(read_table(path, fmt, dataset.records_path), fmt)


# ---- prepare ------------------------------------------------------------------------------------------


def prepare(cfg: RunConfig, loaded: Loaded) -> Prepared:
    """Validate the frame against ``spec.dataset`` and type its columns (DataInvalid on problems)."""
    from .features import prepare as prepare_frame

    return prepare_frame(loaded.frame, cfg.spec.dataset, cfg.spec.task)


@dataclass(frozen=True)
class DatasetInfo:
    """What the result and metadata.json say about the data."""

    uri: str
    format: str
    rows: int
    columns: int
    features: int
    fingerprint: str | None = None
    source: str | None = None  # the location's fingerprint (profile.fingerprint_text), for spec.when.dataChanged

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def describe(cfg: RunConfig, loaded: Loaded, prepared: Prepared) -> DatasetInfo:
    return DatasetInfo(
        uri=cfg.spec.dataset.uri,
        format=loaded.format,
        rows=len(prepared.X),
        columns=int(loaded.frame.shape[1]),
        features=len(prepared.columns),
    )


def fingerprint(loaded: Loaded) -> str:
    """``sha256:<hex>`` over the raw frame's column names, dtypes and values."""
    from .data import fingerprint as frame_fingerprint

    return "sha256:" + frame_fingerprint(loaded.frame)


@dataclass(frozen=True)
class SignatureCheck:
    """The result's signature, or why there is none (the API would refuse it)."""

    signature: contract.Signature | None
    problem: str | None = None


def signature(prepared: Prepared) -> SignatureCheck:
    """The model's input columns with the pandas dtypes it was trained on, and the target, exactly as
    ``kubetrain_api.models.Signature`` accepts it (metadata.json keeps the richer one, with kinds)."""
    target = prepared.y.name if prepared.y is not None else None
    sig: contract.Signature = {
        "features": [{"name": str(c.name), "dtype": c.dtype} for c in prepared.columns],
        "target": None if target is None else str(target),
    }
    try:
        ApiSignature.model_validate(sig)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        return SignatureCheck(None, f"signature left out of the result ({where}: {first.get('msg', '')})")
    return SignatureCheck(sig)


# ---- plan and build -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the run computes, decided from the spec and the typed data."""

    task: str
    metrics: list[str]  # computed on the hold-out split; includes the primary metric
    primary: str
    has_labels: bool
    n_classes: int
    n_jobs: int  # cores for the whole run
    index: int | None  # JOB_COMPLETION_INDEX of a parallel search's pod
    parallel: bool  # this pod scores a share of the candidates


def plan(cfg: RunConfig, prepared: Prepared, n_jobs: int, index: int | None) -> Plan:
    """Metrics, primary metric and parallelism; ConfigInvalid when the spec asks for what the task
    cannot give (a threshold on a metric not computed, an estimator of another task)."""
    from .estimators import estimator_class

    spec, task = cfg.spec, prepared.task
    estimator_class(spec.estimator.name, task)  # estimator/task mismatch after inference
    has_labels = prepared.y is not None
    names = metric_names(task, list(spec.evaluation.metrics), has_labels)
    primary = spec.evaluation.primary_metric or DEFAULT_PRIMARY_METRIC[task]
    if primary not in names:
        names.append(primary)
    for th in spec.evaluation.thresholds:
        if th.metric not in names:
            raise ConfigInvalid(f"spec.evaluation.thresholds: {th.metric} is not computed for {task}")
    promote = spec.registration.promote
    if promote is not None and promote.metric not in names:
        raise ConfigInvalid(
            f"spec.register.promote.metric: {promote.metric} is not computed for {task} "
            f"(choose from {', '.join(sorted(set(names) - set(UNRANKED_METRICS)))})"
        )
    search = spec.search
    if index is not None and search is not None and index >= search.parallelism:
        raise ConfigInvalid(
            f"{contract.ENV_JOB_COMPLETION_INDEX}={index} but spec.search.parallelism is {search.parallelism}"
        )
    return Plan(
        task=task,
        metrics=names,
        primary=primary,
        has_labels=has_labels,
        n_classes=int(prepared.y.nunique()) if prepared.y is not None else 0,
        n_jobs=n_jobs,
        index=index,
        parallel=search is not None and search.parallelism > 1 and index is not None,
    )


@dataclass(frozen=True)
class Setup:
    """The unfitted pipeline and how it is searched and scored."""

    pipeline: Any
    space: dict[str, Any] = field(default_factory=dict)
    scoring: Any = None  # the search's scorer
    cv_scoring: Any = None  # evaluation.cvFolds' scorer (the primary metric)


def build(cfg: RunConfig, prepared: Prepared, plan: Plan) -> Setup:
    """The pipeline (preprocessing + estimator), the search space and the scorers, all checked."""
    from sklearn.pipeline import Pipeline

    from .estimators import NATIVE_MISSING, NEEDS_SCALING, build_estimator
    from .features import build_preprocessor
    from .search import build_space

    spec, search = cfg.spec, cfg.spec.search
    # A search parallelises over candidates, so its estimator gets one core.
    est_jobs = 1 if search is not None and plan.n_jobs > 1 else plan.n_jobs
    est = build_estimator(
        spec.estimator.name, plan.task, dict(spec.estimator.params), spec.seed, est_jobs, spec.resources.gpus
    )
    pre = build_preprocessor(
        prepared.columns,
        scale=spec.estimator.name in NEEDS_SCALING,
        native_missing=spec.estimator.name in NATIVE_MISSING,
    )
    pipeline = Pipeline([("preprocess", pre), ("model", est)])
    space, scoring = {}, None
    if search is not None:
        space = build_space(dict(search.space), pipeline.named_steps["model"], search.strategy)
        scoring = scorer_for(plan.task, search.scoring or plan.primary, plan.n_classes, plan.has_labels)
    cv_scoring = None
    if spec.evaluation.cv_folds:
        cv_scoring = scorer_for(plan.task, plan.primary, plan.n_classes, plan.has_labels)
    return Setup(pipeline, space, scoring, cv_scoring)


# ---- split --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """The hold-out split (``y_*`` are None for unlabelled anomaly detection)."""

    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series | None
    y_test: pd.Series | None
    warnings: tuple[str, ...] = ()


def split(cfg: RunConfig, prepared: Prepared) -> Split:
    """``testFraction`` hold-out, stratified for classification when every class can be."""
    from sklearn.model_selection import train_test_split

    evaluation, seed = cfg.spec.evaluation, cfg.spec.seed
    X, y = prepared.X, prepared.y
    if y is None:
        X_train, X_test = train_test_split(X, test_size=evaluation.test_fraction, random_state=seed)
        return Split(X_train, X_test, None, None)
    stratify, warnings = None, tuple[str, ...]()
    if prepared.task == CLASSIFICATION:
        counts = y.value_counts()
        if counts.min() >= 2 and math.ceil(len(y) * evaluation.test_fraction) >= len(counts):
            stratify = y
        else:
            warnings = ("test split not stratified (a class has fewer than 2 rows)",)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=evaluation.test_fraction, random_state=seed, stratify=stratify
    )
    if prepared.task == CLASSIFICATION and y_train.nunique() < 2:
        raise DataInvalid(f"target column {y.name!r}: the training split has a single class; add more rows")
    return Split(X_train, X_test, y_train, y_test, warnings)


# ---- search and fit -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Searched:
    """The search's winner: its pipeline (already refitted on the training split when ``refitted``)."""

    pipeline: Any
    refitted: bool
    best_params: dict[str, Any]  # JSON-ready, without the pipeline step prefix
    metric: str
    best_score: float  # in the metric's own sign (losses positive)
    #: every candidate scored: {"params", "mean", "std"} in the metric's own sign, candidate order
    trials: tuple[dict[str, Any], ...] = ()

    @property
    def metrics(self) -> dict[str, float]:
        return {f"search_best_{self.metric}": round(self.best_score, 6)}


@dataclass(frozen=True)
class ShareScored:
    """A parallel search pod other than index 0 scored its share; the run ends here for this pod."""

    index: int
    scored: int
    candidates: int

    @property
    def message(self) -> str:
        return f"scored {self.scored} of {self.candidates} candidates (share {self.index})"


def search(cfg: RunConfig, plan: Plan, setup: Setup, data: Split, run_dir: Path) -> Searched | ShareScored:
    """``spec.search`` in this process, or this pod's share of it (index 0 also collects the shares)."""
    from .search import cv_splitter, search_in_process

    search_spec = cfg.spec.search
    assert search_spec is not None, "search() needs spec.search"
    metric = search_spec.scoring or plan.primary
    cv = cv_splitter(plan.task, search_spec.cv, cfg.spec.seed)
    if plan.parallel:
        return _search_shared(cfg, plan, setup, data, run_dir, cv)
    searcher = search_in_process(
        setup.pipeline, setup.space, search_spec, setup.scoring, cv, plan.n_jobs, cfg.spec.seed
    )
    searcher.fit(data.X_train, data.y_train)
    best = {k.removeprefix("model__"): v for k, v in searcher.best_params_.items()}
    sign, res = score_sign(metric), searcher.cv_results_
    trials = tuple(
        {
            "params": json_params({k.removeprefix("model__"): v for k, v in params.items()}),
            "mean": sign * float(res["mean_test_score"][i]),
            "std": float(res["std_test_score"][i]),
        }
        for i, params in enumerate(res["params"])
    )
    return Searched(
        searcher.best_estimator_,
        True,
        json_params(best),
        metric,
        sign * float(searcher.best_score_),
        trials,
    )


def _search_shared(
    cfg: RunConfig, plan: Plan, setup: Setup, data: Split, run_dir: Path, cv: Any
) -> Searched | ShareScored:
    from .search import ShareTask, candidates, collect_shares, run_share

    search_spec = cfg.spec.search
    assert search_spec is not None and plan.index is not None
    cands = candidates(setup.space, search_spec.strategy, search_spec.trials, cfg.spec.seed)
    task = ShareTask(plan.index, search_spec.parallelism, setup.scoring, cv, plan.n_jobs, run_dir)
    run_share(setup.pipeline, cands, data.X_train, data.y_train, task)
    if plan.index != 0:
        return ShareScored(plan.index, len(range(plan.index, len(cands), search_spec.parallelism)), len(cands))
    timeout = float(os.environ.get(contract.ENV_TRIALS_TIMEOUT) or contract.DEFAULT_TRIALS_TIMEOUT_SECONDS)
    rows = collect_shares(run_dir, search_spec.parallelism, len(cands), timeout)
    best = cands[rows[0]["candidate"]]
    metric = search_spec.scoring or plan.primary
    best_params = json_params({k.removeprefix("model__"): v for k, v in best.items()})
    pipeline = setup.pipeline.set_params(**best)
    sign = score_sign(metric)
    trials = tuple(
        {"params": json_params(r["params"]), "mean": sign * float(r["mean"]), "std": float(r["std"])}
        for r in sorted(rows, key=lambda r: r["candidate"])
    )
    return Searched(pipeline, False, best_params, metric, sign * float(rows[0]["mean"]), trials)


def fit(pipeline: Any, data: Split) -> Any:
    """Fit the pipeline on the training split; returns it."""
    return pipeline.fit(data.X_train, data.y_train)


# ---- evaluate and gate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """How good the fitted pipeline is. (Detailed reports — confusion matrix, ROC points, permutation
    importance — join here as typed fields and become an artifact file in ``save``.)"""

    test: dict[str, float]  # metrics on the hold-out split
    search: dict[str, float] = field(default_factory=dict)  # search_best_<metric>
    cv: dict[str, float] = field(default_factory=dict)  # cv_<primary>_mean / _std
    warnings: tuple[str, ...] = ()

    @property
    def metrics(self) -> dict[str, float]:
        return {**self.test, **self.search, **self.cv}


def cross_validate(cfg: RunConfig, plan: Plan, setup: Setup, pipeline: Any, data: Split) -> dict[str, float]:
    """``cv_<primary>_mean``/``_std`` over ``evaluation.cvFolds`` folds of the training split ({} without)."""
    return cv_summary(plan, cv_fold_scores(cfg, plan, setup, pipeline, data))


def cv_fold_scores(cfg: RunConfig, plan: Plan, setup: Setup, pipeline: Any, data: Split) -> list[float]:
    """The primary metric on each of ``evaluation.cvFolds`` folds, in the metric's own sign ([] without)."""
    from sklearn.model_selection import cross_val_score

    from .search import cv_splitter

    folds = cfg.spec.evaluation.cv_folds
    if not folds:
        return []
    cv = cv_splitter(plan.task, folds, cfg.spec.seed)
    scores = cross_val_score(pipeline, data.X_train, data.y_train, scoring=setup.cv_scoring, cv=cv, n_jobs=1)
    return [score_sign(plan.primary) * float(s) for s in scores]


def cv_summary(plan: Plan, scores: list[float]) -> dict[str, float]:
    """``cv_<primary>_mean``/``_std`` of the fold scores ({} without folds)."""
    if not scores:
        return {}
    import numpy as np

    return {
        f"cv_{plan.primary}_mean": round(float(np.mean(scores)), 6),
        f"cv_{plan.primary}_std": round(float(np.std(scores)), 6),
    }


def evaluate(plan: Plan, pipeline: Any, data: Split) -> Evaluation:
    """The plan's metrics on the hold-out split; metrics that cannot be computed become warnings."""
    test, warnings = compute_metrics(plan.task, pipeline, data.X_test, data.y_test, plan.metrics)
    return Evaluation(test=test, warnings=tuple(warnings))


def gate(cfg: RunConfig, evaluation: Evaluation) -> None:
    """BelowThreshold unless every ``evaluation.thresholds`` entry holds."""
    check_thresholds(list(cfg.spec.evaluation.thresholds), evaluation.metrics)


# ---- challenge (spec.register.promote) ----------------------------------------------------------------


#: The ModelVersion holding the promoted alias, as the operator passed it (contract.ENV_CHAMPION_*).
Champion = ArtifactRef


def champion_from_env() -> Champion | None:
    """The champion from the environment; None when the operator passed none (no version holds the alias)."""
    return artifact_ref_from_env(
        contract.ENV_CHAMPION_URI, contract.ENV_CHAMPION_SHA256, contract.ENV_CHAMPION_NAME, "champion"
    )


def holdout_fingerprint(data: Split) -> str:
    """``sha256:<hex>`` of the hold-out rows: their index and values (features, then the target)."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(",".join(map(str, data.X_test.columns)).encode())
    digest.update(pd.util.hash_pandas_object(data.X_test, index=True).to_numpy().tobytes())
    if data.y_test is not None:
        digest.update(pd.util.hash_pandas_object(data.y_test, index=True).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _champion_path(champion: Champion, scratch: Path) -> Path:
    from .data import fetch_remote, local_path

    field_name = contract.ENV_CHAMPION_URI
    uri = champion.uri
    if not uri.rstrip("/").endswith(".joblib"):
        uri = f"{uri.rstrip('/')}/{contract.MODEL_FILE}"
    local = local_path(uri, field_name)
    if local is not None:
        return local
    if not uri.startswith("s3://"):
        raise ConfigInvalid(f"{field_name} {champion.uri!r}: a champion is read from pvc://, file:// or s3://")
    target = scratch / "champion"
    target.mkdir(parents=True, exist_ok=True)
    return fetch_remote(uri, target)


def challenge(
    cfg: RunConfig, plan: Plan, evaluation: Evaluation, data: Split, champion: Champion | None, scratch: Path
) -> contract.PromotionScores:
    """Challenger and champion scored on the same hold-out split. The champion's file is loaded only after
    its sha256 matches (VerifyFailed otherwise); a champion that cannot score this hold-out is reported in
    ``problem``, never a crash."""
    from .artifacts import load_checked_model

    promote = cfg.spec.registration.promote
    assert promote is not None, "challenge() needs spec.register.promote"
    metric = promote.metric
    scores: contract.PromotionScores = {"metric": metric, "holdout": holdout_fingerprint(data)}
    problems: list[str] = []
    if metric in evaluation.test:
        scores["challenger"] = evaluation.test[metric]
    else:
        problems.append(f"the new model's {metric} was not computed")
    if champion is not None:
        scores["champion"] = champion.name[:253]
        scores["champion_sha256"] = champion.sha256[:64]
        model = load_checked_model(_champion_path(champion, scratch), champion.sha256, f"champion {champion.name}")
        value, problem = score_champion(plan.task, model, data.X_test, data.y_test, metric)
        if value is not None:
            scores["champion_score"] = value
        else:
            problems.append(f"champion {champion.name} {problem}")
    if problems:
        scores["problem"] = "; ".join(problems)[: contract.PROMOTION_PROBLEM_MAX]
    return scores


# ---- save ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    """Everything ``save`` writes about a trained model."""

    pipeline: Any
    plan: Plan
    prepared: Prepared
    evaluation: Evaluation
    dataset: DatasetInfo
    best_params: dict[str, Any] | None = None


def metadata(cfg: RunConfig, trained: Trained, timings: Mapping[str, float]) -> dict[str, Any]:
    """metadata.json (without ``model``, which ``save_artifacts`` adds)."""
    spec, final = cfg.spec, trained.pipeline.named_steps["model"]
    return {
        "schema_version": 1,
        "run": {"name": cfg.name, "namespace": cfg.namespace, "uid": cfg.uid},
        "model_name": spec.model,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "task": trained.plan.task,
        "estimator": {
            "name": spec.estimator.name,
            "class": f"{type(final).__module__}.{type(final).__qualname__}",
            "params": json_params(final.get_params(deep=False)),
        },
        "best_params": trained.best_params,
        "metrics": trained.evaluation.metrics,
        "primary_metric": trained.plan.primary,
        "signature": trained.prepared.signature,
        "dataset": trained.dataset.to_dict(),
        "dropped_columns": trained.prepared.dropped,
        "versions": library_versions(),
        "timings": dict(timings),
        "seed": spec.seed,
        "config": cfg.raw_spec,
    }


def profile_document(prepared: Prepared) -> tuple[dict[str, Any], dict[str, Any]]:
    """(profile.json, its metadata.json entry): the features' profile (``profile.feature_profile``) and
    ``{"file", "sha256"}`` of exactly the bytes ``save_artifacts`` writes for it."""
    import hashlib
    import json

    from .profile import feature_profile

    doc = feature_profile(prepared.X)
    text = json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"  # artifacts._write_json's bytes
    return doc, {"file": contract.PROFILE_FILE, "sha256": hashlib.sha256(text.encode()).hexdigest()}


def save(
    run_dir: Path,
    model_uri: str,
    upload_to: str | None,
    pipeline: Any,
    meta: dict[str, Any],
    documents: Mapping[str, Any] | None = None,
    files: Mapping[str, Path] | None = None,
) -> Saved:
    """Write the artifacts (and ``documents``: file name → JSON, e.g. profile.json; ``files``: evaluation.json,
    the report) into ``run_dir`` atomically, then upload them when the output is remote."""
    saved = save_artifacts(run_dir, pipeline, meta, model_uri, documents, files=files)
    if upload_to:
        upload_dir(run_dir, upload_to, saved.files)
    read_back(upload_to or run_dir, saved.model["sha256"])  # success only for what is really there
    return saved


def json_params(params: dict[str, Any]) -> dict[str, Any]:
    """Estimator params as JSON values (numpy scalars unwrapped, tuples as lists, objects as repr)."""
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
