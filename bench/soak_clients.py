"""The soak benchmark's load, run in processes of its own (``bench/soak.py`` starts them).

Each function here is the body of one load process: honest WebSocket prediction clients, the
hostile clients (slowloris heads, WebSocket clients that never read), or HTTP ingest. The
clients are raw sockets under uvloop (an asyncio ``Protocol`` stamps an answer in the callback
that receives it, with no task switch in between), so many clients share a process and what
they time is the daemon, not a client library. Latencies are kept as histograms on fixed
log-spaced bins, one per drift window: fixed memory however long the run, and histograms of
several processes add up.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import random
import socket
import struct
import time
from collections import Counter
from typing import Any

import numpy as np
import orjson

from bench.lean_client import client_frame

# 10 µs to 10 s in 1200 log-spaced bins: each bin is 1.2 % wide, finer than any figure reported
EDGES = np.logspace(-5, 1, 1201)
ANSWER_TIMEOUT_S = 5.0  # an honest prediction unanswered this long is an error
SLOW_BYTE_EVERY_S = 0.2  # slowloris: one byte of the head this often (a head never completes)
NEVER_READ_RCVBUF = 4096  # never-readers: a small window, so the daemon's side backs up soon
NEVER_READ_EVERY_S = 0.01


def percentile(counts: np.ndarray, q: float) -> float:
    """The q-quantile (0-1, seconds) of a histogram on ``EDGES``, geometric inside the bin."""
    total = counts.sum()
    if total == 0:
        return 0.0
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, q * total))
    below = cum[i - 1] if i else 0
    frac = (q * total - below) / max(counts[i], 1)
    return float(EDGES[i] * (EDGES[i + 1] / EDGES[i]) ** frac)


class Recorder:
    """Answered latencies of one process, per drift window (by the time of the answer)."""

    def __init__(self, t0: float, window_s: float) -> None:
        self.t0, self.window_s = t0, window_s
        self.windows: dict[int, np.ndarray] = {}
        self._current = 0
        self._pending: list[float] = []
        self.max_s = 0.0

    def add(self, now: float, latency: float) -> None:
        w = max(0, int((now - self.t0) // self.window_s))
        if w != self._current or len(self._pending) >= 50_000:
            self.flush()
            self._current = w
        self._pending.append(latency)
        self.max_s = max(self.max_s, latency)

    def flush(self) -> None:
        if self._pending:
            counts = np.histogram(np.clip(self._pending, EDGES[0], EDGES[-1] * 0.999), EDGES)[0]
            self.windows[self._current] = self.windows.get(self._current, 0) + counts
            self._pending = []


def _handshake(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def server_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Pop every complete (unmasked) server frame from ``buf``: [(opcode, payload)]."""
    out = []
    while len(buf) >= 2:
        n, at = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, at = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, at = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < at + n:
            break
        out.append((buf[0] & 0x0F, bytes(buf[at:at + n])))
        del buf[:at + n]
    return out


# -- honest clients --------------------------------------------------------------------------

