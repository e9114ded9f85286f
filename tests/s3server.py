"""moto's S3 server on loopback for the s3:// tests (a real S3 HTTP API; nothing leaves 127.0.0.1)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port


def clean_env() -> dict[str, str]:
    """os.environ without KUBETRAIN_/AWS_/FSSPEC_/BOTO_ variables or proxies."""
    drop = ("KUBETRAIN_", "AWS_", "FSSPEC_", "BOTO_")
    return {
        k: v for k, v in os.environ.items() if not k.startswith(drop) and k.lower() not in ("http_proxy", "https_proxy")
    }


@contextmanager
def moto_server(log_path: Path, host: str = "127.0.0.1", **env: str) -> Iterator[str]:
    """Run ``python -m moto.server`` on a free port of ``host`` (loopback, or the dev cluster's address on
    the pod bridge when pods must reach it); yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://{host}:{port}"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
            env={**clean_env(), "NO_PROXY": f"127.0.0.1,localhost,{host}", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            deadline = time.monotonic() + 30
            while True:
                try:
                    opener.open(f"{endpoint}/moto-api/", timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"moto server did not start: {log_path.read_text()}") from None
                    time.sleep(0.1)
            yield endpoint
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
