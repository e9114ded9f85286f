"""The trainer's contract with the operator: exit codes, reasons, env vars, progress and result formats.

This module is imported by the operator, so it must stay dependency-free (standard library only): no
scikit-learn, pandas or numpy at import time.

Invocation
    ``RUN_COMMAND`` (no arguments) inside a trainer Job; the TrainingRun manifest comes as JSON in
    ``KUBETRAIN_CONFIG``. ``VERIFY_COMMAND`` reads ``KUBETRAIN_VERIFY_URI`` and ``KUBETRAIN_VERIFY_SHA256``
    (``verify_command()`` adds ``--model``/``--sha256`` for a mounted file). ``cleanup_command()`` removes
    an artifact directory with the trainer image's Python (no shell).

Progress
    One JSON object per line on stdout: ``{"progress": {"step": "load", "percent": 10}}``.
    Steps, in order: ``config``, ``load``, ``validate``, ``train``, ``evaluate``, ``save``, ``done``
    (``search`` replaces ``train`` while a hyperparameter search runs). Anything else the trainer logs
    goes to stderr.

Result
    A compact JSON object (at most ``RESULT_MAX_BYTES``) written to the termination-message file
    (``KUBETRAIN_TERMINATION_LOG``, else ``/dev/termination-log`` when it exists and is writable) and
    printed as the last line on stdout. See :class:`Result` for the fields. When it would be too large,
    the least important fields are dropped in ``TRIM_ORDER`` and named in ``trimmed``; ``signature`` is
    whole or absent, never a partial feature list.

Exit codes
    The operator maps them with a podFailurePolicy: 0 success, 1 internal error (retryable), 10..14
    terminal failures (no retry).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Final, TypedDict

# ---- invocation ---------------------------------------------------------------------------------------

#: The trainer Job's container command (config from KUBETRAIN_CONFIG, no arguments).
RUN_COMMAND: Final = ("python", "-m", "kubetrain_trainer", "run")
#: The verification Job's command for hand-registered ModelVersions (KUBETRAIN_VERIFY_URI/_SHA256).
VERIFY_COMMAND: Final = ("python", "-m", "kubetrain_trainer", "verify")
#: A TrainingSchedule's gate pod (spec.when): the dataset's fingerprint and, with KUBETRAIN_DRIFT_REFERENCE_*,
#: the PSI of the data against that version's feature profile; never trains (reason GateChecked, exit 0).
GATE_COMMAND: Final = ("python", "-m", "kubetrain_trainer", "gate")
#: Local checks of config and data, no training (same exit codes; reason Valid).
VALIDATE_COMMAND: Final = ("python", "-m", "kubetrain_trainer", "validate")
VERIFY_MODEL_ARG: Final = "--model"  # verify: model directory or model.joblib (wins over KUBETRAIN_VERIFY_URI)
VERIFY_SHA256_ARG: Final = "--sha256"  # verify: expected sha256 (wins over KUBETRAIN_VERIFY_SHA256)
#: Removes the directory given as its one argument; a fixed snippet, so a path never reaches a shell.
CLEANUP_SCRIPT: Final = (
    "import shutil, sys\nshutil.rmtree(sys.argv[1], ignore_errors=True)\nprint('removed', sys.argv[1])\n"
)


def verify_command(model_path: str | None = None, sha256: str | None = None) -> list[str]:
    """``VERIFY_COMMAND``, with ``--model``/``--sha256`` when the model is a mounted file."""
    command = list(VERIFY_COMMAND)
    if model_path is not None:
        command += [VERIFY_MODEL_ARG, model_path]
    if sha256 is not None:
        command += [VERIFY_SHA256_ARG, sha256]
    return command


def cleanup_command(directory: str) -> list[str]:
    """The container command that removes ``directory`` (a mounted artifact directory)."""
    return ["python", "-c", CLEANUP_SCRIPT, directory]


# ---- exit codes ------------------------------------------------------------------------------------

EXIT_OK: Final = 0
EXIT_INTERNAL_ERROR: Final = 1  # unexpected; retryable
EXIT_CONFIG_INVALID: Final = 10
EXIT_DATA_INVALID: Final = 11
EXIT_BELOW_THRESHOLD: Final = 12
EXIT_VERIFY_FAILED: Final = 13
EXIT_TRACKING_FAILED: Final = 14  # spec.tracking.mlflow.required and MLflow unreachable or refusing

#: Exit codes after which retrying the pod cannot help (podFailurePolicy action FailJob).
TERMINAL_EXIT_CODES: Final = (
    EXIT_CONFIG_INVALID,
    EXIT_DATA_INVALID,
    EXIT_BELOW_THRESHOLD,
    EXIT_VERIFY_FAILED,
    EXIT_TRACKING_FAILED,
)

# ---- outcomes and reasons ----------------------------------------------------------------------------

OUTCOME_SUCCEEDED: Final = "Succeeded"
OUTCOME_FAILED: Final = "Failed"

REASON_TRAINED: Final = "Trained"  # run: the model was trained, passed its thresholds and was saved
REASON_VALID: Final = "Valid"  # validate: config and data are fine
REASON_VERIFIED: Final = "Verified"  # verify: checksum, load and smoke prediction passed
REASON_TRIALS_COMPLETED: Final = "TrialsCompleted"  # a pod with JOB_COMPLETION_INDEX > 0 wrote its share
REASON_GATE_CHECKED: Final = "GateChecked"  # gate: fingerprint (and drift) computed; Result.gate holds them
REASON_CONFIG_INVALID: Final = "ConfigInvalid"
REASON_DATA_INVALID: Final = "DataInvalid"
REASON_BELOW_THRESHOLD: Final = "BelowThreshold"
REASON_VERIFY_FAILED: Final = "VerifyFailed"
REASON_INTERNAL_ERROR: Final = "InternalError"
REASON_TRACKING_FAILED: Final = "TrackingFailed"  # required tracking could not be done

EXIT_CODE_BY_REASON: Final[dict[str, int]] = {
    REASON_TRAINED: EXIT_OK,
    REASON_VALID: EXIT_OK,
    REASON_VERIFIED: EXIT_OK,
    REASON_TRIALS_COMPLETED: EXIT_OK,
    REASON_GATE_CHECKED: EXIT_OK,
    REASON_INTERNAL_ERROR: EXIT_INTERNAL_ERROR,
    REASON_CONFIG_INVALID: EXIT_CONFIG_INVALID,
    REASON_DATA_INVALID: EXIT_DATA_INVALID,
    REASON_BELOW_THRESHOLD: EXIT_BELOW_THRESHOLD,
    REASON_VERIFY_FAILED: EXIT_VERIFY_FAILED,
    REASON_TRACKING_FAILED: EXIT_TRACKING_FAILED,
}
REASON_BY_EXIT_CODE: Final[dict[int, str]] = {
    EXIT_INTERNAL_ERROR: REASON_INTERNAL_ERROR,
    EXIT_CONFIG_INVALID: REASON_CONFIG_INVALID,
    EXIT_DATA_INVALID: REASON_DATA_INVALID,
    EXIT_BELOW_THRESHOLD: REASON_BELOW_THRESHOLD,
    EXIT_VERIFY_FAILED: REASON_VERIFY_FAILED,
    EXIT_TRACKING_FAILED: REASON_TRACKING_FAILED,
}

# ---- environment -------------------------------------------------------------------------------------

ENV_CONFIG: Final = "KUBETRAIN_CONFIG"  # JSON TrainingRun manifest (metadata.name/namespace/uid + spec)
ENV_DATASET_PATH: Final = "KUBETRAIN_DATASET_PATH"  # local path of the dataset file (wins over spec.dataset.uri)
ENV_OUTPUT_DIR: Final = "KUBETRAIN_OUTPUT_DIR"  # local directory for this run's artifacts (exact, not a base)
ENV_OUTPUT_URI: Final = "KUBETRAIN_OUTPUT_URI"  # output base URI when the spec has none (operator default)
ENV_RUN_NAME: Final = "KUBETRAIN_RUN_NAME"  # run name (wins over metadata.name; --name wins over it)
ENV_PVC_ROOT: Final = "KUBETRAIN_PVC_ROOT"  # where pvc://claim/path resolves: $ROOT/claim/path
ENV_TERMINATION_LOG: Final = "KUBETRAIN_TERMINATION_LOG"  # result file; default /dev/termination-log
ENV_CPU_LIMIT: Final = "KUBETRAIN_CPU_LIMIT"  # e.g. "2" or "500m"; bounds n_jobs and thread pools
ENV_VERIFY_URI: Final = "KUBETRAIN_VERIFY_URI"  # verify: model file or directory (pvc://, file://, s3://)
ENV_VERIFY_SHA256: Final = "KUBETRAIN_VERIFY_SHA256"  # verify: expected sha256 of model.joblib
ENV_TRIALS_TIMEOUT: Final = "KUBETRAIN_TRIALS_TIMEOUT"  # index 0 waits this long (s) for other shares
ENV_JOB_COMPLETION_INDEX: Final = "JOB_COMPLETION_INDEX"  # set by Kubernetes for Indexed Jobs
# The champion of spec.register.promote (the ModelVersion holding the alias when the Job was created); the
# trainer checks the file's sha256 against ENV_CHAMPION_SHA256 before it loads it. Unset: no champion.
ENV_CHAMPION_NAME: Final = "KUBETRAIN_CHAMPION_NAME"  # the champion ModelVersion's name
ENV_CHAMPION_URI: Final = "KUBETRAIN_CHAMPION_URI"  # its artifact (pvc://, file://, s3://; file or directory)
ENV_CHAMPION_SHA256: Final = "KUBETRAIN_CHAMPION_SHA256"  # its spec.artifact.sha256
ENV_IMAGE: Final = "KUBETRAIN_IMAGE"  # the trainer image (an MLflow tag)
# gate: the ModelVersion holding spec.when.drift.against; its model.joblib is checked against the sha256 (the
# profile sits next to it, listed with its own sha256 in metadata.json). Unset: no drift check.
ENV_DRIFT_REFERENCE_NAME: Final = "KUBETRAIN_DRIFT_REFERENCE_NAME"  # the ModelVersion's name
ENV_DRIFT_REFERENCE_URI: Final = "KUBETRAIN_DRIFT_REFERENCE_URI"  # its artifact (file or directory)
ENV_DRIFT_REFERENCE_SHA256: Final = "KUBETRAIN_DRIFT_REFERENCE_SHA256"  # its spec.artifact.sha256
# MLflow tracking, the operator's defaults; each field of spec.tracking.mlflow wins over its variable.
ENV_MLFLOW_TRACKING_URI: Final = "KUBETRAIN_MLFLOW_TRACKING_URI"  # http(s):// server; unset = no tracking
ENV_MLFLOW_EXPERIMENT: Final = "KUBETRAIN_MLFLOW_EXPERIMENT"  # experiment name; default spec.model
ENV_MLFLOW_REQUIRED: Final = "KUBETRAIN_MLFLOW_REQUIRED"  # "true": tracking failures fail the run

DEFAULT_PVC_ROOT: Final = "/mnt/kubetrain/pvc"
DEFAULT_TERMINATION_LOG: Final = "/dev/termination-log"
DEFAULT_TRIALS_TIMEOUT_SECONDS: Final = 3600

# ---- artifacts ----------------------------------------------------------------------------------------

MODEL_FILE: Final = "model.joblib"
CHECKSUM_FILE: Final = "model.joblib.sha256"  # "<hex>  model.joblib\n" (sha256sum format)
METADATA_FILE: Final = "metadata.json"
#: Next to the model: the evaluation detail on the hold-out (``evaluation_detail``) and the model report
#: (``report.html`` embedding the PNG plots, which are also written as files). Never required: a run whose
#: report cannot be rendered still succeeds, and ``Result.report`` says what is missing.
EVALUATION_FILE: Final = "evaluation.json"
REPORT_FILE: Final = "report.html"
PROFILE_FILE: Final = "profile.json"  # the training data's feature profile (listed with its sha256 in metadata)
TRIALS_DIR: Final = "trials"  # <run dir>/trials/trial-<index>.json for parallel searches
MODEL_FORMAT: Final = "joblib"

# ---- result -------------------------------------------------------------------------------------------

RESULT_MAX_BYTES: Final = 4096
PROGRESS_KEY: Final = "progress"
#: Fields dropped, in this order, until the result fits in RESULT_MAX_BYTES (then the message is cut).
#: The operator reads none of timings and warnings; signature is the one field whose size grows with the
#: data (a wide dataset's feature list), so it goes before the small fields a ModelVersion records.
TRIM_ORDER: Final = (
    "timings",
    "warnings",
    "signature",
    "evaluation",
    "versions",
    "best_params",
    "dataset",
    "estimator",
    "report",
    "metrics",
    "tracking",
)


class PromotionScores(TypedDict, total=False):
    """``Result.promotion``: challenger and champion scored on the same hold-out split (spec.register.promote).

    ``metric`` and ``holdout`` (``sha256:<hex>`` of the hold-out rows: index and values) are always there;
    ``challenger`` is the new model's score; ``champion`` (its ModelVersion name), ``champion_sha256`` and
    ``champion_score`` when a champion was passed; ``problem`` says why a score is missing (an incompatible
    champion is reported here, never a crash).
    """

    metric: str
    holdout: str
    challenger: float
    champion: str
    champion_sha256: str
    champion_score: float
    problem: str


class DriftScore(TypedDict):
    feature: str  #: column name (cut to GATE_NAME_MAX)
    psi: float


class DriftReport(TypedDict, total=False):
    """``GateReport.drift``: PSI of the data against the reference version's profile."""

    against: str  #: the reference ModelVersion
    max_psi: float
    top: list[DriftScore]  #: at most GATE_TOP_FEATURES, largest first
    missing_features: list[str]  #: at most GATE_TOP_FEATURES
    rows: int


