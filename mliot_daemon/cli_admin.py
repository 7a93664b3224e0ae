"""The CLI's admin commands: status, apps, models, activate, reload and check-config.

Each is one or a few calls of the public API (check-config none: it runs the daemon's own
config parser on the file), printed as a table, or as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

from mliot_daemon.cli_output import EXIT_OK, EXIT_REJECTED, UsageError, emit, fail, table
from mliot_daemon.client import Client, app_path

APP_HEADER = ("APP", "TYPE", "SHAPE", "SAMPLES", "FEEDBACK", "VERSION", "READY", "CLASSES")


def status(client: Client, args: argparse.Namespace) -> int:
    """``GET /v1/status``: a few key lines, then the apps."""
    def render(s: dict[str, Any]) -> str:
        restart = ", ".join(s["restart_keys"]) if s["restart_required"] else "no"
        lag = s["loop_lag_ms"]
        head = table([("version", s["version"]), ("uptime", _duration(s["uptime_s"])),
                      ("config version", s["config_version"]),
                      ("restart required", restart),
                      ("machines", f"{sum(m['up'] for m in s['machines'])} up of "
                                   f"{len(s['machines'])}"),
                      ("loop lag p50/p99", f"{lag['p50']} / {lag['p99']} ms")])
        rows = [(name, a["data_type"], a["n_samples"], a["model_version"], a["ready"],
                 a.get("training_state"), a["accuracy"], len(a["alerts"]))
                for name, a in s["apps"].items()]
        apps = table(rows, ("APP", "TYPE", "SAMPLES", "VERSION", "READY", "TRAINING",
                            "ACCURACY", "ALERTS")) if rows else "no apps"
        return f"{head}\n\n{apps}"

    return emit(client.request("GET", "/v1/status"), args.json, render)


def apps(client: Client, args: argparse.Namespace) -> int:
    """``GET /v1/apps``, then ``GET /v1/apps/{app}`` for each: one line per app."""
    infos = [client.request("GET", app_path(name)) for name in client.request("GET", "/v1/apps")]

    def render(infos: list[dict[str, Any]]) -> str:
        if not infos:
            return "no apps"
        return table([(a["name"], a["data_type"], "x".join(map(str, a["shape"] or [])) or None,
                       a["n_samples"], a["n_feedback"], a["model_version"], a["ready"],
                       a["labels"]) for a in infos], APP_HEADER)

    return emit(infos, args.json, render)


def models(client: Client, args: argparse.Namespace) -> int:
    """``GET /v1/apps/{app}/models``: the kept versions, newest first; * marks the served."""
    def render(m: dict[str, Any]) -> str:
        if not m["versions"]:
            return f"{args.app}: no model versions yet"
        rows = [(f"{'*' if v['version'] == m['current'] else ' '}{v['version']}",
                 _when(v["created"]), v["reason"], [x["family"] for x in v["members"]],
                 v["metrics"].get("val_accuracy"), v["metrics"].get("latency_ms"),
                 v.get("pinned"))
                for v in m["versions"]]
        return table(rows, (" VERSION", "CREATED", "REASON", "MEMBERS", "ACCURACY",
                            "LATENCY_MS", "PINNED"))

    return emit(client.request("GET", app_path(args.app, "models")), args.json, render)


def activate(client: Client, args: argparse.Namespace) -> int:
    """``POST /v1/apps/{app}/models/{version}/activate``: roll back or forward."""
    path = app_path(args.app, "models", quote(args.version, safe=""), "activate")
    return emit(client.request("POST", path), args.json,
                lambda r: f"{args.app}: version {r['current']} is served now")


def reload(client: Client, args: argparse.Namespace) -> int:
    """``POST /v1/reload``: the daemon reads its config file again (a refused file is
    printed with its errors, exit 4, and the old config stays in force)."""
    def render(r: dict[str, Any]) -> str:
        return table([("config version", r["config_version"]),
                      ("changed", r["changed"] or "nothing"),
                      ("restart required", r["restart_required"] or "no")])

    return emit(client.request("POST", "/v1/reload"), args.json, render)


def check_config(args: argparse.Namespace) -> int:
    """Validate a config file with the daemon's own parser (no network): exit 0 when the
    daemon would take it, else 4 with every problem as ``FILE: key.path: why``."""
    from mliot_daemon.config import ConfigError, load_file

    path = args.file
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        settings = load_file(path)
    except ConfigError as exc:
        errors = [e if e.startswith(str(path)) else f"{path}: {e}" for e in exc.errors]
        if args.json:
            emit({"file": str(path), "valid": False, "errors": errors}, True, str)
        for error in errors:
            fail(args.command, error, EXIT_REJECTED)
        return EXIT_REJECTED
    d = settings.daemon
    result = {"file": str(path), "valid": True, "listen": d.listen, "data_dir": d.data_dir,
              "token": bool(settings.token), "mqtt": settings.mqtt.url if settings.mqtt else None,
              "peers": [p.name for p in settings.peers], "apps": [a.name for a in settings.apps],
              "warnings": list(settings.warnings)}

    def render(r: dict[str, Any]) -> str:
        rows = [("file", r["file"]), ("valid", True), ("listen", r["listen"]),
                ("data dir", r["data_dir"]), ("token", "set" if r["token"] else "none"),
                ("mqtt", r["mqtt"] or "off"), ("peers", r["peers"] or "none"),
                ("apps", r["apps"] or "none")]
        rows += [("warning", w) for w in r["warnings"]]
        return table(rows, max_cell=None)

    emit(result, args.json, render)
    return EXIT_OK


def _when(value: float | str | None) -> str | None:
    """A unix time or an ISO 8601 one (model manifests have those) in local time."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value).timestamp()
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(value))


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return f"{days}d {h}h {m}m" if days else f"{h}h {m}m {s}s" if h else f"{m}m {s}s"
