"""Install as a user would: the Helm chart on the real API server, the operator running under the
chart's ServiceAccount (so its RBAC is proven sufficient, and no wider than documented), iris trained,
and a real Prometheus scraping the operator's /metrics with the chart's alert rules loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Cluster, free_port

from .conftest import Operator, Workspace, iris_run

pytestmark = pytest.mark.cluster


def _scrape(port: int) -> str:
    try:
        return str(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
    except OSError as exc:
        return f"(scrape failed: {exc})"


def _sa_kubeconfig(cluster: Cluster, namespace: str, sa: str, path: Path) -> Path:
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    ctx = admin["contexts"][0]
    admin["users"] = [{"name": "kubetrain-operator", "user": {"token": token}}]
    ctx["context"]["user"] = "kubetrain-operator"
    admin["contexts"] = [ctx]
    admin["current-context"] = ctx["name"]
    path.write_text(yaml.safe_dump(admin))
    return path


@pytest.fixture
def helm_release(cluster: Cluster) -> Any:
    release = f"kt-{uuid.uuid4().hex[:6]}"
    ns = f"{release}-system"
    proc = subprocess.run(
        [
            "helm", "install", release, str(REPO / "helm" / "kubetrain"), "-n", ns, "--create-namespace",
            "--set", "operator.replicas=0", "--wait", "--timeout", "120s",
        ],
        env=cluster.env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    yield release, ns
    subprocess.run(["helm", "uninstall", release, "-n", ns], env=cluster.env, capture_output=True, timeout=120)
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_chart_rbac_is_sufficient_and_no_wider(cluster: Cluster, helm_release: Any) -> None:
    release, ns = helm_release
    sa = f"system:serviceaccount:{ns}:{release}-kubetrain"

    def can(verb: str, resource: str) -> bool:
        out = cluster.kubectl("auth", "can-i", verb, resource, "--as", sa, "-A", check=False).stdout.strip()
        return out == "yes"

    for verb, resource in [
        ("watch", "trainingruns.kubetrain.io"),
        ("patch", "trainingruns.kubetrain.io/status"),
        ("create", "modelversions.kubetrain.io"),
        ("create", "jobs.batch"),
        ("delete", "jobs.batch"),
        ("list", "pods"),
        ("get", "pods/log"),
        ("create", "events"),
        ("list", "workloads.kueue.x-k8s.io"),
    ]:
        assert can(verb, resource), f"{sa} cannot {verb} {resource}"
    for verb, resource in [
        ("create", "trainingruns.kubetrain.io"),
        ("delete", "trainingruns.kubetrain.io"),
        ("update", "trainingruns.kubetrain.io"),
        ("get", "secrets"),
        ("create", "pods"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("patch", "workloads.kueue.x-k8s.io"),
    ]:
        assert not can(verb, resource), f"{sa} should not {verb} {resource}"


def test_operator_under_chart_serviceaccount_trains_and_prometheus_scrapes_it(
    cluster: Cluster,
    helm_release: Any,
    workspace: Workspace,
    operator_factory: Callable[..., Operator],
    tmp_path: Path,
) -> None:
    if not shutil.which("prometheus", path=cluster.env.get("PATH")):
        pytest.fail("prometheus is not installed (make tools installs Debian's prometheus package)")
    release, ns = helm_release
    kubeconfig = _sa_kubeconfig(cluster, ns, f"{release}-kubetrain", tmp_path / "sa.kubeconfig")
    op = operator_factory(KUBECONFIG=str(kubeconfig))

    prom_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(REPO / "helm" / "kubetrain" / "files" / "prometheus-rules.yaml")],
        "scrape_configs": [
            {"job_name": "kubetrain-operator", "static_configs": [{"targets": [f"127.0.0.1:{op.metrics_port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=prom_log, stderr=subprocess.STDOUT, env=cluster.env,
    )  # fmt: skip
    try:
        workspace.apply(iris_run("iris-rbac"))
        run = workspace.wait_phase("iris-rbac", ("Succeeded", "Failed"), timeout=180)
        assert run["status"]["phase"] == "Succeeded", json.dumps(run["status"], indent=1)
        assert run["status"].get("modelVersion"), run["status"]
        assert "permission" not in op.log_text().lower() and "forbidden" not in op.log_text().lower()

        def query(expr: str) -> list[dict[str, Any]]:
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            body = json.loads(urllib.request.urlopen(url, timeout=5).read())
            assert body["status"] == "success", body
            return list(body["data"]["result"])

        ns = workspace.namespace
        wanted = {
            "jobs created": f'kubetrain_jobs_created_total{{namespace="{ns}"}} >= 1',
            "succeeded runs": f'kubetrain_trainingruns{{namespace="{ns}",phase="Succeeded"}} >= 1',
            "target up": 'up{job="kubetrain-operator"} == 1',
        }
        found: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                found = {what: query(expr) for what, expr in wanted.items()}
            except OSError:
                found = {}
            if found and all(found.values()):
                break
            time.sleep(1)
        missing = [what for what in wanted if not found.get(what)]
        assert not missing, f"Prometheus lacks {missing}; the operator serves:\n" + "\n".join(
            line for line in _scrape(op.metrics_port).splitlines() if line.startswith("kubetrain_")
        )
        # The chart's rules load, and with the operator up, its "down" alert stays silent.
        rules = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=5).read())
        groups = {g["name"] for g in rules["data"]["groups"]}
        assert {"kubetrain.rules", "kubetrain.alerts"} <= groups
        alerts = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/alerts", timeout=5).read())
        firing = [a for a in alerts["data"]["alerts"] if a["state"] == "firing"]
        assert not firing, firing
        assert query('absent(up{job=~".*kubetrain.*"} == 1)') == []
    finally:
        prom.terminate()
        prom.wait(timeout=20)
        prom_log.close()
