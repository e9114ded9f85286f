"""Install artifacts without a cluster: the chart lints and renders, manifests/ matches the chart,
the alert rules pass promtool's checks and unit tests, the dashboard is valid JSON using real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _bins() -> dict[str, str]:
    out = subprocess.run([str(REPO / "hack" / "build-k8s")], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    values = dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)
    return {"helm": values["HELM_BIN"], "kubectl": str(Path(values["KUBE_BIN_DIR"]) / "kubectl")}


@pytest.fixture(scope="module")
def bins() -> dict[str, str]:
    return _bins()


def test_chart_lints(bins: dict[str, str]) -> None:
    proc = subprocess.run(
        [bins["helm"], "lint", "--strict", "--kube-version", "1.37.2", str(REPO / "helm" / "kubetrain")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _render(bins: dict[str, str], *values: str) -> list[dict]:
    proc = subprocess.run(
        [bins["helm"], "template", "kt", str(REPO / "helm" / "kubetrain"), "--kube-version", "1.37.2",
         "--namespace", "kt-system", *values],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_chart_renders_restricted_leader_and_standby_operator(bins: dict[str, str]) -> None:
    docs = _render(bins, "--set", "watchNamespaces={ml,research}")
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    # Two replicas, one Lease: pods roll one at a time (a new standby is Ready before an old pod stops).
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["args"] == ["--namespace=ml", "--namespace=research"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETRAIN_PROTECTED_ALIASES"] == "production"
    assert env["KUBETRAIN_LEADER_ELECTION"] == "true" and env["KUBETRAIN_LEADER_LEASE_NAME"] == "kt-kubetrain"
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert downward == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    # A standby must pass readiness (helm --wait, rolling updates); liveness is the same for both.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # A slow start (a busy node) is not a liveness failure: the startup probe allows minutes.
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz" and startup["periodSeconds"] * startup["failureThreshold"] >= 300
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "kt-system"
    assert {(tuple(r["verbs"]), tuple(r.get("resourceNames", ()))) for r in role["rules"]} == {
        (("create",), ()),
        (("get", "update"), ("kt-kubetrain",)),
    }
    assert all(r["apiGroups"] == ["coordination.k8s.io"] and r["resources"] == ["leases"] for r in role["rules"])
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    (spread,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread["podAffinityTerm"]["labelSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]


def test_chart_renders_one_replica_without_leader_election(bins: dict[str, str]) -> None:
    docs = _render(bins, "--set", "operator.replicas=1", "--set", "operator.leaderElection.enabled=false")
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    env = {e["name"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "KUBETRAIN_LEADER_ELECTION" not in env
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding", "PodDisruptionBudget")]
    assert "affinity" not in deploy["spec"]["template"]["spec"]


def test_chart_refuses_two_replicas_without_leader_election(bins: dict[str, str]) -> None:
    proc = subprocess.run(
        [bins["helm"], "template", "kt", str(REPO / "helm" / "kubetrain"), "--kube-version", "1.37.2",
         "--set", "operator.leaderElection.enabled=false"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0 and "needs operator.leaderElection.enabled" in proc.stderr


def test_chart_pins_the_trainer_image_by_digest(bins: dict[str, str]) -> None:
    def render(*sets: str) -> subprocess.CompletedProcess[str]:
        args = [a for kv in sets for a in ("--set", kv)]
        return subprocess.run(
            [bins["helm"], "template", "kt", str(REPO / "helm" / "kubetrain"), "--kube-version", "1.37.2", *args],
            capture_output=True, text=True,
        )  # fmt: skip

    def trainer_image(proc: subprocess.CompletedProcess[str]) -> str:
        deploy = next(d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "Deployment")
        env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
        return str(env["KUBETRAIN_TRAINER_IMAGE"])

    digest = "sha256:" + "0123456789abcdef" * 4
    assert trainer_image(render()) == "ghcr.io/kubetrain/trainer:0.1.0"
    assert trainer_image(render(f"trainerImageDigest={digest}")) == f"ghcr.io/kubetrain/trainer:0.1.0@{digest}"
    bad = render("trainerImageDigest=sha256:abc")
    assert bad.returncode != 0 and "trainerImageDigest must be sha256:" in bad.stderr, bad.stderr
    both = render(f"trainerImage=ghcr.io/kubetrain/trainer@{digest}", f"trainerImageDigest={digest}")
    assert both.returncode != 0 and "not both" in both.stderr, both.stderr


def test_chart_settings_are_ones_the_operator_reads(bins: dict[str, str]) -> None:
    """Every KUBETRAIN_* variable the chart sets is a field of the operator's settings (pydantic-settings reads
    ``KUBETRAIN_`` + the field name), so a typo in the chart cannot be silently ignored."""
    from kubetrain_operator.settings import ENV_PREFIX, Settings

    text = (REPO / "helm" / "kubetrain" / "templates" / "deployment.yaml").read_text()
    names = set(re.findall(r"KUBETRAIN_[A-Z_]+", text))
    assert names, "the chart sets no KUBETRAIN_ variable"
    for name in names:
        assert name.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, name


def test_manifests_match_the_chart() -> None:
    proc = subprocess.run([str(REPO / "hack" / "render-manifests"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_kustomize_builds(bins: dict[str, str]) -> None:
    out = subprocess.run(
        [bins["kubectl"], "kustomize", str(REPO / "manifests")], capture_output=True, text=True, check=True
    ).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert kinds.count("CustomResourceDefinition") == 3 and "Deployment" in kinds and "Namespace" in kinds


def _promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool is missing: `make tools` installs Debian's prometheus package")
    return path


def test_alert_rules_pass_promtool() -> None:
    rules = REPO / "helm" / "kubetrain" / "files" / "prometheus-rules.yaml"
    check = subprocess.run([_promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [_promtool(), "test", "rules", str(REPO / "tests" / "monitoring" / "alerts_test.yaml")],
        capture_output=True,
        text=True,
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_dashboard_and_rules_use_metrics_the_operator_exports() -> None:
    exported = set(re.findall(r'"(kubetrain_[a-z_]+)"', (REPO / "operator/kubetrain_operator/metrics.py").read_text()))
    dashboard = json.loads((REPO / "helm/kubetrain/files/dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in yaml.safe_load((REPO / "helm/kubetrain/files/prometheus-rules.yaml").read_text())[
        "groups"] for r in g["rules"]]  # fmt: skip
    used = {m for e in exprs for m in re.findall(r"\b(kubetrain_[a-z_]+?)(?:_bucket|_count|_sum)?\b", e)}
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in used}
    assert used, exprs
    assert used <= exported, used - exported
