"""Run ``python -m kubetrain_operator`` with benchmark instrumentation, for bench/operator_load.py.

    python bench/operator_shim.py [operator args...]      # e.g. --namespace kubetrain-bench

Started with the Python of the operator checkout under test (``--repo``), so it depends only on what any
checkout of the operator has: kopf, aiohttp (kopf's client) and httpx2/httpx (lightkube's client).

* Tuning (env ``KUBETRAIN_BENCH_TUNING``, JSON): ``{"queueing.worker_limit": null, "queueing.idle_timeout":
  0.5, "log:kopf.objects": "WARNING"}`` — attributes of kopf's ``OperatorSettings`` are set by a startup
  handler registered AFTER the operator's own (kopf runs startup handlers in registration order), so they
  override the operator's choices; ``log:<logger>`` sets a logger's level. Nothing in operator/ changes.
* A counting client: every HTTP request of the process (kopf through aiohttp, lightkube through httpx) is
  counted by (verb, resource) from its method and URL; ``GET http://127.0.0.1:$KUBETRAIN_BENCH_STATS_PORT/``
  returns the counts as JSON. Watches are counted as verb ``watch`` (one per (re)connect).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

COUNTS: collections.Counter[str] = collections.Counter()
_PATH = re.compile(r"^/(?:api/(?P<v1>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))(?P<rest>/.*)?$")
log = logging.getLogger("kubetrain.bench")


def classify(method: str, url: str) -> str:
    """``"<verb> <resource>[/<subresource>]"`` of one Kubernetes API request (``"other"`` for the rest)."""
    parts = urlsplit(str(url))
    match = _PATH.match(parts.path)
    if not match:
        return f"{method.lower()} {parts.path}"
    segs = [s for s in (match.group("rest") or "").split("/") if s]
    if len(segs) >= 2 and segs[0] == "namespaces" and len(segs) > 2:
        segs = segs[2:]  # drop namespaces/<ns> when a resource follows
    elif len(segs) == 2 and segs[0] == "namespaces":
        segs = ["namespaces", segs[1]]
    if not segs:
        return f"{method.lower()} discovery"
    resource = segs[0]
    name = segs[1] if len(segs) > 1 else None
    sub = segs[2] if len(segs) > 2 else None
    query = parse_qs(parts.query)
    method = method.upper()
    if method == "GET":
        watch = query.get("watch", [""])[0] in ("true", "1")
        verb = "get" if name is not None else "watch" if watch else "list"
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method, method.lower())
        if method == "DELETE":
            verb = "delete" if name else "deletecollection"
    return f"{verb} {resource}" + (f"/{sub}" if sub else "")


def _instrument() -> None:
    import aiohttp

    original = aiohttp.ClientSession._request

    async def counted(self: Any, method: str, str_or_url: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS[classify(method, str(str_or_url))] += 1
        return await original(self, method, str_or_url, *args, **kwargs)

    aiohttp.ClientSession._request = counted  # type: ignore[method-assign]

    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        send = module.AsyncClient.send

        async def counted_send(self: Any, request: Any, *args: Any, __send: Any = send, **kwargs: Any) -> Any:
            COUNTS[classify(request.method, str(request.url))] += 1
            return await __send(self, request, *args, **kwargs)

        module.AsyncClient.send = counted_send


async def _serve_stats(port: int, settings: Any) -> Any:
    from aiohttp import web

    async def stats(_: web.Request) -> web.Response:
        effective = {
            "queueing.worker_limit": settings.queueing.worker_limit,
            "queueing.idle_timeout": settings.queueing.idle_timeout,
            "log:kopf.objects": logging.getLevelName(logging.getLogger("kopf.objects").getEffectiveLevel()),
        }
        return web.json_response({"requests": dict(COUNTS), "pid": os.getpid(), "settings": effective})

    app = web.Application()
    app.router.add_get("/", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _set(settings: Any, dotted: str, value: Any) -> None:
    obj = settings
    *path, attr = dotted.split(".")
    for part in path:
        obj = getattr(obj, part)
    if not hasattr(obj, attr):
        raise SystemExit(f"bench tuning: kopf settings have no {dotted!r}")
    setattr(obj, attr, value)


def main() -> int:
    tuning: dict[str, Any] = json.loads(os.environ.get("KUBETRAIN_BENCH_TUNING") or "{}")
    stats_port = int(os.environ.get("KUBETRAIN_BENCH_STATS_PORT") or 0)
    _instrument()

    import kopf
    from kubetrain_operator import __main__ as entry
    from kubetrain_operator import handlers  # noqa: F401  (the operator's own startup handler first)

    runner: list[Any] = []

    @kopf.on.startup()
    async def bench_overrides(settings: kopf.OperatorSettings, **_: Any) -> None:
        for key, value in tuning.items():
            if not key.startswith("log:"):
                _set(settings, key, value)
        applied = {k: v for k, v in tuning.items() if not k.startswith("log:")}
        log.warning(
            "bench: kopf settings overridden: %s (worker_limit=%s idle_timeout=%s)",
            applied,
            settings.queueing.worker_limit,
            settings.queueing.idle_timeout,
        )
        if stats_port:
            runner.append(await _serve_stats(stats_port, settings))

    # Logger levels after the operator's own logging set-up (kopf.configure runs inside entry.main).
    original_configure = kopf.configure

    def configure(*args: Any, **kwargs: Any) -> None:
        original_configure(*args, **kwargs)
        for key, value in tuning.items():
            if key.startswith("log:"):
                logging.getLogger(key[4:]).setLevel(str(value))

    kopf.configure = configure  # entry.main calls kopf.configure
    return int(entry.main(sys.argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
