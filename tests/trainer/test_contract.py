"""The contract module the operator imports: dependency-free, stable codes, bounded result size."""

from __future__ import annotations

import json
import subprocess
import sys

from kubetrain_trainer import contract


def test_contract_imports_without_ml_libraries() -> None:
    code = (
        "import sys, kubetrain_trainer.contract as c; "
        "heavy = [m for m in ('sklearn', 'pandas', 'numpy', 'scipy', 'joblib', 'pyarrow') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_exit_codes_and_reasons_are_stable() -> None:
    assert (contract.EXIT_OK, contract.EXIT_INTERNAL_ERROR) == (0, 1)
    assert contract.EXIT_CODE_BY_REASON["ConfigInvalid"] == 10
    assert contract.EXIT_CODE_BY_REASON["DataInvalid"] == 11
    assert contract.EXIT_CODE_BY_REASON["BelowThreshold"] == 12
    assert contract.EXIT_CODE_BY_REASON["VerifyFailed"] == 13
    assert set(contract.TERMINAL_EXIT_CODES) == {10, 11, 12, 13, 14}
    assert contract.EXIT_CODE_BY_REASON["TrackingFailed"] == 14
    for code, reason in contract.REASON_BY_EXIT_CODE.items():
        assert contract.EXIT_CODE_BY_REASON[reason] == code


def test_progress_line_round_trip() -> None:
    line = contract.progress_line("load", 10)
    assert json.loads(line) == {"progress": {"step": "load", "percent": 10}}
    assert contract.parse_progress_line(line) == ("load", 10)
    assert contract.parse_progress_line('{"outcome": "Succeeded"}') is None
    assert contract.parse_progress_line("plain log line") is None


def test_result_is_trimmed_to_four_kib_keeping_the_essentials() -> None:
    big = contract.Result(
        outcome="Failed",
        reason="DataInvalid",
        message="x" * 10_000,
        exit_code=11,
        metrics={f"m{i}": 0.5 for i in range(50)},
        model={"uri": "pvc://a/b/model.joblib", "sha256": "0" * 64, "size": 1, "format": "joblib"},
        best_params={f"p{i}": "v" * 50 for i in range(40)},
        timings={f"t{i}": 1.0 for i in range(40)},
        versions={"python": "3.11"},
        warnings=["w" * 200] * 10,
    )
    text = big.to_json()
    assert len(text.encode()) <= contract.RESULT_MAX_BYTES
    parsed = contract.parse_result("noise\n" + text)
    assert parsed is not None
    assert parsed.reason == "DataInvalid" and parsed.exit_code == 11
    assert parsed.model is not None and parsed.model["sha256"] == "0" * 64
    assert parsed.timings is None and parsed.best_params is None


def test_small_result_is_untouched() -> None:
    res = contract.Result(outcome="Succeeded", reason="Trained", metrics={"accuracy": 0.97})
    assert contract.Result.from_json(res.to_json()) == res
    assert contract.parse_result("not json") is None


def test_operator_commands_parse() -> None:
    from kubetrain_trainer.__main__ import build_parser

    for command in (contract.RUN_COMMAND, contract.VERIFY_COMMAND, contract.GATE_COMMAND):
        assert command[:3] == ("python", "-m", "kubetrain_trainer")
        args = build_parser().parse_args(list(command[3:]))
        assert args.command == command[3]
        assert getattr(args, "config", None) is None  # everything else comes from the environment


def test_tracking_is_the_last_field_trimmed_and_survives_a_round_trip() -> None:
    tracking: contract.Tracking = {
        "tracked": True,
        "run_id": "a" * 32,
        "url": "http://mlflow:5000/#/x",
        "reason": "Logged",
    }
    big = contract.Result(
        outcome="Succeeded",
        reason="Trained",
        metrics={f"metric_name_{i}": 0.5 for i in range(400)},
        warnings=["w" * 500] * 10,
        tracking=tracking,
    )
    text = big.to_json()
    assert len(text.encode()) <= contract.RESULT_MAX_BYTES
    back = contract.Result.from_json(text)
    assert back.tracking == tracking
    assert back.trimmed is not None and "metrics" in back.trimmed and "tracking" not in back.trimmed
