"""status.report / status.evaluation and the Reported condition of a run, and their copy onto the
ModelVersion the run registered (pure functions, no cluster)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubetrain_api.models import ModelVersionStatus, TrainingRunStatus
from kubetrain_operator.modelversion import decide as mvd
from kubetrain_operator.trainingrun import status as st

from tests.unit.test_operator_decide import SETTINGS, _model, _run, _status_of
from tests.unit.test_operator_decide import _from_run as mv_from_run
from tests.unit.test_operator_jobs import make_run
from tests.unit.test_operator_status import NOW, job, pod
from tests.unit.test_registry import SHA

REPORT_URI = "pvc://kubetrain-models/iris/report.html"
SUMMARY = {
    "task": "classification",
    "rows": 38,
    "classes": 2,
    "perClass": [
        {"label": "no", "precision": 0.95, "recall": 0.9, "f1": 0.9231, "support": 20, "rocAuc": 0.97},
        {"label": "yes", "precision": 0.9, "recall": 0.95, "f1": 0.9231, "support": 18, "rocAuc": 0.97},
    ],
    "topFeatures": [{"name": "petal_length", "mean": 0.31, "std": 0.02}],
    "importanceScoring": "accuracy",
}


def _succeeded(
    report: dict[str, Any] | None, evaluation: Any = None, trimmed: list[str] | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {"outcome": "Succeeded", "reason": "Trained", "exit_code": 0, "task": "classification"}
    result["metrics"] = {"accuracy": 0.97}
    result["model"] = {
        "uri": "pvc://kubetrain-models/iris/model.joblib",
        "sha256": "a" * 64,
        "size": 1,
        "format": "joblib",
    }
    if report is not None:
        result["report"] = report
    if evaluation is not None:
        result["evaluation"] = evaluation
    if trimmed:
        result["trimmed"] = trimmed
    pods = [pod("Succeeded", exit_code=0, message=json.dumps(result))]
    outcome = st.observe(make_run(), job(conds=[("Complete", "")], succeeded=1), pods, NOW)
    return st.build_status(make_run(), 2, outcome, {}, NOW, job_name="iris-a151")


def _reported(s: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in s["conditions"] if c["type"] == "Reported")


def test_a_written_report_is_in_status_with_the_summary() -> None:
    s = _succeeded({"uri": REPORT_URI}, SUMMARY)
    assert s["phase"] == "Succeeded" and s["report"] == REPORT_URI and s["evaluation"] == SUMMARY
    cond = _reported(s)
    assert (cond["status"], cond["reason"], cond["message"]) == ("True", "ReportWritten", REPORT_URI)
    assert TrainingRunStatus.model_validate(s).dump() == s  # every field is declared in the CRD
    # kept when a later pass has no result (the Job is gone)
    again = st.build_status(make_run(), 2, st.observe(make_run(), None, [], NOW), s, NOW, job_name=None)
    assert again["report"] == REPORT_URI and again["evaluation"] == SUMMARY and _reported(again) == cond


def test_a_partial_report_is_incomplete_and_names_the_missing_plot() -> None:
    s = _succeeded({"uri": REPORT_URI, "problems": ["roc.png not rendered: RuntimeError: boom"]}, SUMMARY)
    cond = _reported(s)
    assert s["phase"] == "Succeeded" and s["report"] == REPORT_URI
    assert (cond["status"], cond["reason"]) == ("True", "ReportIncomplete")
    assert "roc.png not rendered: RuntimeError: boom" in cond["message"]


def test_no_report_is_a_false_condition_and_the_run_still_succeeded() -> None:
    s = _succeeded({"problems": ["report.html not written: MemoryError: no memory"]})
    cond = _reported(s)
    assert s["phase"] == "Succeeded" and "report" not in s and "evaluation" not in s
    assert {c["type"]: c["status"] for c in s["conditions"]}["Succeeded"] == "True"
    assert (cond["status"], cond["reason"]) == ("False", "ReportFailed")
    assert cond["message"] == "report.html not written: MemoryError: no memory"


def test_a_trimmed_summary_is_said_in_the_condition() -> None:
    s = _succeeded({"uri": REPORT_URI}, trimmed=["evaluation"])
    cond = _reported(s)
    assert "evaluation" not in s and cond["reason"] == "ReportIncomplete"
    assert "did not fit in the termination message" in cond["message"]


@pytest.mark.parametrize(
    "bad",
    [
        {"task": "clustering"},
        {"task": "classification", "perClass": [{"label": "x", "support": 1}] * 11},
        {"task": "classification", "topFeatures": [{"name": "n" * 64}]},
        "not a mapping",
    ],
)
def test_a_summary_the_api_refuses_is_left_out(bad: Any) -> None:
    s = _succeeded({"uri": REPORT_URI}, bad)
    assert "evaluation" not in s and s["report"] == REPORT_URI


def test_an_older_trainer_without_a_report_gives_no_condition() -> None:
    s = _succeeded(None)
    assert "report" not in s and "Reported" not in {c["type"] for c in s["conditions"]}


def test_the_version_gets_report_and_summary_from_its_run_when_it_becomes_ready() -> None:
    run = _run("run-1", SHA)
    run["status"].update(report=REPORT_URI, evaluation=SUMMARY)
    plan = mvd.decide(_model(mvd.VersionFacts(obj=mv_from_run(), run=run)), SETTINGS, NOW)
    status = _status_of(plan, "iris-v1")
    assert status["phase"] == "Ready" and status["report"] == REPORT_URI and status["evaluation"] == SUMMARY
    ModelVersionStatus.model_validate(status)
    without = _run("run-1", SHA)
    plain = _status_of(mvd.decide(_model(mvd.VersionFacts(obj=mv_from_run(), run=without)), SETTINGS, NOW), "iris-v1")
    assert plain["phase"] == "Ready" and "report" not in plain and "evaluation" not in plain
