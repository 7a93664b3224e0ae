"""Serving: latency and throughput of a real daemon, and how soon a new app serves.

1. Digits models are trained offline with the learning core, and two are written into a fresh
   daemon's registry exactly as the trainer would write them: one with all seven families as
   members (``digits7``) and the low-latency policy's choice of at most three (``digits3``).
2. A real `mliot run` subprocess serves them. Single-row latency (p50/p99) over HTTP
   keep-alive and over the WebSocket stream, one request at a time, is measured with the lean
   client (``bench/lean_client.py``: prebuilt requests, a busy-polled socket, so the figure is
   the server's and not the client's); an aiohttp client measures the same for reference
   (``aiohttp_client``: what a Python client sees, ~0.1-0.2 ms more). Pipelined WebSocket
   throughput and 8-client HTTP throughput use aiohttp.
3. A new app gets the digits training set; the time until its first served prediction is
   `first_serve_s`, and the daemon's own loop-lag histogram gives the lag p99 while it trains.
4. In the same run, the competitors (``bench/competitors.py``) serve ONE RandomForest(100)
   trained on the same digits split: MLServer 1.7 (mlserver-sklearn, V2 inference protocol,
   its own virtualenv under bench/) and a minimal hand-written aiohttp server. Every server
   gets the same lean-client single-row latency test, a throughput test (8 concurrent
   keep-alive clients, one row per request) and an RSS reading (server process plus its
   children) after the load.
5. Where the time goes: the same clients against a transport floor (``bench/handmade_server.py
   -``: uvloop + aiohttp answering a constant prediction, no model; measured just before and
   just after each of mliot's single-row runs, so both see the same machine), and the served
   predictor alone in a child process, one row at a time, back to back and with 0.3 ms idle
   between rows as in the round trips (the core sleeps between requests and comes back to
   cold caches).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

from bench import competitors, lean_client
from bench.common import request, rss_mib, wait_quiet
from bench.daemon_proc import free_port, histogram, quantile_between, running_daemon
from bench.datasets import digits

CONCURRENCY = 8


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 4),
            "p99": round(float(np.percentile(ms, 99)), 4)}


def _channels(t: dict[str, list[float]]) -> dict[str, Any]:
    """Percentiles per channel: the lean client's, and the aiohttp client's for reference."""
    return {"http_ms": _percentiles(t["http"]), "ws_ms": _percentiles(t["ws"]),
            "aiohttp_client": {"http_ms": _percentiles(t["aiohttp_http"]),
                               "ws_ms": _percentiles(t["aiohttp_ws"])}}


def build_models(data_dir: Path) -> dict[str, list[str]]:
    """Train digits once; save a 7-member and a low-latency ensemble as version 1 of two apps."""
    from mliot_daemon.learn.ensemble import Policy, member_weight
    from mliot_daemon.learn.persist import save_model
    from mliot_daemon.learn.pipeline import assemble, fit_all, prepare
    from mliot_daemon.registry import Registry

    X_train, _, y_train, _ = digits()
    prep = prepare(X_train, np.asarray(y_train).astype(str), "vector")
    candidates = fit_all(prep, workers=2)
    registry = Registry(data_dir / "models")
    members: dict[str, list[str]] = {}
    low = assemble(prep, candidates, Policy("low_latency"), X_probe=X_train[:50])
    every = assemble(prep, candidates, Policy("best_effort"), X_probe=X_train[:50])
    k = len(prep.classes)
    every.selection = dataclasses.replace(
        every.selection, members=list(range(len(candidates))),
        weights=[member_weight(c.val_accuracy, k) for c in candidates],
        families=[c.family for c in candidates],
        sharpness=[c.sharpness for c in candidates])  # one per member, as save_model writes
    every._fast = None
    for app, model in (("digits7", every), ("digits3", low)):
        staging = registry.staging_path(app)
        save_model(model, staging, {"reason": "initial", "n_samples": len(X_train),
                                    "complete": True})
        registry.publish(app, staging, keep=5, meta={"reason": "initial"})
        members[app] = [m.family for m in model.members]
    return members


def single_row(url: str, app: str, rows: np.ndarray, n: int) -> dict[str, list[float]]:
    """Single-row round trips (seconds) to one app, ``n`` per channel and client: the lean
    client (``bench/lean_client.py``, the figures of record) and an aiohttp client."""
    bodies = [orjson.dumps({"instances": [r.tolist()]}) for r in rows]
    messages = [orjson.dumps({"type": "predict", "ref": i, "features": r.tolist()})
                for i, r in enumerate(rows)]
    out = {"http": lean_client.http_latency(f"{url}/v1/apps/{app}/predict", bodies, n),
           "ws": lean_client.ws_latency(f"{url}/v1/apps/{app}/stream", messages,
                                        [b'"ref":%d,' % i for i in range(len(rows))], n)}
    out["aiohttp_http"], out["aiohttp_ws"] = asyncio.run(aiohttp_latency(url, app, rows, n))
    return out


async def aiohttp_latency(url: str, app: str, rows: np.ndarray, n: int
                          ) -> tuple[list[float], list[float]]:
    """What a Python client on aiohttp sees: (HTTP, WebSocket) seconds per round trip."""
    http, ws_times = [], []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            body = orjson.dumps({"instances": [rows[i % len(rows)].tolist()]})
            start = time.perf_counter()
            async with s.post(f"{url}/v1/apps/{app}/predict", data=body) as r:
                await r.read()
                assert r.status == 200, await r.text()
            http.append(time.perf_counter() - start)
        async with s.ws_connect(url.replace("http", "ws", 1) + f"/v1/apps/{app}/stream") as ws:
            for i in range(n):
                message = orjson.dumps({"type": "predict", "ref": i,
                                        "features": rows[i % len(rows)].tolist()}).decode()
                start = time.perf_counter()
                await ws.send_str(message)
                await _prediction(ws)
                ws_times.append(time.perf_counter() - start)
    return http[n // 10:], ws_times[n // 10:]  # the first tenth warms connections and caches


async def _prediction(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Wait for the next prediction; an error answer fails the run (waiting for a prediction
    that will never come would hang it)."""
    while (msg := await ws.receive_json())["type"] != "prediction":
        if msg["type"] == "error":
            raise RuntimeError(f"the daemon answered an error: {msg['message']}")


