"""Table-driven tests of the model registry's pure core (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from kubetrain_operator import k8s
from kubetrain_operator.modelversion import aliases, children, retention
from kubetrain_operator.modelversion import status as mvstatus
from kubetrain_operator.settings import Settings

NOW = "2026-01-01T00:00:10.000000Z"
SHA = "a" * 64


def mv_obj(
    version: int,
    *,
    aliases: tuple[str, ...] = (),
    status: dict[str, Any] | None = None,
    run: bool = True,
    deleting: bool = False,
    model: str = "iris",
    uri: str = "pvc://models/iris/run-a/model.joblib",
    managed_time: str | None = None,
) -> dict[str, Any]:
    name = f"{model}-v{version}"
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "uid": f"uid-{version}",
        "generation": 1,
        "labels": {k8s.LABEL_MODEL: model},
    }
    if run:
        meta["labels"][k8s.LABEL_RUN_UID] = f"run-{version}"
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if managed_time:
        meta["managedFields"] = [
            {
                "manager": "kubectl",
                "operation": "Update",
                "time": managed_time,
                "fieldsV1": {"f:spec": {"f:aliases": {}}},
            },
            {
                "manager": "op",
                "operation": "Update",
                "subresource": "status",
                "time": "2030-01-01T00:00:00Z",
                "fieldsV1": {"f:status": {}},
            },
        ]
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "ModelVersion",
        "metadata": meta,
        "spec": {
            "model": model,
            "version": version,
            "artifact": {"uri": uri, "sha256": SHA},
            "aliases": list(aliases),
        },
        "status": {"phase": "Ready", **(status or {})},
    }


def claim(alias: str, time: str, observed: str = "2026-01-01T00:00:00.000000Z") -> dict[str, Any]:
    return {"alias": alias, "time": time, "observed": observed, "generation": 1}


def resolve(
    objs: list[dict[str, Any]], protected: tuple[str, ...] = ("production",)
) -> dict[str, aliases.AliasOutcome]:
    return aliases.resolve_aliases([aliases.VersionView.from_obj(o) for o in objs], protected, NOW)


def apply(objs: list[dict[str, Any]], outcomes: dict[str, aliases.AliasOutcome]) -> list[dict[str, Any]]:
    """Write each outcome's patch into its object, as the handler does."""
    out = []
    for o in objs:
        patch = aliases.alias_status_patch(o, outcomes[o["metadata"]["name"]], NOW)
        new = {**o, "status": {**o["status"], **(patch or {})}}
        out.append(new)
    return out


T1, T2, T3 = "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z", "2026-01-01T00:00:03Z"


