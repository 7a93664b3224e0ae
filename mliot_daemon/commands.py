"""The CLI's client commands that move data: import, export, predict, feedback, watch, demo.

They talk to a running daemon through its public API only (`client.Client` for HTTP, aiohttp
for the WebSocket stream), exactly as any other program would. Each takes the client and the
parsed arguments, prints a table (or JSON with ``--json``) and returns the exit code; a
failure is raised (``cli._dispatch`` maps it to its exit code).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mliot_daemon.cli_output import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_UNREACHABLE,
    UsageError,
    emit,
    fail,
    table,
)
from mliot_daemon.client import ApiError, Client, Unreachable, app_path

BATCH = 500


def load_rows(path: Path) -> np.ndarray:
    """Unlabelled rows to predict, from `.npz` (an array X) or `.csv` (numbers only; a header
    line is skipped)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "X" not in data:
                raise ValueError(f"{path}: an .npz needs an array X")
            return np.asarray(data["X"], dtype=np.float64)
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        try:
            float(rows[0][0])
        except (ValueError, IndexError):
            rows = rows[1:]  # a header line (or no rows at all)
        try:
            return np.array([[float(v) for v in r] for r in rows])
        except ValueError as exc:
            raise ValueError(f"{path}: a value is not a number: {exc}") from None
    raise ValueError(f"{path}: expected a .npz or .csv file")


def file_parts(path: Path) -> Iterator[tuple[int, bytes, str]]:
    """A labelled file as (first row, body, content type) parts of BATCH rows, for the
    daemon's import endpoint, which parses and reshapes them: CSV lines as they are (a header
    line stays with the first part, where the daemon skips it), npz rows re-packed (with
    their ``lengths``, when padded clips have them)."""
    if path.suffix == ".csv":
        lines = [line for line in path.read_bytes().splitlines(keepends=True) if line.strip()]
        for start in range(0, len(lines), BATCH):
            yield start, b"".join(lines[start:start + BATCH]), "text/csv"
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "X" not in data or "y" not in data:
                raise ValueError(f"{path}: an .npz needs arrays X and y")
            arrays = {k: data[k] for k in ("X", "y", "lengths") if k in data}
        for start in range(0, len(arrays["X"]), BATCH):
            part = io.BytesIO()
            np.savez(part, **{k: a[start:start + BATCH] for k, a in arrays.items()})
            yield start, part.getvalue(), "application/x-npz"
    else:
        raise ValueError(f"{path}: expected a .npz or .csv file")


class Progress:
    """A one-line progress bar on stderr, shown only when stderr is a terminal."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what = total, what
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        if not self.tty:
            return
        width = 30
        filled = int(width * done / max(self.total, 1))
        sys.stderr.write(f"\r{self.what} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{self.total} {time.monotonic() - self.started:5.1f}s")
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def import_file(client: Client, args: argparse.Namespace) -> int:
    """Send a labelled file to the app's import endpoint in parts (so a file of any size fits
    the daemon's body limit); the daemon parses each and reshapes its flat rows to the app's
    shape, as for the dashboard's upload. Batch ids derive from the file's content, so
    importing the same file again (after an interruption, say) stores nothing twice."""
    app, path = args.app, args.file
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    parts = list(file_parts(path))
    bar = Progress(len(parts), f"import {path.name}")
    rows = total = 0
    for i, (start, body, content_type) in enumerate(parts, 1):
        result = client.request("POST", app_path(app, f"import?batch_id={digest}-{start}"),
                                raw=body, content_type=content_type)
        rows += result["accepted"]
        total = result["n_samples"]
        bar.update(i)
    return emit({"app": app, "rows": rows, "n_samples": total}, args.json, lambda r: table(
        [("app", app), ("rows sent", rows), ("samples now", total)]))


def export_file(client: Client, args: argparse.Namespace) -> int:
    """Save an app's samples and corrections (``GET /v1/apps/{app}/export``, streamed) to
    OUT, in the format ``--format`` or OUT's suffix names; `mliot import` reads it back."""
    suffix = args.out.suffix.lstrip(".").lower()
    fmt = args.format or suffix
    if fmt not in ("npz", "csv"):
        raise UsageError(f"{args.out}: name a .npz or .csv file, or give --format")
    if suffix in ("npz", "csv") and suffix != fmt:
        raise UsageError(f"{args.out}: a .{suffix} name for {fmt} content; `mliot import` "
                         "goes by the suffix")
    headers = client.download(app_path(args.app, f"export?format={fmt}"), args.out)
    rows = int(headers.get("X-Mliot-Rows", 0))
    corrections = int(headers.get("X-Mliot-Corrections", 0))
    result = {"app": args.app, "format": fmt, "file": str(args.out), "rows": rows,
              "samples": rows - corrections, "corrections": corrections,
              "bytes": args.out.stat().st_size}
    return emit(result, args.json, lambda r: table(
        [("file", r["file"]), ("format", fmt), ("rows", rows),
         ("samples", r["samples"]), ("corrections", corrections), ("bytes", r["bytes"])]))


