"""Connection bounds that a hostile or broken client cannot push past (issue 20).

aiohttp bounds a request head's size but not the time it takes to arrive, nor how many
connections are open, and its WebSocket reader accepts unmasked client frames. Each accepted
connection is a ``Connection`` (made by ``Runner``'s sites), which adds:

- a head deadline: a request's head must be complete ``daemon.header_timeout_s`` after the
  connection opens or after its first byte arrives (a slowloris client sending a byte at a
  time is closed then); between requests ``daemon.idle_timeout_s`` applies (aiohttp's
  keep-alive timeout);
- a connection cap: past ``daemon.max_connections`` a new connection gets a 503 and is closed
  before anything of it is read, so it costs nothing;
- RFC 6455's rule that a server closes the connection (1002) on an unmasked client frame.

``WriteLimit`` is the optional per-address write rate (``daemon.max_writes_per_s``) that the
middleware (429) and WebSocket streams (an error message) apply.

``Connection`` reads a few of aiohttp's private fields (``_waiter``, ``_messages``,
``_upgraded``) to know whether a head is pending; ``tests/integration/test_bounds.py`` fails if
an aiohttp upgrade changes them. The body deadline (``daemon.body_timeout_s``) is
``http.body_deadline``, for request bodies and peers' model uploads. None of these drops
acknowledged data: what they cut was never answered. The live config applies to connections
opened after a reload.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any, cast

import orjson
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from actors.server.core import ServingCore

log = structlog.get_logger("mliot.server")

_CLOSE_PROTOCOL_ERROR = b"\x88\x02" + struct.pack("!H", 1002)  # a server's close frame: no mask
_CLOSE_POLICY = b"\x88\x02" + struct.pack("!H", 1008)  # a frame that did not arrive in time


def _refusal() -> bytes:
    body = orjson.dumps({"error": "too many connections (daemon.max_connections); try again",
                         "details": []})
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body)


REFUSAL = _refusal()


class Runner(web.AppRunner):
    """An ``AppRunner`` whose sites accept every connection as a ``Connection``."""

    __slots__ = ("core", "_open", "_refusing")

    def __init__(self, app: web.Application, core: ServingCore, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.core = core  # the live settings and the metrics
        self._open = 0
        self._refusing = False  # logged once per spell at the cap: a flood must not flood the log

    @property
    def server(self) -> Any:
        # Sites hand this to ``loop.create_server`` as the protocol factory: aiohttp's own
        # Server would build plain RequestHandlers (whose class it does not let us choose).
        inner = super().server
        if inner is None:
            return None
        return lambda: Connection(inner, self)

    def admit(self) -> bool:
        """Count a new connection in, unless the cap is reached."""
        metrics = self.core.metrics
        limit = self.core.settings.daemon.max_connections
        if self._open >= limit:
            metrics.connections_refused.inc()
            if not self._refusing:
                log.warning("connections_refused", reason="max_connections", limit=limit)
            self._refusing = True
            return False
        self._refusing = False
        self._open += 1
        metrics.http_connections.set(self._open)
        return True

    def release(self) -> None:
        self._open -= 1
        self.core.metrics.http_connections.set(self._open)


class Connection(RequestHandler):
    """One HTTP connection with a head deadline, counted against the cap (see the module)."""

    __slots__ = ("_runner", "_admitted", "_head_timer")

    def __init__(self, manager: web.Server, runner: Runner) -> None:
        d = runner.core.settings.daemon
        super().__init__(manager, loop=asyncio.get_running_loop(), access_log=None,
                         keepalive_timeout=d.idle_timeout_s)
        self._runner = runner
        self._admitted = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._runner.admit():
            # refused before aiohttp sees it: no task, no parser, nothing read
            refused = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
            refused.write(REFUSAL)
            refused.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._time_head()  # the first head is due header_timeout_s after the connection opens

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._runner.release()
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # aiohttp queues a complete head in _messages (or switched to WebSocket frames); until
        # then start() waits on _waiter: bytes that did not finish the head start the clock
        if self._upgraded or self._messages:
            self._stop_head_timer()
        elif self._waiting_for_head():
            self._time_head()

    def set_parser(self, parser: Any, data_received_cb: Any = None) -> None:
        """WebSocket frames go through ``MaskCheck`` on their way to aiohttp's reader."""
        super().set_parser(MaskCheck(parser, self), data_received_cb)

    def _waiting_for_head(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def _time_head(self) -> None:
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(
                self._runner.core.settings.daemon.header_timeout_s, self._head_late)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self._waiting_for_head() or self._upgraded:
            return  # a request is being handled: its head came in time
        log.info("http_header_timeout", peer=str(self.peername),
                 seconds=self._runner.core.settings.daemon.header_timeout_s)
        self._runner.core.metrics.http_timeouts.labels("header").inc()
        self.force_close()


class MaskCheck:
    """Stands in front of aiohttp's WebSocket reader and closes the connection (1002) on a
    client frame without a mask, which RFC 6455 (section 5.1) says a server must do. It only
    walks frame headers; payload bytes are skipped by count."""

    __slots__ = ("_parser", "_conn", "_head", "_skip", "_refused", "_started", "_timer")

    def __init__(self, parser: Any, conn: Connection) -> None:
        self._parser = parser
        self._conn = conn
        self._head = b""  # a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to come
        self._refused = False
        self._started = 0.0  # loop time of the current frame's first byte
        self._timer: asyncio.TimerHandle | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._refused:
            return True, b""
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                continue
            known = len(self._head)
            if not known:
                self._started = self._conn._loop.time()  # a new frame begins
            head = self._head + data[pos:pos + 14]  # a header is at most 14 bytes
            if len(head) >= 2 and not head[1] & 0x80:
                return self._refuse()
            size = _header_size(head)
            if size is None or len(head) < size:  # the rest of the header is in a later read
                self._head = bytes(head)
                break
            self._head = b""
            pos += size - known
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack_from("!H", head, 2)[0]
            elif length == 127:
                length = struct.unpack_from("!Q", head, 2)[0]
            self._skip = length
        if not (self._skip or self._head):
            self._stop_timer()
        elif self._timer is None:
            self._time_frame()
        return self._parser.feed_data(data)

    def feed_eof(self) -> None:
        self._stop_timer()
        self._parser.feed_eof()

    # A frame sent a byte at a time keeps aiohttp's heartbeat from ever pinging: like an HTTP
    # body, a frame must all arrive within daemon.body_timeout_s of its first byte.
    def _time_frame(self) -> None:
        due = self._started + self._conn._runner.core.settings.daemon.body_timeout_s
        self._timer = self._conn._loop.call_at(due, self._frame_late)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _frame_late(self) -> None:
        self._timer = None
        if not (self._skip or self._head) or self._refused:
            return
        seconds = self._conn._runner.core.settings.daemon.body_timeout_s
        if self._conn._loop.time() < self._started + seconds:
            self._time_frame()  # a later frame is pending: its own deadline
            return
        self._refused = True
        log.info("ws_frame_timeout", peer=str(self._conn.peername), seconds=seconds)
        self._conn._runner.core.metrics.http_timeouts.labels("frame").inc()
        self._close(_CLOSE_POLICY)

    def _refuse(self) -> tuple[bool, bytes]:
        self._refused = True
        self._stop_timer()
        log.warning("ws_unmasked_frame", peer=str(self._conn.peername))
        self._close(_CLOSE_PROTOCOL_ERROR)
        return True, b""

    def _close(self, frame: bytes) -> None:
        transport = self._conn.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)
            transport.close()