@pytest.mark.parametrize(
    ("case", "objs", "expected"),
    [
        ("single claim", [mv_obj(1, aliases=("production",))], {"iris-v1": ["production"]}),
        (
            "newest claim wins over older",
            [
                mv_obj(1, aliases=("production",), status={"aliasClaims": [claim("production", T2)]}),
                mv_obj(2, aliases=("production",), status={"aliasClaims": [claim("production", T1)]}),
            ],
            {"iris-v1": ["production"], "iris-v2": []},
        ),
        (
            "same-second tie: operator observation order",
            [
                mv_obj(1, aliases=("p",), status={"aliasClaims": [claim("p", T1, "2026-01-01T00:00:01.500000Z")]}),
                mv_obj(2, aliases=("p",), status={"aliasClaims": [claim("p", T1, "2026-01-01T00:00:01.200000Z")]}),
            ],
            {"iris-v1": ["p"], "iris-v2": []},
        ),
        (
            "full tie: higher version",
            [
                mv_obj(1, aliases=("p",), status={"aliasClaims": [claim("p", T1)]}),
                mv_obj(2, aliases=("p",), status={"aliasClaims": [claim("p", T1)]}),
            ],
            {"iris-v1": [], "iris-v2": ["p"]},
        ),
        (
            "unrecorded claim uses managedFields time, not the status subresource entry",
            [
                mv_obj(1, aliases=("p",), status={"aliasClaims": [claim("p", T2)]}),
                mv_obj(2, aliases=("p",), managed_time=T1),
            ],
            {"iris-v1": ["p"], "iris-v2": []},
        ),
        (
            "unrecorded claim without managedFields is stamped now (newest)",
            [mv_obj(1, aliases=("p",), status={"aliasClaims": [claim("p", T2)]}), mv_obj(2, aliases=("p",))],
            {"iris-v1": [], "iris-v2": ["p"]},
        ),
        (
            "protected alias refused when thresholds missed; stays with v1",
            [
                mv_obj(1, aliases=("production",), status={"aliasClaims": [claim("production", T1)]}),
                mv_obj(2, aliases=("production",), status={"passedThresholds": False}),
            ],
            {"iris-v1": ["production"], "iris-v2": []},
        ),
        (
            "unprotected alias allowed when thresholds missed",
            [mv_obj(2, aliases=("candidate",), status={"passedThresholds": False})],
            {"iris-v2": ["candidate"]},
        ),
        (
            "failed version holds nothing",
            [mv_obj(3, aliases=("candidate", "production"), status={"phase": "Failed"})],
            {"iris-v3": []},
        ),
        (
            "protected alias waits while verifying",
            [
                mv_obj(1, aliases=("production",), status={"aliasClaims": [claim("production", T1)]}),
                mv_obj(2, aliases=("production", "candidate"), status={"phase": "Verifying"}),
            ],
            {"iris-v1": ["production"], "iris-v2": ["candidate"]},
        ),
        (
            "deleting version holds nothing",
            [mv_obj(1, aliases=("p",), status={"aliases": ["p"]}, deleting=True)],
            {"iris-v1": []},
        ),
        (
            "independent aliases on different versions",
            [mv_obj(1, aliases=("a",)), mv_obj(2, aliases=("b",))],
            {"iris-v1": ["a"], "iris-v2": ["b"]},
        ),
    ],
)
def test_resolve_aliases(case: str, objs: list[dict[str, Any]], expected: dict[str, list[str]]) -> None:
    out = resolve(objs)
    assert {k: v.aliases for k, v in out.items()} == expected, case


def test_move_records_history_and_conditions_and_is_idempotent() -> None:
    v1 = mv_obj(1, aliases=("production",))
    v2 = mv_obj(2)
    objs = apply([v1, v2], resolve([v1, v2]))
    assert objs[0]["status"]["aliases"] == ["production"]
    assert [e["action"] for e in objs[0]["status"]["aliasHistory"]] == ["Assigned"]
    # promote v2 later: v1 loses production in status, spec untouched
    objs[1] = {**objs[1], "spec": {**objs[1]["spec"], "aliases": ["production"]}}
    objs[1]["metadata"] = {
        **objs[1]["metadata"],
        "managedFields": [
            {
                "manager": "kubectl-patch",
                "operation": "Update",
                "time": "2026-01-01T00:00:09Z",
                "fieldsV1": {"f:spec": {"f:aliases": {}}},
            }
        ],
    }
    # v1's recorded claim is older than v2's
    objs[0]["status"]["aliasClaims"][0]["time"] = "2026-01-01T00:00:05Z"
    outcomes = resolve(objs)
    objs = apply(objs, outcomes)
    v1s, v2s = objs[0]["status"], objs[1]["status"]
    assert objs[0]["spec"]["aliases"] == ["production"]
    assert v1s["aliases"] == [] and v2s["aliases"] == ["production"]
    assert [e["action"] for e in v1s["aliasHistory"]] == ["Assigned", "Superseded"]
    assert "iris-v2" in v1s["aliasHistory"][-1]["message"]
    assert [e["action"] for e in v2s["aliasHistory"]] == ["Assigned"]
    sup = next(c for c in v1s["conditions"] if c["type"] == aliases.COND_ALIAS_SUPERSEDED)
    assert sup["status"] == "True" and "iris-v2" in sup["message"]
    # idempotent: a second pass changes nothing
    again = resolve(objs)
    assert all(aliases.alias_status_patch(o, again[o["metadata"]["name"]], NOW) is None for o in objs)
    # remove the alias from v2's spec: v1 regains it (its claim still stands), v2 records Removed
    objs[1]["spec"]["aliases"] = []
    objs = apply(objs, resolve(objs))
    assert objs[0]["status"]["aliases"] == ["production"]
    assert objs[1]["status"]["aliasHistory"][-1]["action"] == "Removed"
    sup = next(c for c in objs[0]["status"]["conditions"] if c["type"] == aliases.COND_ALIAS_SUPERSEDED)
    assert sup["status"] == "False"