def predict_file(client: Client, args: argparse.Namespace) -> int:
    """Predict every row of a file: a line per prediction (with ``--json``, the daemon's
    JSON, one line each), printed as each batch is answered. Flat rows (a CSV's) are
    reshaped to the app's shape, as the import endpoint does for labelled ones."""
    X = load_rows(args.data)
    shape = client.request("GET", app_path(args.app))["shape"]
    if shape and X.ndim == 2 and len(shape) > 1 and X.shape[1] == np.prod(shape):
        X = X.reshape(len(X), *shape)
    header = ("ID", "LABEL", "CONFIDENCE", "MARGIN", "STAGE", "VERSION")
    for start in range(0, len(X), BATCH):
        body = {"instances": X[start:start + BATCH].tolist()}
        answer = client.request("POST", app_path(args.app, "predict"), body)["predictions"]
        if args.json:
            print("\n".join(json.dumps(p) for p in answer), flush=True)
            continue
        rows = [(p["id"], p["label"], p["confidence"], p["margin"], p["stage"],
                 p["model_version"]) for p in answer]
        lines = table(rows, header).splitlines()
        print("\n".join(lines if start == 0 else lines[1:]), flush=True)
    return EXIT_OK


def feedback(client: Client, args: argparse.Namespace) -> int:
    """Correct (or confirm) a prediction by its id."""
    body = {"prediction_id": args.prediction_id, "label": args.label}
    result = client.request("POST", app_path(args.app, "feedback"), body)
    return emit(result, args.json, lambda r: table(r.items()))


def watch_app(client: Client, args: argparse.Namespace) -> int:
    """Follow an app until Ctrl-C (exit 0) or the daemon closes the stream."""
    import aiohttp

    try:
        asyncio.run(watch(client.url, client.token, args.app, as_json=args.json))
    except KeyboardInterrupt:
        pass
    except aiohttp.WSServerHandshakeError as exc:  # the daemon's answer to the upgrade
        message = "unknown app" if exc.status == 404 else exc.message
        return fail(args.command, f"{args.app}: {message} (HTTP {exc.status})", EXIT_REJECTED)
    except (aiohttp.ClientError, OSError) as exc:
        return fail(args.command, Unreachable(f"cannot reach the daemon at {client.url}: "
                                              f"{exc}"), EXIT_UNREACHABLE)
    return EXIT_OK


