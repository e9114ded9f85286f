"""``python -m kubetrain_operator [--namespace NS ...| --all-namespaces] [--verbose]``: run the operator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import TYPE_CHECKING

import kopf

from .settings import Settings, get_settings

if TYPE_CHECKING:
    from . import leader

log = logging.getLogger("kubetrain_operator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kubetrain_operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="namespace to watch (repeatable; kopf glob patterns such as 'team-*' allowed)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    # One line per API request is noise at INFO (lightkube's HTTP client logs as httpx or httpx2).
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    settings = get_settings()  # read the environment once, before anything runs
    from . import (
        handlers,  # noqa: F401  (registers the kinds and the kopf handlers)
        readiness,
    )

    readiness.apply()  # kopf's start-up readiness without waking every waiting worker per object

    return asyncio.run(run(args, settings))


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the probes, wait for the Lease (leader election on), then run kopf until it stops.

    With leader election a standby runs NO kopf handler: kopf starts only once this process holds the Lease,
    and the renewal runs in a thread of its own, started before ``kopf.operator()``. A leader that loses the
    Lease exits with ``leader.LOST_LEASE_EXIT_CODE``."""
    from . import leader, metrics

    server = await metrics.start_server(settings.metrics_port)
    elector: leader.LeaderElector | None = None
    try:
        if settings.leader_election:
            elector = leader.LeaderElector(settings, on_change=lambda lead, who: metrics.set_leader(who, lead))
            metrics.set_leader(elector.identity, False)
            if not await _wait_for_lease(elector):
                log.info("stopped while standby")
                return 0
            await elector.start_renewing()
        else:
            metrics.set_leader(None, True)  # the only replica: it leads
        liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
        await kopf.operator(
            standalone=True,
            clusterwide=bool(args.all_namespaces),
            namespaces=args.namespaces or (),
            liveness_endpoint=liveness,
        )
    finally:
        if elector is not None:
            await elector.stop(release=True)
        if server is not None:
            await server.cleanup()
    return 0


async def _wait_for_lease(elector: leader.LeaderElector) -> bool:
    """Standby until the Lease is ours (True), or SIGTERM/SIGINT arrives first (False). kopf installs its
    own signal handlers when it starts."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await elector.wait_for_leadership(stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


if __name__ == "__main__":
    raise SystemExit(main())