class GateReport(TypedDict, total=False):
    """``Result.gate`` of the gate command: ``fingerprint`` always (``method:value;size=bytes``); ``drift``
    when a reference was passed and it has a profile; ``problem`` when it has none (trained before profiles
    were stored, or its metadata does not list one): the gate cannot tell, so the operator trains."""

    fingerprint: str
    drift: DriftReport
    problem: str


GATE_TOP_FEATURES: Final = 5
GATE_NAME_MAX: Final = 120
GATE_FINGERPRINT_MAX: Final = 256

#: Longest ``PromotionScores.problem`` (the result must stay within RESULT_MAX_BYTES).
PROMOTION_PROBLEM_MAX: Final = 300


class FeatureSpec(TypedDict):
    """One input column of the model: ``kubetrain_api.models.FeatureSpec`` (no other keys)."""

    name: str  #: column name (at most 253 characters)
    dtype: str  #: pandas dtype the model was trained on, e.g. "float64", "str", "datetime64[us]"


class Signature(TypedDict):
    """The model's input and output: ``kubetrain_api.models.Signature`` (no other keys).

    ``features`` lists every column the model reads, in order (at most 4096); ``target`` is the
    predicted column, ``None`` for unlabelled anomaly detection.
    """

    features: list[FeatureSpec]
    target: str | None


