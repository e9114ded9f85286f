"""MLflow end to end on the dev cluster: the trainer in pods on the real nodes logs to a real ``mlflow server``
(tests/mlflowserver.py, SQLite backend, basic auth) listening on this machine's pod-bridge address — the one
host address pods can reach, as the API server is —, and the operator mirrors ModelVersions into its
registry. Everything is read back through MLflow's REST API.

Covers issue 13's acceptance: a tracked search run (params, metrics = status.metrics, tags, dataset digest,
one child per trial); its ModelVersion in the registry with source and run link; `production` promoted and
moved on the cluster moves in MLflow; an alias moved by hand in MLflow is put back within one resync and
reported; MLflow stopped during a run (Succeeded, Tracked=False, then the mirror catches up without a
duplicate); a wrong URI and refused credentials give a clear condition, not a crash loop.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster, free_port, wait_until
from tests.mlflowserver import ADMIN_PASSWORD, ADMIN_USER, mlflow_server, rest

from .conftest import Operator, Workspace, iris_run

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

RESYNC = "5"
SECRET = "mlflow-creds"
SEARCH = {"strategy": "grid", "space": {"n_estimators": [10, 20]}, "cv": 2}


@pytest.fixture(scope="module")
def mlflow_url(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow"), host=cluster.host_ip) as url:
        yield url


def _secret(ws: Workspace, password: str = ADMIN_PASSWORD, name: str = SECRET) -> None:
    data = {
        "MLFLOW_TRACKING_USERNAME": ADMIN_USER,
        "MLFLOW_TRACKING_PASSWORD": password,
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
    }
    ws.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
    )


def _tracked_run(name: str, model: str, url: str, secret: str = SECRET, **extra: Any) -> dict[str, Any]:
    run = iris_run(name, model=model, **extra)
    run["spec"]["tracking"] = {"mlflow": {"trackingUri": url, "experiment": f"{model}-exp"}}
    run["spec"]["envFrom"] = [{"secretRef": {"name": secret}}]
    return run


def _start(operator_factory: Any, **env: str) -> Operator:
    # A loaded test machine can take longer than the default 10 s to answer one request.
    env = {"KUBETRAIN_MLFLOW_RESYNC_SECONDS": RESYNC, "KUBETRAIN_MLFLOW_TIMEOUT": "60", "NO_PROXY": "*", **env}
    return operator_factory(**env)  # type: ignore[no-any-return]


def _mv(ws: Workspace, name: str) -> dict[str, Any]:
    return dict(ws.get("mv", name))


def _ready_untracked(ws: Workspace, name: str) -> dict[str, Any] | None:
    """The version's Tracked condition once it is Ready and Tracked=False; None before."""
    status = _mv(ws, name).get("status") or {}
    cond = next((c for c in status.get("conditions", []) if c["type"] == "Tracked"), None)
    return cond if status.get("phase") == "Ready" and cond and cond["status"] == "False" else None


def _tracked(ws: Workspace, name: str) -> dict[str, Any] | None:
    obj = _mv(ws, name)
    cond = next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Tracked"), None)
    return obj if cond and cond["status"] == "True" and (obj["status"].get("tracking") or {}).get("version") else None


def _aliases(url: str, model: str) -> dict[str, str]:
    found = rest(url, "registered-models/get", name=model)["registered_model"]
    return {a["alias"]: a["version"] for a in found.get("aliases") or []}


def _versions(url: str, model: str) -> list[dict[str, Any]]:
    return list(rest(url, "model-versions/search", filter=f"name='{model}'").get("model_versions") or [])


def _events(ws: Workspace, name: str, reason: str) -> list[dict[str, Any]]:
    items = ws.get("events", "--field-selector", f"involvedObject.name={name},reason={reason}")["items"]
    return list(items)


