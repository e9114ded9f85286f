"""``kube.kueue_admission_message`` is a hint only: an API server that does not serve Kueue's group answers a
plain-text 404 (no Status JSON, so lightkube raises httpx's error, not ApiError), and the hint must then be
None, not an exception that fails the run's reconcile. A real HTTP server on loopback plays that API server."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator

import pytest
from kubetrain_operator import kube
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import Cluster, User


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 404
    paths: list[str] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        body = b"404 page not found\n"
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"paths": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def _message(url: str) -> str | None:
    async def go() -> str | None:
        kube._client = AsyncClient(
            config=KubeConfig.from_one(cluster=Cluster(server=url), user=User(token="t")),
            field_manager=kube.FIELD_MANAGER,
        )
        try:
            return await kube.kueue_admission_message("ml", "0000-uid")
        finally:
            await kube.close()

    return asyncio.run(go())


def test_kueue_not_served_is_no_hint_not_an_error(server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    assert _message(url) is None
    # Every Workload API version was asked, each answered 404, none raised.
    assert len(handler.paths) == len(kube.KUEUE_WORKLOADS)
    assert all("/workloads" in p for p in handler.paths)


def test_workloads_forbidden_is_no_hint(server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    handler.status = 403
    assert _message(url) is None
    assert len(handler.paths) == 1  # a refusal is final: no other version is tried


def test_api_server_unreachable_is_no_hint() -> None:
    assert _message("http://127.0.0.1:9") is None