def test_refused_event_once_and_condition() -> None:
    objs = [mv_obj(2, aliases=("production",), status={"passedThresholds": False})]
    objs = apply(objs, resolve(objs))
    st = objs[0]["status"]
    assert [e["action"] for e in st["aliasHistory"]] == ["Refused"]
    assert any(c["type"] == aliases.COND_ALIAS_REFUSED and c["status"] == "True" for c in st["conditions"])
    assert aliases.alias_status_patch(objs[0], resolve(objs)["iris-v2"], NOW) is None


def test_history_is_bounded() -> None:
    history = [{"alias": "x", "action": "Assigned", "time": T1}] * aliases.HISTORY_LIMIT
    o = mv_obj(1, aliases=("p",), status={"aliasHistory": history})
    patch = aliases.alias_status_patch(o, resolve([o])["iris-v1"], NOW)
    assert patch is not None and len(patch["aliasHistory"]) == aliases.HISTORY_LIMIT
    assert patch["aliasHistory"][-1]["alias"] == "p"


@pytest.mark.parametrize(
    ("case", "objs", "keep", "expected"),
    [
        ("under the limit", [mv_obj(i) for i in (1, 2)], 3, []),
        ("oldest beyond N", [mv_obj(i) for i in range(1, 6)], 3, ["iris-v1", "iris-v2"]),
        (
            "aliased (status or spec) kept",
            [mv_obj(1, status={"aliases": ["p"]}), mv_obj(2, aliases=("c",)), *[mv_obj(i) for i in (3, 4, 5)]],
            2,
            ["iris-v3"],
        ),
        (
            "pending and verifying kept",
            [mv_obj(1, status={"phase": "Pending"}), mv_obj(2, status={"phase": "Verifying"}), mv_obj(3), mv_obj(4)],
            1,
            ["iris-v3"],
        ),
        ("failed beyond N deleted", [mv_obj(1, status={"phase": "Failed"}), mv_obj(2)], 1, ["iris-v1"]),
        ("hand-registered never deleted", [mv_obj(1, run=False), mv_obj(2), mv_obj(3)], 1, ["iris-v2"]),
        ("already deleting skipped", [mv_obj(1, deleting=True), mv_obj(2)], 1, []),
        ("keep at least one", [mv_obj(1), mv_obj(2)], 0, ["iris-v1"]),
    ],
)
def test_select_for_deletion(case: str, objs: list[dict[str, Any]], keep: int, expected: list[str]) -> None:
    assert retention.select_for_deletion([aliases.VersionView.from_obj(o) for o in objs], keep) == expected, case


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("pvc://models/iris/run-a/model.joblib", "pvc://models/iris/run-a"),
        ("pvc://models/iris/run-a/", "pvc://models/iris/run-a"),
        ("pvc://models/iris/run-a", "pvc://models/iris/run-a"),
        ("s3://bucket/iris/v1/model.joblib", "s3://bucket/iris/v1"),
        ("file:///models/model.joblib", "file:///models"),
    ],
)
def test_artifact_dir(uri: str, expected: str) -> None:
    assert mvstatus.artifact_dir(uri) == expected


def test_serving_hint() -> None:
    spec = mv_obj(1)["spec"] | {"runtime": {"scikitLearn": "1.6.1", "python": "3.11.9"}}
    assert mvstatus.serving_hint(spec) == {
        "modelFormat": {"name": "sklearn", "version": "1"},
        "storageUri": "pvc://models/iris/run-a",
        "runtime": {"scikitLearn": "1.6.1", "python": "3.11.9"},
    }
    assert mvstatus.serving_hint(mv_obj(1)["spec"])["modelFormat"] == {"name": "sklearn"}


@pytest.mark.parametrize(
    ("metrics", "task", "expected"),
    [
        ({}, None, None),
        ({"f1": 0.9, "accuracy": 0.95}, None, "accuracy=0.95"),
        ({"rmse": 1.5, "r2": 0.812345}, "regression", "r2=0.8123"),
        ({"zeta": 1.0, "beta": 2.0}, None, "beta=2"),
    ],
)
def test_primary_metric(metrics: dict[str, float], task: str | None, expected: str | None) -> None:
    spec: dict[str, Any] = {"metrics": metrics}
    if task:
        spec["signature"] = {"task": task}
    assert mvstatus.primary_metric(spec) == expected


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("checksum mismatch for model.joblib: expected a, got b", mvstatus.REASON_CHECKSUM_MISMATCH),
        ("model file /x not found", mvstatus.REASON_VERIFY_FAILED),
    ],
)
def test_verify_failure_reason(message: str, reason: str) -> None:
    assert mvstatus.verify_failure_reason(message) == reason