def test_a_tracked_search_run_and_its_model_version_are_in_mlflow_and_aliases_follow_the_cluster(
    workspace: Workspace, operator_factory: Any, mlflow_url: str
) -> None:
    ws = workspace
    _secret(ws)
    _start(operator_factory)
    ws.apply(_tracked_run("tracked-a", "mirror-iris", mlflow_url, search=SEARCH))
    run = ws.wait_phase("tracked-a", ("Succeeded", "Failed"), timeout=300)
    assert run["status"]["phase"] == "Succeeded", run["status"]
    tracked = next(c for c in run["status"]["conditions"] if c["type"] == "Tracked")
    assert tracked["status"] == "True", tracked
    run_id = run["status"]["tracking"]["mlflowRunId"]
    experiment_id = run["status"]["tracking"]["experimentId"]
    assert run["status"]["tracking"]["url"] == f"{mlflow_url}/#/experiments/{experiment_id}/runs/{run_id}"

    # The run: params, metrics equal to status.metrics, tags, the dataset digest; one child per trial.
    got = rest(mlflow_url, "runs/get", run_id=run_id)["run"]
    params = {p["key"]: p["value"] for p in got["data"].get("params") or []}
    metrics = {m["key"]: m["value"] for m in got["data"].get("metrics") or []}
    tags = {t["key"]: t["value"] for t in got["data"].get("tags") or []}
    assert params["estimator"] == "random_forest" and "search.space" in params
    for key, value in run["status"]["metrics"].items():
        assert math.isclose(metrics[key], value, rel_tol=1e-9), (key, metrics.get(key), value)
    assert tags["kubetrain.run.uid"] == run["metadata"]["uid"] and tags["kubetrain.namespace"] == ws.namespace
    fingerprint = tags["kubetrain.dataset.fingerprint"]
    digests = [d["dataset"]["digest"] for d in got["inputs"]["dataset_inputs"]]
    assert digests == [fingerprint.removeprefix("sha256:")[:36]]
    children = rest(
        mlflow_url,
        "runs/search",
        {"experiment_ids": [got["info"]["experiment_id"]], "filter": f"tags.mlflow.parentRunId = '{run_id}'"},
    ).get("runs")
    assert len(children or []) == 2  # the grid has two candidates

    # Its ModelVersion: in the registry with its source and run link.
    name = run["status"]["modelVersion"]
    mv = wait_until(f"{name} Tracked", lambda: _tracked(ws, name), 120)
    version = mv["status"]["tracking"]["version"]
    mlflow_mv = rest(mlflow_url, "model-versions/get", name="mirror-iris", version=version)["model_version"]
    assert mlflow_mv["source"] == mv["spec"]["artifact"]["uri"] and mlflow_mv["run_id"] == run_id
    mv_tags = {t["key"]: t["value"] for t in mlflow_mv.get("tags") or []}
    assert mv_tags["kubetrain.uid"] == mv["metadata"]["uid"]
    assert float(mv_tags["kubetrain.metric.accuracy"]) == pytest.approx(mv["spec"]["metrics"]["accuracy"])
    assert mv["status"]["tracking"]["mlflowRunId"] == run_id
    wait_until("candidate in MLflow", lambda: _aliases(mlflow_url, "mirror-iris") == {"candidate": version}, 60)

    # Promoting it to production on the cluster sets the alias in MLflow.
    ws.kubectl("patch", "mv", name, "--type", "merge", "-p", json.dumps({"spec": {"aliases": ["production"]}}))
    wait_until("production in MLflow", lambda: _aliases(mlflow_url, "mirror-iris") == {"production": version}, 60)

    # A second version takes production on the cluster: MLflow follows.
    ws.apply(_tracked_run("tracked-b", "mirror-iris", mlflow_url))
    run_b = ws.wait_phase("tracked-b", ("Succeeded", "Failed"), timeout=300)
    name_b = run_b["status"]["modelVersion"]
    version_b = wait_until(f"{name_b} Tracked", lambda: _tracked(ws, name_b), 120)["status"]["tracking"]["version"]
    ws.kubectl("patch", "mv", name_b, "--type", "merge", "-p", json.dumps({"spec": {"aliases": ["production"]}}))
    want = {"production": version_b}
    wait_until("production moved in MLflow", lambda: _aliases(mlflow_url, "mirror-iris") == want, 60)

    # Moved back by hand in MLflow: put back within one resync, and the version's status says so.
    rest(mlflow_url, "registered-models/alias", {"name": "mirror-iris", "alias": "production", "version": version})
    rest(mlflow_url, "registered-models/alias", {"name": "mirror-iris", "alias": "by-hand", "version": version})
    wait_until("production put back", lambda: _aliases(mlflow_url, "mirror-iris") == want, 3 * float(RESYNC) + 30)
    restored = _mv(ws, name_b)["status"]["tracking"].get("restored") or ""
    assert "alias production was on MLflow version" in restored and f"put back on version {version_b}" in restored
    assert _events(ws, name_b, "AliasRestored")
    assert len(_versions(mlflow_url, "mirror-iris")) == 2  # one MLflow version per ModelVersion, never more

    # deletionPolicy Delete: deleting the ModelVersion removes its MLflow version too (Retain keeps it).
    ws.kubectl("patch", "mv", name, "--type", "merge", "-p", json.dumps({"spec": {"deletionPolicy": "Delete"}}))
    wait_until("finalizer", lambda: _mv(ws, name)["metadata"].get("finalizers"), 60)
    ws.kubectl("delete", "mv", name, "--wait=false")
    left = wait_until(
        "v1's MLflow version deleted",
        lambda: (vs := [v["version"] for v in _versions(mlflow_url, "mirror-iris")]) == [version_b] and vs,
        120,
    )
    assert left == [version_b]
    wait_until(f"{name} gone", lambda: ws.kubectl("get", "mv", name, check=False).returncode != 0, 120)


