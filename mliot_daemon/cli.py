"""The `mliot` command: run the daemon, and talk to a running one.

Imports beyond the standard library's lightest modules happen inside the commands: `mliot run`
records signals from the first line of ``main`` (see ``_record_early_signals``), and every
import before that line widens the window in which a SIGHUP would kill the process.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from mliot_daemon import __version__

# the codes themselves are in cli_output (not imported here: see above); README lists them too
EXIT_CODES = """exit codes: 0 done; 1 `doctor`: a check failed; 2 bad arguments (or a file the
command cannot use); 3 no answer from the daemon; 4 the daemon refused the request (its
message is printed), or `check-config`: the file is invalid"""

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


def _dispatch(args: argparse.Namespace) -> int:
    """Run a command's body (``args.body``: "module:function" in this package, imported
    only now) and turn its failure into the documented exit code and one line on stderr."""
    from importlib import import_module

    from mliot_daemon import cli_output as out
    from mliot_daemon.client import Refused, Unreachable

    module, _, name = args.body.partition(":")
    body = getattr(import_module(f"mliot_daemon.{module}"), name)
    try:
        return int(body(_client(args), args) if args.remote else body(args))
    except Unreachable as exc:
        return out.fail(args.command, exc, out.EXIT_UNREACHABLE)
    except Refused as exc:
        return out.fail(args.command, exc, out.EXIT_REJECTED)
    except (ValueError, OSError) as exc:  # an argument or a named file it cannot use
        return out.fail(args.command, exc, out.EXIT_USAGE)


def _evaluate(args: argparse.Namespace) -> int:
    from mliot_daemon.learn import evaluate

    return evaluate.main(args)


def build_parser(running: str | None = None) -> argparse.ArgumentParser:
    """The parser. ``evaluate``'s options come from the learning library, whose import takes
    seconds: they are added only when ``running`` (the command about to run) is evaluate."""
    parser = argparse.ArgumentParser(
        prog="mliot", description="Run the mliot daemon, and talk to a running one.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mliot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="TOML file (default: built-in defaults)")
    run.set_defaults(func=_run)

    def command(name: str, body: str, help: str, remote: bool = True,
                json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=_dispatch, body=body, remote=remote)
        if remote:
            p.add_argument("--config", type=Path, help="find the daemon's address in this file")
            p.add_argument("--url", help="the daemon's URL (default: from --config or defaults)")
            p.add_argument("--token",
                           help="bearer token (default: $MLIOT_TOKEN or the config's)")
        if json_flag:
            p.add_argument("--json", action="store_true",
                           help="print the result as JSON instead of a table")
        return p

    command("status", "cli_admin:status", "show a running daemon's status")
    command("apps", "cli_admin:apps", "list the apps: data type, samples, served version")
    p = command("models", "cli_admin:models", "list an app's kept model versions")
    p.add_argument("app")
    p = command("activate", "cli_admin:activate", "serve a kept version of an app's model")
    p.add_argument("app")
    p.add_argument("version")
    command("reload", "cli_admin:reload", "make the daemon reload its config file")
    p = command("check-config", "cli_admin:check_config",
                "validate a config file as the daemon would (no daemon needed)", remote=False)
    p.add_argument("file", type=Path)
    p = command("doctor", "doctor:doctor", "check this machine can run the daemon: port, "
                "data dir, broker, token, libraries, process pool", remote=False)
    p.add_argument("--config", type=Path, help="TOML file (default: built-in defaults)")
    p = command("import", "commands:import_file", "send a file of labelled samples to an app")
    p.add_argument("app")
    p.add_argument("file", type=Path, help=".npz (X, y[, lengths]) or .csv (label last)")
    p = command("export", "commands:export_file",
                "save an app's samples and corrections to a file")
    p.add_argument("app")
    p.add_argument("--format", choices=("npz", "csv"),
                   help="default: the output file's suffix")
    p.add_argument("out", type=Path, help="the file to write (.npz or .csv)")
    p = command("predict", "commands:predict_file", "predict every row of a file")
    p.add_argument("app")
    p.add_argument("--data", type=Path, required=True, help=".npz (X) or .csv (features only)")
    p = command("feedback", "commands:feedback", "correct (or confirm) a prediction")
    p.add_argument("app")
    p.add_argument("prediction_id")
    p.add_argument("label")
    p = command("watch", "commands:watch_app",
                "show an app's live predictions (with their ids) and training")
    p.add_argument("app")
    p = command("demo", "commands:demo", "run the daemon (unless one runs) and teach it "
                "sklearn's digits; Ctrl-C stops", json_flag=False)
    p.add_argument("--sensors", action="store_true",
                   help="a generated kitchen's sensors teach a stream app instead")
    p.add_argument("--minutes", type=float, help="with --sensors: stop after playing this long")

    ev = sub.add_parser("evaluate", help="train and evaluate offline, as the daemon would")
    ev.set_defaults(func=_evaluate)
    if running == "evaluate":
        from mliot_daemon.learn import evaluate

        evaluate.add_arguments(ev)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:  # before the imports below: a SIGHUP now must not kill the daemon
        _record_early_signals()
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
