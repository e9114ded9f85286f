"""Each kind's ``decide(facts, settings, now) -> Plan`` without a cluster: creation and adoption of the Job,
the Job sync, requeue intervals, registration, the ModelVersion lineage check, verification and cleanup."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from kubetrain_operator import k8s
from kubetrain_operator.engine import Child
from kubetrain_operator.modelversion import children as mv_children
from kubetrain_operator.modelversion import decide as mvd
from kubetrain_operator.settings import Settings
from kubetrain_operator.trainingrun import children as tr_children
from kubetrain_operator.trainingrun import decide as trd

from tests.unit.test_operator_jobs import UID, make_run
from tests.unit.test_operator_status import NOW, OK_RESULT, job, pod
from tests.unit.test_registry import SHA, mv_obj

SETTINGS = Settings()
JOB_NAME = tr_children.job_name("iris", UID)


def run_body(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    run = make_run(**spec)
    body = {"metadata": {**run.metadata, "generation": 1}, "spec": run.spec.dump()}
    if status is not None:
        body["status"] = status
    return body


def owned_job(**kw: Any) -> dict[str, Any]:
    j = job(**kw)
    j["metadata"].update(
        name=JOB_NAME, ownerReferences=[k8s.owner_reference("TrainingRun", {"name": "iris", "uid": UID})]
    )
    j["spec"].update(backoffLimit=make_run().spec.backoff_limit)
    return j


# ---- TrainingRun ---------------------------------------------------------------------------------------------


def test_a_new_run_creates_its_job_and_records_it_in_the_same_pass() -> None:
    plan = trd.decide(trd.RunFacts(body=run_body()), SETTINGS, NOW)
    assert [m["metadata"]["name"] for m in plan.create] == [JOB_NAME]
    assert plan.status["jobName"] == JOB_NAME and plan.status["phase"] == "Pending"
    # One Event for the Job and the first phase (each Event is an API write).
    ((event,),) = [plan.events]
    assert (event.type, event.reason) == ("Normal", "PodPending")
    assert event.message.startswith(f"created trainer Job {JOB_NAME}; Pending: "), event.message
    assert plan.requeue == pytest.approx(make_run().spec.startup_deadline_seconds + 0.5)


@pytest.mark.parametrize(
    ("spec", "phase", "reason"),
    [({"suspend": True}, "Suspended", "Suspended"), ({"queueName": "team-a"}, "Queued", "Queued")],
)
def test_a_new_suspended_or_queued_run_gets_one_event_for_its_job_and_phase(
    spec: dict[str, Any], phase: str, reason: str
) -> None:
    plan = trd.decide(trd.RunFacts(body=run_body(**spec)), SETTINGS, NOW)
    assert [m["metadata"]["name"] for m in plan.create] == [JOB_NAME] and plan.status["phase"] == phase
    ((event,),) = [plan.events]
    assert event.reason == reason and event.message.startswith(f"created trainer Job {JOB_NAME}; {phase}: ")
    if phase == "Queued":  # admitted: the pass that only changes the phase posts the plain transition Event
        job = {**plan.create[0], "status": {}}
        job["spec"] = {**job["spec"], "suspend": False}
        facts = trd.RunFacts(body=run_body(plan.status, **spec), job=job, pods=[pod("Running")])
        later = trd.decide(facts, SETTINGS, NOW)
        assert later.status["phase"] == "Running" and not later.create
        assert [(e.reason, e.message) for e in later.events] == [("PodRunning", "Running: the trainer is running")]


def test_an_existing_job_of_the_run_is_adopted_not_created() -> None:
    plan = trd.decide(trd.RunFacts(body=run_body(), job=owned_job(active=1), pods=[pod("Running")]), SETTINGS, NOW)
    assert not plan.create and plan.status["phase"] == "Running"


def test_a_job_of_someone_else_is_a_conflict_and_never_touched() -> None:
    foreign = owned_job(active=1)
    foreign["metadata"]["ownerReferences"][0]["uid"] = "another-uid"
    plan = trd.decide(trd.RunFacts(body=run_body(), job=foreign), SETTINGS, NOW)
    assert plan.status["phase"] == "Failed" and plan.status["failure"]["reason"] == "JobConflict"
    assert not (plan.create or plan.patch or plan.delete) and plan.requeue is None


def test_a_recorded_job_that_vanished_is_not_recreated() -> None:
    plan = trd.decide(trd.RunFacts(body=run_body({"jobName": JOB_NAME, "phase": "Running"})), SETTINGS, NOW)
    assert not plan.create and plan.status["failure"]["reason"] == "JobDeleted"


def test_job_sync_carries_suspend_and_limits_to_an_unfinished_job() -> None:
    body = run_body(suspend=True, activeDeadlineSeconds=600)
    plan = trd.decide(trd.RunFacts(body=body, job=owned_job(active=1)), SETTINGS, NOW)
    assert plan.patch == [(Child("Job", "ml", JOB_NAME), {"spec": {"suspend": True, "activeDeadlineSeconds": 600}})]
    finished = owned_job(conds=[("Complete", "")], succeeded=1)
    done = trd.decide(trd.RunFacts(body=body, job=finished, pods=[pod("Succeeded", exit_code=0)]), SETTINGS, NOW)
    assert not done.patch


def test_invalid_spec_fails_without_job_and_without_requeue() -> None:
    plan = trd.decide(trd.RunFacts(body=run_body(resources={"gpus": 2})), Settings(max_gpus=1), NOW)
    assert plan.status["failure"]["reason"] == "ConfigInvalid" and not plan.create and plan.requeue is None


@pytest.mark.parametrize("uri", ["file:///tmp/exp/models", "file:///var/lib/models/", "file:///mnt/kubetrain/pvc/m/x"])
def test_an_output_that_cannot_outlive_the_pod_is_refused_before_any_job(uri: str) -> None:
    plan = trd.decide(trd.RunFacts(body=run_body(output={"uri": uri})), Settings(), NOW)
    failure = plan.status["failure"]
    assert failure["reason"] == "ConfigInvalid" and not plan.create and plan.requeue is None, plan
    assert f"spec.output.uri {uri!r}" in failure["message"] and "would be lost" in failure["message"], failure
    assert "pvc://<claim>/<path>" in failure["message"]


def test_a_default_output_that_cannot_outlive_the_pod_names_the_setting() -> None:
    plan = trd.decide(trd.RunFacts(body=run_body(output=None)), Settings(default_output="file:///tmp/models"), NOW)
    assert plan.status["failure"]["reason"] == "ConfigInvalid" and not plan.create
    assert "KUBETRAIN_DEFAULT_OUTPUT" in plan.status["failure"]["message"], plan.status
    # pvc:// and s3:// outputs persist: the same run gets its Job
    for uri in ("pvc://models/runs", "s3://bucket/prefix"):
        assert trd.decide(trd.RunFacts(body=run_body(output={"uri": uri})), Settings(), NOW).create


@pytest.mark.parametrize(("checks", "delay"), [(0, 5.0), (1, 10.0), (3, 40.0), (5, 120.0), (16, 120.0)])
def test_queued_requeue_backs_off_from_5_to_120_seconds(checks: int, delay: float) -> None:
    facts = trd.RunFacts(
        body=run_body(queueName="team-a"), job=owned_job(suspend=True), memory={"queued_checks": checks}
    )
    facts.job["spec"]["suspend"] = True  # type: ignore[index]
    plan = trd.decide(facts, SETTINGS, NOW)
    assert plan.status.get("phase", "Queued") == "Queued" and plan.requeue == delay
    assert plan.remember["queued_checks"] == min(checks + 1, 16)


def test_running_requeues_for_progress_and_reads_the_latest_line() -> None:
    log = "\n".join(['{"progress": {"step": "load", "percent": 10}}', '{"progress": {"step": "train", "percent": 40}}'])
    facts = trd.RunFacts(body=run_body(), job=owned_job(active=1), pods=[pod("Running")], progress_log=log)
    plan = trd.decide(facts, SETTINGS, NOW)
    assert plan.requeue == SETTINGS.progress_interval
    assert plan.status["progress"] == {"step": "train", "percent": 40}
    assert plan.remember[trd.MEM_PROGRESS_READ] == NOW.timestamp()


def test_a_pod_on_a_lost_node_is_failed_recorded_and_counted_once() -> None:
    """The node has been not-Ready past node_lost_seconds: the pod's Failed status is planned (before the
    run's status), a NodeLost Event, a status.disruptions entry, attempts 2; the next pass (the pod is gone,
    a new one runs) keeps the record without adding to it."""
    lost = pod("Running")
    lost["spec"] = {"nodeName": "gpu-1"}
    lost["status"]["conditions"].append({"type": "Ready", "status": "False"})
    since = (NOW - dt.timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    nodes: dict[str, dict[str, Any] | None] = {
        "gpu-1": {"status": {"conditions": [{"type": "Ready", "status": "Unknown", "lastTransitionTime": since}]}}
    }
    settings = Settings(node_lost_seconds=20)
    body = run_body({"jobName": JOB_NAME, "phase": "Running", "attempts": 1})
    facts = trd.RunFacts(body=body, job=owned_job(active=1), pods=[lost], nodes=nodes)
    plan = trd.decide(facts, settings, NOW)
    ((name, patch),) = plan.fail_pods
    assert name == lost["metadata"]["name"] and patch["status"]["phase"] == "Failed"
    assert [e.reason for e in plan.events] == ["NodeLost"]
    (entry,) = plan.status["disruptions"]
    assert entry["pod"] == name and entry["node"] == "gpu-1" and entry["reason"] == "NodeLost", entry
    assert "node gpu-1 has not been Ready for 30s" in entry["message"], entry
    assert plan.status["attempts"] == 2
    # before the grace period: nothing, but a look again when it is over
    early = trd.decide(facts, Settings(node_lost_seconds=35), NOW)
    assert not early.fail_pods and "disruptions" not in early.status and early.requeue == pytest.approx(5.5)
    later = trd.decide(facts, Settings(node_lost_seconds=60, progress_interval=0), NOW)
    assert later.requeue == pytest.approx(30.5)
    # off
    assert not trd.decide(facts, Settings(node_lost_seconds=0), NOW).fail_pods
    # the next pass: the replacement runs; the record stays, attempts stay 2
    after = run_body({"jobName": JOB_NAME, "phase": "Running", "attempts": 2, "disruptions": [entry]})
    again = trd.decide(trd.RunFacts(body=after, job=owned_job(active=1), pods=[pod("Running")]), settings, NOW)
    assert not again.fail_pods and "disruptions" not in again.status and "attempts" not in again.status


def _succeeded(versions: list[dict[str, Any]], **memory: Any) -> trd.RunPlan:
    facts = trd.RunFacts(
        body=run_body(),
        job=owned_job(conds=[("Complete", "")], succeeded=1),
        pods=[pod("Succeeded", exit_code=0, message=OK_RESULT)],
        versions=versions,
        memory=memory,
    )
    return trd.decide(facts, SETTINGS, NOW)


def test_success_registers_the_next_free_version_and_names_it_in_the_same_write() -> None:
    taken = mv_obj(1, model="other") | {"metadata": {"name": "iris-v3"}}
    plan = _succeeded([mv_obj(1), mv_obj(2), taken])
    assert plan.register is not None and plan.register["metadata"]["name"] == "iris-v4"
    assert plan.status["modelVersion"] == "iris-v4" and plan.status["phase"] == "Succeeded"


def test_the_digest_the_pod_ran_is_recorded_in_status_and_lineage() -> None:
    digest = "sha256:" + "ab" * 32
    done = pod("Succeeded", exit_code=0, message=OK_RESULT)
    done["status"]["containerStatuses"][0]["imageID"] = f"ghcr.io/kubetrain/trainer@{digest}"
    facts = trd.RunFacts(
        body=run_body(), job=owned_job(conds=[("Complete", "")], succeeded=1), pods=[done], versions=[], memory={}
    )
    plan = trd.decide(facts, SETTINGS, NOW)
    assert plan.status["trainerImageDigest"] == digest
    assert plan.register is not None and plan.register["spec"]["source"]["imageDigest"] == digest
    assert plan.register["spec"]["source"]["image"] == SETTINGS.trainer_image  # the reference, as asked for
    # a pod gone (TTL) later: the recorded digest stays; an imageID without a digest records none
    later = trd.RunFacts(body=run_body(status=plan.desired), job=None, pods=[], versions=[], memory={})
    assert "trainerImageDigest" not in (trd.decide(later, SETTINGS, NOW).status or {})  # unchanged: no patch
    local = pod("Succeeded", exit_code=0, message=OK_RESULT)
    local["status"]["containerStatuses"][0]["imageID"] = "import-2026-12-02@latest"
    plain = trd.RunFacts(
        body=run_body(), job=owned_job(conds=[("Complete", "")], succeeded=1), pods=[local], versions=[], memory={}
    )
    plan = trd.decide(plain, SETTINGS, NOW)
    assert "trainerImageDigest" not in plan.status and "imageDigest" not in plan.register["spec"]["source"]


def test_a_version_created_before_a_crash_is_adopted() -> None:
    mine = mv_obj(7)
    mine["metadata"]["labels"][k8s.LABEL_RUN_UID] = UID
    plan = _succeeded([mv_obj(1), mine])
    assert plan.register is None and plan.status["modelVersion"] == "iris-v7"


def test_a_failed_registration_shows_and_is_retried_after_30_seconds() -> None:
    plan = _succeeded([], registration_error=("boom", NOW - dt.timedelta(seconds=10)))
    assert plan.register is None and plan.requeue == trd.REGISTRATION_RETRY_SECONDS
    registered = next(c for c in plan.status["conditions"] if c["type"] == "Registered")
    assert registered["status"] == "False" and registered["message"] == "boom"
    later = _succeeded([], registration_error=("boom", NOW - dt.timedelta(seconds=31)))
    assert later.register is not None


def test_finished_run_deletes_the_job_of_an_operator_decided_failure_only() -> None:
    status = {"phase": "Failed", "failure": {"reason": "StartupDeadlineExceeded"}, "jobName": JOB_NAME}
    plan = trd.decide(trd.RunFacts(body=run_body(status), job=owned_job()), SETTINGS, NOW)
    assert plan.delete == [Child("Job", "ml", JOB_NAME)] and not plan.status
    other = {**status, "failure": {"reason": "DataInvalid"}}
    assert not trd.decide(trd.RunFacts(body=run_body(other), job=owned_job()), SETTINGS, NOW).delete


# ---- ModelVersion ---------------------------------------------------------------------------------------------


def _model(*versions: mvd.VersionFacts, memory: dict[str, Any] | None = None) -> mvd.ModelFacts:
    objs = [v.obj for v in versions]
    return mvd.ModelFacts("ns", "iris", list(versions), objs, memory or {})


def _run(uid: str, sha: str | None) -> dict[str, Any]:
    return {"metadata": {"name": "run-a", "uid": uid}, "status": {"model": {"sha256": sha} if sha else {}}}


def _pending(obj: dict[str, Any]) -> dict[str, Any]:
    obj["status"] = {}
    return obj


def _from_run(version: int = 1) -> dict[str, Any]:
    obj = _pending(mv_obj(version))
    obj["spec"]["source"] = {"trainingRun": {"name": "run-a", "uid": f"run-{version}"}}
    return obj


def _status_of(plan: mvd.ModelPlan, name: str) -> dict[str, Any]:
    return next(p["status"] for c, p in plan.patch if c.name == name and "status" in p)


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (_run("run-1", SHA), True),
        (_run("run-1", "b" * 64), False),
        (_run("someone-else", SHA), False),
        (None, False),
        (_run("run-1", None), "wait"),
    ],
)
def test_lineage_check(run: dict[str, Any] | None, expected: bool | str) -> None:
    assert mvd.trusted_lineage(mvd.VersionFacts(obj=_from_run(), run=run)) == expected
    assert mvd.trusted_lineage(mvd.VersionFacts(obj=mv_obj(1, run=False), run=run)) is False


def test_trusted_version_is_ready_with_its_aliases_in_one_patch() -> None:
    obj = _from_run()
    obj["spec"]["aliases"] = ["candidate"]
    plan = mvd.decide(_model(mvd.VersionFacts(obj=obj, run=_run("run-1", SHA))), SETTINGS, NOW)
    st = _status_of(plan, "iris-v1")
    assert st["phase"] == "Ready" and st["aliases"] == ["candidate"] and st["passedThresholds"] is True
    assert not plan.create and plan.requeue is None


def test_lagging_run_status_is_waited_for_then_verified_by_a_job() -> None:
    v = mvd.VersionFacts(obj=_from_run(), run=_run("run-1", None))
    waiting = mvd.decide(_model(v), SETTINGS, NOW)
    assert waiting.requeue == mvd.TRUST_WAIT_SECONDS and not waiting.create
    exhausted = mvd.decide(_model(v, memory={mvd.MEM_TRUST_WAITS: {"iris-v1": 5}}), SETTINGS, NOW)
    assert [j["metadata"]["name"] for j in exhausted.create] == [mv_children.verify_job_name(v.obj)]


def _verify_job(obj: dict[str, Any], condition: str | None) -> dict[str, Any]:
    j = mv_children.build_verify_job(obj, SETTINGS)
    j["status"] = {"conditions": [{"type": condition, "status": "True"}] if condition else []}
    return j


def test_hand_registered_version_is_verified_by_its_job_without_polling() -> None:
    obj = _pending(mv_obj(1, run=False))
    first = mvd.decide(_model(mvd.VersionFacts(obj=obj)), SETTINGS, NOW)
    assert len(first.create) == 1 and _status_of(first, "iris-v1")["phase"] == "Verifying"
    running = mvd.decide(_model(mvd.VersionFacts(obj=obj, job=_verify_job(obj, None))), SETTINGS, NOW)
    assert not running.create and running.requeue is None  # the Job's watch event comes, no poll
    done = mvd.decide(_model(mvd.VersionFacts(obj=obj, job=_verify_job(obj, "Complete"))), SETTINGS, NOW)
    assert _status_of(done, "iris-v1")["phase"] == "Ready"
    failed = mvd.VersionFacts(obj=obj, job=_verify_job(obj, "Failed"), job_message="checksum mismatch: x")
    st = _status_of(mvd.decide(_model(failed), SETTINGS, NOW), "iris-v1")
    assert st["phase"] == "Failed" and st["conditions"][0]["reason"] == "ChecksumMismatch"


def _merge_status(obj: dict[str, Any], plan: mvd.ModelPlan) -> dict[str, Any]:
    """``obj`` as the API server holds it after the plan's status patch (a JSON merge of the top keys)."""
    patch = next((p["status"] for c, p in plan.patch if c.name == obj["metadata"]["name"] and "status" in p), {})
    return {**obj, "status": {**(obj.get("status") or {}), **patch}}