#: ``ReportInfo.problems``: at most this many, each at most ``REPORT_PROBLEM_MAX`` characters.
REPORT_PROBLEMS_MAX: Final = 3
REPORT_PROBLEM_MAX: Final = 200


class ReportInfo(TypedDict, total=False):
    """``Result.report``: ``uri`` of report.html when it was written (next to the model, same scheme);
    ``problems`` names what was not rendered or written (a plot that failed, no evaluation.json, ...)."""

    uri: str
    problems: list[str]


TRACKING_MESSAGE_MAX: Final = 400  # a Tracking message's share of the 4 KiB result


class Tracking(TypedDict, total=False):
    """What became of tracking (MLflow): ``tracked`` always; ``run_id``/``experiment_id``/``url`` once
    the MLflow run exists; ``reason`` (CamelCase) and ``message`` (at most ``TRACKING_MESSAGE_MAX``)."""

    tracked: bool
    run_id: str
    experiment_id: str
    url: str
    reason: str
    message: str


TRACKING_REASON_LOGGED: Final = "Logged"  # params, metrics, tags, dataset and model link are in MLflow
TRACKING_REASON_UNREACHABLE: Final = "MlflowUnreachable"  # connection refused, DNS, timeout, 5xx
TRACKING_REASON_REFUSED: Final = "MlflowRefused"  # 401/403: credentials missing or refused
TRACKING_REASON_ERROR: Final = "MlflowError"  # any other MLflow answer (404: not an MLflow server, ...)
TRACKING_REASON_NOT_INSTALLED: Final = "MlflowNotInstalled"  # the image lacks the mlflow extra


