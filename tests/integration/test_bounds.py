"""Resource bounds (issue 20): what a hostile or broken client cannot push past, against a
real daemon over raw sockets; the others it shares the daemon with are answered throughout."""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import orjson
import psutil
import pytest
from support import DaemonProcess, wait_for, ws_frame, ws_open, ws_read

PREDICT = b'{"type": "predict", "ref": "x", "features": [1, 0, 0]}'


def _bounded(daemon_factory: Any, extra: str) -> DaemonProcess:
    d = daemon_factory()
    d.write_config('[[apps]]\nname = "v"\ndata_type = "vector"\nshape = [3]\n'
                   'classes = ["a", "b"]\n', daemon_extra=extra)
    return d.start()


def _metric(d: DaemonProcess, name: str) -> float:
    text = d.request("GET", "/metrics")[1]
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _closed_after(sock: socket.socket, trickle: bytes = b"", every: float = 0.2,
                  limit: float = 20.0) -> float:
    """Seconds until the daemon closes ``sock``, sending ``trickle`` a byte at a time."""
    start = time.monotonic()
    sock.settimeout(every)
    i = 0
    while time.monotonic() - start < limit:
        try:
            if i < len(trickle):
                sock.sendall(trickle[i:i + 1])
                i += 1
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionError:
            return time.monotonic() - start
    raise AssertionError(f"still open after {limit} s")


def _close_code(sock: socket.socket) -> int:
    """The code of the daemon's close frame (other frames before it are skipped)."""
    sock.settimeout(15)
    while True:
        opcode, payload = ws_read(sock)
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0]


def _answered(sock: socket.socket) -> bool:
    sock.sendall(ws_frame(PREDICT))
    sock.settimeout(15)
    while b'"ref":"x"' not in ws_read(sock)[1]:
        pass
    return True


def test_a_slowloris_connection_is_closed_after_the_header_timeout(daemon_factory: Any
                                                                   ) -> None:
    d = _bounded(daemon_factory, "header_timeout_s = 1.0\nidle_timeout_s = 2.0")
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: a\r\n" * 200
    with socket.create_connection(("127.0.0.1", d.port)) as slow, \
            socket.create_connection(("127.0.0.1", d.port)) as silent:
        assert 0.8 < _closed_after(slow, head) < 5.0  # a byte every 0.2 s: never completes
        assert _closed_after(silent) < 5.0  # connected, never sent a byte
    assert d.request("GET", "/healthz")[0] == 200  # the others are answered
    assert _metric(d, 'mliot_http_timeouts_total{phase="header"}') >= 2
    # a kept-alive connection is closed once idle for idle_timeout_s, not before a request
    with socket.create_connection(("127.0.0.1", d.port)) as kept:
        kept.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\n\r\n".encode())
        kept.settimeout(5)
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        assert 1.5 < _closed_after(kept) < 6.0


def test_a_body_that_does_not_arrive_in_time_gets_408(daemon_factory: Any) -> None:
    d = _bounded(daemon_factory, 'body_timeout_s = 1.0\npeer_secret = "ps"')
    # a sample batch, and a peer's model upload (signed headers; the archive stalls)
    for head in ("POST /v1/apps/v/samples HTTP/1.1\r\nContent-Type: application/json\r\n",
                 "PUT /v1/peer/models/nuc/v/3 HTTP/1.1\r\nAuthorization: Bearer ps\r\n"
                 "X-Mliot-Signature: hmac-sha256=00\r\nX-Mliot-Model: l:m\r\n"):
        with socket.create_connection(("127.0.0.1", d.port)) as sock:
            sock.sendall(f"{head}Host: 127.0.0.1:{d.port}\r\nContent-Length: 1000\r\n\r\n"
                         '{"samples": ['.encode())
            sock.settimeout(10)
            started = time.monotonic()
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"body_timeout_s" in answer and 0.8 < time.monotonic() - started < 5.0
    assert d.request("GET", "/v1/apps/v")[1]["n_samples"] == 0  # nothing was stored


def test_connections_past_the_cap_get_503_and_a_metric(daemon_factory: Any) -> None:
    d = _bounded(daemon_factory, "max_connections = 4")
    wait_for(lambda: _metric(d, "mliot_http_connections") == 1)  # only this request
    time.sleep(0.3)  # and it has gone
    held = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(4)]
    try:
        with socket.create_connection(("127.0.0.1", d.port)) as refused:
            refused.settimeout(10)
            answer = refused.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"max_connections" in answer and refused.recv(4096) == b""
    finally:
        for sock in held:
            sock.close()

    def answered() -> bool:
        try:
            return d.request("GET", "/healthz")[0] == 200
        except OSError:
            return False
    wait_for(answered, 5)
    assert _metric(d, "mliot_connections_refused_total") >= 1


def test_an_oversized_websocket_frame_closes_that_socket_with_1009(daemon_factory: Any
                                                                  ) -> None:
    d = _bounded(daemon_factory, "max_body_mb = 1.0")
    with ws_open(d.port) as big, ws_open(d.port) as other:
        big.sendall(ws_frame(b"x" * 1000, length=2 * 2**20)[:1000])  # says 2 MiB: refused
        assert _close_code(big) == 1009
        assert _answered(other)
    assert d.request("GET", "/healthz")[0] == 200