class _Honest(asyncio.Protocol):
    """One honest WebSocket connection: the answer's time is taken in ``data_received``."""

    def __init__(self, owner: HonestClient) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.buf = bytearray()
        self.upgraded: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        o = self.owner
        transport.write(_handshake(o.host, o.port, o.path))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.upgraded.done():
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, rest = self.head.partition(b"\r\n\r\n")
            self.upgraded.set_result(head.startswith(b"HTTP/1.1 101"))
            data = rest
        self.buf += data
        for opcode, payload in server_frames(self.buf):
            if opcode == 0x1:
                self.owner.answer(payload, now)
            elif opcode == 0x9 and self.transport is not None:  # aiohttp's heartbeat
                self.transport.write(client_frame(payload, 0xA))
            elif opcode == 0x8:
                self.owner.stats["closed_by_daemon"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_result(False)
        if not self.lost.done():
            self.lost.set_result(None)


class HonestClient:
    """Sends one prediction every ``1/rate`` s on a schedule (not waiting for the answer, so a
    slow answer shows as latency rather than as a lower rate), matched by ``ref``."""

    def __init__(self, host: str, port: int, app: str, frames: list[bytes], rate: float,
                 recorder: Recorder, stats: Counter[str]) -> None:
        self.host, self.port, self.path = host, port, f"/v1/apps/{app}/stream"
        self.frames, self.rate, self.recorder, self.stats = frames, rate, recorder, stats
        self.pending: dict[int, float] = {}  # ref -> when it was sent (insertion = send order)

    def answer(self, payload: bytes, now: float) -> None:
        msg = orjson.loads(payload)
        kind, ref = msg.get("type"), msg.get("ref")
        if kind == "prediction" and ref in self.pending:
            # the window by wall-clock time (the run's start is time.time()), the latency by
            # perf_counter
            self.recorder.add(time.time(), now - self.pending.pop(ref))
            self.stats["answered"] += 1
        elif kind == "error":
            self.stats["error_answer"] += 1
            self.pending.pop(ref, None)

    def _expire(self, now: float) -> None:
        while self.pending:
            ref, sent = next(iter(self.pending.items()))
            if now - sent < ANSWER_TIMEOUT_S:
                return
            del self.pending[ref]
            self.stats["timeout"] += 1

    async def run(self, start_at: float, end_at: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, start_at - time.time()) + random.random() / self.rate)
        k = 0
        while time.time() < end_at:
            proto = None
            try:
                _, proto = await asyncio.wait_for(loop.create_connection(
                    lambda: _Honest(self), self.host, self.port), 10)
                ok = await asyncio.wait_for(asyncio.shield(proto.upgraded), 10)
            except (OSError, TimeoutError):
                ok = False
            if not ok:
                if proto is not None and proto.transport is not None:
                    proto.transport.close()  # refused (a 503 at max_connections) or no answer
                self.stats["connect_failed"] += 1
                await asyncio.sleep(1.0)
                continue
            next_at = time.perf_counter()
            while time.time() < end_at and not proto.lost.done():
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._expire(time.perf_counter())
                if proto.lost.done():
                    break
                self.pending[k] = time.perf_counter()
                proto.transport.write(self.frames[k % len(self.frames)])
                self.stats["sent"] += 1
                k = (k + 1) % len(self.frames)
                next_at = max(next_at + 1 / self.rate, time.perf_counter() - 1 / self.rate)
            if proto.lost.done():  # the daemon cut an honest client: every pending is lost
                self.stats["disconnected"] += 1
                self.stats["lost_with_connection"] += len(self.pending)
                self.pending.clear()
                continue
            deadline = time.perf_counter() + ANSWER_TIMEOUT_S  # the end: the last answers
            while self.pending and time.perf_counter() < deadline and not proto.lost.done():
                await asyncio.sleep(0.01)
            self.stats["unanswered_at_end"] += len(self.pending)
            self.pending.clear()
            proto.transport.write(client_frame(struct.pack("!H", 1000), 0x8))
            proto.transport.close()


def honest(port: int, app: str, rows: list[list[float]], clients: int, rate: float,
           start_at: float, duration_s: float, window_s: float) -> dict[str, Any]:
    """A process of ``clients`` honest clients; returns counts and per-window histograms."""
    import uvloop

    frames = [client_frame(orjson.dumps({"type": "predict", "ref": i,
                                         "features": rows[i % len(rows)]}))
              for i in range(1000)]  # refs cycle: a client never has 1000 pending

    async def main() -> dict[str, Any]:
        recorder = Recorder(start_at, window_s)
        stats: Counter[str] = Counter()
        await asyncio.gather(*(HonestClient("127.0.0.1", port, app, frames, rate,
                                            recorder, stats).run(start_at,
                                                                 start_at + duration_s)
                               for _ in range(clients)))
        recorder.flush()
        return {"stats": dict(stats), "max_s": recorder.max_s,
                "windows": {w: c.tolist() for w, c in recorder.windows.items()}}

    return uvloop.run(main())


# -- hostile clients -------------------------------------------------------------------------

async def _slowloris(port: int, end_at: float, stats: Counter[str], held: list[float]) -> None:
    """A head a byte at a time, never complete; when the daemon closes it, start over."""
    head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode() + b"X-Slow: a\r\n" * 400
    while time.time() < end_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["slowloris_connect_failed"] += 1
            await asyncio.sleep(1.0)
            continue
        stats["slowloris_opened"] += 1
        opened = time.monotonic()
        closed = asyncio.ensure_future(reader.read(4096))
        try:
            for i in range(len(head)):
                if closed.done() or time.time() >= end_at:
                    break
                writer.write(head[i:i + 1])
                await asyncio.sleep(SLOW_BYTE_EVERY_S)
            if closed.done():
                answer = closed.result() if not closed.exception() else b""
                stats["slowloris_refused_503" if answer.startswith(b"HTTP/1.1 503")
                      else "slowloris_closed_by_daemon"] += 1
                held.append(time.monotonic() - opened)
        except (OSError, asyncio.IncompleteReadError):
            stats["slowloris_closed_by_daemon"] += 1
            held.append(time.monotonic() - opened)
        finally:
            closed.cancel()
            writer.close()


