"""Fixtures for the trainer CLI tests: real scikit-learn datasets written to files, and a runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from kubetrain_trainer import contract
from kubetrain_trainer.__main__ import main

REPO = Path(__file__).resolve().parents[2]


@dataclass
class CliRun:
    code: int
    result: dict[str, Any]
    stdout: str
    stderr: str
    termination: str | None

    @property
    def progress(self) -> list[tuple[str, int]]:
        out = []
        for line in self.stdout.splitlines():
            p = contract.parse_progress_line(line)
            if p:
                out.append(p)
        return out


def _parse(stdout: str) -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert lines, "no output"
    return json.loads(lines[-1])


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run the CLI in-process: cli("run", "--config", path, env={...}) -> CliRun."""

    def run(*argv: str, env: dict[str, str] | None = None) -> CliRun:
        term = tmp_path / f"termination-{len(list(tmp_path.glob('termination-*')))}.log"
        for key in list(os.environ):
            if key.startswith("KUBETRAIN_") or key == contract.ENV_JOB_COMPLETION_INDEX:
                monkeypatch.delenv(key)
        monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(term))
        monkeypatch.setenv(contract.ENV_CPU_LIMIT, "1")
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return CliRun(code, _parse(out), out, err, term.read_text() if term.exists() else None)

    return run


def run_subprocess(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> CliRun:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETRAIN_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "kubetrain_trainer", *argv],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )
    return CliRun(proc.returncode, _parse(proc.stdout), proc.stdout, proc.stderr, None)


def write_config(path: Path, spec: dict[str, Any], name: str = "test-run", as_yaml: bool = True) -> Path:
    doc = {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingRun", "metadata": {"name": name}, "spec": spec}
    path.write_text(yaml.safe_dump(doc) if as_yaml else json.dumps(doc))
    return path


def spec_for(uri: str, target: str | None, estimator: str, params: dict[str, Any] | None = None, **extra: Any) -> dict:
    dataset: dict[str, Any] = {"uri": uri}
    if target:
        dataset["target"] = target
    spec: dict[str, Any] = {
        "model": "m",
        "dataset": dataset,
        "estimator": {"name": estimator, "params": params or {}},
    }
    spec.update(extra)
    return spec


# ---- datasets ------------------------------------------------------------------------------------


def _frame(loader: Any, target_name: str = "target") -> pd.DataFrame:
    bunch = loader(as_frame=True)
    df = bunch.frame.copy()
    df.columns = [str(c).replace(" ", "_").replace("(", "").replace(")", "") for c in df.columns]
    if target_name != "target":
        df = df.rename(columns={"target": target_name})
    return df


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real datasets shipping with scikit-learn, in every supported format, plus generated ones."""
    from sklearn import datasets

    d = tmp_path_factory.mktemp("data")
    iris = _frame(datasets.load_iris, "species")
    names = dict(enumerate(datasets.load_iris().target_names))
    iris["species"] = iris["species"].map(names)
    iris.to_csv(d / "iris.csv", index=False)
    iris.to_parquet(d / "iris.parquet")
    _frame(datasets.load_wine, "cultivar").to_parquet(d / "wine.parquet")
    cancer = _frame(datasets.load_breast_cancer, "malignant")
    (d / "breast_cancer.json").write_text(json.dumps({"records": cancer.to_dict(orient="records")}))
    _frame(datasets.load_diabetes, "progression").to_json(d / "diabetes.jsonl", orient="records", lines=True)
    digits = _frame(datasets.load_digits, "digit")
    digits.to_csv(d / "digits.csv", index=False)
    mixed_frame().to_csv(d / "mixed.csv", index=False)
    (d / "logs.json").write_text(json.dumps(log_export()))
    return d


def mixed_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Generated: numeric, categorical, datetime, identifier and free-text columns, with gaps."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.uniform(0, 10, size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    when = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365 * 24, size=n), unit="h")
    signal = x1 * 2 + (color == "red") * 1.5 + (x2 > 5) - 0.5
    label = np.where(signal + rng.normal(scale=0.3, size=n) > 0.5, "yes", "no")
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    notes = [" ".join(rng.choice(words, size=6)) + f" #{i}" for i in range(n)]
    df = pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "x1": x1,
            "x2": x2,
            "color": color,
            "signup": when.strftime("%Y-%m-%dT%H:%M:%S"),
            "notes": notes,
            "label": label,
        }
    )
    df.loc[rng.choice(n, size=20, replace=False), "x2"] = np.nan
    df.loc[rng.choice(n, size=10, replace=False), "color"] = None
    return df


def log_export(n: int = 300, seed: int = 1) -> dict[str, Any]:
    """The original training service's JSON log export: records under "logs"."""
    rng = np.random.default_rng(seed)
    services = ["api", "auth", "billing", "search"]
    logs = []
    start = pd.Timestamp("2024-05-01T00:00:00Z")
    for i in range(n):
        anomalous = i % 50 == 7
        logs.append(
            {
                "timestamp": (start + pd.Timedelta(seconds=int(i * 37))).isoformat(),
                "level": "ERROR" if anomalous else str(rng.choice(["INFO", "INFO", "INFO", "WARN"])),
                "service": str(rng.choice(services)),
                "latency_ms": float(rng.normal(2500, 300) if anomalous else rng.normal(120, 25)),
                "status": 500 if anomalous else int(rng.choice([200, 200, 200, 201, 404])),
            }
        )
    return {"exported_at": "2024-05-02T00:00:00Z", "source": "loki", "count": n, "logs": logs}
