"""Ingest: labelled samples per second over HTTP, and event-loop lag while they stream in.

100,000 samples of 64 floats in batches of 500 are posted by 4 concurrent keep-alive clients
to a real daemon subprocess; every batch is acknowledged only after its commit (FULL sync).
The loop lag p99 is computed from the daemon's own lag histogram, scraped before and after.
Every sample has the same label, so no training run starts and this measures ingestion alone;
the lag while training is measured by `bench serving` and `bench scale`.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import aiohttp
import numpy as np
import orjson

from bench.common import request
from bench.daemon_proc import histogram, quantile_between, running_daemon

DIM, BATCH, CLIENTS = 64, 500, 4


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics") as r:
        return r.read().decode()


async def post_all(url: str, bodies: list[bytes]) -> list[float]:
    latencies: list[float] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            start = time.perf_counter()
            async with session.post(f"{url}/v1/apps/bench/samples", data=body,
                                    headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            latencies.append(time.perf_counter() - start)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
    return latencies


def run(quick: bool) -> dict:
    n = 20_000 if quick else 100_000
    rng = np.random.default_rng(0)
    bodies = [orjson.dumps({"batch_id": f"b{i}", "samples": [
        {"features": row.tolist(), "label": "x"}
        for row in rng.normal(size=(BATCH, DIM)).astype(np.float32)]})
        for i in range(n // BATCH)]
    with running_daemon() as (url, _):
        assert request(url, "PUT", "/v1/apps/bench", {"data_type": "vector",
                                                      "shape": [64]})[0] == 201
        before = histogram(scrape(url), "mliot_loop_lag_seconds")
        start = time.perf_counter()
        latencies = asyncio.run(post_all(url, bodies))
        elapsed = time.perf_counter() - start
        time.sleep(0.2)  # let the ticker record the last stretch
        after = histogram(scrape(url), "mliot_loop_lag_seconds")
    lat = np.array(latencies) * 1000
    return {
        "samples": n, "batch": BATCH, "features": DIM, "clients": CLIENTS,
        "samples_per_s": round(n / elapsed),
        "batch_latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2),
                             "p99": round(float(np.percentile(lat, 99)), 2)},
        "loop_lag_ms": {"p50": round(quantile_between(before, after, 0.5) * 1000, 3),
                        "p99": round(quantile_between(before, after, 0.99) * 1000, 3)},
        "targets": {"samples_per_s": 20_000, "loop_lag_p99_ms": 10},
        "note": "client and daemon share the machine's 2 cores; one label, so no training",
    }
