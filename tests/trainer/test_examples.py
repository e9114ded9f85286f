"""The example TrainingRuns train with the trainer on the small files in examples/data/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetrain_trainer import contract

from .conftest import REPO

EXAMPLES = sorted(REPO.glob("examples/*.yaml"))


def _runs() -> list[Path]:
    out = []
    for path in EXAMPLES:
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "TrainingRun":
            data = REPO / "examples" / "data" / Path(doc["spec"]["dataset"]["uri"]).name
            if data.exists():
                out.append(path)
    return out


@pytest.mark.parametrize("example", _runs(), ids=lambda p: p.stem)
def test_example_trains_on_example_data(cli: Any, tmp_path: Path, example: Path) -> None:
    doc = yaml.safe_load(example.read_text())
    data = REPO / "examples" / "data" / Path(doc["spec"]["dataset"]["uri"]).name
    env = {contract.ENV_DATASET_PATH: str(data), contract.ENV_OUTPUT_DIR: str(tmp_path / "out")}
    run = cli("run", "--config", str(example), env=env)
    assert run.code == 0, run.result
    assert run.result["model"]["uri"].startswith(doc["spec"]["output"]["uri"].rstrip("/") + "/")
    assert cli("verify", "--model", str(tmp_path / "out")).code == 0


def test_example_data_is_small() -> None:
    total = sum(p.stat().st_size for p in (REPO / "examples" / "data").iterdir())
    assert total < 200_000
