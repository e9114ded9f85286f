"""spec.register.promote in the operator, without a cluster: the pure decision (direction, margin, ties, no
champion, no evidence, a champion that moved), the champion handed to the trainer Job, the new version's
claim and annotation, and the ModelVersion controller's status.promotion and aliasHistory."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from kubetrain_api.models import PromoteSpec, Promotion, improvement
from kubetrain_operator import k8s
from kubetrain_operator.modelversion import decide as mvd
from kubetrain_operator.settings import Settings
from kubetrain_operator.trainingrun import children, promotion
from kubetrain_operator.trainingrun import decide as trd
from kubetrain_trainer import contract

from tests.unit.test_operator_decide import owned_job, run_body
from tests.unit.test_operator_jobs import UID
from tests.unit.test_operator_status import NOW, OK_RESULT, pod
from tests.unit.test_registry import mv_obj

SETTINGS = Settings()
STAMP = "2026-01-01T12:00:00Z"
HOLDOUT = "sha256:" + "d" * 64
CHAMP = promotion.Champion("iris-v1", "pvc://kubetrain-models/iris-a/model.joblib", "b" * 64)
PROMOTE = {"alias": "production", "metric": "accuracy"}


def _scores(challenger: float | None, champion: float | None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"metric": "accuracy", "holdout": HOLDOUT, "champion": "iris-v1", "champion_sha256": "b" * 64}
    if challenger is not None:
        out["challenger"] = challenger
    if champion is not None:
        out["champion_score"] = champion
    return {**out, **extra}


def _decide(spec: dict[str, Any], scores: dict[str, Any] | None, holder: promotion.Champion | None) -> dict[str, Any]:
    return promotion.decide_promotion(PromoteSpec.model_validate(spec), scores, holder, "iris-v2", STAMP)


@pytest.mark.parametrize(
    ("spec", "challenger", "champion", "decision", "reason"),
    [
        (PROMOTE, 0.95, 0.90, "Promoted", "BeatChampion"),
        (PROMOTE, 0.90, 0.95, "ChampionKept", "NotBetter"),
        (PROMOTE, 0.90, 0.90, "ChampionKept", "NotBetter"),  # a tie never promotes
        ({**PROMOTE, "minImprovement": 0.05}, 0.94, 0.90, "ChampionKept", "NotBetter"),
        ({**PROMOTE, "minImprovement": 0.05}, 0.96, 0.90, "Promoted", "BeatChampion"),
        ({**PROMOTE, "metric": "log_loss"}, 0.20, 0.30, "Promoted", "BeatChampion"),  # lower is better
        ({**PROMOTE, "metric": "log_loss"}, 0.30, 0.20, "ChampionKept", "NotBetter"),
        ({**PROMOTE, "metric": "rmse", "minImprovement": 1.0}, 9.5, 10.0, "ChampionKept", "NotBetter"),
        ({**PROMOTE, "metric": "mae"}, 3.0, 4.0, "Promoted", "BeatChampion"),
        ({**PROMOTE, "metric": "r2"}, 0.5, 0.4, "Promoted", "BeatChampion"),
    ],
)
def test_the_decision_follows_the_metrics_direction_and_margin(
    spec: dict[str, Any], challenger: float, champion: float, decision: str, reason: str
) -> None:
    record = _decide(spec, _scores(challenger, champion, metric=spec["metric"]), CHAMP)
    assert (record["decision"], record["reason"]) == (decision, reason)
    assert record["challengerScore"] == challenger and record["championScore"] == champion
    assert record["holdoutFingerprint"] == HOLDOUT and record["champion"] == "iris-v1"
    assert record["challenger"] == "iris-v2" and record["metric"] == spec["metric"]
    assert f"{challenger:.4g}" in record["message"] and f"{champion:.4g}" in record["message"]
    Promotion.model_validate(record)


def test_improvement_is_positive_when_the_challenger_is_better() -> None:
    assert improvement("accuracy", 0.9, 0.8) == pytest.approx(0.1)
    assert improvement("rmse", 8.0, 10.0) == pytest.approx(2.0)
    assert improvement("log_loss", 0.5, 0.4) == pytest.approx(-0.1)


def test_no_champion_promotes_the_challenger() -> None:
    record = _decide(PROMOTE, {"metric": "accuracy", "holdout": HOLDOUT, "challenger": 0.9}, None)
    assert (record["decision"], record["reason"]) == ("Promoted", "NoChampion")
    assert "championScore" not in record and "champion" not in record and record["challengerScore"] == 0.9


def test_without_evidence_the_champion_keeps_the_alias() -> None:
    # A champion the trainer could not score (another schema), or no scores at all (an older trainer image).
    unscored = _decide(PROMOTE, _scores(0.99, None, problem="champion iris-v1 reads columns the hold-out lacks"), CHAMP)
    assert (unscored["decision"], unscored["reason"]) == ("ChampionKept", "ChampionNotScored")
    assert "reads columns the hold-out lacks" in unscored["message"]
    silent = _decide(PROMOTE, None, CHAMP)
    assert (silent["decision"], silent["reason"]) == ("ChampionKept", "ChampionChanged")


def test_a_champion_that_changed_since_the_job_started_keeps_it() -> None:
    other = promotion.Champion("iris-v5", "pvc://m/x/model.joblib", "c" * 64)
    moved = _decide(PROMOTE, _scores(0.99, 0.5), other)
    assert (moved["decision"], moved["reason"]) == ("ChampionKept", "ChampionChanged")
    assert moved["champion"] == "iris-v5" and "championScore" not in moved
    # The same name with another artifact (deleted and re-registered) is another champion too.
    same_name = promotion.Champion("iris-v1", CHAMP.uri, "c" * 64)
    assert _decide(PROMOTE, _scores(0.99, 0.5), same_name)["reason"] == "ChampionChanged"
    # The scored champion lost the alias and nobody holds it now: promoted.
    assert _decide(PROMOTE, _scores(0.99, 0.5), None)["decision"] == "Promoted"


def test_champion_of_is_the_version_holding_the_alias() -> None:
    holder = mv_obj(1, status={"aliases": ["production"], "phase": "Ready"})
    others = [
        mv_obj(2, status={"aliases": ["candidate"]}),
        mv_obj(3, model="other", status={"aliases": ["production"]}),
    ]
    found = promotion.champion_of([*others, holder], "iris", "production")
    assert found is not None and found.name == "iris-v1" and found.sha256 == holder["spec"]["artifact"]["sha256"]
    assert promotion.champion_of(others, "iris", "production") is None
    gone = mv_obj(1, status={"aliases": ["production"]}, deleting=True)
    assert promotion.champion_of([gone], "iris", "production") is None
    # A spec claim is not holding: only status.aliases (the resolved holder) counts.
    assert promotion.champion_of([mv_obj(4, aliases=("production",))], "iris", "production") is None


def test_the_job_of_a_promoting_run_passes_the_champion_and_mounts_its_claim() -> None:
    body = run_body(register={"promote": PROMOTE})
    champion = mv_obj(1, status={"aliases": ["production"]}, uri="pvc://old-models/iris/model.joblib")
    facts = trd.RunFacts(body=body, versions=[champion])
    run = trd.parse(body, SETTINGS)
    assert trd.wants_champion(facts.current, None, run)
    assert not trd.wants_champion({"jobName": "x"}, None, run) and not trd.wants_champion(
        {}, None, trd.parse(run_body(), SETTINGS)
    )
    plan = trd.decide(facts, SETTINGS, NOW)
    pod_spec = plan.create[0]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod_spec["containers"][0]["env"]}
    assert env[contract.ENV_CHAMPION_NAME] == "iris-v1"
    assert env[contract.ENV_CHAMPION_URI] == "pvc://old-models/iris/model.joblib"
    assert env[contract.ENV_CHAMPION_SHA256] == champion["spec"]["artifact"]["sha256"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"].get("readOnly")
        for v in pod_spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims.get("old-models") is True  # read-only
    # No holder: no champion variables.
    alone = trd.decide(trd.RunFacts(body=body, versions=[]), SETTINGS, NOW).create[0]
    names = {e["name"] for e in alone["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not names & {contract.ENV_CHAMPION_URI, contract.ENV_CHAMPION_SHA256, contract.ENV_CHAMPION_NAME}
    # Without promote the Job is what it always was.
    run = trd.parse(run_body(), SETTINGS)
    assert children.build_trainer_job(run, UID, SETTINGS) == children.build_trainer_job(run, UID, SETTINGS, None)


def _succeeded(
    scores: dict[str, Any] | None, versions: list[dict[str, Any]], status: dict[str, Any] | None = None
) -> trd.RunPlan:
    result = json.loads(OK_RESULT)
    if scores is not None:
        result["promotion"] = scores
    facts = trd.RunFacts(
        body=run_body(status, register={"aliases": ["candidate"], "promote": PROMOTE}),
        job=owned_job(conds=[("Complete", "")], succeeded=1),
        pods=[pod("Succeeded", exit_code=0, message=json.dumps(result))],
        versions=versions,
    )
    return trd.decide(facts, SETTINGS, NOW)


def _holder() -> dict[str, Any]:
    return mv_obj(1, status={"aliases": ["production"], "phase": "Ready"})


def test_a_better_challenger_claims_the_alias_and_the_run_records_why() -> None:
    sha = _holder()["spec"]["artifact"]["sha256"]
    plan = _succeeded(_scores(0.97, 0.9, champion_sha256=sha), [_holder()])
    assert plan.register is not None
    assert plan.register["spec"]["aliases"] == ["candidate", "production"]
    record = plan.status["promotion"]
    assert record["decision"] == "Promoted" and record["championScore"] == 0.9 and record["challengerScore"] == 0.97
    assert json.loads(plan.register["metadata"]["annotations"][promotion.ANNOTATION_PROMOTION]) == record
    assert [e.reason for e in plan.events if e.reason in ("Promoted", "ChampionKept")] == ["Promoted"]


def test_a_worse_challenger_leaves_the_alias_with_the_champion() -> None:
    sha = _holder()["spec"]["artifact"]["sha256"]
    plan = _succeeded(_scores(0.8, 0.9, champion_sha256=sha), [_holder()])
    assert plan.register is not None and plan.register["spec"]["aliases"] == ["candidate"]
    assert plan.status["promotion"]["decision"] == "ChampionKept"
    assert [e.reason for e in plan.events if e.reason in ("Promoted", "ChampionKept")] == ["ChampionKept"]


def test_an_adopted_version_keeps_its_recorded_decision_and_announces_it_once() -> None:
    sha = _holder()["spec"]["artifact"]["sha256"]
    first = _succeeded(_scores(0.97, 0.9, champion_sha256=sha), [_holder()])
    assert first.register is not None
    created = {**first.register, "metadata": {**first.register["metadata"], "labels": {k8s.LABEL_RUN_UID: UID}}}
    # The operator died after creating the version: the next pass adopts it, and by now it holds the alias.
    now_holder = {**created, "status": {"aliases": ["production"]}}
    again = _succeeded(_scores(0.97, 0.9, champion_sha256=sha), [mv_obj(1), now_holder])
    assert again.register is None and again.status["promotion"] == first.status["promotion"]
    assert "Promoted" in [e.reason for e in again.events]
    recorded = {"phase": "Succeeded", "promotion": first.status["promotion"]}
    quiet = _succeeded(_scores(0.97, 0.9, champion_sha256=sha), [mv_obj(1), now_holder], recorded)
    assert "Promoted" not in [e.reason for e in quiet.events]


def _version_with(record: dict[str, Any], version: int = 2, **kw: Any) -> dict[str, Any]:
    obj = mv_obj(version, **kw)
    obj["metadata"]["annotations"] = {promotion.ANNOTATION_PROMOTION: promotion.annotation(record)}
    return obj


def test_the_model_version_controller_records_the_decision_and_its_history() -> None:
    kept = _decide(PROMOTE, _scores(0.8, 0.9), CHAMP)
    champion = mv_obj(1, aliases=("production",), status={"phase": "Ready", "aliases": ["production"]})
    challenger = _version_with(kept, status={"phase": "Ready", "passedThresholds": True})
    facts = mvd.ModelFacts("ns", "iris", [mvd.VersionFacts(champion), mvd.VersionFacts(challenger)], [])
    plan = mvd.decide(facts, SETTINGS, NOW)
    patches = {child.name: body["status"] for child, body in plan.patch}
    assert patches["iris-v2"]["promotion"] == kept
    assert [(h["alias"], h["action"]) for h in patches["iris-v2"]["aliasHistory"]] == [("production", "ChampionKept")]
    champ_history = patches["iris-v1"]["aliasHistory"]
    assert champ_history[-1]["action"] == "ChampionKept" and "kept over iris-v2" in champ_history[-1]["message"]
    assert {(o["metadata"]["name"], e.reason) for o, e in plan.posts} >= {
        ("iris-v2", "ChampionKept"),
        ("iris-v1", "ChampionKept"),
    }
    # Applied, the next pass writes nothing more.
    applied = [
        {**o, "status": {**(o.get("status") or {}), **patches.get(o["metadata"]["name"], {})}}
        for o in (champion, challenger)
    ]
    facts = mvd.ModelFacts("ns", "iris", [mvd.VersionFacts(o) for o in applied], [])
    assert not [p for p in mvd.decide(facts, SETTINGS, NOW + dt.timedelta(seconds=5)).patch if "status" in p[1]]


def test_a_hand_made_version_cannot_borrow_a_promotion_record() -> None:
    record = _decide(PROMOTE, _scores(0.99, 0.1), CHAMP)
    forged = _version_with(record, run=False, status={"phase": "Ready"})
    assert promotion.from_annotation(forged) is None
    garbage = mv_obj(2)
    garbage["metadata"]["annotations"] = {promotion.ANNOTATION_PROMOTION: "{not json"}
    assert promotion.from_annotation(garbage) is None