async def ws_pipelined(url: str, app: str, rows: np.ndarray, n: int) -> float:
    """Predictions per second when ``n`` are sent on one WebSocket without waiting."""
    ws_url = url.replace("http", "ws", 1) + f"/v1/apps/{app}/stream"
    messages = [orjson.dumps({"type": "predict", "ref": i, "features": rows[i % len(rows)]
                              .tolist()}).decode() for i in range(n)]
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url) as ws:

        async def sender() -> None:
            for m in messages:
                await ws.send_str(m)

        start = time.perf_counter()
        task = asyncio.create_task(sender())
        for _ in range(n):
            await _prediction(ws)
        elapsed = time.perf_counter() - start
        await task
    return n / elapsed


async def http_throughput(url: str, bodies: list[bytes], n: int, concurrency: int) -> float:
    """Requests per second of ``concurrency`` keep-alive aiohttp clients sharing ``n``
    single-row requests."""
    headers = {"Content-Type": "application/json"}
    left = list(range(n))

    async def client(s: aiohttp.ClientSession) -> None:
        while left:
            i = left.pop()
            async with s.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                await r.read()
                assert r.status == 200

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        start = time.perf_counter()
        await asyncio.gather(*(client(s) for _ in range(concurrency)))
        return n / (time.perf_counter() - start)


