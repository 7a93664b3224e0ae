"""Part 1 of `bench faults`: `kill -9` at random moments, and what the acknowledgements were
worth.

A client process (``client_main``) sends items with unique content on four channels at once,
one in flight each, and keeps a ledger of what was acknowledged:

- ``http``: a labelled sample per ``POST /samples``, with a ``batch_id``; an unanswered one is
  sent again with the same ``batch_id`` until it gets an answer (the documented retry).
- ``ws``: a labelled sample per WebSocket message, acknowledged by ``ack``. WebSocket samples
  carry no ``batch_id``, so one cut off is not sent again (a retry could store it twice, and
  that would be the client's doing).
- ``feedback``: a prediction, then a correction of it, retried until answered (feedback is
  idempotent by ``prediction_id``). A 404 after a restart means the prediction record had not
  reached the disk (they are written within 50 ms, never awaited): not an acknowledged item.
- ``readings``: four readings of a stream app per ``POST /readings``, with a ``batch_id``,
  retried like samples.

The daemon meanwhile retrains the vector app whenever its samples grow by 20 %, so kills also
land in training runs and version publishes (``training`` at the kill, from ``/v1/status``).
The first feature of every sample (the value of every reading) is a unique number, which the
count reads back from the SQLite file after a last clean start and stop: acknowledged and not
stored is lost, stored twice is duplicated.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import request
from bench.faults_env import Daemon, until

BASE = {"http": 1_000_000, "ws": 2_000_000, "feedback": 3_000_000}  # first feature: unique
VECTOR = {"data_type": "vector", "shape": [3], "classes": ["a", "b"]}
STREAM = {"data_type": "sensor", "window_s": 2.0, "hop_s": 1.0, "channels": [{"name": "x"}]}
TOML = "[training]\nworkers = 1\ngrowth_factor = 1.2\n"
PER_READINGS = 4


def row(marker: float, n: int) -> tuple[list[float], str]:
    c = n % 2
    return [float(marker), 5.0 * c + (n % 7) * 0.1, 1.0 - c], "ab"[c]


# -- the client process ---------------------------------------------------------------------


class Ledger:
    def __init__(self) -> None:
        self.acked: dict[str, list[int]] = {k: [] for k in (*BASE, "readings")}
        self.sent: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()  # definite refusals (4xx): nothing stored
        self.predictions_unrecorded = 0
        self.refusals: Counter[str] = Counter()  # what the refusals said

    def refuse(self, kind: str, status: Any, body: Any) -> None:
        self.rejected[kind] += 1
        error = body.get("error") if isinstance(body, dict) else body
        self.refusals[f"{kind} {status}: {str(error)[:80]}"] += 1


async def _answer(session: Any, url: str, body: dict[str, Any], stop: Any
                  ) -> tuple[int, Any] | None:
    """POST until the daemon answers other than 5xx (or the run ends: None)."""
    while not stop.is_set():
        try:
            async with session.post(url, json=body) as r:
                if r.status < 500:
                    return r.status, await r.json(content_type=None)
        except (OSError, asyncio.TimeoutError, Exception):  # refused, reset, half a body
            pass
        await asyncio.sleep(0.05)
    return None


async def _http(session: Any, url: str, led: Ledger, stop: Any) -> None:
    n = 0
    while not stop.is_set():
        x, label = row(BASE["http"] + n, n)
        led.sent["http"] += 1
        got = await _answer(session, f"{url}/v1/apps/v/samples",
                            {"batch_id": f"h{n}", "samples": [{"features": x, "label": label}]},
                            stop)
        if got is not None:
            if got[0] == 200:
                led.acked["http"].append(n)
            else:
                led.refuse("http", *got)
        n += 1
        await asyncio.sleep(0.005)


async def _ws(session: Any, url: str, led: Ledger, stop: Any) -> None:
    n = 0
    while not stop.is_set():
        try:
            async with session.ws_connect(f"{url}/v1/apps/v/stream", heartbeat=None) as ws:
                while not stop.is_set():
                    x, label = row(BASE["ws"] + n, n)
                    led.sent["ws"] += 1
                    await ws.send_json({"type": "sample", "features": x, "label": label,
                                        "ref": str(n)})
                    while True:
                        msg = await ws.receive_json(timeout=30)
                        if msg.get("ref") == str(n):
                            break
                    if msg.get("type") == "ack":
                        led.acked["ws"].append(n)
                    else:
                        led.refuse("ws", msg.get("type"), msg.get("message"))
                    n += 1
                    await asyncio.sleep(0.005)
        except Exception:  # the daemon died: this item is unknown, never sent again
            n += 1
            await asyncio.sleep(0.05)


async def _feedback(session: Any, url: str, led: Ledger, stop: Any) -> None:
    n = 0
    while not stop.is_set():
        x, label = row(BASE["feedback"] + n, n)
        n += 1
        got = await _answer(session, f"{url}/v1/apps/v/predict", {"instances": [x]}, stop)
        if got is None or got[0] != 200:
            await asyncio.sleep(0.05)
            continue
        pid = got[1]["predictions"][0]["id"]
        wrong = "b" if got[1]["predictions"][0]["label"] == "a" else "a"
        led.sent["feedback"] += 1
        answer = await _answer(session, f"{url}/v1/apps/v/feedback",
                               {"prediction_id": pid, "label": wrong}, stop)
        if answer is None:
            continue
        if answer[0] == 200:
            led.acked["feedback"].append(n - 1)
        elif answer[0] == 404:
            led.predictions_unrecorded += 1
        else:
            led.refuse("feedback", *answer)
        await asyncio.sleep(0.005)


async def _readings(session: Any, url: str, led: Ledger, stop: Any) -> None:
    n = 0
    while not stop.is_set():
        now = time.time()
        body = {"batch_id": f"r{n}", "readings": [
            {"t": now + k * 0.001, "channel": "x", "value": n * PER_READINGS + k}
            for k in range(PER_READINGS)]}
        led.sent["readings"] += 1
        got = await _answer(session, f"{url}/v1/apps/s/readings", body, stop)
        if got is not None:
            if got[0] == 200:
                led.acked["readings"].append(n)
            else:
                led.refuse("readings", *got)
        n += 1
        await asyncio.sleep(0.005)


async def _client(url: str, stop: Any) -> Ledger:
    import aiohttp

    led = Ledger()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(f(session, url, led, stop)
                               for f in (_http, _ws, _feedback, _readings)))
    return led


def client_main(url: str, stop: Any, out: Any) -> None:
    """The client process: run until ``stop`` is set, then put the ledger on ``out``."""
    led = asyncio.run(_client(url, stop))
    out.put({"acked": led.acked, "sent": dict(led.sent), "rejected": dict(led.rejected),
             "refusals": dict(led.refusals),
             "predictions_unrecorded": led.predictions_unrecorded})


# -- reading back -----------------------------------------------------------------------------


def stored(db: Path) -> dict[str, Counter[int]]:
    """Every unique number the store holds, per channel, with how often it is there."""
    out: dict[str, Counter[int]] = {k: Counter() for k in (*BASE, "readings")}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        for blob, source in conn.execute("SELECT features, source FROM samples WHERE app='v'"):
            marker = int(np.frombuffer(blob, np.float32, 1)[0])
            kind = {"http": "http", "ws": "ws", "feedback": "feedback"}.get(source)
            if kind and marker >= BASE[kind] and marker < BASE[kind] + 1_000_000:
                out[kind][marker - BASE[kind]] += 1
        n_feedback = conn.execute("SELECT count(*) FROM feedback WHERE app='v'").fetchone()[0]
        from mliot_daemon.store.readings import decode_block

        for t0, n, data in conn.execute("SELECT t0, n, data FROM readings WHERE app='s'"):
            for v in decode_block(t0, n, data)[1]:
                out["readings"][int(v)] += 1
    assert n_feedback == sum(out["feedback"].values()), "a correction without its sample"
    return out


def integrity(db: Path) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def count(ledger: dict[str, Any], held: dict[str, Counter[int]]) -> dict[str, Any]:
    """acknowledged / stored / lost / duplicated per channel."""
    out = {}
    for kind, acked in ledger["acked"].items():
        have = held[kind]
        if kind == "readings":  # a batch is stored when all of its readings are, once each
            per = Counter(v // PER_READINGS for v in have.elements())
            whole = {b for b, c in per.items() if c >= PER_READINGS}
            dup = sum(1 for v, c in have.items() if c > 1)
            lost = sorted(set(acked) - whole)
            stored_n = len(whole)
        else:
            dup = sum(1 for c in have.values() if c > 1)
            lost = sorted(set(acked) - set(have))
            stored_n = len(have)
        out[kind] = {"sent": ledger["sent"].get(kind, 0), "acknowledged": len(acked),
                     "stored": stored_n, "lost": len(lost), "duplicated": dup,
                     "stored_not_acknowledged": stored_n - (len(acked) - len(lost)),
                     "rejected": ledger["rejected"].get(kind, 0), "lost_ids": lost[:20]}
    return out


# -- the cycles -------------------------------------------------------------------------------


def first_served(d: Daemon, started: float, timeout: float = 90.0) -> float:
    """Seconds from ``started`` (the process start) to the first answered prediction."""
    x, _ = row(0.5, 0)

    def served() -> bool:
        if not d.alive():
            raise RuntimeError(f"daemon exited: {d.tail()}")
        return request(d.url, "POST", "/v1/apps/v/predict", {"instances": [x]},
                       timeout=2)[0] == 200
    until(served, timeout, every=0.01, what="first served prediction")
    return time.monotonic() - started


def seed(d: Daemon) -> None:
    """The two apps, and a first model for the vector app (feedback needs predictions)."""
    assert d.request("PUT", "/v1/apps/v", VECTOR)[0] == 201
    assert d.request("PUT", "/v1/apps/s", STREAM)[0] == 201
    samples = [dict(zip(("features", "label"), row(0.01 * n, n), strict=True))
               for n in range(60)]
    assert d.request("POST", "/v1/apps/v/samples", {"samples": samples})[0] == 200
    until(lambda: d.request("GET", "/v1/apps/v")[1].get("model_version") is not None, 300,
          0.25, "first model")


def kill_cycles(workdir: Path, cycles: int, seed_: int = 0, max_up_s: float = 3.0,
                start_every: int = 5) -> dict[str, Any]:
    """``cycles`` × (start, serve, SIGKILL at a random moment) under a running client, then
    the counts. Every ``start_every``-th kill lands at a random moment of the start itself."""
    rng = random.Random(seed_)
    d = Daemon(workdir, TOML)
    d.start()
    seed(d)
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    client = ctx.Process(target=client_main, args=(d.url, stop, out), daemon=True)
    client.start()
    log: list[dict[str, Any]] = []
    try:
        time.sleep(1.0)  # the client under way before the first kill
        d.kill9()
        for i in range(cycles):
            started = time.monotonic()
            d.start(wait=False)
            entry: dict[str, Any] = {"cycle": i}
            if i % start_every == start_every - 1:  # in the start: store opening, models loading
                time.sleep(rng.uniform(0.05, 1.0))
                entry["during_start"] = True
            else:
                entry["first_served_s"] = round(first_served(d, started), 3)
                time.sleep(rng.uniform(0.2, max_up_s))
                try:
                    status = request(d.url, "GET", "/v1/status", timeout=5)[1] or {}
                except OSError:  # busy beyond 5 s: the kill goes ahead, unlabelled
                    status = {}
                app = status.get("apps", {}).get("v", {})
                entry["training"] = bool(app.get("training", {}).get("training"))
                entry["model_version"] = app.get("model_version")
            d.kill9()
            log.append(entry)
        # A last start: it must serve, and the client's retries get their answers.
        started = time.monotonic()
        d.start(wait=False)
        final_first = first_served(d, started)
        time.sleep(1.0)
    finally:
        stop.set()
        try:  # before join: a child that put a big ledger exits only once it is read
            ledger = out.get(timeout=120)
        except Exception:
            ledger = None
        client.join(30)
        if client.is_alive():
            client.kill()
        d.stop()
        d.reap()
    if ledger is None:
        raise RuntimeError(f"the client process failed (exit {client.exitcode})")
    db = d.data_dir / "mliot.db"
    counts = count(ledger, stored(db))
    firsts = [e["first_served_s"] for e in log if "first_served_s" in e]
    return {"cycles": cycles, "kills": cycles + 1, "log": log, "counts": counts,
            "acknowledged": sum(c["acknowledged"] for c in counts.values()),
            "lost": sum(c["lost"] for c in counts.values()),
            "duplicated": sum(c["duplicated"] for c in counts.values()),
            "predictions_unrecorded": ledger["predictions_unrecorded"],
            "refusals": ledger["refusals"],
            "kills_in_training": sum(1 for e in log if e.get("training")),
            "kills_during_start": sum(1 for e in log if e.get("during_start")),
            "versions_seen": sorted({e["model_version"] for e in log
                                     if e.get("model_version") is not None}),
            "late_after_kill": d.late, "orphans_after_kill": d.orphans,
            "integrity_check": integrity(db),
            "first_served_s": firsts, "final_first_served_s": round(final_first, 3),
            "first_served_p50_s": round(float(np.median(firsts)), 3) if firsts else None,
            "first_served_max_s": round(max(firsts), 3) if firsts else None}
