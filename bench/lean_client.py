"""The latency client of the serving benchmark: one blocking socket, every request and frame
built in advance, and a busy-polled receive.

A single-row round trip on this machine is a tenth of a millisecond, so the client's own
cost is not small beside the server's. An aiohttp client adds ~0.1 ms per HTTP round trip
(its request building and response parsing, and the wake-up of its process when the answer
arrives); a client that sleeps in ``recv`` still pays the wake-up (~0.1 ms on this VM).
This client spins on a non-blocking ``recv`` instead (as ``sockperf --busy-poll`` does), so
what it measures is the server: request parsing, the work, the answer, and the server's own
wake-up. The same client measures the transport floor, so floor and server stay comparable.
It holds one core while it waits: run it on a machine with a core to spare.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import numpy as np

TIMEOUT_S = 10.0


def _connect(url: str) -> tuple[socket.socket, str]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # no timeout mode: in it, a recv that finds nothing waits in poll() instead of returning
    sock.settimeout(None)
    return sock, parts.netloc


def _recv(sock: socket.socket) -> bytes:
    """The next bytes, spinning until they come (``TIMEOUT_S`` at most)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from the server") from None
            continue
        if not data:
            raise ConnectionError("the server closed the connection")
        return data


def http_latency(url: str, bodies: Sequence[bytes], n: int) -> list[float]:
    """Seconds per POST of ``bodies`` (cycled) to ``url`` over one keep-alive connection,
    ``n`` requests; the first tenth warms up and is dropped. Every answer must be 200."""
    sock, host = _connect(url)
    path = urlsplit(url).path
    requests = [(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    times = []
    buf = b""
    try:
        for i in range(n):
            start = time.perf_counter()
            sock.sendall(requests[i % len(requests)])
            while (end := _http_response_end(buf)) is None:
                buf += _recv(sock)
            times.append(time.perf_counter() - start)
            if not buf.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the server answered {buf[:end][:300]!r}")
            buf = buf[end:]
    finally:
        sock.close()
    return times[n // 10:]


def _http_response_end(buf: bytes) -> int | None:
    """Where the first complete response in ``buf`` ends (it must carry Content-Length)."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    for line in buf[:head_end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            end = head_end + 4 + int(value)
            return end if len(buf) >= end else None
    raise RuntimeError("the lean client needs a Content-Length in every response")


def ws_latency(url: str, messages: Sequence[bytes], answers: Sequence[bytes], n: int
               ) -> list[float]:
    """Seconds from sending one of ``messages`` (cycled) on a WebSocket at ``url`` (http://
    form) to the server frame that answers it, the one containing ``answers[i]`` (its
    ``ref``); ``n`` round trips, the first tenth dropped. An error frame fails the run."""
    sock, host = _connect(url)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {urlsplit(url).path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock)
    head, _, buf = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"no WebSocket upgrade: {head[:300]!r}")
    frames = [client_frame(m) for m in messages]
    times = []
    try:
        for i in range(n):
            start = time.perf_counter()
            sock.sendall(frames[i % len(frames)])
            answer = answers[i % len(frames)]
            while True:
                payload, buf = _server_frame(buf)
                if payload is None:
                    buf += _recv(sock)
                elif answer in payload:
                    break
                elif b'"error"' in payload:
                    raise RuntimeError(f"the daemon answered an error: {payload[:300]!r}")
            times.append(time.perf_counter() - start)
    finally:
        sock.close()
    return times[n // 10:]


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (RFC 6455: a client masks everything it sends)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    body = (np.frombuffer(payload, np.uint8)
            ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes() if n else b""
    return head + mask + body


def _server_frame(buf: bytes) -> tuple[bytes | None, bytes]:
    """(payload of the first complete unmasked frame in ``buf`` or None, the rest)."""
    if len(buf) < 2:
        return None, buf
    n, at = buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None, buf
        n, at = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None, buf
        n, at = struct.unpack("!Q", buf[2:10])[0], 10
    if len(buf) < at + n:
        return None, buf
    return buf[at:at + n], buf[at + n:]
