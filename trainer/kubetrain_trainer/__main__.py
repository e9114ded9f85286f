"""``python -m kubetrain_trainer {run,validate,verify,gate}`` — see ``kubetrain_trainer.contract``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import contract
from .errors import ConfigInvalid, VerifyFailed
from .outcome import RunFacts, result_of


def emit_progress(step: str, percent: int) -> None:
    print(contract.progress_line(step, percent), flush=True)


def termination_log_path() -> Path | None:
    env = os.environ.get(contract.ENV_TERMINATION_LOG)
    if env:
        return Path(env)
    default = Path(contract.DEFAULT_TERMINATION_LOG)
    # Only the file the kubelet created: never create one in /dev on a developer machine.
    if default.is_file() and os.access(default, os.W_OK):
        return default
    return None


def report(result: contract.Result) -> int:
    """Write the result to the termination log and as the last stdout line; return the exit code."""
    text = result.to_json()
    path = termination_log_path()
    if path is not None:
        try:
            path.write_text(text)
        except OSError as exc:
            print(f"cannot write termination log {path}: {exc}", file=sys.stderr)
    sys.stdout.flush()
    print(text, flush=True)
    return result.exit_code


def cmd_run(args: argparse.Namespace, validate_only: bool = False) -> contract.Result:
    from .config import read_config
    from .runner import train

    emit_progress("config", 0)
    cfg = read_config(args.config, getattr(args, "name", None))
    return train(cfg, getattr(args, "output", None), emit_progress, validate_only=validate_only)


def cmd_gate(args: argparse.Namespace) -> contract.Result:
    from .config import read_config
    from .gate import run_gate

    cfg = read_config(args.config, getattr(args, "name", None))
    with tempfile.TemporaryDirectory(prefix="kubetrain-gate-") as scratch:
        return run_gate(cfg, Path(scratch))


def cmd_verify(args: argparse.Namespace) -> contract.Result:
    from .artifacts import verify_model
    from .data import check_uri_path, local_path

    uri: str | None = None
    model = args.model
    sha = args.sha256 or (None if model else os.environ.get(contract.ENV_VERIFY_SHA256))
    if not model:
        uri = os.environ.get(contract.ENV_VERIFY_URI)
        if not uri:
            raise ConfigInvalid(f"verify needs --model DIR or {contract.ENV_VERIFY_URI}")
        check_uri_path(uri, contract.ENV_VERIFY_URI)
        local = local_path(uri, contract.ENV_VERIFY_URI)
        if local is None:
            with tempfile.TemporaryDirectory(prefix="kubetrain-verify-") as tmp:
                path = _download_model(uri, Path(tmp))
                facts = verify_model(path, sha, uri)
                return _verified(facts)
        path = local
    else:
        path = Path(model)
    facts = verify_model(path, sha, uri)
    return _verified(facts)


def _download_model(uri: str, dest: Path) -> Path:
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    try:
        if root.endswith(contract.MODEL_FILE):
            fs.get_file(root, str(dest / contract.MODEL_FILE))
            base = root[: -len(contract.MODEL_FILE)].rstrip("/")
        else:
            base = root.rstrip("/")
            fs.get_file(f"{base}/{contract.MODEL_FILE}", str(dest / contract.MODEL_FILE))
        for extra in (contract.METADATA_FILE, contract.CHECKSUM_FILE):
            if fs.exists(f"{base}/{extra}"):
                fs.get_file(f"{base}/{extra}", str(dest / extra))
    except FileNotFoundError as exc:
        from .data import hidden_cause

        cause = hidden_cause(exc)
        if cause is not None:
            raise VerifyFailed(f"cannot read the model at {uri}: {type(cause).__name__}: {cause}") from None
        raise VerifyFailed(f"model not found at {uri}") from None
    except PermissionError as exc:
        from .data import CREDENTIALS_HINT

        raise VerifyFailed(
            f"access denied reading the model at {uri} ({' '.join(str(exc).split())[:300]}); {CREDENTIALS_HINT}"
        ) from None
    return dest


def _verified(found: dict[str, Any]) -> contract.Result:
    facts = RunFacts(
        task=found.get("task"), estimator=found.get("estimator"), metrics=found.get("metrics"), model=found["model"]
    )
    sha = found["model"]["sha256"]
    return facts.result(contract.REASON_VERIFIED, f"checksum, load and smoke prediction passed ({sha[:12]})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kubetrain_trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, evaluate and save a model")
    run.add_argument("--config", help=f"TrainingRun manifest or spec (YAML/JSON); default ${contract.ENV_CONFIG}")
    run.add_argument("--name", help="run name (default: metadata.name, else spec.model)")
    run.add_argument("--output", help="base directory; artifacts go to <DIR>/<run name>/")
    val = sub.add_parser("validate", help="check config and data without training")
    val.add_argument("--config", help=f"TrainingRun manifest or spec (YAML/JSON); default ${contract.ENV_CONFIG}")
    val.add_argument("--name", help="run name")
    ver = sub.add_parser("verify", help="re-check a saved model (checksum, load, smoke prediction)")
    ver.add_argument("--model", help=f"model directory or model.joblib; default ${contract.ENV_VERIFY_URI}")
    ver.add_argument("--sha256", help=f"expected sha256; default ${contract.ENV_VERIFY_SHA256} or the saved one")
    gate = sub.add_parser(
        "gate",
        help="a schedule's gate: the dataset's fingerprint and, with KUBETRAIN_DRIFT_REFERENCE_*, its PSI "
        "against that version's feature profile (never trains)",
    )
    gate.add_argument("--config", help=f"TrainingRun manifest or spec (YAML/JSON); default ${contract.ENV_CONFIG}")
    gate.add_argument("--name", help="run name")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code in (0, None):
            return 0
        return report(
            contract.Result(
                outcome=contract.OUTCOME_FAILED,
                reason=contract.REASON_CONFIG_INVALID,
                message="invalid command line (see --help)",
                exit_code=contract.EXIT_CONFIG_INVALID,
            )
        )
    with result_of() as outcome:
        if args.command == "run":
            outcome.result = cmd_run(args)
        elif args.command == "validate":
            outcome.result = cmd_run(args, validate_only=True)
        elif args.command == "gate":
            outcome.result = cmd_gate(args)
        else:
            outcome.result = cmd_verify(args)
    return report(outcome.final)


if __name__ == "__main__":
    sys.exit(main())
