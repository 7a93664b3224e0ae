"""`mliot doctor`: will the daemon run here, with this config?

It runs locally, without a daemon, and checks what a start needs: the config parses, the port
is free (or which daemon holds it), the data folder is writable with room to spare, the MQTT
broker answers, a token is set when the daemon listens beyond loopback, the libraries are
installed, and the training pool starts. Exit 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from mliot_daemon.cli_output import EXIT_FAILED, EXIT_OK, emit, table
from mliot_daemon.settings import Settings

MIN_FREE_MB = 200  # below this the store soon answers "disk full" (503)
CONNECT_TIMEOUT_S = 2.0
POOL_TIMEOUT_S = 120.0
# distributions the daemon imports; the first name found of each entry is reported
LIBRARIES = (("aiohttp",), ("aiomqtt",), ("scikit-learn",), ("xgboost-cpu", "xgboost"),
             ("numpy",), ("scipy",), ("structlog",), ("orjson",), ("psutil",),
             ("prometheus-client",), ("uvloop",))
OPTIONAL = {"uvloop"}  # the daemon runs on asyncio's own loop without it

Check = tuple[bool, str]  # passed, and what was found


def doctor(args: argparse.Namespace) -> int:
    """Run every check; a table of them (or JSON), exit 0 when all pass, else 1."""
    from mliot_daemon.config import ConfigError, load_file, parse_settings

    try:
        settings = load_file(args.config) if args.config else parse_settings({})
    except ConfigError as exc:
        checks = [("config", False, "; ".join(exc.errors))]  # the rest would check defaults
    else:
        checks = [("config", True, str(args.config) if args.config else "built-in defaults")]
        for name, check in (("port", _port), ("data dir", _data_dir), ("broker", _broker),
                            ("token", _token), ("libraries", lambda s: _libraries()),
                            ("pool", _pool)):
            checks.append((name, *_safely(check, settings)))
    ok = all(passed for _, passed, _ in checks)
    result = {"ok": ok, "checks": [{"check": name, "ok": passed, "detail": detail}
                                   for name, passed, detail in checks]}
    emit(result, args.json, lambda r: table(
        [(c["check"], "ok" if c["ok"] else "FAILED", c["detail"]) for c in r["checks"]],
        ("CHECK", "RESULT", "DETAIL"), max_cell=None))
    return EXIT_OK if ok else EXIT_FAILED


def _safely(check: Callable[[Settings], Check], settings: Settings) -> Check:
    try:
        return check(settings)
    except Exception as exc:  # a check that breaks is a failed check, and the others still run
        return False, f"{type(exc).__name__}: {exc}"


def _port(settings: Settings) -> Check:
    """The listen address can be bound (as the server binds it: address reuse on), or a
    daemon already answers there."""
    d = settings.daemon
    if d.port == 0:
        return True, f"{d.listen}: any free port"
    family, _, _, _, address = socket.getaddrinfo(d.host or None, d.port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
            return True, f"{d.listen} is free"
        except OSError as exc:
            taken = exc
    host = "127.0.0.1" if d.host in ("", "0.0.0.0", "::") else d.host
    try:
        with urllib.request.urlopen(f"http://{host}:{d.port}/healthz",
                                    timeout=CONNECT_TIMEOUT_S) as resp:
            if json.loads(resp.read()).get("status") == "ok":
                return True, f"{d.listen}: an mliot daemon runs there already"
    except (OSError, ValueError, AttributeError):
        pass
    return False, f"{d.listen} is taken by another program ({taken.strerror})"


def _data_dir(settings: Settings) -> Check:
    """The data folder (or the folder it will be made in) takes a file, with room left."""
    path = settings.daemon.data_path
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".mliot-doctor-"):
            pass
    except OSError as exc:
        return False, f"{existing} is not writable: {exc.strerror or exc}"
    free_mb = shutil.disk_usage(existing).free / 2**20
    made = "" if existing == path else f" (to be made in {existing})"
    detail = f"{path}{made}: writable, {free_mb / 1024:.1f} GiB free"
    if free_mb < MIN_FREE_MB:
        return False, f"{detail}; below {MIN_FREE_MB} MiB"
    return True, detail


def _broker(settings: Settings) -> Check:
    """The MQTT broker accepts a TCP connection (when MQTT is on)."""
    if settings.mqtt is None:
        return True, "MQTT is off (no [mqtt] section)"
    url = urlsplit(settings.mqtt.url)
    port = url.port or (8883 if url.scheme == "mqtts" else 1883)
    try:
        with socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S):
            return True, f"{url.hostname}:{port} answers"
    except OSError as exc:
        return False, f"{url.hostname}:{port}: {exc.strerror or exc}"


def _token(settings: Settings) -> Check:
    """A token is set when the daemon listens beyond loopback (the parser insists too)."""
    from mliot_daemon.config import is_loopback

    host = settings.daemon.host
    if settings.token:
        return True, "set"
    if is_loopback(host):
        return True, f"none; not needed while listening on {host}"
    return False, f"none, and {host} is reachable from other machines"


def _libraries() -> Check:
    found, missing = [f"python {sys.version.split()[0]}"], []
    for names in LIBRARIES:
        for name in names:
            try:
                found.append(f"{name} {importlib.metadata.version(name)}")
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            if names[0] not in OPTIONAL:
                missing.append(names[0])
    if missing:
        return False, f"missing: {', '.join(missing)}; found {', '.join(found)}"
    return True, ", ".join(found)


def _pool(settings: Settings) -> Check:
    """A worker of the daemon's kind (forkserver, lowered priority) starts and imports the
    learning libraries, as the trainer warms its pool at every start."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from mliot_daemon.learn import jobs
    from mliot_daemon.learn.plan import machine_speed

    started = time.perf_counter()
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"),
                               initializer=jobs.worker_init, initargs=(os.getpid(),))
    try:
        pool.submit(jobs.warm_up).result(POOL_TIMEOUT_S)
        speed = pool.submit(machine_speed).result(POOL_TIMEOUT_S)  # measured by warm_up
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    workers = settings.training.pool_size
    return True, (f"a worker started and loaded scikit-learn and XGBoost in "
                  f"{time.perf_counter() - started:.1f} s; speed {speed:.2f}; the daemon runs "
                  f"{workers} worker{'s' if workers > 1 else ''}")

