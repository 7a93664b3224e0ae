"""MQTT: prediction round trips and sustained labelled ingest through a real mosquitto.

1. A private mosquitto (persistence off) on a free loopback port and a real `mliot run` with an
   `[mqtt]` section; a digits app is trained over HTTP until it serves.
2. Round trip: an aiomqtt client (TCP_NODELAY, like the bridge) publishes one unlabelled
   request with a `ref` on `{prefix}/digits/samples` (QoS 1) and waits for the prediction with
   that `ref` on `{prefix}/digits/predictions`; one at a time, p50/p99.
3. Sustained labelled samples/s: single-sample messages (the device case) and 100-sample
   batches, published QoS 1 as fast as the broker takes them; the clock stops when
   `GET /v1/apps/digits` counts them all (committed to SQLite). The daemon's own histogram of
   receipt-to-PUBACK (`mliot_mqtt_ack_seconds`) gives the window in which a crash means a
   redelivery.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from bench.common import request
from bench.daemon_proc import free_port, histogram, quantile_between, running_daemon
from bench.datasets import digits

NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        return r.read().decode()


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = folder / "mosquitto.conf"
    # mosquitto leaves Nagle's algorithm on by default, like paho: ~40 ms per round trip.
    # The per-client queue (default 1000) is what the broker keeps for a slow subscriber;
    # beyond it mosquitto drops even QoS 1 messages, so a flood needs room.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                    "max_queued_messages 100000\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def _ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3), "n": len(seconds)}


async def round_trips(port: int, prefix: str, rows: np.ndarray, n: int) -> list[float]:
    async with aiomqtt.Client("127.0.0.1", port, socket_options=NODELAY,
                              identifier=f"bench-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(f"{prefix}/digits/predictions", qos=1)
        messages = client.messages
        out: list[float] = []
        for i in range(n + 20):  # the first 20 warm up
            ref = f"r{i}"
            start = time.perf_counter()
            await client.publish(f"{prefix}/digits/samples", json.dumps(
                {"features": rows[i % len(rows)].tolist(), "ref": ref}), qos=1)
            async for message in messages:
                if json.loads(message.payload).get("ref") == ref:
                    break
            if i >= 20:
                out.append(time.perf_counter() - start)
        return out


async def paced(port: int, prefix: str, X: np.ndarray, y: np.ndarray, n: int) -> None:
    """Labelled single samples, one at a time with a pause: the unloaded ack window."""
    async with aiomqtt.Client("127.0.0.1", port, socket_options=NODELAY) as client:
        for i in range(n):
            await client.publish(f"{prefix}/digits/samples", json.dumps(
                {"features": X[i % len(X)].tolist(), "label": str(y[i % len(y)])}), qos=1)
            await asyncio.sleep(0.005)


async def ingest(url: str, port: int, prefix: str, X: np.ndarray, y: np.ndarray,
                 n: int, batch: int) -> float:
    """Labelled samples/s, publish to commit (raises if they are not all committed in time)."""
    _, before = request(url, "GET", "/v1/apps/digits")
    target = before["n_samples"] + n
    rows = [{"features": X[i % len(X)].tolist(), "label": str(y[i % len(y)])} for i in range(n)]
    payloads = [json.dumps(rows[0 + k] if batch == 1 else {"samples": rows[k:k + batch]})
                for k in range(0, n, batch)]
    async with aiomqtt.Client("127.0.0.1", port, socket_options=NODELAY,
                              max_inflight_messages=100) as client:
        client.pending_calls_threshold = 10_000
        start = time.perf_counter()
        sem = asyncio.Semaphore(100)

        async def one(p: str) -> None:
            async with sem:
                await client.publish(f"{prefix}/digits/samples", p, qos=1, timeout=120)

        async with asyncio.TaskGroup() as tg:
            for p in payloads:
                tg.create_task(one(p))
        deadline = time.monotonic() + 300
        while True:
            _, now = await asyncio.to_thread(request, url, "GET", "/v1/apps/digits")
            if now["n_samples"] >= target:
                return n / (time.perf_counter() - start)
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {now['n_samples'] - target + n} of {n} samples "
                                   "committed within 300 s")
            await asyncio.sleep(0.02)


def run(quick: bool) -> dict[str, Any]:
    X_train, X_test, y_train, _ = digits()
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="mliot-bench-mqtt-") as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            extra = (f'[training]\nworkers = 1\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
                     f'prefix = "{prefix}"\n')
            with running_daemon(extra) as (url, _proc):
                assert request(url, "PUT", "/v1/apps/digits",
                               {"data_type": "vector", "shape": [64]})[0] == 201
                body = {"samples": [{"features": x.tolist(), "label": str(t)}
                                    for x, t in zip(X_train, y_train, strict=True)]}
                assert request(url, "POST", "/v1/apps/digits/samples", body)[0] == 200
                deadline = time.monotonic() + 120
                while request(url, "POST", "/v1/apps/digits/predict",
                              {"instances": [X_test[0].tolist()]})[0] != 200:
                    if time.monotonic() > deadline:
                        raise RuntimeError("no model within 120 s")
                    time.sleep(0.1)
                time.sleep(2.0)  # let the lazy versions settle a little
                n = 200 if quick else 2000
                rtt = asyncio.run(round_trips(port, prefix, X_test, n))
                before = histogram(scrape(url), "mliot_mqtt_ack_seconds")
                asyncio.run(paced(port, prefix, X_train, y_train, 200))
                time.sleep(0.5)
                after = histogram(scrape(url), "mliot_mqtt_ack_seconds")
                unloaded = {"p50": round(quantile_between(before, after, 0.5) * 1000, 3),
                            "p99": round(quantile_between(before, after, 0.99) * 1000, 3)}
                before = after
                m = 1000 if quick else 10_000
                single = asyncio.run(ingest(url, port, prefix, X_train, y_train, m, 1))
                after = histogram(scrape(url), "mliot_mqtt_ack_seconds")
                batched = asyncio.run(ingest(url, port, prefix, X_train, y_train, m * 5, 100))
                return {
                    "prediction_round_trip_ms": _ms(rtt),
                    "labelled_samples_per_s": {"single_messages": round(single, 1),
                                               "batches_of_100": round(batched, 1)},
                    "ack_window_ms_unloaded": unloaded,
                    "ack_window_ms_flood_single_messages": {
                        "p50": round(quantile_between(before, after, 0.5) * 1000, 3),
                        "p99": round(quantile_between(before, after, 0.99) * 1000, 3)},
                    "qos": 1,
                    "note": "round trip: publish QoS 1 -> bridge -> server -> prediction "
                            "published QoS 1 -> client; ingest: publish to SQLite commit",
                }
        finally:
            broker.kill()
            broker.wait(10)
