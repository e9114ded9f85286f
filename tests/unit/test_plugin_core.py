"""The kubectl plugin's pure parts: comparison rows and table, history order, the rollback target, alias
outcomes, the run explanation — and the clear errors of bad invocations (no cluster needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubetrain_cli import core
from kubetrain_cli.cli import main


def mv(
    name: str,
    version: int,
    *,
    metrics: dict[str, float] | None = None,
    aliases: list[str] | None = None,
    history: list[tuple[str, str, str]] | None = None,
    phase: str = "Ready",
    generation: int = 1,
    observed: int = 1,
    params: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    spec_aliases: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": generation, "resourceVersion": "42"},
        "spec": {
            "model": "iris",
            "version": version,
            "artifact": {"uri": f"pvc://m/{name}/model.joblib", "sha256": "a" * 64},
            "metrics": metrics or {"accuracy": 0.9},
            "aliases": spec_aliases or [],
            "source": {
                "estimator": "random_forest",
                "params": params or {"n_estimators": 50},
                "dataset": "pvc://d/iris.csv",
                "datasetFingerprint": "f" * 16,
            },
            "signature": {
                "task": "classification",
                "target": "species",
                "features": [{"name": "sepal_length", "dtype": "float64"}],
            },
        },
        "status": {
            "phase": phase,
            "observedGeneration": observed,
            "aliases": aliases or [],
            "aliasHistory": [
                {"alias": a, "action": act, "time": t, "message": f"{act} {a}"} for a, act, t in history or []
            ],
            "conditions": conditions or [],
        },
    }


def test_compare_marks_differences_and_shows_every_column() -> None:
    a = mv("iris-v1", 1, metrics={"accuracy": 0.9211, "f1_macro": 0.92}, params={"n_estimators": 50})
    b = mv("iris-v2", 2, metrics={"accuracy": 0.9737, "f1_macro": 0.92}, params={"n_estimators": 200})
    rows = core.compare_rows([a, b])
    by_field = {f"{r.section}.{r.field}": r for r in rows}
    assert by_field["metrics.accuracy"].differs and by_field["metrics.accuracy"].values == (0.9211, 0.9737)
    assert not by_field["metrics.f1_macro"].differs
    assert by_field["params.n_estimators"].differs
    assert not by_field["dataset.fingerprint"].differs
    table = core.compare_table(["iris-v1", "iris-v2"], rows)
    header = table.splitlines()[0]
    assert "iris-v1" in header and "iris-v2" in header
    acc = next(line for line in table.splitlines() if "metrics.accuracy" in line)
    assert acc.lstrip().startswith("*") and "0.9211" in acc and "0.9737" in acc
    f1 = next(line for line in table.splitlines() if "metrics.f1_macro" in line)
    assert not f1.lstrip().startswith("*")
    only = core.compare_table(["iris-v1", "iris-v2"], rows, only_differences=True)
    assert "metrics.f1_macro" not in only and "metrics.accuracy" in only


def test_compare_missing_metric_shows_a_dash_and_differs() -> None:
    a = mv("a", 1, metrics={"accuracy": 0.9})
    b = mv("b", 2, metrics={"accuracy": 0.9, "roc_auc": 0.99})
    row = next(r for r in core.compare_rows([a, b]) if r.field == "roc_auc")
    assert row.values == (None, 0.99) and row.differs
    doc = core.compare_document(["a", "b"], core.compare_rows([a, b]))
    json.dumps(doc)  # JSON-able
    assert {"section": "metrics", "field": "roc_auc", "values": [None, 0.99], "differs": True} in doc["rows"]


def test_history_orders_events_by_time_across_versions() -> None:
    v1 = mv(
        "iris-v1",
        1,
        history=[
            ("production", "Assigned", "2026-12-01T10:00:00Z"),
            ("production", "Superseded", "2026-12-01T10:05:00.250000Z"),
        ],
    )
    v2 = mv("iris-v2", 2, aliases=["production"], history=[("production", "Assigned", "2026-12-01T10:05:00.1Z")])
    events = core.alias_events([v2, v1])
    assert [(e["name"], e["action"]) for e in events] == [
        ("iris-v1", "Assigned"),
        ("iris-v2", "Assigned"),
        ("iris-v1", "Superseded"),
    ]
    doc = core.history_document("iris", core.versions_of([v2, v1, mv("other", 1) | {"spec": {"model": "x"}}], "iris"))
    assert [v["name"] for v in doc["versions"]] == ["iris-v1", "iris-v2"]
    text = core.history_tables(doc)
    assert text.index("iris-v1") < text.index("iris-v2") and "Superseded" in text


def test_rollback_target_is_the_previous_holder() -> None:
    v1 = mv(
        "iris-v1",
        1,
        history=[
            ("production", "Assigned", "2026-12-01T10:00:00Z"),
            ("production", "Superseded", "2026-12-01T10:05:00Z"),
        ],
    )
    v2 = mv(
        "iris-v2",
        2,
        history=[
            ("production", "Assigned", "2026-12-01T10:05:00Z"),
            ("production", "Superseded", "2026-12-01T10:09:00Z"),
        ],
    )
    v3 = mv("iris-v3", 3, aliases=["production"], history=[("production", "Assigned", "2026-12-01T10:09:00Z")])
    target, why = core.rollback_target([v1, v2, v3], "production")
    assert target is not None and core.name_of(target) == "iris-v2", why
    assert "iris-v2 held production before iris-v3" in why
    # a Failed previous holder is skipped: the one before it
    v2_failed = mv(
        "iris-v2",
        2,
        phase="Failed",
        history=v2["status"]["aliasHistory"] and [("production", "Assigned", "2026-12-01T10:05:00Z")],
    )
    target, _ = core.rollback_target([v1, v2_failed, v3], "production")
    assert target is not None and core.name_of(target) == "iris-v1"
    # nothing before: a clear reason
    target, why = core.rollback_target([v3], "production")
    assert target is None and "no earlier holder of production" in why and "iris-v3 holds it now" in why
    # the alias was dropped entirely: the last holder gets it back
    v3_dropped = mv(
        "iris-v3",
        3,
        history=[("production", "Assigned", "2026-12-01T10:09:00Z"), ("production", "Removed", "2026-12-01T10:10:00Z")],
    )
    target, _ = core.rollback_target([v1, v2, v3_dropped], "production")
    assert target is not None and core.name_of(target) == "iris-v3"


def test_alias_outcome() -> None:
    assert core.alias_outcome(mv("a", 1, generation=2, observed=1), "production", 2).state == "pending"
    assert (
        core.alias_outcome(mv("a", 1, aliases=["production"], generation=2, observed=2), "production", 2).state
        == "held"
    )
    refused = mv(
        "a",
        1,
        generation=2,
        observed=2,
        history=[("production", "Refused", "2026-12-01T10:00:00Z")],
        conditions=[
            {
                "type": "AliasRefused",
                "status": "True",
                "reason": "ProtectedAliasRefused",
                "message": "production is protected and a missed its run's thresholds",
            }
        ],
    )
    out = core.alias_outcome(refused, "production", 2)
    assert out.state == "refused" and out.message == "Refused production"
    sup = mv("a", 1, conditions=[{"type": "AliasSuperseded", "status": "True", "message": "production is held by b"}])
    assert core.alias_outcome(sup, "production", 1).state == "superseded"
    assert core.alias_outcome(mv("a", 1, phase="Failed"), "production", 1).state == "refused"


def test_aliases_patch_is_a_user_edit_guarded_by_resource_version() -> None:
    obj = mv("a", 1, spec_aliases=["candidate"])
    assert core.aliases_patch(obj, core.with_alias(obj["spec"]["aliases"], "production")) == {
        "metadata": {"resourceVersion": "42"},
        "spec": {"aliases": ["candidate", "production"]},
    }
    assert core.without_alias(["candidate", "production"], "production") == ["candidate"]


def test_explain_unschedulable_run_names_the_resource() -> None:
    msg = "pod greedy-0-abc: 0/1 nodes are available: 1 Insufficient cpu."
    run = {
        "metadata": {"name": "greedy", "generation": 1},
        "status": {
            "phase": "Pending",
            "observedGeneration": 1,
            "jobName": "greedy",
            "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Unschedulable", "message": msg}],
        },
    }
    pod = {
        "metadata": {"name": "greedy-0-abc"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient cpu.",
                }
            ],
        },
    }
    event = {
        "type": "Warning",
        "reason": "FailedScheduling",
        "involvedObject": {"kind": "Pod", "name": "greedy-0-abc"},
        "message": "0/1 nodes are available: 1 Insufficient cpu.",
        "lastTimestamp": "2026-12-01T10:00:00Z",
    }
    doc = core.explain_run(run, [event], [pod], None, None)
    assert doc["verdict"].startswith("Pending: Unschedulable") and "Insufficient cpu" in doc["verdict"]
    text = core.explain_text(doc)
    assert "FailedScheduling" in text and "Pod/greedy-0-abc" in text and "Unschedulable: 0/1 nodes" in text


def test_pod_order_index_then_creation() -> None:
    def pod(name: str, index: str | None, created: str) -> dict[str, Any]:
        ann = {"batch.kubernetes.io/job-completion-index": index} if index is not None else {}
        return {"metadata": {"name": name, "annotations": ann, "creationTimestamp": created}}

    pods = [pod("r-1-b", "1", "10:00:01"), pod("r-0-retry", "0", "10:00:05"), pod("r-0-a", "0", "10:00:00")]
    assert [p["metadata"]["name"] for p in core.pod_order(pods)] == ["r-0-a", "r-0-retry", "r-1-b"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["compare", "only-one"], core.EXIT_USAGE, "compare needs at least two ModelVersions"),
        (["-o", "xml", "history", "iris"], 2, "Invalid value for '-o'"),
        (["--kubeconfig", "/nonexistent/kubeconfig", "history", "iris"], core.EXIT_ERROR, "does not exist"),
        (["promote", "only-version"], 2, "Missing argument 'ALIAS'"),
    ],
)
def test_bad_invocations_exit_non_zero_with_a_clear_message(
    argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code
    assert message in capsys.readouterr().err


def test_unknown_context_is_a_clear_error(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "a",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
            }
        )
    )
    with pytest.raises(SystemExit) as exc:
        main(["--kubeconfig", str(kubeconfig), "--context", "nope", "history", "iris"])
    assert exc.value.code == core.EXIT_ERROR and "nope" in capsys.readouterr().err
    # the API server is unreachable: a one-line error, not a traceback
    with pytest.raises(SystemExit) as exc:
        main(["--kubeconfig", str(kubeconfig), "history", "iris"])
    err = capsys.readouterr().err
    assert exc.value.code == core.EXIT_ERROR and err.startswith("error:") and "Traceback" not in err


def test_krew_manifest_matches_the_archive_and_the_entry_point() -> None:
    import subprocess
    import tarfile
    import tomllib
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([str(root / "hack" / "krew-archive"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    manifest = yaml.safe_load((root / "plugins" / "kubetrain.yaml").read_text())
    assert manifest["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert manifest["kind"] == "Plugin" and manifest["metadata"]["name"] == "kubetrain"
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert manifest["spec"]["version"] == "v" + pyproject["project"]["version"]
    assert pyproject["project"]["scripts"]["kubectl-kubetrain"] == "kubetrain_cli.cli:main"
    (platform,) = manifest["spec"]["platforms"]
    assert platform["bin"] == "kubectl-kubetrain" and len(platform["sha256"]) == 64
    assert {f["from"] for f in platform["files"]} == {"kubectl-kubetrain", "NOTICE"}
    assert "dist/" not in platform["uri"]
    import io
    import runpy

    module = runpy.run_path(str(root / "hack" / "krew-archive"), run_name="krew_archive")
    with tarfile.open(fileobj=io.BytesIO(module["archive"]()), mode="r:gz") as tar:
        shim = tar.getmember("kubectl-kubetrain")
        assert shim.mode & 0o111 and b"-m kubetrain_cli" in tar.extractfile(shim).read()  # type: ignore[union-attr]


def test_claim_rereads_and_retries_on_a_conflict() -> None:
    """The operator writes status between our read and our patch: the edit is re-applied to a fresh read."""
    from kubetrain_cli.cli import _claim
    from kubetrain_cli.kube import Conflict

    class FakeApi:
        def __init__(self) -> None:
            self.patches: list[dict[str, Any]] = []

        def patch_aliases(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
            self.patches.append(patch)
            if len(self.patches) == 1:
                raise Conflict("changed")
            return {"metadata": {"generation": 7}}

        def model_version(self, name: str) -> dict[str, Any]:
            fresh = mv(name, 1, spec_aliases=["candidate"])
            fresh["metadata"]["resourceVersion"] = "43"
            return fresh

    api = FakeApi()
    stale = mv("iris-v1", 1)
    assert _claim(api, stale, lambda a: core.with_alias(a, "production")) == 7  # type: ignore[arg-type]
    assert api.patches == [
        {"metadata": {"resourceVersion": "42"}, "spec": {"aliases": ["production"]}},
        {"metadata": {"resourceVersion": "43"}, "spec": {"aliases": ["candidate", "production"]}},
    ]


def test_status_code_of_api_and_transport_errors() -> None:
    from types import SimpleNamespace

    from kubetrain_cli.kube import status_code

    assert status_code(RuntimeError("boom")) is None
    bare_404 = RuntimeError("404 page not found")
    bare_404.response = SimpleNamespace(status_code=404)  # type: ignore[attr-defined]
    assert status_code(bare_404) == 404