def test_child_job_name_budget_and_determinism() -> None:
    long = "m" * 60 + "-v12"
    name = children.child_job_name(long, "verify", "uid", "uri")
    assert len(name) <= 63 and name.endswith(name[-8:]) and "-verify-" in name
    assert name == children.child_job_name(long, "verify", "uid", "uri")
    assert name != children.child_job_name(long, "verify", "uid2", "uri")


def _container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def test_build_verify_job_pvc() -> None:
    mv = mv_obj(1, run=False)
    settings = Settings(trainer_image="example.com/trainer:1")
    job = children.build_verify_job(mv, settings)
    assert job["metadata"]["name"] == children.verify_job_name(mv) and job["metadata"]["name"].startswith(
        "iris-v1-verify-"
    )
    assert job["metadata"]["labels"][k8s.LABEL_KUBETRAIN_COMPONENT] == "verify"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["podFailurePolicy"]["rules"]
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    c = _container(job)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["image"] == "example.com/trainer:1"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["KUBETRAIN_VERIFY_URI"] == "file:///mnt/kubetrain/pvc/models/iris/run-a/model.joblib"
    assert env["KUBETRAIN_VERIFY_SHA256"] == SHA
    assert {"name": "artifact", "mountPath": "/mnt/kubetrain/pvc/models", "readOnly": True} in c["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    # The path and checksum reach the trainer through its environment only (no node-agent copies as args).
    assert c["command"] == ["python", "-m", "kubetrain_trainer", "verify"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["models"]


def test_build_verify_job_s3() -> None:
    mv = mv_obj(1, run=False, uri="s3://bucket/iris/model.joblib")
    job = children.build_verify_job(mv, Settings())
    env = {e["name"]: e["value"] for e in _container(job)["env"]}
    assert env["KUBETRAIN_VERIFY_URI"] == "s3://bucket/iris/model.joblib"
    assert not any("persistentVolumeClaim" in v for v in job["spec"]["template"]["spec"]["volumes"])
    # No credentials asked for: none given, and no ServiceAccount token.
    assert "envFrom" not in _container(job) and "serviceAccountName" not in job["spec"]["template"]["spec"]
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_build_verify_job_s3_credentials_from_env_from_and_service_account() -> None:
    mv = mv_obj(1, run=False, uri="s3://bucket/iris/model.joblib")
    refs = [{"secretRef": {"name": "s3-creds"}}, {"configMapRef": {"name": "s3-endpoint"}}]
    mv["spec"].update(envFrom=refs, serviceAccountName="model-reader")
    job = children.build_verify_job(mv, Settings())
    pod = job["spec"]["template"]["spec"]
    assert _container(job)["envFrom"] == refs
    assert pod["serviceAccountName"] == "model-reader" and pod["automountServiceAccountToken"] is True
    # The operator's own variables stay explicit env entries (Kubernetes: env wins over envFrom keys).
    names = [e["name"] for e in _container(job)["env"]]
    assert names == ["KUBETRAIN_VERIFY_URI", "KUBETRAIN_VERIFY_SHA256"]
    # The cleanup Job of the same version does not get them (it only touches pvc:// artifacts).
    cleanup = children.build_cleanup_job(mv_obj(1, run=False), Settings(), "pvc://models/iris/run-a")
    assert "envFrom" not in _container(cleanup)


def test_cleanup_target_and_job() -> None:
    mv = mv_obj(1)
    assert children.cleanup_target(mv) == "pvc://models/iris/run-a"
    assert children.cleanup_target(mv, [mv_obj(2)]) is None  # v2 shares the directory
    assert children.cleanup_target(mv_obj(1, uri="s3://b/k/model.joblib")) is None
    assert children.cleanup_target(mv_obj(1, uri="pvc://models/model.joblib")) is None  # the claim's root
    job = children.build_cleanup_job(mv, Settings(), "pvc://models/iris/run-a")
    c = _container(job)
    assert c["command"][:2] == ["python", "-c"] and c["command"][-1] == "/mnt/kubetrain/pvc/models/iris/run-a"
    assert job["metadata"]["labels"][k8s.LABEL_KUBETRAIN_COMPONENT] == "cleanup"
