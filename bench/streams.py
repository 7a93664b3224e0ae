"""Streams: stream apps fed by readings, on a real daemon subprocess.

* **Ingest**: readings per second over WebSocket batches of 1,000 (20 channels, 8 batches in
  flight), each batch acknowledged after its commit.
* **Latency**: a trained two-channel app fed at 10 Hz in real time; for each window, from the
  last reading that falls in it (sent at its own timestamp) to its prediction on a watching
  WebSocket. A window ``[e - window_s, e)`` closes when the first reading at or after ``e``
  arrives, so the floor is the readings' spacing (0.1 s), well under ``hop_s``.
* **Load**: 4 apps x 20 channels x 10 Hz (800 readings/s, a batch a second per app), each
  predicting a window per second: CPU and memory of the daemon's main process.
* **Storage**: bytes per channel-day as written (one block per channel and batch) and after
  the hourly compaction (``Store.compact_readings``), from the SQLite file after VACUUM.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import psutil

from bench.common import request
from bench.daemon_proc import running_daemon

CHANNELS, HZ, WINDOW_S, HOP_S = 20, 10.0, 2.0, 0.5
STORED_CHANNELS = 2  # storage: a voltage-like series (230 V +- 2, one decimal) at 10 Hz


def stream_app(name: str, channels: int, hop_s: float = 1.0, window_s: float = 4.0) -> dict:
    return {"data_type": "sensor", "window_s": window_s, "hop_s": hop_s, "sample_hz": HZ,
            "min_dwell_s": 1.0, "max_lateness_s": 2.0,
            "channels": [{"name": f"c{i}", "resample": "mean" if i % 2 else "hold"}
                         for i in range(channels)]}


def signal_at(t: np.ndarray, on: np.ndarray, channel: int, rng: np.random.Generator
              ) -> np.ndarray:
    """An appliance: every channel's level rises while it is on."""
    return np.where(on, 5.0 + channel, 0.5) + rng.normal(0, 0.1, len(t))


