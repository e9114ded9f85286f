"""The Argo CD health checks (manifests/argocd/health/) on fixture states, run by two Lua 5.1 engines.

Argo CD's own convention is followed: each ``<group>/<Kind>/`` folder holds ``health.lua``, a
``health_test.yaml`` listing ``testdata/*.yaml`` inputs with the expected ``healthStatus``, and every case
is run by

* ``gopher-lua`` — the interpreter Argo CD embeds, through hack/argocd-health (a small Go harness that
  opens only the libraries Argo CD opens and decodes the object like Argo CD's ``decodeValue``), built
  from the Go module proxy and cached by input hash;
* PUC Lua 5.1 (``lupa.lua51``), the reference implementation, with the same library set — so the scripts
  rely on no gopher-lua quirk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HEALTH = ROOT / "manifests" / "argocd" / "health"
HARNESS = ROOT / "hack" / "argocd-health"
KINDS = ("TrainingRun", "ModelVersion")
VALID = {"Healthy", "Progressing", "Suspended", "Degraded", "Missing", "Unknown"}


def _cases() -> list[Any]:
    out = []
    for kind in KINDS:
        folder = HEALTH / "kubetrain.io" / kind
        for case in yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]:
            out.append(pytest.param(kind, case, id=f"{kind}-{Path(case['inputPath']).stem}"))
    return out


def _script(kind: str) -> str:
    return (HEALTH / "kubetrain.io" / kind / "health.lua").read_text()


def _obj(kind: str, input_path: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((HEALTH / "kubetrain.io" / kind / input_path).read_text())
    return obj


@pytest.fixture(scope="session")
def gopher_lua() -> Path:
    """hack/argocd-health built once per input hash into the shared cache."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    assert go, "Go is needed to build hack/argocd-health (Argo CD's gopher-lua); see hack/build-k8s for the toolchain"
    digest = hashlib.sha256()
    for name in ("main.go", "go.mod", "go.sum"):
        digest.update((HARNESS / name).read_bytes())
    cache = Path(os.environ.get("KUBETRAIN_CACHE", Path.home() / ".cache" / "kubetrain")) / "bin"
    binary = cache / f"argocd-health-{digest.hexdigest()[:12]}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(f".tmp{os.getpid()}")
        subprocess.run([go, "build", "-o", str(tmp), "."], cwd=HARNESS, check=True, timeout=600)
        tmp.replace(binary)
    return binary


def run_gopher_lua(binary: Path, script: str, obj: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "health.lua"
    path.write_text(script)
    proc = subprocess.run(
        [str(binary), str(path)], input=json.dumps(obj), capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip())
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def run_lua51(script: str, obj: dict[str, Any]) -> dict[str, str]:
    from lupa import lua51

    lua = lua51.LuaRuntime()
    g = lua.globals()
    # Argo CD opens only the package, base and table libraries (and a safe os); mirror that.
    for lib in ("string", "io", "os", "math", "debug", "coroutine"):
        g[lib] = None
    g.obj = lua.table_from(obj, recursive=True)
    ret = lua.execute(script)
    result = {str(k): str(v) for k, v in ret.items()}
    if result.get("status") not in VALID:
        raise RuntimeError(f"unknown health status {result.get('status')!r}")
    return result


@pytest.mark.parametrize(("kind", "case"), _cases())
def test_gopher_lua(kind: str, case: dict[str, Any], gopher_lua: Path, tmp_path: Path) -> None:
    got = run_gopher_lua(gopher_lua, _script(kind), _obj(kind, case["inputPath"]), tmp_path)
    assert got == case["healthStatus"]


@pytest.mark.parametrize(("kind", "case"), _cases())
def test_lua51(kind: str, case: dict[str, Any]) -> None:
    assert run_lua51(_script(kind), _obj(kind, case["inputPath"])) == case["healthStatus"]


def test_fixtures_cover_every_phase() -> None:
    """Every testdata file is a listed case, and every phase of both kinds plus a stale generation and a
    status-less object has a fixture."""
    for kind, phases in (
        ("TrainingRun", {"Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended"}),
        ("ModelVersion", {"Pending", "Verifying", "Ready", "Failed"}),
    ):
        folder = HEALTH / "kubetrain.io" / kind
        listed = {c["inputPath"] for c in yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]}
        on_disk = {f"testdata/{p.name}" for p in (folder / "testdata").glob("*.yaml")}
        assert listed == on_disk
        objs = [_obj(kind, p) for p in listed]
        seen = {(o.get("status") or {}).get("phase") for o in objs}
        assert phases <= seen, phases - seen
        assert None in seen
        stale = [o for o in objs if o.get("status") and o["status"]["observedGeneration"] < o["metadata"]["generation"]]
        assert stale, "no stale-generation fixture"
        for o in objs:
            assert o["kind"] == kind and o["apiVersion"] == "kubetrain.io/v1alpha1"


def test_phases_match_the_api() -> None:
    """The scripts name every phase the typed API defines (a new phase must get a health mapping)."""
    from typing import get_args

    from kubetrain_api.models import ModelVersionPhase, TrainingRunPhase

    for kind, phases in (("TrainingRun", TrainingRunPhase), ("ModelVersion", ModelVersionPhase)):
        script = _script(kind)
        for phase in get_args(phases):
            assert f'"{phase}"' in script, f"{kind} health.lua does not handle phase {phase}"


@pytest.mark.parametrize("engine", ["gopher-lua", "lua5.1"])
def test_unknown_phase_is_unknown(engine: str, gopher_lua: Path, tmp_path: Path) -> None:
    obj = _obj("TrainingRun", "testdata/running.yaml")
    obj["status"]["phase"] = "Exploded"
    run = (lambda s, o: run_gopher_lua(gopher_lua, s, o, tmp_path)) if engine == "gopher-lua" else run_lua51
    assert run(_script("TrainingRun"), obj) == {"status": "Unknown", "message": "unknown phase Exploded"}


def test_harness_rejects_what_argocd_rejects(gopher_lua: Path, tmp_path: Path) -> None:
    """The harness is strict like Argo CD: an unknown status, a non-table return, a closed library."""
    obj = _obj("TrainingRun", "testdata/running.yaml")
    with pytest.raises(RuntimeError, match='health status "Fine"'):
        run_gopher_lua(gopher_lua, 'return {status = "Fine"}', obj, tmp_path)
    with pytest.raises(RuntimeError, match="not a table"):
        run_gopher_lua(gopher_lua, 'return "Healthy"', obj, tmp_path)
    with pytest.raises(RuntimeError, match="string"):
        run_gopher_lua(gopher_lua, 'return {status = string.lower("HEALTHY")}', obj, tmp_path)


def test_argocd_cm_snippet_is_current() -> None:
    """manifests/argocd/argocd-cm.yaml carries the current scripts, and the docs quote the same keys."""
    proc = subprocess.run([str(ROOT / "hack" / "render-argocd-health"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load((ROOT / "manifests" / "argocd" / "argocd-cm.yaml").read_text())["data"]
    for kind in KINDS:
        assert data[f"resource.customizations.health.kubetrain.io_{kind}"] == _script(kind)
    for doc in (ROOT / "docs" / "argocd.md", ROOT / "helm" / "kubetrain" / "README.md"):
        text = doc.read_text()
        for kind in KINDS:
            assert f"resource.customizations.health.kubetrain.io_{kind}" in text, doc
        assert "manifests/argocd/argocd-cm.yaml" in text and "manifests/argocd/argo-cd-values.yaml" in text


# Argo CD's Helm chart (argo/argo-cd) renders argocd-cm's data from its ``configs.cm`` value
# (templates/argocd-configs/argocd-cm.yaml: the value minus ``create``/``annotations``, through toYaml).
# The stand-in chart below does the same, so the test reads the scripts back the way Argo CD gets them.
_ARGO_CD_CHART = {
    "Chart.yaml": "apiVersion: v2\nname: argo-cd-stand-in\nversion: 0.0.1\n",
    "values.yaml": "configs:\n  cm:\n    create: true\n    exec.enabled: false\n",
    "templates/argocd-cm.yaml": (
        "{{- if .Values.configs.cm.create }}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\n  namespace: {{ .Release.Namespace }}\n"
        'data:\n  {{- toYaml (omit .Values.configs.cm "create" "annotations") | nindent 2 }}\n'
        "{{- end }}\n"
    ),
}


def _helm() -> str:
    """The pinned helm of hack/build-k8s (built once, cached by version)."""
    out = subprocess.run([str(ROOT / "hack" / "build-k8s")], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)["HELM_BIN"]


def test_argo_cd_chart_values_render_into_argocd_cm_and_run(gopher_lua: Path, tmp_path: Path) -> None:
    """manifests/argocd/argo-cd-values.yaml, passed to a chart that renders ``configs.cm`` as Argo CD's does
    (real helm), yields an argocd-cm whose scripts are byte for byte the health checks, next to the chart's
    own keys, and give the expected health under gopher-lua."""
    chart = tmp_path / "argo-cd"
    for name, text in _ARGO_CD_CHART.items():
        (chart / name).parent.mkdir(parents=True, exist_ok=True)
        (chart / name).write_text(text)
    values = ROOT / "manifests" / "argocd" / "argo-cd-values.yaml"
    proc = subprocess.run(
        [_helm(), "template", "argocd", str(chart), "-n", "argocd", "-f", str(values)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cm = yaml.safe_load(proc.stdout)
    assert (cm["kind"], cm["metadata"]["name"], cm["metadata"]["namespace"]) == ("ConfigMap", "argocd-cm", "argocd")
    assert cm["data"]["exec.enabled"] is False  # the chart's other keys are kept: the values merge, not replace
    for kind in KINDS:
        script = cm["data"][f"resource.customizations.health.kubetrain.io_{kind}"]
        assert script == _script(kind)
        case = next(
            c for c in yaml.safe_load((HEALTH / "kubetrain.io" / kind / "health_test.yaml").read_text())["tests"]
        )
        assert run_gopher_lua(gopher_lua, script, _obj(kind, case["inputPath"]), tmp_path) == case["healthStatus"]
