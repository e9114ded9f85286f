"""A real ``mlflow server`` (SQLite backend, local artifact root, basic auth) for the tracking tests.

Started on a free port of ``host`` (loopback, or the dev cluster's pod-bridge address when pods must
reach it). Basic auth is on so that refused credentials can be tested against the same server: clients
pass ``ADMIN_USER``/``ADMIN_PASSWORD`` as MLFLOW_TRACKING_USERNAME/_PASSWORD.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import free_port

ADMIN_USER = "admin"
ADMIN_PASSWORD = "kubetrain-Test-1234"
START_TIMEOUT = 600  # import + migrations take ~10 s on an idle machine, minutes on a loaded one


def credentials_env() -> dict[str, str]:
    """The admin's credentials, and a request timeout for a loaded test machine (the trainer's default is
    10 s; an overloaded CI host can take longer to answer one request)."""
    return {
        "MLFLOW_TRACKING_USERNAME": ADMIN_USER,
        "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
    }


@contextmanager
def mlflow_server(workdir: Path, host: str = "127.0.0.1", port: int | None = None) -> Iterator[str]:
    """Run ``mlflow server --app-name basic-auth``; yields its URL once /health answers. ``port`` and the same
    ``workdir`` again restart a stopped server with its data (runs, registry, users)."""
    port = port or free_port()
    url = f"http://{host}:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    auth_ini = workdir / "basic_auth.ini"
    auth_ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{workdir}/basic_auth.db\nadmin_username = {ADMIN_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KUBETRAIN_", "MLFLOW_")) and k.lower() not in ("http_proxy", "https_proxy")
    }
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(auth_ini),
        MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
        MLFLOW_FLASK_SERVER_SECRET_KEY="kubetrain-tests-only",
        MLFLOW_DISABLE_TELEMETRY="true",
        # MLflow 3's job runner (eight huey consumers, each a Python process importing mlflow, polling its queue)
        # serves server-side jobs nothing here uses: it cost 1.5 CPU-s at start-up per consumer and ~0.45 of a
        # core per idle server, on a machine where the suite is bound by its two cores.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        NO_PROXY=f"127.0.0.1,localhost,{host}",
    )
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        f"sqlite:///{workdir}/mlflow.db",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if host != "127.0.0.1":
        cmd += ["--allowed-hosts", f"{host},{host}:{port},localhost,127.0.0.1"]
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            cmd, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                try:
                    opener.open(f"{url}/health", timeout=2).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"mlflow server did not start: {log_path.read_text()[-3000:]}") from None
                    time.sleep(0.5)
            rest(url, "experiments/search", {"max_results": 1}, timeout=300)  # first answer: app + auth warmed up
            yield url
        finally:
            stop(server)


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (uvicorn workers too), then SIGKILL."""
    import signal

    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def rest(
    url: str, endpoint: str, body: dict[str, Any] | None = None, timeout: float = 120, **query: str
) -> dict[str, Any]:
    """GET (or POST ``body``) MLflow's REST API ``/api/2.0/mlflow/<endpoint>`` as the admin user."""
    address = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        address += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(address, data=data, method="POST" if body is not None else "GET")
    token = base64.b64encode(f"{ADMIN_USER}:{ADMIN_PASSWORD}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    req.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout) as resp:
        return dict(json.loads(resp.read()))
