"""Datasets over https:// from a real TLS server on loopback (certificates from trustme): a trusted
server trains, a missing file and an untrusted certificate fail with DataInvalid naming the URI."""

from __future__ import annotations

import functools
import http.server
import shutil
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubetrain_trainer import contract

from .conftest import CliRun, run_subprocess, spec_for, write_config

trustme = pytest.importorskip("trustme", reason="trustme (the dev extra) makes the test CA")


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, CA bundle path) of an HTTPS file server over a folder holding iris.csv."""
    root = tmp_path_factory.mktemp("https")
    shutil.copy(data_dir / "iris.csv", root / "iris.csv")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = root.parent / f"{root.name}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca_file
    finally:
        server.shutdown()
        server.server_close()


def _run(tmp_path: Path, uri: str, env: dict[str, str]) -> CliRun:
    spec = spec_for(uri, "species", "knn")
    cfg = write_config(tmp_path / "run.yaml", spec, name="over-https")
    return run_subprocess("run", "--config", str(cfg), "--output", str(tmp_path / "out"), env=env)


def test_https_dataset_from_a_trusted_server_trains(https_server: tuple[str, Path], tmp_path: Path) -> None:
    base, ca_file = https_server
    # SSL_CERT_FILE stands for a CA the trainer image trusts (a public CA, or one baked into a custom image).
    run = _run(tmp_path, f"{base}/iris.csv", {"SSL_CERT_FILE": str(ca_file)})
    assert run.code == 0, (run.result, run.stderr[-2000:])
    assert run.result["dataset"]["uri"] == f"{base}/iris.csv" and run.result["dataset"]["rows"] == 150
    assert (tmp_path / "out" / "over-https" / contract.MODEL_FILE).is_file()


def test_https_missing_file_is_data_invalid(https_server: tuple[str, Path], tmp_path: Path) -> None:
    base, ca_file = https_server
    run = _run(tmp_path, f"{base}/nope.csv", {"SSL_CERT_FILE": str(ca_file)})
    assert run.code == contract.EXIT_DATA_INVALID, run.result
    assert run.result["reason"] == "DataInvalid" and f"{base}/nope.csv" in run.result["message"]
    assert "not found" in run.result["message"], run.result
    assert not (tmp_path / "out").exists()


def test_https_untrusted_certificate_is_data_invalid(https_server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = https_server
    run = _run(tmp_path, f"{base}/iris.csv", {})
    assert run.code == contract.EXIT_DATA_INVALID, run.result
    assert f"{base}/iris.csv" in run.result["message"] and "certificate" in run.result["message"].lower(), run.result
    assert not (tmp_path / "out").exists()


def test_https_server_that_is_down_is_data_invalid_not_not_found(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = _run(tmp_path, f"https://127.0.0.1:{port}/iris.csv", {})
    assert run.code == contract.EXIT_DATA_INVALID, run.result
    assert "not found" not in run.result["message"] and "cannot read dataset" in run.result["message"], run.result


def test_hidden_cause_walks_the_chain() -> None:
    from kubetrain_trainer.data import hidden_cause

    def chained(cause: BaseException) -> FileNotFoundError:
        try:
            try:
                raise cause
            except BaseException as exc:
                raise FileNotFoundError("x") from exc
        except FileNotFoundError as outer:
            return outer

    assert isinstance(hidden_cause(chained(ssl.SSLCertVerificationError("bad cert"))), ssl.SSLError)
    assert isinstance(hidden_cause(chained(ConnectionRefusedError("refused"))), ConnectionRefusedError)
    assert hidden_cause(chained(ValueError("404 Not Found"))) is None
    assert hidden_cause(FileNotFoundError("plain")) is None