def test_mlflow_stopped_during_a_run_then_back_mirrors_without_a_duplicate(
    cluster: Cluster, workspace: Workspace, operator_factory: Any, tmp_path: Path
) -> None:
    ws = workspace
    _secret(ws)
    port, workdir = free_port(), tmp_path / "mlflow"
    operator = _start(operator_factory)
    with mlflow_server(workdir, host=cluster.host_ip, port=port) as url:
        ws.apply(_tracked_run("untracked", "outage-iris", url))
    # Stopped as soon as the run was applied: down before the trainer's first MLflow call (its pod starts and
    # imports for seconds), and for the rest of the run.
    run = ws.wait_phase("untracked", ("Succeeded", "Failed"), timeout=300)
    assert run["status"]["phase"] == "Succeeded", run["status"]
    tracked = next(c for c in run["status"]["conditions"] if c["type"] == "Tracked")
    assert (tracked["status"], tracked["reason"]) == ("False", "MlflowUnreachable"), tracked
    name = run["status"]["modelVersion"]

    cond = wait_until(f"{name} Tracked=False", lambda: _ready_untracked(ws, name), 120)
    assert cond["reason"] == "MlflowUnreachable" and url in cond["message"], cond
    with mlflow_server(workdir, host=cluster.host_ip, port=port):
        mv = wait_until(f"{name} mirrored after MLflow returned", lambda: _tracked(ws, name), 3 * float(RESYNC) + 60)
        versions = _versions(url, "outage-iris")
        assert [v["version"] for v in versions] == [mv["status"]["tracking"]["version"]]
        assert _aliases(url, "outage-iris") == {"candidate": mv["status"]["tracking"]["version"]}
    assert operator.proc is not None and operator.proc.poll() is None  # no crash loop


# A search of some tens of seconds on one CPU (20 candidates x 3 folds of up to 300 trees): long enough to see
# the MLflow run appear and stop the server while the trainer is still training.
LONG_SEARCH = {
    "strategy": "grid",
    "space": {"n_estimators": [100, 200, 300, 250], "max_depth": [2, 3, 4, 5, None]},
    "cv": 3,
}


