"""The MLflow registry mirror's pure decisions (``mlflowmirror.decide``) and their place in the ModelVersion
pass (``modelversion.decide``): what is created, which aliases move, what is reported, backoff, deletion."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from kubetrain_operator import k8s
from kubetrain_operator.mlflowmirror import decide as md
from kubetrain_operator.modelversion import decide as mvd
from kubetrain_operator.settings import Settings

from tests.unit.test_registry import mv_obj

URI = "http://mlflow.example:5000"
NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
SETTINGS = Settings(mlflow_tracking_uri=URI, mlflow_resync_seconds=30)


def ready(version: int, *aliases: str, tracking: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    obj = mv_obj(version, **kw)
    obj["spec"]["metrics"] = {"accuracy": 0.9 + version / 100, "f1_macro": 0.8}
    obj["spec"]["source"] = {"trainingRun": {"name": f"run-{version}", "uid": f"run-{version}"}}
    obj["status"] = {"phase": "Ready", "aliases": list(aliases), "conditions": []}
    if tracking is not None:
        obj["status"]["tracking"] = tracking
    return obj


def mirrored(obj: dict[str, Any], version: str, run_id: str = "") -> md.MirrorVersion:
    return md.MirrorVersion(version, obj["spec"]["artifact"]["uri"], run_id, md.wanted_tags(obj))


def facts_of(
    objs: list[dict[str, Any]], state: md.TargetState, runs: dict[str, md.RunLink] | None = None
) -> md.MirrorFacts:
    targets = {o["metadata"]["name"]: md.Target(URI) for o in objs}
    return md.MirrorFacts(targets, runs or {}, {URI: state})


def ops(plan: md.MirrorPlan) -> list[tuple[str, tuple[Any, ...]]]:
    return [(a.op, a.args) for a in plan.actions]


# ---- where ---------------------------------------------------------------------------------------------------


def test_target_is_the_versions_own_then_its_runs_then_the_operators() -> None:
    obj = ready(1)
    obj["spec"]["envFrom"] = [{"secretRef": {"name": "mlflow-creds"}}, {"configMapRef": {"name": "x"}}]
    run = {"metadata": {"uid": "run-1"}, "spec": {"tracking": {"mlflow": {"trackingUri": "http://run.server/"}}}}
    assert md.target_of(obj, None, SETTINGS) == md.Target(URI, (("ns", "mlflow-creds"),))
    assert md.target_of(obj, run, SETTINGS) == md.Target("http://run.server", (("ns", "mlflow-creds"),))
    obj["spec"]["tracking"] = {"mlflow": {"trackingUri": "http://own.server", "credentialsSecret": "own"}}
    own = md.target_of(obj, run, SETTINGS)
    assert own == md.Target("http://own.server", (("ns", "own"), ("ns", "mlflow-creds")), explicit=True)
    obj["spec"]["tracking"]["mlflow"]["mirror"] = False
    assert md.target_of(obj, run, SETTINGS) is None


def test_no_server_anywhere_or_mirror_off_means_no_mirror() -> None:
    assert md.target_of(ready(1), None, Settings()) is None
    assert md.target_of(ready(1), None, Settings(mlflow_tracking_uri=URI, mlflow_mirror=False)) is None
    with_secret = Settings(mlflow_tracking_uri=URI, mlflow_credentials_secret="kubetrain/mlflow")
    assert md.target_of(ready(1), None, with_secret) == md.Target(URI, (("kubetrain", "mlflow"),))


def test_bad_credentials_secret_setting_is_refused_with_its_variable() -> None:
    with pytest.raises(ValueError, match="KUBETRAIN_MLFLOW_CREDENTIALS_SECRET"):
        Settings.from_env({"KUBETRAIN_MLFLOW_CREDENTIALS_SECRET": "no-namespace"})


def test_run_link_waits_for_the_runs_status_and_links_only_the_same_server() -> None:
    obj = ready(1)
    running = {"metadata": {"uid": "run-1"}, "spec": {}, "status": {"phase": "Running"}}
    assert md.run_link(obj, running, md.Target(URI), SETTINGS).waiting
    done = {**running, "status": {"phase": "Succeeded", "tracking": {"mlflowRunId": "abc"}}}
    assert md.run_link(obj, done, md.Target(URI), SETTINGS).run_id == "abc"
    assert md.run_link(obj, done, md.Target("http://other"), SETTINGS).run_id is None
    recreated = {**done, "metadata": {"uid": "another"}}
    assert md.run_link(obj, recreated, md.Target(URI), SETTINGS) == md.RunLink(name="run-1")


def test_tags_carry_identity_and_metrics_as_strings() -> None:
    tags = md.wanted_tags(ready(2))
    assert tags[md.TAG_UID] == "uid-2" and tags[md.TAG_NAME] == "iris-v2" and tags[md.TAG_VERSION] == "2"
    assert tags["kubetrain.metric.accuracy"] == repr(0.92) and tags[md.TAG_RUN] == "run-2"
    assert all(isinstance(v, str) for v in tags.values())


# ---- creation without duplicates -----------------------------------------------------------------------------


def test_a_new_ready_version_creates_the_model_and_its_version_with_the_run_link() -> None:
    obj = ready(1, "production")
    runs = {"iris-v1": md.RunLink(run_id="r1", name="run-1")}
    plan = md.decide("iris", [obj], facts_of([obj], md.TargetState(URI), runs), {}, SETTINGS, NOW)
    assert [op for op, _ in ops(plan)] == ["create_registered_model", "create_version"]
    _, (model, source, run_id, tags, _desc) = ops(plan)[1]
    assert (model, source, run_id) == ("iris", obj["spec"]["artifact"]["uri"], "r1")
    assert tags[md.TAG_UID] == "uid-1"
    assert plan.conditions["iris-v1"][:2] == ("Unknown", md.REASON_MIRRORING)
    assert plan.requeue == md.AFTER_WRITE  # read back at once, then set the alias


def test_an_existing_mirror_found_by_uid_is_never_created_again() -> None:
    obj = ready(1)
    state = md.TargetState(URI, exists=True, versions=[mirrored(obj, "7")])
    plan = md.decide("iris", [obj], facts_of([obj], state), {}, SETTINGS, NOW)
    assert ops(plan) == []
    assert plan.tracking["iris-v1"]["version"] == "7"
    assert plan.tracking["iris-v1"]["url"] == f"{URI}/#/models/iris/versions/7"
    assert plan.conditions["iris-v1"][:2] == ("True", md.REASON_MIRRORED)
    assert plan.requeue == 30  # the resync


def test_duplicates_made_elsewhere_resolve_to_the_oldest_mirror() -> None:
    obj = ready(1)
    state = md.TargetState(URI, exists=True, versions=[mirrored(obj, "9"), mirrored(obj, "3")])
    assert state.by_uid()["uid-1"].version == "3"


def test_only_ready_versions_are_mirrored_and_waiting_for_the_run_requeues() -> None:
    verifying, waiting = ready(1), ready(2)
    verifying["status"]["phase"] = "Verifying"
    runs = {"iris-v2": md.RunLink(name="run-2", waiting=True)}
    plan = md.decide(
        "iris", [verifying, waiting], facts_of([verifying, waiting], md.TargetState(URI), runs), {}, SETTINGS, NOW
    )
    assert [op for op, _ in ops(plan)] == ["create_registered_model"]
    assert plan.conditions == {"iris-v2": ("Unknown", md.REASON_WAITING, "waiting for TrainingRun run-2 to finish")}
    assert plan.requeue == md.RUN_WAIT_SECONDS


def test_changed_tags_are_set_again() -> None:
    obj = ready(1)
    found = mirrored(obj, "1")
    found.tags["kubetrain.metric.accuracy"] = "0.1"
    plan = md.decide(
        "iris", [obj], facts_of([obj], md.TargetState(URI, exists=True, versions=[found])), {}, SETTINGS, NOW
    )
    assert ops(plan) == [("set_version_tag", ("iris", "1", "kubetrain.metric.accuracy", repr(0.91)))]


# ---- aliases: the cluster wins -------------------------------------------------------------------------------


def _two(
    v1_aliases: tuple[str, ...], v2_aliases: tuple[str, ...], recorded: dict[str, list[str]]
) -> list[dict[str, Any]]:
    objs = []
    for n, held in ((1, v1_aliases), (2, v2_aliases)):
        tracking = {
            "trackingUri": URI,
            "registeredModel": "iris",
            "version": str(n),
            "aliases": recorded.get(str(n), []),
        }
        objs.append(ready(n, *held, tracking=tracking))
    return objs


def _state(objs: list[dict[str, Any]], aliases: dict[str, str]) -> md.TargetState:
    return md.TargetState(
        URI, exists=True, aliases=aliases, versions=[mirrored(o, str(i + 1)) for i, o in enumerate(objs)]
    )


def test_an_alias_moved_on_the_cluster_moves_in_mlflow_without_a_warning() -> None:
    objs = _two((), ("production",), {"1": ["production"]})
    plan = md.decide("iris", objs, facts_of(objs, _state(objs, {"production": "1"})), {}, SETTINGS, NOW)
    assert ops(plan) == [("set_alias", ("iris", "production", "2"))]
    assert not [e for _, e in plan.events if e.reason == md.REASON_RESTORED]
    assert plan.tracking["iris-v1"]["aliases"] == [] and plan.tracking["iris-v2"]["aliases"] == ["production"]


def test_an_alias_moved_by_hand_in_mlflow_is_put_back_and_reported() -> None:
    objs = _two(("production",), (), {"1": ["production"]})
    plan = md.decide("iris", objs, facts_of(objs, _state(objs, {"production": "2"})), {}, SETTINGS, NOW)
    assert ops(plan) == [("set_alias", ("iris", "production", "1"))]
    status, reason, message = plan.conditions["iris-v1"]
    assert (status, reason) == ("True", md.REASON_RESTORED)
    assert "was on MLflow version 2" in message and "put back on version 1" in message
    assert "put back" in plan.tracking["iris-v1"]["restored"]
    assert [(o["metadata"]["name"], e.type) for o, e in plan.events if e.reason == md.REASON_RESTORED] == [
        ("iris-v1", "Warning")
    ]


def test_an_alias_removed_by_hand_is_set_again() -> None:
    objs = _two(("production",), (), {"1": ["production"]})
    plan = md.decide("iris", objs, facts_of(objs, _state(objs, {})), {}, SETTINGS, NOW)
    assert ops(plan) == [("set_alias", ("iris", "production", "1"))]
    assert "had been removed" in plan.conditions["iris-v1"][2]


def test_an_alias_only_mlflow_has_is_removed_and_reported_one_the_cluster_dropped_is_removed_quietly() -> None:
    objs = _two(("production",), (), {"1": ["production"], "2": ["candidate"]})
    state = _state(objs, {"production": "1", "candidate": "2", "staging": "2"})
    plan = md.decide("iris", objs, facts_of(objs, state), {}, SETTINGS, NOW)
    assert sorted(ops(plan)) == [("delete_alias", ("iris", "candidate")), ("delete_alias", ("iris", "staging"))]
    restored = [(o["metadata"]["name"], e.message) for o, e in plan.events if e.reason == md.REASON_RESTORED]
    assert len(restored) == 1 and restored[0][0] == "iris-v2" and "staging" in restored[0][1]


def test_an_alias_whose_holder_is_being_registered_waits_for_it() -> None:
    old, new = ready(1, tracking={"version": "1", "aliases": ["production"]}), ready(2, "production")
    state = md.TargetState(URI, exists=True, aliases={"production": "1"}, versions=[mirrored(old, "1")])
    plan = md.decide("iris", [old, new], facts_of([old, new], state), {}, SETTINGS, NOW)
    assert [op for op, _ in ops(plan)] == ["create_version"]  # production stays on 1 until 2 exists


def test_in_sync_means_no_write_and_no_status_change() -> None:
    obj = ready(1, "production")
    first = md.decide("iris", [obj], facts_of([obj], _state([obj], {"production": "1"})), {}, SETTINGS, NOW)
    obj["status"]["tracking"] = first.tracking["iris-v1"]
    again = md.decide("iris", [obj], facts_of([obj], _state([obj], {"production": "1"})), {}, SETTINGS, NOW)
    assert ops(again) == [] and again.tracking == {}


# ---- MLflow down, refused, back --------------------------------------------------------------------------------


def test_mlflow_down_reports_tracked_false_and_backs_off_up_to_the_resync() -> None:
    obj = ready(1)
    down = md.TargetState(URI, error=("MlflowUnreachable", "connection refused"))
    plan = md.decide("iris", [obj], facts_of([obj], down), {}, SETTINGS, NOW)
    status, reason, message = plan.conditions["iris-v1"]
    assert (status, reason) == ("False", "MlflowUnreachable") and "connection refused" in message
    assert plan.requeue == 2.0 and ops(plan) == []
    assert [e.reason for _, e in plan.events] == ["MlflowUnreachable"]
    memory = dict(plan.remember)
    for expected in (4.0, 8.0, 16.0, 30.0, 30.0):
        plan = md.decide("iris", [obj], facts_of([obj], down), memory, SETTINGS, NOW)
        memory = dict(plan.remember)
        assert plan.requeue == expected


def test_while_backing_off_the_remembered_error_is_kept_and_success_clears_it() -> None:
    memory = {md.MEM_MLFLOW: md.failure_memory({}, URI, "MlflowRefused", "HTTP 401", SETTINGS, NOW)}
    assert md.backing_off(memory, URI, NOW) == ("MlflowRefused", "HTTP 401")
    assert md.backing_off(memory, URI, NOW + dt.timedelta(seconds=3)) is None
    obj = ready(1)
    plan = md.decide("iris", [obj], facts_of([obj], _state([obj], {})), memory, SETTINGS, NOW)
    assert plan.remember[md.MEM_MLFLOW] == {}


def test_a_failure_event_is_posted_once_per_reason() -> None:
    obj = ready(1)
    obj["status"]["conditions"] = [{"type": "Tracked", "status": "False", "reason": "MlflowUnreachable"}]
    down = md.TargetState(URI, error=("MlflowUnreachable", "connection refused"), skipped=True)
    plan = md.decide("iris", [obj], facts_of([obj], down), {}, SETTINGS, NOW)
    assert plan.events == []


# ---- deletion ----------------------------------------------------------------------------------------------


def _deleting(policy: str) -> dict[str, Any]:
    obj = ready(1)
    obj["metadata"]["deletionTimestamp"] = k8s.format_time(NOW - dt.timedelta(seconds=5))
    obj["spec"]["deletionPolicy"] = policy
    if policy == "Delete":
        obj["metadata"]["finalizers"] = [k8s.FINALIZER]
    return obj


def test_deleting_with_policy_delete_removes_the_mirror_and_holds_the_finalizer_until_gone() -> None:
    obj = _deleting("Delete")
    plan = md.decide("iris", [obj], facts_of([obj], _state([obj], {})), {}, SETTINGS, NOW)
    assert ops(plan) == [("delete_version", ("iris", "1"))] and plan.pending_delete == {"iris-v1"}
    gone = md.decide("iris", [obj], facts_of([obj], md.TargetState(URI, exists=True)), {}, SETTINGS, NOW)
    assert ops(gone) == [] and gone.pending_delete == set()


def test_deleting_with_policy_retain_keeps_the_mirror() -> None:
    obj = _deleting("Retain")
    plan = md.decide("iris", [obj], facts_of([obj], _state([obj], {})), {}, SETTINGS, NOW)
    assert ops(plan) == [] and plan.pending_delete == set()


def test_mlflow_down_holds_a_delete_for_a_minute_at_most() -> None:
    obj = _deleting("Delete")
    down = md.TargetState(URI, error=("MlflowUnreachable", "refused"))
    assert md.decide("iris", [obj], facts_of([obj], down), {}, SETTINGS, NOW).pending_delete == {"iris-v1"}
    later = NOW + dt.timedelta(seconds=md.DELETE_WAIT_SECONDS + 10)
    plan = md.decide("iris", [obj], facts_of([obj], down), {}, SETTINGS, later)
    assert plan.pending_delete == set() and [e.reason for _, e in plan.events] == ["MirrorCleanupFailed"]


# ---- inside the ModelVersion pass --------------------------------------------------------------------------


def test_the_model_pass_merges_tracked_and_tracking_into_the_versions_status_patch() -> None:
    obj = ready(1, "candidate", aliases=("candidate",))
    mirror = facts_of([obj], _state([obj], {}))
    facts = mvd.ModelFacts("ns", "iris", [mvd.VersionFacts(obj=obj)], [obj], {}, mirror)
    plan = mvd.decide(facts, SETTINGS, NOW)
    patches = {c.name: p["status"] for c, p in plan.patch if "status" in p}
    tracked = [c for c in patches["iris-v1"]["conditions"] if c["type"] == "Tracked"]
    assert tracked and tracked[0]["status"] == "True"
    assert patches["iris-v1"]["tracking"]["version"] == "1"
    assert plan.mirror is not None and ops(plan.mirror) == [("set_alias", ("iris", "candidate", "1"))]


def test_the_finalizer_of_a_delete_policy_version_waits_for_its_mirror() -> None:
    obj = _deleting("Delete")
    obj["spec"]["artifact"]["uri"] = "s3://bucket/iris/model.joblib"  # nothing on a PVC to clean up
    mirror = facts_of([obj], _state([obj], {}))
    facts = mvd.ModelFacts("ns", "iris", [mvd.VersionFacts(obj=obj)], [obj], {}, mirror)
    plan = mvd.decide(facts, SETTINGS, NOW)
    assert not [p for _, p in plan.patch if "metadata" in p]  # finalizer kept
    gone = mvd.ModelFacts("ns", "iris", [mvd.VersionFacts(obj=obj)], [obj], {}, facts_of([obj], md.TargetState(URI)))
    released = mvd.decide(gone, SETTINGS, NOW)
    assert [p for _, p in released.patch if "metadata" in p] == [{"metadata": {"finalizers": []}}]


def test_the_operator_speaks_mlflow_rest_with_httpx_and_never_imports_an_mlflow_library() -> None:
    import ast
    from pathlib import Path

    import kubetrain_operator

    root = Path(kubetrain_operator.__file__).parent
    imported = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert "httpx2" in imported and not imported & {"mlflow", "sklearn", "pandas", "numpy"}
