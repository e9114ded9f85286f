"""``python -m kubetrain_operator [--namespace NS ...| --all-namespaces] [--verbose]``: run the operator."""

from __future__ import annotations

import argparse
import asyncio
import logging

import kopf

from .settings import get_settings


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
    from . import handlers  # noqa: F401  (registers the kinds and the kopf handlers)

    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=bool(args.all_namespaces),
            namespaces=args.namespaces or (),
            liveness_endpoint=liveness,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