def history(channels: int, seconds: float, rng: np.random.Generator
            ) -> tuple[list[dict], list[tuple[str, float, float]]]:
    """Past readings (on for 20 s, off for 20 s, ...) and the ranges that label them."""
    t0 = time.time() - seconds - 5
    t = t0 + np.arange(int(seconds * HZ)) / HZ
    on = ((t - t0) // 20) % 2 == 1
    readings = [{"t": float(x), "channel": f"c{c}", "value": float(v)}
                for c in range(channels) for x, v in zip(t, signal_at(t, on, c, rng),
                                                         strict=True)]
    ranges = [("on" if k % 2 else "off", t0 + 20 * k + 1, t0 + 20 * k + 19)
              for k in range(int(seconds // 20))]
    return readings, ranges


def teach(url: str, app: str, channels: int, rng: np.random.Generator) -> None:
    readings, ranges = history(channels, 120, rng)
    for i in range(0, len(readings), 20_000):
        assert request(url, "POST", f"/v1/apps/{app}/readings",
                       {"readings": readings[i:i + 20_000]})[0] == 200
    for label, start, end in ranges:
        assert request(url, "POST", f"/v1/apps/{app}/labels",
                       {"label": label, "start": start, "end": end})[0] == 200
    deadline = time.monotonic() + 120
    while not request(url, "GET", f"/v1/apps/{app}")[1]["model_version"]:
        assert time.monotonic() < deadline, "no model"
        time.sleep(0.2)


async def ingest(url: str, n: int) -> float:
    """Readings per second over one WebSocket, 8 batches in flight."""
    now = time.time()
    rng = np.random.default_rng(0)
    batches = []
    for b in range(n // 1000):
        t = now - 300 + (b * 1000 + np.arange(1000)) * 300 / n
        batches.append(orjson.dumps({"type": "readings", "ref": b, "readings": [
            {"t": float(x), "channel": f"c{i % CHANNELS}", "value": float(v)}
            for i, (x, v) in enumerate(zip(t, rng.normal(size=1000), strict=True))]}).decode())
    async with aiohttp.ClientSession() as s, s.ws_connect(
            f"{url.replace('http', 'ws')}/v1/apps/ingest/stream") as ws:
        window = asyncio.Semaphore(8)

        async def acks() -> None:
            for _ in batches:
                msg = orjson.loads((await ws.receive()).data)
                assert msg["type"] == "ack", msg
                window.release()

        reader = asyncio.create_task(acks())
        start = time.perf_counter()
        for body in batches:
            await window.acquire()
            await ws.send_str(body)
        await reader
        return n / (time.perf_counter() - start)


async def latency(url: str, seconds: float) -> dict:
    """Feed the trained app live; time each window's prediction from its last reading."""
    sent: list[float] = []  # reading timestamps, which are their send times
    got: list[float] = []
    rng = np.random.default_rng(1)
    async with aiohttp.ClientSession() as s, \
            s.ws_connect(f"{url.replace('http', 'ws')}/v1/apps/live/stream?watch=true") as watch, \
            s.ws_connect(f"{url.replace('http', 'ws')}/v1/apps/live/stream") as feed:

        async def listen() -> None:
            async for msg in watch:
                body = orjson.loads(msg.data)
                if body.get("type") == "prediction" and body.get("channel") == "stream":
                    got.append(time.time())

        async def drain() -> None:
            async for _ in feed:
                pass

        tasks = [asyncio.create_task(listen()), asyncio.create_task(drain())]
        start = time.time()
        k = 0
        while time.time() - start < seconds:
            t = time.time()
            on = int((t - start) // 10) % 2 == 1
            await feed.send_str(orjson.dumps({"type": "readings", "ref": k, "readings": [
                {"t": t, "channel": f"c{c}", "value": float(signal_at(np.array([t]),
                                                                       np.array([on]), c, rng)[0])}
                for c in range(2)]}).decode())
            sent.append(t)
            k += 1
            await asyncio.sleep(max(0.0, start + k / HZ - time.time()))
        await asyncio.sleep(1.0)
        for task in tasks:
            task.cancel()
    sent_a = np.array(sent)
    lags, beyond = [], []
    for r in got:
        end = math.floor(r / HOP_S) * HOP_S  # the window it closed (its lag is under hop_s)
        before = sent_a[sent_a < end]
        if len(before):
            lags.append(r - before[-1])
            beyond.append(r - end)
    lag = np.array(lags) * 1000
    return {"windows": len(got), "expected": round(seconds / HOP_S),
            "last_reading_to_prediction_ms": {"p50": round(float(np.median(lag)), 1),
                                              "p99": round(float(np.percentile(lag, 99)), 1)},
            "window_end_to_prediction_ms": {
                "p50": round(float(np.median(beyond)) * 1000, 1),
                "p99": round(float(np.percentile(beyond, 99)) * 1000, 1)}}


async def load(url: str, apps: list[str], seconds: float, pid: int) -> dict:
    proc = psutil.Process(pid)
    rng = np.random.default_rng(2)
    async with aiohttp.ClientSession() as s:
        sockets = [await s.ws_connect(f"{url.replace('http', 'ws')}/v1/apps/{a}/stream")
                   for a in apps]
        rss0 = proc.memory_info().rss
        proc.cpu_percent(None)
        start = time.time()
        k = 0
        while time.time() - start < seconds:
            t1 = time.time()
            t = t1 - 1 + np.arange(int(HZ)) / HZ
            for ws in sockets:
                await ws.send_str(orjson.dumps({"type": "readings", "ref": k, "readings": [
                    {"t": float(x), "channel": f"c{c}", "value": float(v)}
                    for c in range(CHANNELS)
                    for x, v in zip(t, signal_at(t, np.zeros(len(t), bool), c, rng),
                                    strict=True)]}).decode())
                await ws.receive()  # its ack
            k += 1
            await asyncio.sleep(max(0.0, start + k - time.time()))
        cpu = proc.cpu_percent(None)
        rss = proc.memory_info().rss
        for ws in sockets:
            await ws.close()
    return {"apps": len(apps), "channels": CHANNELS, "hz": HZ,
            "readings_per_s": len(apps) * CHANNELS * HZ, "main_process_cpu_percent": cpu,
            "rss_mib": round(rss / 2**20, 1), "rss_growth_mib": round((rss - rss0) / 2**20, 1)}


def storage(channel_hours: float) -> dict:
    """Bytes per channel-day: 1-second blocks as written, then after compaction."""
    from mliot_daemon.store import Store

    def size(path: Path) -> int:
        with contextlib.closing(sqlite3.connect(path)) as c:
            c.execute("VACUUM")
        return path.stat().st_size

    async def measure(path: Path) -> tuple[int, int, int]:
        store = Store(path)
        await store.open()
        await store.close()
        baseline = size(path)
        store = Store(path)
        await store.open()
        t0 = time.time() - channel_hours * 3600 - 3600
        rng = np.random.default_rng(3)
        for second in range(int(channel_hours * 3600 / STORED_CHANNELS)):
            t = t0 + second + np.arange(int(HZ)) / HZ
            blocks = [(f"c{c}", t, np.round(230 + rng.normal(0, 2, len(t)), 1))
                      for c in range(STORED_CHANNELS)]
            await store.add_readings("s", blocks, None)
        await store.close()
        written = size(path)
        store = Store(path)
        await store.open()
        await store.compact_readings()
        await store.close()
        return baseline, written, size(path)

    with tempfile.TemporaryDirectory() as tmp:
        baseline, written, compacted = asyncio.run(measure(Path(tmp) / "mliot.db"))
    days = channel_hours / 24
    written, compacted = written - baseline, compacted - baseline
    return {"channel_hours": channel_hours, "readings": int(channel_hours * 3600 * HZ),
            "bytes_per_channel_day_written": round(written / days),
            "bytes_per_channel_day_compacted": round(compacted / days),
            "bytes_per_reading_compacted": round(compacted / (channel_hours * 3600 * HZ), 2),
            "projected_20_channels_14_days_mib": round(compacted / days * 20 * 14 / 2**20)}


def run(quick: bool) -> dict:
    n = 50_000 if quick else 300_000
    rng = np.random.default_rng(0)
    out: dict = {}
    with running_daemon() as (url, proc):
        assert request(url, "PUT", "/v1/apps/ingest", stream_app("ingest", CHANNELS))[0] == 201
        print("streams: ingest", file=sys.stderr, flush=True)
        out["ingest"] = {"readings": n, "batch": 1000, "in_flight": 8,
                         "readings_per_s": round(asyncio.run(ingest(url, n)))}
        assert request(url, "PUT", "/v1/apps/live",
                       stream_app("live", 2, HOP_S, WINDOW_S))[0] == 201
        teach(url, "live", 2, rng)
        print("streams: latency", file=sys.stderr, flush=True)
        out["latency"] = {"hop_s": HOP_S, "window_s": WINDOW_S, "hz": HZ,
                          **asyncio.run(latency(url, 10 if quick else 40))}
        apps = [f"home{i}" for i in range(4)]
        for a in apps:
            assert request(url, "PUT", f"/v1/apps/{a}", stream_app(a, CHANNELS))[0] == 201
            teach(url, a, CHANNELS, rng)
        time.sleep(5)  # the first training runs settle
        print("streams: load", file=sys.stderr, flush=True)
        out["load"] = asyncio.run(load(url, apps, 15 if quick else 60, proc.pid))
    print("streams: storage", file=sys.stderr, flush=True)
    out["storage"] = storage(4 if quick else 24)
    out["targets"] = {"ingest_readings_per_s": 50_000,
                      "last_reading_to_prediction_p50_ms": f"<= hop_s + 50 = {HOP_S * 1000 + 50:g}"}
    out["note"] = "client and daemon share the machine's 2 cores"
    return out