def _check_job(obj: dict[str, Any], name: str, condition: str | None) -> dict[str, Any]:
    j = mv_children.build_verify_job(obj, SETTINGS, name)
    j["status"] = {"conditions": [{"type": condition, "status": "True"}] if condition else []}
    return j


@pytest.mark.parametrize("outcome", ["Complete", "Failed"])
def test_production_is_granted_only_after_a_check_of_the_artifact_at_promotion_time(outcome: str) -> None:
    """A Ready version claims production (a user added it to spec.aliases, generation 2): the claim waits
    for a check Job (verify: exists, sha256, loads) made for that claim; Passed → granted in the pass that
    records it; Failed → refused with what the check found, and production stays with its holder."""
    holder = mv_obj(1, aliases=("production",), status={"phase": "Ready", "aliases": ["production"]})
    obj = mv_obj(2, status={"phase": "Ready", "passedThresholds": True})
    obj["metadata"]["generation"] = 2
    obj["spec"]["aliases"] = ["production"]
    first = mvd.decide(_model(mvd.VersionFacts(obj=holder), mvd.VersionFacts(obj=obj)), SETTINGS, NOW)
    obj = _merge_status(obj, first)
    (claim,) = obj["status"]["aliasClaims"]
    name = mv_children.check_job_name(obj, "production", claim["observed"])
    assert [j["metadata"]["name"] for j in first.create] == [name]
    assert first.create[0]["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] == SHA
    assert obj["status"]["aliases"] == [] and _merge_status(holder, first)["status"]["aliases"] == ["production"]
    assert mvd.pending_checks(obj, frozenset({"production"})) == [("production", claim["observed"], name)]
    # the Job still running: nothing new, no second Job
    running = mvd.VersionFacts(obj=obj, checks={name: (_check_job(obj, name, None), None)})
    again = mvd.decide(_model(mvd.VersionFacts(obj=holder), running), SETTINGS, NOW)
    assert not again.create and _merge_status(obj, again)["status"]["aliases"] == []
    message = "checksum mismatch: the file's sha256 is 0000 not " + SHA[:12]
    done = mvd.VersionFacts(obj=obj, checks={name: (_check_job(obj, name, outcome), message)})
    plan = mvd.decide(_model(mvd.VersionFacts(obj=holder), done), SETTINGS, NOW)
    after = _merge_status(obj, plan)["status"]
    (check,) = after["aliasChecks"]
    assert (check["alias"], check["claim"], check["job"]) == ("production", claim["observed"], name)
    if outcome == "Complete":
        assert check["result"] == "Passed" and after["aliases"] == ["production"], after
        assert _merge_status(holder, plan)["status"]["aliases"] == []
    else:
        assert check["result"] == "Failed" and message in check["message"], check
        assert after["aliases"] == [] and _merge_status(holder, plan)["status"]["aliases"] == ["production"]
        refused = next(c for c in after["conditions"] if c["type"] == "AliasRefused")
        assert refused["status"] == "True" and message in refused["message"], refused
        assert any(e.reason == "AliasRefused" and message in e.message for _, e in plan.posts)
        assert after["aliasHistory"][-1]["action"] == "Refused"
    assert not plan.create
    # recorded: the next pass reads no check Job and changes nothing
    settled = _merge_status(obj, plan)
    assert mvd.pending_checks(settled, frozenset({"production"})) == []


def test_no_check_for_a_held_alias_or_a_run_version_claiming_it_at_creation() -> None:
    held = mv_obj(1, aliases=("production",), status={"phase": "Ready", "aliases": ["production"]})
    held["metadata"]["generation"] = 3
    fresh = mv_obj(2, aliases=("production",), status={"phase": "Ready", "passedThresholds": True})  # gen 1, run
    plan = mvd.decide(_model(mvd.VersionFacts(obj=held), mvd.VersionFacts(obj=fresh)), SETTINGS, NOW)
    assert not plan.create
    assert _merge_status(fresh, plan)["status"]["aliases"] == ["production"]  # the newer claim wins at once
    hand = mv_obj(3, aliases=("production",), status={"phase": "Ready"}, run=False)
    plan = mvd.decide(_model(mvd.VersionFacts(obj=hand)), SETTINGS, NOW)
    assert len(plan.create) == 1 and _merge_status(hand, plan)["status"]["aliases"] == []


def test_second_claimant_of_a_version_number_fails_with_version_conflict() -> None:
    first, dup = _pending(mv_obj(1, run=False)), _pending(mv_obj(1, run=False))
    first["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    dup["metadata"].update(name="iris-dup", uid="uid-dup", creationTimestamp="2026-01-01T00:00:05Z")
    plan = mvd.decide(_model(mvd.VersionFacts(obj=first), mvd.VersionFacts(obj=dup)), SETTINGS, NOW)
    assert _status_of(plan, "iris-dup")["conditions"][-1]["reason"] == "VersionConflict"


def test_delete_policy_adds_the_finalizer_and_cleanup_releases_it() -> None:
    obj = mv_obj(1, status={"phase": "Ready"})
    obj["spec"]["deletionPolicy"] = "Delete"
    plan = mvd.decide(_model(mvd.VersionFacts(obj=obj)), SETTINGS, NOW)
    assert (Child("ModelVersion", "ns", "iris-v1"), {"metadata": {"finalizers": [k8s.FINALIZER]}}) in plan.patch
    obj["metadata"].update(finalizers=[k8s.FINALIZER], deletionTimestamp=k8s.format_time(NOW))
    deleting = mvd.decide(_model(mvd.VersionFacts(obj=obj)), SETTINGS, NOW)
    assert [j["metadata"]["labels"][k8s.LABEL_KUBETRAIN_COMPONENT] for j in deleting.create] == ["cleanup"]
    assert deleting.requeue == pytest.approx(mvd.CLEANUP_WAIT_SECONDS + 0.5)
    cleanup = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}, **deleting.create[0]}
    cleanup["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    released = mvd.decide(_model(mvd.VersionFacts(obj=obj, job=cleanup)), SETTINGS, NOW)
    assert (Child("ModelVersion", "ns", "iris-v1"), {"metadata": {"finalizers": []}}) in released.patch


def test_retention_deletes_old_versions_from_runs() -> None:
    objs = [mv_obj(i, status={"phase": "Ready"}) for i in range(1, 5)]
    plan = mvd.decide(_model(*(mvd.VersionFacts(obj=o) for o in objs)), Settings(model_retention=2), NOW)
    assert sorted(c.name for c in plan.delete) == ["iris-v1", "iris-v2"]


def test_verify_job_is_watched_like_a_trainer_job() -> None:
    """The verification Job matches the operator's server-side Job selector and routes to its model."""
    j = mv_children.build_verify_job(mv_obj(1, run=False), SETTINGS)
    labels = j["metadata"]["labels"]
    assert labels[k8s.LABEL_MANAGED_BY] == k8s.MANAGED_BY and labels[k8s.LABEL_COMPONENT] in k8s.CHILD_COMPONENTS
    assert k8s.controller_of(j) == ("ModelVersion", "iris-v1", "uid-1") and labels[k8s.LABEL_MODEL] == "iris"
    assert json.dumps(j["spec"]["template"]["spec"]["securityContext"]) == json.dumps(
        tr_children.build_trainer_job(make_run(), UID, SETTINGS)["spec"]["template"]["spec"]["securityContext"]
    )