def test_mlflow_stopped_mid_training_the_run_succeeds_untracked_and_the_mirror_catches_up_once(
    cluster: Cluster, workspace: Workspace, operator_factory: Any, tmp_path: Path
) -> None:
    """The trainer opens its MLflow run (tags logged) before training; the server goes away while the
    search trains, so everything logged at the end fails: Succeeded, Tracked=False with the reason, the MLflow
    run id kept; once MLflow is back the ModelVersion is mirrored exactly once, linked to that run."""
    ws = workspace
    _secret(ws)
    port, workdir = free_port(), tmp_path / "mlflow"
    operator = _start(operator_factory)
    with mlflow_server(workdir, host=cluster.host_ip, port=port) as url:
        ws.apply(_tracked_run("midway", "midway-iris", url, search=LONG_SEARCH))

        def opened() -> dict[str, Any] | None:
            try:
                exp = rest(url, "experiments/get-by-name", experiment_name="midway-iris-exp")["experiment"]
            except Exception:  # the experiment does not exist yet
                return None
            runs = rest(url, "runs/search", {"experiment_ids": [exp["experiment_id"]]}).get("runs") or []
            return runs[0] if runs else None

        seen = wait_until("the trainer's MLflow run", opened, 300, interval=0.3)
        phase = (ws.run("midway").get("status") or {}).get("phase")
        tags = {t["key"]: t["value"] for t in seen["data"].get("tags") or []}
        assert seen["info"]["status"] == "RUNNING" and tags["kubetrain.run.name"] == "midway", seen
    # The server is stopped here, while the trainer trains (nothing else is logged before training ends).
    # (the MLflow run exists, so the trainer was past its start; not finished, so it had not logged the rest)
    assert phase not in ("Succeeded", "Failed"), f"the run was {phase} when MLflow stopped: not mid-training"
    run = ws.wait_phase("midway", ("Succeeded", "Failed"), timeout=600)
    assert run["status"]["phase"] == "Succeeded", run["status"]
    tracked = next(c for c in run["status"]["conditions"] if c["type"] == "Tracked")
    assert (tracked["status"], tracked["reason"]) == ("False", "MlflowUnreachable"), tracked
    assert url in tracked["message"], tracked
    run_id = seen["info"]["run_id"]
    assert run["status"]["tracking"]["mlflowRunId"] == run_id, run["status"]["tracking"]
    name = run["status"]["modelVersion"]

    cond = wait_until(f"{name} Tracked=False", lambda: _ready_untracked(ws, name), 120)
    assert cond["reason"] == "MlflowUnreachable", cond
    with mlflow_server(workdir, host=cluster.host_ip, port=port):
        mv = wait_until(f"{name} mirrored after MLflow returned", lambda: _tracked(ws, name), 3 * float(RESYNC) + 60)
        version = mv["status"]["tracking"]["version"]
        assert [v["version"] for v in _versions(url, "midway-iris")] == [version]
        mlflow_mv = rest(url, "model-versions/get", name="midway-iris", version=version)["model_version"]
        assert mlflow_mv["run_id"] == run_id and mlflow_mv["source"] == mv["spec"]["artifact"]["uri"]
        # Several resyncs later still one version: the mirror found its own by uid, never made a second.
        time.sleep(3 * float(RESYNC))
        assert [v["version"] for v in _versions(url, "midway-iris")] == [version]
        # The half-logged run stays as the trainer left it: opened, never finished (its end could not be sent).
        assert rest(url, "runs/get", run_id=run_id)["run"]["info"]["status"] == "RUNNING"
    assert operator.proc is not None and operator.proc.poll() is None  # no crash loop


def test_a_wrong_uri_and_refused_credentials_give_a_clear_condition_not_a_crash_loop(
    workspace: Workspace, operator_factory: Any, mlflow_url: str
) -> None:
    ws = workspace
    _secret(ws)
    _secret(ws, password="not-the-password", name="wrong-creds")
    operator = _start(operator_factory)
    ws.apply(_tracked_run("wrong-uri", "wrong-uri-iris", mlflow_url + "/not-mlflow"))
    ws.apply(_tracked_run("refused", "refused-iris", mlflow_url, secret="wrong-creds"))
    for run_name, reason, words in (
        ("wrong-uri", "MlflowError", "wrong tracking URI?"),
        ("refused", "MlflowRefused", f"the credentials were refused (Secret {ws.namespace}/wrong-creds)"),
    ):
        run = ws.wait_phase(run_name, ("Succeeded", "Failed"), timeout=300)
        assert run["status"]["phase"] == "Succeeded", run["status"]
        name = run["status"]["modelVersion"]

        def failed(name: str = name) -> dict[str, Any] | None:
            conds = (_mv(ws, name).get("status") or {}).get("conditions", [])
            cond = next((c for c in conds if c["type"] == "Tracked"), None)
            return cond if cond and cond["status"] == "False" else None

        cond = wait_until(f"{name} Tracked=False", failed, 120)
        assert cond["reason"] == reason and words in cond["message"], cond
        assert _mv(ws, name)["status"]["phase"] == "Ready"  # MLflow never fails a version
    assert operator.proc is not None and operator.proc.poll() is None
    assert operator.metric("kubetrain_reconcile_total", kind="ModelVersion", result="error") == 0
