"""build_trainer_job: a pure function of (run, uid, settings), checked field by field and against a golden
file, plus the contract test: the Job runs exactly what the trainer's CLI accepts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetrain_api.models import TrainingRun
from kubetrain_operator import k8s
from kubetrain_operator.settings import Settings
from kubetrain_operator.trainingrun import children as jobs
from kubetrain_trainer import contract

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "iris-job.json"
UID = "0b6d8a6e-1b2c-4d5e-8f90-123456789abc"


def make_run(name: str = "iris", namespace: str = "ml", **spec: Any) -> TrainingRun:
    doc = yaml.safe_load((REPO / "examples" / "iris-classification.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace, "uid": UID}
    for key, value in spec.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return TrainingRun.model_validate(doc)


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_iris_job_matches_golden_file() -> None:
    job = jobs.build_trainer_job(make_run(), UID, Settings())
    text = json.dumps(job, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1" or not GOLDEN.exists():
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "Job manifest changed; rerun with UPDATE_GOLDEN=1 if intended"


def test_build_is_deterministic() -> None:
    assert jobs.build_trainer_job(make_run(), UID, Settings()) == jobs.build_trainer_job(make_run(), UID, Settings())


@pytest.mark.parametrize(
    ("name", "uid", "expected_len"),
    [("iris", UID, 9), ("a" * 52, UID, 57), ("x", "other-uid", 6)],
)
def test_job_name_is_short_and_stable(name: str, uid: str, expected_len: int) -> None:
    got = jobs.job_name(name, uid)
    assert got == jobs.job_name(name, uid) and got.startswith(name + "-") and len(got) == expected_len
    assert len(got) + 6 <= 63
    assert jobs.job_name(name, uid) != jobs.job_name(name, uid + "x")


def test_owner_reference_and_labels() -> None:
    job = jobs.build_trainer_job(make_run(), UID, Settings())
    (ref,) = job["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingRun",
        "name": "iris",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["app.kubernetes.io/managed-by"] == "kubetrain"
        assert labels["app.kubernetes.io/component"] == "trainer"
        assert labels["app.kubernetes.io/name"] == "kubetrain"
        assert labels["kubetrain.io/run"] == "iris" and labels["kubetrain.io/model"] == "iris"
    assert k8s.owned_by(job, UID) and not k8s.owned_by(job, "someone-else")


def test_restricted_pod_security() -> None:
    pod = jobs.build_trainer_job(make_run(), UID, Settings())["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        ({"resources": {"gpus": 2}}, lambda j, p: p["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"),
        (
            {"resources": {"gpus": 1}},
            lambda j, p: {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in p["tolerations"],
        ),
        ({"resources": None}, lambda j, p: "tolerations" not in p),
        (
            {"resources": None},
            lambda j, p: (
                p["containers"][0]["resources"]
                == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
            ),
        ),
        (
            {"resources": {"requests": {"cpu": "3", "memory": "4Gi"}}},
            lambda j, p: p["containers"][0]["resources"]["limits"] == {"cpu": "3", "memory": "4Gi"},
        ),
        ({"nodeSelector": {"disk": "ssd"}}, lambda j, p: p["nodeSelector"] == {"disk": "ssd"}),
        ({"priorityClassName": "batch-low"}, lambda j, p: p["priorityClassName"] == "batch-low"),
        (
            {"queueName": "team-a"},
            lambda j, p: (
                j["spec"]["suspend"] is True and j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
            ),
        ),
        ({"suspend": True}, lambda j, p: j["spec"]["suspend"] is True),
        ({}, lambda j, p: j["spec"]["suspend"] is False and "kueue.x-k8s.io/queue-name" not in j["metadata"]["labels"]),
        ({"ttlSecondsAfterFinished": 60}, lambda j, p: j["spec"]["ttlSecondsAfterFinished"] == 60),
        ({"activeDeadlineSeconds": 30}, lambda j, p: j["spec"]["activeDeadlineSeconds"] == 30),
        ({"backoffLimit": 4}, lambda j, p: j["spec"]["backoffLimit"] == 4),
        ({"image": "registry.example.com/t:1"}, lambda j, p: p["containers"][0]["image"] == "registry.example.com/t:1"),
        (
            {"search": {"space": {"max_depth": [2, 3, 4]}, "parallelism": 3}},
            lambda j, p: (
                (j["spec"]["completionMode"], j["spec"]["completions"], j["spec"]["parallelism"]) == ("Indexed", 3, 3)
            ),
        ),
        ({"search": {"space": {"max_depth": [2, 3]}}}, lambda j, p: "completionMode" not in j["spec"]),
    ],
)
def test_spec_fields_reach_the_job(spec: dict[str, Any], check: Any) -> None:
    job = jobs.build_trainer_job(make_run(**spec), UID, Settings())
    assert check(job, job["spec"]["template"]["spec"])


def test_pod_failure_policy_fails_fast_on_terminal_exit_codes() -> None:
    rules = jobs.build_trainer_job(make_run(), UID, Settings())["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [10, 11, 12, 13, 14]},
    }
    assert rules[1]["action"] == "Ignore" and rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"


@pytest.mark.parametrize(
    ("dataset", "output", "ds_path", "out_dir", "claims"),
    [
        (
            "pvc://kubetrain-data/iris.csv",
            {"uri": "pvc://kubetrain-models/"},
            "/mnt/kubetrain/pvc/kubetrain-data/iris.csv",
            "/mnt/kubetrain/pvc/kubetrain-models/iris",
            {("kubetrain-data", True), ("kubetrain-models", False)},
        ),
        (
            "pvc://shared/in/iris.csv",
            {"uri": "pvc://shared/out"},
            "/mnt/kubetrain/pvc/shared/in/iris.csv",
            "/mnt/kubetrain/pvc/shared/out/iris",
            {("shared", False)},
        ),
        ("s3://bucket/iris.csv", {"uri": "s3://bucket/models"}, None, None, set()),
        (
            "https://example.com/iris.csv",
            None,
            None,
            "/mnt/kubetrain/pvc/kubetrain-models/iris",
            {("kubetrain-models", False)},
        ),
        ("file:///data/iris.csv", {"uri": "file:///models"}, None, "/models/iris", set()),
    ],
)
def test_dataset_and_output_locations(
    dataset: str, output: Any, ds_path: str | None, out_dir: str | None, claims: set[tuple[str, bool]]
) -> None:
    run = make_run(dataset={"uri": dataset, "target": "species"}, output=output)
    job = jobs.build_trainer_job(run, UID, Settings())
    env = env_of(job)
    assert env.get(contract.ENV_DATASET_PATH) == ds_path
    assert env.get(contract.ENV_OUTPUT_DIR) == out_dir
    pod = job["spec"]["template"]["spec"]
    got = {
        (v["persistentVolumeClaim"]["claimName"], v["persistentVolumeClaim"]["readOnly"])
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert got == claims
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {f"/mnt/kubetrain/pvc/{c}" for c, _ in claims} <= mounts


# ---- contract: what the Job runs is what the trainer accepts ----------------------------------------------


def test_job_command_is_accepted_by_the_trainer_cli() -> None:
    from kubetrain_trainer.__main__ import build_parser

    container = jobs.build_trainer_job(make_run(), UID, Settings())["spec"]["template"]["spec"]["containers"][0]
    command = container["command"] + container.get("args", [])
    assert command[:3] == ["python", "-m", "kubetrain_trainer"]
    args = build_parser().parse_args(command[3:])
    assert args.command == "run" and args.config is None and getattr(args, "output", None) is None


def test_job_env_names_are_the_trainer_contract() -> None:
    env = env_of(jobs.build_trainer_job(make_run(), UID, Settings()))
    contract_names = {v for k, v in vars(contract).items() if k.startswith("ENV_")}
    # every name but HOME is a constant of the trainer contract
    extra = {"HOME"}
    assert set(env) - contract_names <= extra
    assert {contract.ENV_CONFIG, contract.ENV_DATASET_PATH, contract.ENV_OUTPUT_DIR, contract.ENV_CPU_LIMIT} <= set(env)
    assert env[contract.ENV_CPU_LIMIT] == {"resourceFieldRef": {"containerName": "trainer", "resource": "limits.cpu"}}


def test_config_env_is_a_manifest_the_trainer_reads() -> None:
    from kubetrain_trainer.config import read_config

    run = make_run()
    env = env_of(jobs.build_trainer_job(run, UID, Settings()))
    manifest = json.loads(env[contract.ENV_CONFIG])
    assert manifest["metadata"] == {"name": "iris", "namespace": "ml", "uid": UID}
    old = os.environ.get(contract.ENV_CONFIG)
    os.environ[contract.ENV_CONFIG] = env[contract.ENV_CONFIG]
    try:
        cfg = read_config(None, None)
    finally:
        if old is None:
            os.environ.pop(contract.ENV_CONFIG)
        else:
            os.environ[contract.ENV_CONFIG] = old
    assert cfg.name == "iris"
    assert cfg.spec.model_dump() == run.spec.model_dump()


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "KUBETRAIN_TRAINER_IMAGE": "r.example/t:2",
            "KUBETRAIN_MAX_GPUS": "4",
            "KUBETRAIN_PROTECTED_ALIASES": "production, stable",
            "KUBETRAIN_MODEL_RETENTION": "3",
            "KUBETRAIN_PVC_MOUNT_ROOT": "/data/",
        }
    )
    assert s.trainer_image == "r.example/t:2" and s.max_gpus == 4 and s.model_retention == 3
    assert s.protected_aliases == ("production", "stable") and s.pvc_mount_root == "/data"
    assert Settings.from_env({}) == Settings()
    with pytest.raises(ValueError, match="KUBETRAIN_MAX_GPUS"):
        Settings.from_env({"KUBETRAIN_MAX_GPUS": "many"})


def test_settings_watch_timeouts() -> None:
    assert (Settings().watch_server_timeout, Settings().watch_client_timeout) == (300, 330.0)
    s = Settings.from_env({"KUBETRAIN_WATCH_SERVER_TIMEOUT": "5", "KUBETRAIN_WATCH_CLIENT_TIMEOUT": "7.5"})
    # timeoutSeconds of a watch is an integer for the API server ("300.0" is a 400 Bad Request)
    assert s.watch_server_timeout == 5 and isinstance(s.watch_server_timeout, int)
    assert s.watch_client_timeout == 7.5
    with pytest.raises(ValueError, match="KUBETRAIN_WATCH_SERVER_TIMEOUT"):
        Settings.from_env({"KUBETRAIN_WATCH_SERVER_TIMEOUT": "5.5"})
    with pytest.raises(ValueError, match="KUBETRAIN_WATCH_CLIENT_TIMEOUT"):
        Settings.from_env({"KUBETRAIN_WATCH_CLIENT_TIMEOUT": "soon"})
    with pytest.raises(ValueError, match="KUBETRAIN_WATCH_SERVER_TIMEOUT"):
        Settings.from_env({"KUBETRAIN_WATCH_SERVER_TIMEOUT": "-1"})


def test_env_from_and_service_account_reach_the_pod_without_overriding_the_contract() -> None:
    run = make_run(
        envFrom=[{"secretRef": {"name": "s3-creds"}}, {"configMapRef": {"name": "s3-endpoint"}}],
        serviceAccountName="trainer-irsa",
    )
    pod = jobs.build_trainer_job(run, UID, Settings())["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}, {"configMapRef": {"name": "s3-endpoint"}}]
    # Explicit env wins over envFrom in Kubernetes, so a Secret cannot redirect the contract's variables.
    assert "KUBETRAIN_CONFIG" in env_of({"spec": {"template": {"spec": pod}}})
    assert pod["serviceAccountName"] == "trainer-irsa"
    assert pod["automountServiceAccountToken"] is True


def test_no_service_account_token_unless_one_is_named() -> None:
    pod = jobs.build_trainer_job(make_run(), UID, Settings())["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod and "envFrom" not in pod["containers"][0]


def test_operator_mlflow_defaults_reach_the_trainer_through_the_contract() -> None:
    plain = env_of(jobs.build_trainer_job(make_run(), UID, Settings()))
    assert contract.ENV_MLFLOW_TRACKING_URI not in plain
    assert plain[contract.ENV_IMAGE] == Settings().trainer_image
    s = Settings.from_env(
        {
            "KUBETRAIN_MLFLOW_TRACKING_URI": "http://mlflow.mlflow.svc:5000",
            "KUBETRAIN_MLFLOW_EXPERIMENT": "team-a",
            "KUBETRAIN_MLFLOW_REQUIRED": "true",
        }
    )
    env = env_of(jobs.build_trainer_job(make_run(), UID, s))
    assert env[contract.ENV_MLFLOW_TRACKING_URI] == "http://mlflow.mlflow.svc:5000"
    assert env[contract.ENV_MLFLOW_EXPERIMENT] == "team-a"
    assert env[contract.ENV_MLFLOW_REQUIRED] == "true"


def test_a_bad_operator_mlflow_uri_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="KUBETRAIN_MLFLOW_TRACKING_URI"):
        Settings.from_env({"KUBETRAIN_MLFLOW_TRACKING_URI": "https://user:pw@mlflow.example.com"})