async def watch(url: str, token: str, app: str, out: Any = None,
                stop: asyncio.Event | None = None, predictions: bool = True,
                as_json: bool = False) -> None:
    """Print an app's training events (and live predictions from every channel, each with
    the id `mliot feedback` takes) until stopped or the daemon closes the stream; with
    ``as_json`` each message as it came, one JSON line each."""
    import aiohttp

    out = out or sys.stdout
    ws_url = url.replace("http", "ws", 1) + app_path(app, "stream")
    if predictions:
        ws_url += "?watch=true"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as session, \
            session.ws_connect(ws_url, heartbeat=30) as ws:
        while stop is None or not stop.is_set():
            try:
                msg = await asyncio.wait_for(ws.receive(), 0.5)
            except TimeoutError:
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if as_json:
                print(msg.data, file=out, flush=True)
            elif data["type"] == "event":
                extra = {k: v for k, v in data.items() if k not in ("type", "kind")}
                print(f"[training] {data['kind']} {json.dumps(extra)}", file=out, flush=True)
            elif data["type"] == "prediction":
                print(f"[predict] {data['id']} {data['label']} "
                      f"confidence={data['confidence']:.2f} stage={data['stage']} "
                      f"v{data['model_version']} via {data.get('channel', '-')}", file=out,
                      flush=True)


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so `kill` and a terminal stop the demo the same way."""
    def raise_interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def demo(client: Client, args: argparse.Namespace) -> int:
    """Start a daemon (unless one answers), teach it sklearn's digits through the API, and show
    training progress and live predictions until Ctrl-C. ``--sensors``: a stream app instead."""
    config = args.config
    if args.minutes is not None and not args.sensors:
        raise UsageError("--minutes goes with --sensors")
    if args.sensors:
        from mliot_daemon import demo_home

        return demo_home.demo(client, config, args.minutes)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    def teach_digits() -> int:
        X, y = load_digits(return_X_y=True)
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=0.3, stratify=y, random_state=0)
        if "digits" not in client.request("GET", "/v1/apps"):
            client.request("PUT", "/v1/apps/digits", {"data_type": "vector", "shape": [64]})
        print("demo app 'digits': 8x8 handwritten digits as 64 numbers", flush=True)
        print(f"see it learn, and teach it, at {client.url}/#/app/digits", flush=True)
        return asyncio.run(_demo_loop(client, X_train, y_train, X_test, y_test))

    return run_demo(client, config, teach_digits)


def run_demo(client: Client, config: Path | None, body: Callable[[], int]) -> int:
    """Run a demo's ``body`` beside its daemon until it ends, Ctrl-C or SIGTERM (exit 0);
    3 when its daemon does not come up, 4 when the daemon refuses its calls."""
    with terminate_on_sigterm():
        try:
            with demo_daemon(client, config):
                return body()
        except KeyboardInterrupt:
            print("\nstopping the demo", flush=True)
            return 0
        except ApiError as exc:  # its daemon did not come up, or refused the demo's calls
            code = EXIT_UNREACHABLE if isinstance(exc, Unreachable) else EXIT_REJECTED
            return fail("demo", exc, code)


@contextlib.contextmanager
def demo_daemon(client: Client, config: Path | None) -> Iterator[None]:
    """A demo's daemon: the one answering at the client's address, else one started here and
    stopped when the demo ends. It runs in its own session: Ctrl-C reaches the demo only, which
    then stops the daemon with one SIGTERM (a second signal would force the daemon's exit)."""
    daemon: subprocess.Popen[bytes] | None = None
    try:
        if not _answers(client):
            cmd = [sys.executable, "-m", "mliot_daemon", "run"]
            if config is not None:
                cmd += ["--config", str(config)]
            print(f"starting the daemon at {client.url} ...", flush=True)
            daemon = subprocess.Popen(cmd, start_new_session=True)
            _wait_ready(client, daemon)
        yield
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)


def _answers(client: Client) -> bool:
    try:
        client.request("GET", "/healthz")
    except ApiError:
        return False
    return True


def _wait_ready(client: Client, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise Unreachable(f"the daemon exited with code {daemon.returncode}")
        try:
            client.request("GET", "/readyz")
            return
        except ApiError:
            time.sleep(0.2)
    raise Unreachable("the daemon did not become ready")


async def _demo_loop(client: Client, X_train: np.ndarray, y_train: np.ndarray,
                     X_test: np.ndarray, y_test: np.ndarray) -> int:
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(client.url, client.token, "digits", stop=stop,
                                        predictions=False))
    try:
        body = {"batch_id": "demo-digits", "samples": [
            {"features": x.tolist(), "label": int(t)} for x, t in zip(X_train, y_train,
                                                                      strict=True)]}
        result = await asyncio.to_thread(client.request, "POST", "/v1/apps/digits/samples", body)
        print(f"sent {len(X_train)} labelled digits; the app has {result['n_samples']}",
              flush=True)
        right = seen = 0
        i = 0
        while True:
            x, truth = X_test[i % len(X_test)], str(y_test[i % len(y_test)])
            try:
                answer = await asyncio.to_thread(client.request, "POST",
                                                 "/v1/apps/digits/predict",
                                                 {"instances": [x.tolist()]})
            except ApiError as exc:
                print(f"waiting for a first model ({exc})", flush=True)
                await asyncio.sleep(1.0)
                continue
            p = answer["predictions"][0]
            seen += 1
            right += p["label"] == truth
            print(f"digit {truth}: predicted {p['label']} (confidence {p['confidence']:.2f}, "
                  f"model v{p['model_version']}) accuracy so far {right / seen:.3f}", flush=True)
            i += 1
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await watcher