def predictor_ms(data_dir: Path, apps: list[str], n: int) -> dict[str, dict[str, float]]:
    """p50 of one served row through ``ServedModel.predict`` (front end, gate, fast vote),
    in this (child) process: back to back, and with 0.3 ms of idle before each row."""
    from actors.server.serving import ServedModel
    from mliot_daemon.learn.fast import single_thread_blas
    from mliot_daemon.learn.persist import load_model
    from mliot_daemon.registry import Registry

    single_thread_blas()
    registry = Registry(data_dir / "models")
    _, X_test, _, _ = digits()
    rows = X_test.astype(np.float32)
    out = {}
    for app in apps:
        version = registry.current(app)
        assert version is not None
        model = ServedModel(version, load_model(registry.version_path(app, version)))
        result = {}
        for name, idle in (("back_to_back_ms", 0.0), ("idle_0.3ms_ms", 0.0003)):
            times = []
            for i in range(n):
                if idle:
                    time.sleep(idle)
                start = time.perf_counter()
                model.predict(rows[i % len(rows)][None])
                times.append(time.perf_counter() - start)
            result[name] = round(float(np.percentile(np.asarray(times[n // 10:]) * 1000, 50)), 4)
        out[app] = result
    return out


@contextlib.contextmanager
def floor_server() -> Iterator[str]:
    """The transport floor: a server that answers every prediction with a constant."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.handmade_server", "-", str(port)],
                            cwd=Path(__file__).resolve().parent.parent)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                request(url, "POST", "/v1/apps/floor/predict", {"instances": [[0.0]]})
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the floor server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def around(floor: str, app_url: str, app: str, rows: np.ndarray, n: int,
           floor_times: dict[str, list[float]]) -> dict[str, list[float]]:
    """``single_row`` for an app, with the floor's taken just before and just after it
    (n/2 round trips each way), so floor and mliot see the same machine."""
    for key, t in single_row(floor, "floor", rows, n // 2).items():
        floor_times.setdefault(key, []).extend(t)
    out = single_row(app_url, app, rows, n)
    for key, t in single_row(floor, "floor", rows, n // 2).items():
        floor_times[key].extend(t)
    return out


def competitor(kind: str, model_file: Path, rows: np.ndarray, n: int) -> dict[str, Any]:
    ctx = competitors.mlserver if kind == "mlserver" else competitors.handmade
    if kind == "mlserver":
        bodies = [orjson.dumps(competitors.mlserver_body(r.tolist())) for r in rows]
    else:
        bodies = [orjson.dumps({"instances": [r.tolist()]}) for r in rows]
    started = time.perf_counter()
    with ctx(model_file) as (url, proc):
        ready_s = time.perf_counter() - started
        idle = rss_mib(proc.pid)
        times = lean_client.http_latency(url, bodies, n)
        rate = asyncio.run(http_throughput(url, bodies, n, CONCURRENCY))
        loaded = rss_mib(proc.pid)
    return {"http_ms": _percentiles(times), "throughput_per_s": round(rate),
            "rss_idle": idle, "rss_after_load": loaded,
            "rss_mib": round(loaded["main_mib"] + loaded["children_mib"], 1),
            "start_to_ready_s": round(ready_s, 2)}


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics") as r:
        return r.read().decode()


def first_serve(url: str) -> dict[str, float]:
    """Time from a training set's arrival to the first served prediction, and loop lag p99
    while the whole lazy run trains."""
    X_train, X_test, y_train, _ = digits()
    request(url, "PUT", "/v1/apps/fresh", {"data_type": "vector", "shape": [64]})
    before = histogram(scrape(url), "mliot_loop_lag_seconds")
    body = {"samples": [{"features": x.tolist(), "label": int(t)}
                        for x, t in zip(X_train, y_train, strict=True)]}
    start = time.perf_counter()
    assert request(url, "POST", "/v1/apps/fresh/samples", body)[0] == 200
    while request(url, "POST", "/v1/apps/fresh/predict",
                  {"instances": [X_test[0].tolist()]})[0] != 200:
        time.sleep(0.01)
    served = time.perf_counter() - start
    while request(url, "GET", "/v1/status")[1]["apps"]["fresh"]["training"].get("training"):
        time.sleep(0.5)
    trained = time.perf_counter() - start
    after = histogram(scrape(url), "mliot_loop_lag_seconds")
    return {"first_serve_s": round(served, 3), "full_training_s": round(trained, 1),
            "loop_lag_p99_ms_while_training": round(quantile_between(before, after, 0.99)
                                                    * 1000, 3)}


@contextlib.contextmanager
def dashboard_pages(url: str, app: str, n: int) -> Iterator[None]:
    """``n`` dashboard pages open on ``app`` meanwhile (``bench/dashboard_load.py``)."""
    if not n:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-m", "bench.dashboard_load", url, app, str(n)],
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        time.sleep(1.0)  # the sockets are open and the first polls are done
        if proc.poll() is not None:
            raise RuntimeError("the dashboard load did not start")
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def run(quick: bool, watchers: int = 0) -> dict[str, Any]:
    n = 300 if quick else 3000
    pipelined = 2000 if quick else 20000
    env = wait_quiet(quick)
    competitors.ensure_mlserver()  # installing is not part of any measurement
    _, X_test, _, _ = digits()
    with tempfile.TemporaryDirectory(prefix="mliot-serving-") as tmp:
        data = Path(tmp) / "data"
        # Train in a child process: BLAS/OpenMP threads left spinning in this (client) process
        # would steal the daemon's CPU and inflate every latency measured after.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
            members = pool.submit(build_models, data).result()
            forest = pool.submit(competitors.train_forest, Path(tmp) / "rf" / "model.joblib"
                                 ).result()
            forest_ms = pool.submit(competitors.forest_inprocess_ms, forest).result()
            predictor = pool.submit(predictor_ms, data, list(members), n).result()
        apps = "".join(f'[[apps]]\nname = "{a}"\ndata_type = "vector"\nshape = [64]\n'
                       for a in members)
        result: dict[str, Any] = {**env, "members": members}
        floor_t: dict[str, list[float]] = {}
        with floor_server() as floor, \
                running_daemon(apps + "[training]\nworkers = 1\n", data_dir=data) as (url, proc):
            bodies = [orjson.dumps({"instances": [r.tolist()]}) for r in X_test]
            with dashboard_pages(url, "digits7", watchers):
                for app in members:
                    t = around(floor, url, app, X_test, n, floor_t)
                    rate = asyncio.run(http_throughput(f"{url}/v1/apps/{app}/predict", bodies,
                                                       n, CONCURRENCY))
                    result[app] = {**_channels(t),
                                   "ws_pipelined_per_s": round(asyncio.run(
                                       ws_pipelined(url, app, X_test, pipelined))),
                                   "http_throughput_per_s": round(rate)}
            loaded = rss_mib(proc.pid)
            result["mliot_rss"] = loaded
            result.update(first_serve(url))
            floor_rate = asyncio.run(ws_pipelined(floor, "floor", X_test, pipelined))
        result["floor"] = {**_channels(floor_t), "ws_pipelined_per_s": round(floor_rate)}
        result["predictor"] = predictor
        result["mlserver"] = competitor("mlserver", forest, X_test, n)
        result["handmade"] = competitor("handmade", forest, X_test, n)
        result["forest_predict_inprocess_ms"] = forest_ms
    result["mliot_p50_ms"] = result["digits7"]["http_ms"]["p50"]
    result["mliot_p99_ms"] = result["digits7"]["http_ms"]["p99"]
    result["mliot_throughput_per_s"] = result["digits7"]["http_throughput_per_s"]
    result["mliot_rss_mib"] = loaded["main_mib"]
    for k in ("mlserver", "handmade"):
        result[f"{k}_p50_ms"] = result[k]["http_ms"]["p50"]
        result[f"{k}_p99_ms"] = result[k]["http_ms"]["p99"]
        result[f"{k}_throughput_per_s"] = result[k]["throughput_per_s"]
        result[f"{k}_rss_mib"] = result[k]["rss_mib"]
    result["mlserver_over_mliot_p50"] = round(result["mlserver_p50_ms"] / result["mliot_p50_ms"], 2)
    result["handmade_over_mliot_p50"] = round(result["handmade_p50_ms"] / result["mliot_p50_ms"], 2)
    result["targets"] = {"first_serve_s": 2.0, "http_p50_ms": 0.5, "ws_p50_ms": 0.25,
                         "ws_per_s": 10000, "p99_ms": 2.0, "loop_lag_p99_ms": 10.0,
                         "mlserver_over_mliot_p50": 8.0}
    result["met"] = {"mlserver_over_mliot_p50": result["mlserver_over_mliot_p50"] >= 8.0,
                     "first_serve_s": result["first_serve_s"] <= 2.0,
                     "loop_lag_p99_ms": result["loop_lag_p99_ms_while_training"] <= 10.0}
    for app in members:
        a = result[app]
        result["met"][app] = {
            "http_p50_ms": a["http_ms"]["p50"] <= 0.5, "ws_p50_ms": a["ws_ms"]["p50"] <= 0.25,
            "ws_per_s": a["ws_pipelined_per_s"] >= 10000,
            "p99_ms": max(a["http_ms"]["p99"], a["ws_ms"]["p99"]) <= 2.0}
    return result
