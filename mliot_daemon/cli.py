"""The `mliot` command: run the daemon, and talk to a running one.

Imports beyond the standard library's lightest modules happen inside the commands: `mliot run`
records signals from the first line of ``main`` (see ``_record_early_signals``), and every
import before that line widens the window in which a SIGHUP would kill the process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from mliot_daemon import __version__

_early_signals: list[int] = []  # `mliot run`: what arrived before the event loop ran


def _record_early_signals() -> None:
    """Stop and reload signals are recorded from the first line of main(), before the slow
    imports: the daemon acts on them once it runs (``signals.Signals``), none kills it."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: _early_signals.append(signum))


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from mliot_daemon.daemon import run_daemon
    from mliot_daemon.signals import Signals

    daemon = run_daemon(args.config, Signals(_early_signals))
    try:
        import uvloop
    except ImportError:  # uvloop is optional off Linux
        return asyncio.run(daemon)
    return uvloop.run(daemon)


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


def _command(args: argparse.Namespace) -> int:
    """import, predict, feedback, watch, demo: client commands of a running daemon."""
    from mliot_daemon import commands
    from mliot_daemon.client import ApiError

    client = _client(args)
    try:
        match args.command:
            case "import":
                return commands.import_file(client, args.app, args.file)
            case "predict":
                return commands.predict_file(client, args.app, args.data)
            case "feedback":
                body = {"prediction_id": args.prediction_id, "label": args.label}
                print(json.dumps(client.request("POST", f"/v1/apps/{args.app}/feedback", body)))
                return 0
            case "watch":
                import asyncio

                try:
                    asyncio.run(commands.watch(client.url, client.token, args.app))
                except KeyboardInterrupt:
                    pass
                return 0
            case "demo":
                if args.minutes is not None and not args.sensors:
                    raise ValueError("--minutes goes with --sensors")
                return commands.demo(client, args.config, args.sensors, args.minutes)
    except (ApiError, ValueError, OSError) as exc:
        print(f"mliot {args.command}: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(args.command)


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

    clients = {
        "status": sub.add_parser("status", help="show a running daemon's status"),
        "demo": sub.add_parser("demo", help="run the daemon (unless one runs) and teach it "
                                            "sklearn's digits; Ctrl-C stops"),
        "import": sub.add_parser("import", help="send a file of labelled samples to an app"),
        "predict": sub.add_parser("predict", help="predict every row of a file"),
        "feedback": sub.add_parser("feedback", help="correct a prediction"),
        "watch": sub.add_parser("watch", help="show an app's live predictions and training"),
    }
    for name, p in clients.items():
        p.add_argument("--config", type=Path, help="find the daemon's address in this file")
        p.add_argument("--url", help="the daemon's URL (default: from --config or defaults)")
        p.add_argument("--token", help="bearer token (default: $MLIOT_TOKEN or the config's)")
        p.set_defaults(func=_status if name == "status" else _command)
    clients["import"].add_argument("app")
    clients["import"].add_argument("file", type=Path, help=".npz (X, y) or .csv (label last)")
    clients["predict"].add_argument("app")
    clients["predict"].add_argument("--data", type=Path, required=True,
                                    help=".npz (X) or .csv (features only)")
    clients["feedback"].add_argument("app")
    clients["feedback"].add_argument("prediction_id")
    clients["feedback"].add_argument("label")
    clients["watch"].add_argument("app")
    clients["demo"].add_argument("--sensors", action="store_true",
                                 help="a generated kitchen's sensors teach a stream app instead")
    clients["demo"].add_argument("--minutes", type=float,
                                 help="with --sensors: stop after playing this long")

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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:  # before the imports below: a SIGHUP now must not kill the daemon
        _record_early_signals()
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
