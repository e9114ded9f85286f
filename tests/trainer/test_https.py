"""Datasets over https:// from a real TLS server on loopback (certificates from trustme): a trusted
server trains, a missing file and an untrusted certificate fail with DataInvalid naming the URI."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubetrain_trainer import contract

from .conftest import CliRun, run_subprocess, spec_for, write_config

trustme = pytest.importorskip("trustme", reason="trustme (the dev extra) makes the test CA")


class _Server:
    """An HTTPS file server over ``root`` on loopback, recording each request's method and path."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        self.ca_file = root.parent / f"{root.name}-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        requests = self.requests

        class Recording(http.server.SimpleHTTPRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                requests.append(f"{self.command} {self.path}")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Recording, directory=str(root))
        )
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, CA bundle path) of an HTTPS file server over a folder holding iris.csv."""
    root = tmp_path_factory.mktemp("https")
    shutil.copy(data_dir / "iris.csv", root / "iris.csv")
    server = _Server(root)
    try:
        yield server.base, server.ca_file
    finally:
        server.close()


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


def test_https_source_fingerprint_is_the_servers_validator_and_size_without_a_download(
    tmp_path: Path, data_dir: Path
) -> None:
    """The gate (a TrainingSchedule's dataChanged check) fingerprints an https:// dataset by what the server
    says of it (Last-Modified and Content-Length: a HEAD, never a GET of the data), and a changed file
    changes the fingerprint. Its own server, so the requests it saw are this test's alone."""
    root = tmp_path / "served"
    root.mkdir()
    data = root / "iris.csv"
    shutil.copy(data_dir / "iris.csv", data)
    os.utime(data, (1_700_000_000, 1_700_000_000))
    server = _Server(root)
    try:
        uri = f"{server.base}/iris.csv"
        env = {"SSL_CERT_FILE": str(server.ca_file)}
        cfg = write_config(tmp_path / "gate.yaml", spec_for(uri, "species", "knn"), name="tick")
        first = run_subprocess("gate", "--config", str(cfg), env=env)
        assert (first.code, first.result["reason"]) == (0, contract.REASON_GATE_CHECKED), (first.result, first.stderr)
        fingerprint = first.result["gate"]["fingerprint"]
        assert fingerprint == f"last-modified:Tue, 14 Nov 2023 22:13:20 GMT;size={data.stat().st_size}", fingerprint
        assert first.result["dataset"]["source"] == fingerprint
        assert server.requests and all(r.startswith("HEAD ") for r in server.requests), server.requests
        assert not (tmp_path / "out").exists()

        again = run_subprocess("gate", "--config", str(cfg), env=env)
        assert again.result["gate"]["fingerprint"] == fingerprint  # unchanged data, same fingerprint

        data.write_text(data.read_text() + data.read_text().splitlines()[-1] + "\n")  # one row more
        os.utime(data, (1_700_000_100, 1_700_000_100))
        changed = run_subprocess("gate", "--config", str(cfg), env=env)
        assert changed.code == 0, changed.result
        assert changed.result["gate"]["fingerprint"] == (
            f"last-modified:Tue, 14 Nov 2023 22:15:00 GMT;size={data.stat().st_size}"
        ), changed.result
        assert all(r.startswith("HEAD ") for r in server.requests), server.requests
    finally:
        server.close()


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
