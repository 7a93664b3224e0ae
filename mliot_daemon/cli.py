"""The `mliot` command: run the daemon, and talk to a running one."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from mliot_daemon import __version__


def _run(args: argparse.Namespace) -> int:
    from mliot_daemon.daemon import run_daemon

    try:
        import uvloop
    except ImportError:  # uvloop is optional off Linux
        return asyncio.run(run_daemon(args.config))
    return uvloop.run(run_daemon(args.config))


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from mliot_daemon.client import Client
    from mliot_daemon.config import load_file, parse_settings

    url, token = args.url, args.token or os.environ.get("MLIOT_TOKEN", "")
    if url is None:
        settings = load_file(args.config) if args.config else parse_settings({})
        d = settings.daemon
        host = "127.0.0.1" if d.host in ("0.0.0.0", "::") else d.host
        url = f"http://{host}:{d.port}"
        token = token or settings.token
    return Client(url, token)


def _status(args: argparse.Namespace) -> int:
    from mliot_daemon.client import ApiError

    try:
        status = _client(args).request("GET", "/v1/status")
    except ApiError as exc:
        print(f"mliot status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mliot_daemon.learn import evaluate

    return evaluate.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mliot", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mliot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="TOML file (default: built-in defaults)")
    run.set_defaults(func=_run)

    status = sub.add_parser("status", help="show a running daemon's status")
    for p in (status,):
        p.add_argument("--config", type=Path, help="find the daemon's address in this file")
        p.add_argument("--url", help="the daemon's URL (default: from --config or defaults)")
        p.add_argument("--token", help="bearer token (default: $MLIOT_TOKEN or the config's)")
    status.set_defaults(func=_status)

    try:
        from mliot_daemon.learn import evaluate
    except ImportError:
        evaluate = None  # type: ignore[assignment]
    if evaluate is not None:
        ev = sub.add_parser("evaluate", help="train and evaluate offline, as the daemon would")
        evaluate.add_arguments(ev)
        ev.set_defaults(func=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