async def _never_reader(port: int, app: str, rate: float, end_at: float, stats: Counter[str],
                        held: list[float], frames: list[bytes]) -> None:
    """A WebSocket client that sends predictions and never reads an answer; when the daemon
    cuts it, it connects again."""
    loop = asyncio.get_running_loop()
    while time.time() < end_at:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NEVER_READ_RCVBUF)  # before connect
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, _handshake("127.0.0.1", port, f"/v1/apps/{app}/stream"))
            head = b""
            while b"\r\n\r\n" not in head:  # the upgrade is read; nothing after it ever is
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
                if not chunk:
                    raise ConnectionError
                head += chunk
        except (OSError, TimeoutError):
            stats["never_reader_connect_failed"] += 1
            sock.close()
            await asyncio.sleep(1.0)
            continue
        stats["never_reader_opened"] += 1
        opened, k = time.monotonic(), 0
        burst = max(1, round(rate * NEVER_READ_EVERY_S))  # timers are too coarse for 1/rate
        try:
            while time.time() < end_at:
                chunk = b"".join(frames[(k + i) % len(frames)] for i in range(burst))
                await asyncio.wait_for(loop.sock_sendall(sock, chunk), 30)
                k += burst
                await asyncio.sleep(NEVER_READ_EVERY_S)
        except (OSError, TimeoutError):
            stats["never_reader_cut"] += 1  # reset by the daemon (or its send side stuck)
            held.append(time.monotonic() - opened)
        finally:
            stats["never_reader_sent"] += k
            sock.close()


def hostile(port: int, app: str, row: list[float], slowloris: int, never_readers: int,
            never_rate: float, start_at: float, duration_s: float) -> dict[str, Any]:
    import uvloop

    # with probabilities: longer answers fill the daemon's side sooner (the kernel's send
    # buffer, up to 4 MiB, then the stream's 1,024-message queue) so the cut comes in the run
    frames = [client_frame(orjson.dumps({"type": "predict", "ref": i, "features": row,
                                         "probabilities": True})) for i in range(100)]

    async def main() -> dict[str, Any]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        end_at = start_at + duration_s
        stats: Counter[str] = Counter()
        slow_held: list[float] = []
        never_held: list[float] = []
        await asyncio.gather(
            *(_slowloris(port, end_at, stats, slow_held) for _ in range(slowloris)),
            *(_never_reader(port, app, never_rate, end_at, stats, never_held, frames)
              for _ in range(never_readers)))
        return {"stats": dict(stats),
                "slowloris_held_s": _summary(slow_held), "never_reader_held_s":
                _summary(never_held)}

    return uvloop.run(main())


def _summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"n": 0}
    a = np.asarray(seconds)
    return {"n": len(a), "p50": round(float(np.median(a)), 2), "max": round(float(a.max()), 2)}


# -- ingest ----------------------------------------------------------------------------------

def ingest(port: int, app: str, rows: list[list[float]], labels: list[str], batch: int,
           rate: float, start_at: float, duration_s: float) -> dict[str, Any]:
    """POST labelled batches at ``rate`` per second on one keep-alive connection. Batch ids
    repeat after one pass over the rows: the daemon stores them once, so a long run keeps
    the ingest path busy without growing the data (and the models) without end."""
    starts = range(0, len(rows), batch)
    batches = [orjson.dumps({"batch_id": f"soak-{i}", "samples": [
        {"features": rows[j], "label": labels[j]} for j in range(i, min(i + batch, len(rows)))]})
        for i in starts]
    time.sleep(max(0.0, start_at - time.time()))
    end_at, next_at = start_at + duration_s, time.monotonic()
    codes: Counter[str] = Counter()
    times: list[float] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    k = 0
    while time.time() < end_at:
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        next_at += 1 / rate
        started = time.perf_counter()
        try:
            conn.request("POST", f"/v1/apps/{app}/samples", batches[k % len(batches)],
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            codes[str(response.status)] += 1
        except (OSError, http.client.HTTPException) as exc:
            codes[type(exc).__name__] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        times.append(time.perf_counter() - started)
        k += 1
    conn.close()
    ms = np.asarray(times or [0.0]) * 1000
    return {"posts": k, "rows_new": min(k * batch, len(rows)), "codes": dict(codes),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}