def test_a_frame_that_does_not_arrive_in_time_closes_that_socket_with_1008(daemon_factory: Any
                                                                           ) -> None:
    d = _bounded(daemon_factory, "body_timeout_s = 1.0")
    with ws_open(d.port) as slow, ws_open(d.port) as other:
        frame = ws_frame(PREDICT)
        started = time.monotonic()
        slow.sendall(frame[:-5])  # all but the last bytes: the frame never completes
        for _ in range(6):  # the other client keeps talking for longer than the deadline
            assert _answered(other)
            time.sleep(0.3)
        assert _close_code(slow) == 1008 and 0.8 < time.monotonic() - started < 5.0
        assert _answered(other)
    assert _metric(d, 'mliot_http_timeouts_total{phase="frame"}') == 1


def test_an_unmasked_frame_closes_the_connection(daemon_factory: Any) -> None:
    d = _bounded(daemon_factory, "")
    with ws_open(d.port) as bad, ws_open(d.port) as other:
        assert _answered(bad)  # masked frames are fine
        bad.sendall(ws_frame(PREDICT, mask=False))
        assert _close_code(bad) == 1002
        bad.settimeout(5)
        with pytest.raises(ConnectionError):
            while True:
                ws_read(bad)
        assert _answered(other)
    assert d.events("ws_unmasked_frame")


# A separate process measures: a client sharing the test's loop (or GIL) would see its own
# stalls, not the daemon's.
MEASURE = """
import http.client, json, sys, time
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
body = json.dumps({"instances": [[1.0, 0.0, 0.0]]})
times, end = [], time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    t = time.perf_counter()
    conn.request("POST", "/v1/apps/v/predict", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def test_big_frames_do_not_stall_other_clients(daemon_factory: Any) -> None:
    """While one client sends 7 MB frames, another's predictions stay quick: big frames are
    decoded off the loop (on it they took ~0.15 s each, and the other's p99 grew past 150 ms;
    ~8 ms now)."""
    d = _bounded(daemon_factory, "")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)).round(3)
    d.teach("v", X, ["a" if x[0] > 0 else "b" for x in X])
    wait_for(lambda: d.request("POST", "/v1/apps/v/predict", {"instances": [[1, 0, 0]]}
                               )[0] == 200, 60)
    big = ws_frame(orjson.dumps({"type": "predict", "ref": "big",
                                 "features": [0.123456] * 800_000}))  # 7.2 MB, under 16 MiB
    with ws_open(d.port) as sender:
        measure = subprocess.Popen([sys.executable, "-c", MEASURE, str(d.port), "6"],
                                   stdout=subprocess.PIPE)
        sent, end = 0, time.monotonic() + 6
        sender.settimeout(30)
        while time.monotonic() < end:
            sender.sendall(big)
            while b'"ref":"big"' not in ws_read(sender)[1]:  # answered (a shape error)
                pass
            sent += 1
        out, _ = measure.communicate(timeout=60)
    times = np.array(json.loads(out))
    p99 = float(np.percentile(times, 99))
    assert sent >= 5 and len(times) >= 100, (sent, len(times))
    # the product's promise, with a margin for a shared machine: not a speed measurement
    ms = {q: round(float(np.percentile(times, q)) * 1000, 1) for q in (50, 90, 99, 100)}
    assert p99 < 0.1, f"predict latency (ms) {ms} while {sent} 7 MB frames were sent"
    # the decoding process (and the forkserver) end with the daemon, even after a kill -9
    assert d.proc is not None
    children = psutil.Process(d.proc.pid).children(recursive=True)
    assert any(c.nice() == 0 and "forkserver" in " ".join(c.cmdline()) for c in children
               if c.ppid() != d.proc.pid)  # the decoder: not niced, forked by the forkserver
    d.signal(signal.SIGKILL)
    d.wait(30)
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


def test_writes_past_the_rate_are_refused_and_not_stored(daemon_factory: Any) -> None:
    """``max_writes_per_s``: a write past it gets 429 (Retry-After) or, on a stream, an error
    with ``retry_after``; nothing of it is stored, and what was acknowledged is all there."""
    d = _bounded(daemon_factory, "max_writes_per_s = 2.0")
    sample = {"samples": [{"features": [1, 0, 0], "label": "a"}]}
    codes = [d.request("POST", "/v1/apps/v/samples", sample)[0] for _ in range(6)]
    assert codes[:2] == [200, 200] and 429 in codes and set(codes) <= {200, 429}, codes
    request = urllib.request.Request(f"{d.url}/v1/apps/v/samples", json.dumps(sample).encode(),
                                     {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()  # it holds the connection's socket
    assert refused.value.code == 429 and int(refused.value.headers["Retry-After"]) >= 1
    assert d.request("POST", "/v1/apps/v/predict", {"instances": [[1, 0, 0]]})[0] == 503
    assert d.request("POST", "/v1/apps/v/predict", {"instances": [[1, 0, 0]]})[0] == 503
    acked = codes.count(200)
    time.sleep(1.0)  # the bucket refills
    with ws_open(d.port) as ws:
        for i in range(4):
            ws.sendall(ws_frame(orjson.dumps({"type": "sample", "ref": i,
                                              "features": [1, 0, 0], "label": "a"})))
        replies: dict[int, dict[str, Any]] = {}
        ws.settimeout(15)
        while len(replies) < 4:
            reply = json.loads(ws_read(ws)[1])
            if reply.get("ref") in range(4):
                replies[reply["ref"]] = reply
    kinds = [replies[i]["type"] for i in range(4)]
    assert kinds[0] == "ack" and "error" in kinds, replies
    assert all(r["retry_after"] > 0 for r in replies.values() if r["type"] == "error")
    acked += kinds.count("ack")
    assert d.request("GET", "/v1/apps/v")[1]["n_samples"] == acked