def _header_size(head: bytes) -> int | None:
    """A frame header's size (with its 4-byte mask) once its second byte is known."""
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    return 2 + (2 if length == 126 else 8 if length == 127 else 0) + 4


class WriteLimit:
    """``daemon.max_writes_per_s`` per client address (0: no limit): a token bucket holding a
    second's worth, so a device may send a short burst. A write past it is refused (429, or an
    error message on a stream) before anything of it is done: it was not acknowledged, and the
    client sends it again. Queries (predictions) are not writes."""

    MAX_ADDRESSES = 4096  # buckets kept; full (idle) ones are forgotten past it

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when)

    def wait(self, rate: float, address: str | None) -> float:
        """0.0 when a write from ``address`` may go ahead (it is counted), else the seconds
        until one may."""
        if rate <= 0 or address is None:
            return 0.0
        now = time.monotonic()
        burst = max(rate, 1.0)
        tokens, when = self._buckets.get(address, (burst, now))
        tokens = min(burst, tokens + (now - when) * rate)
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            return (1.0 - tokens) / rate
        if len(self._buckets) >= self.MAX_ADDRESSES and address not in self._buckets:
            self._buckets = {a: (t, w) for a, (t, w) in self._buckets.items()
                             if t + (now - w) * rate < burst}
        self._buckets[address] = (tokens - 1.0, now)
        return 0.0