@dataclass
class Result:
    """What a trainer invocation reports. ``None`` fields are left out of the JSON (keys = field names).

    ``metrics``: metric name → float (hold-out test split; ``cv_<metric>_mean``/``_std`` when
    ``evaluation.cvFolds`` is set; ``search_best_<metric>`` after a search).
    ``model``: ``{"uri", "sha256", "size", "format"}``. ``dataset``: ``{"uri", "format", "rows",
    "columns", "features", "fingerprint"}``. ``versions``: ``{"python", "sklearn", "joblib", "pandas",
    "numpy"}``. ``timings``: step → seconds.
    ``signature``: the model's :class:`Signature`, valid for ``kubetrain_api.models.Signature`` (run and
    validate results, from the moment the data is typed). Whole or absent: absent before that, when the
    signature is not a valid API signature (a column name over 253 characters, more than 4096 features;
    a warning says so), or when it did not fit in ``RESULT_MAX_BYTES`` (then ``trimmed`` names it).
    ``metadata.json`` always holds the full signature.
    ``tracking``: the run's :class:`Tracking` (absent when tracking is off).
    ``trimmed``: the fields ``to_json`` left out to fit in ``RESULT_MAX_BYTES``, in ``TRIM_ORDER``.
    ``promotion``: :class:`PromotionScores` of a run with ``spec.register.promote`` (bounded, never trimmed:
    the operator never moves an alias without it).
    ``evaluation``: the bounded summary of evaluation.json, valid for
    ``kubetrain_api.models.EvaluationSummary`` (the ModelVersion's ``status.evaluation``); evaluation.json
    next to the model holds the whole detail. ``report``: the :class:`ReportInfo`.
    ``gate``: the :class:`GateReport` of the gate command (bounded, never trimmed).
    ``dataset.source``: the dataset's source fingerprint (as ``GateReport.fingerprint``), for run results.
    """

    outcome: str
    reason: str
    message: str = ""
    exit_code: int = EXIT_OK
    task: str | None = None
    estimator: str | None = None
    primary_metric: str | None = None
    metrics: dict[str, float] | None = None
    model: dict[str, Any] | None = None
    best_params: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    versions: dict[str, str] | None = None
    timings: dict[str, float] | None = None
    warnings: list[str] | None = field(default=None)
    signature: Signature | None = None
    promotion: PromotionScores | None = None
    tracking: Tracking | None = None
    evaluation: dict[str, Any] | None = None
    report: ReportInfo | None = None
    gate: GateReport | None = None
    trimmed: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_json(self, max_bytes: int = RESULT_MAX_BYTES) -> str:
        """Compact JSON no longer than ``max_bytes`` (UTF-8); dropped fields are listed in ``trimmed``."""
        data = self.to_dict()
        text = _dumps(data)
        trimmed: list[str] = list(self.trimmed or [])
        for key in TRIM_ORDER:
            if len(text.encode()) <= max_bytes:
                return text
            if data.pop(key, None) is not None:
                trimmed.append(key)
                data["trimmed"] = trimmed
            text = _dumps(data)
        while len(text.encode()) > max_bytes and data.get("message"):
            msg = str(data["message"])
            data["message"] = msg[: max(0, len(msg) - (len(text.encode()) - max_bytes) - 16)] + "…"
            text = _dumps(data)
            if len(msg) <= 1:
                break
        return text

    @classmethod
    def from_json(cls, text: str) -> Result:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=False, allow_nan=False, default=str)


def progress_line(step: str, percent: int) -> str:
    """The progress line the trainer prints: ``{"progress": {"step": ..., "percent": ...}}``."""
    return json.dumps({PROGRESS_KEY: {"step": step, "percent": int(percent)}}, separators=(",", ":"))


def parse_progress_line(line: str) -> tuple[str, int] | None:
    """(step, percent) of a progress line, or None for any other line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    prog = data.get(PROGRESS_KEY) if isinstance(data, dict) else None
    if not isinstance(prog, dict) or "step" not in prog or "percent" not in prog:
        return None
    return str(prog["step"]), int(prog["percent"])


def parse_result(text: str) -> Result | None:
    """The Result in a termination message or the last stdout line; None when it is not one."""
    text = text.strip()
    if not text:
        return None
    try:
        data = json.loads(text.splitlines()[-1])
    except ValueError:
        return None
    if not isinstance(data, dict) or "outcome" not in data or "reason" not in data:
        return None
    return Result.from_json(json.dumps(data))
