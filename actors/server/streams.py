"""WebSocket streams (``/v1/apps/{app}/stream``): predictions, samples, readings and feedback
in, their answers, training events and (with ``?watch=true``) every prediction of the app out.

The reader starts every prediction of one read in the same loop turn, so pipelined frames
share a batch, and writes an answer it has at once straight to the socket. Anything that
waits (a batch, a commit, a peer) goes to a task per message, bounded per connection. Each
connection has a bounded queue of outgoing messages; a client that lets it fill is cut off at
once, so it never holds back the others. A big message is decoded off the loop (in a child
process past 1 MiB: see DECODE_IN_PROCESS_BYTES).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import socket
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from actors.server.bounds import WriteLimit
from actors.server.core import ServingCore
from actors.server.payloads import check_features
from actors.server.routing import Started
from mliot_daemon import lifeline
from mliot_daemon.errors import DomainError, Invalid, Malformed, Unavailable
from mliot_daemon.learn import decode
from mliot_daemon.messages import FeedbackIn, SamplesIn
from mliot_daemon.metrics import Metrics
from mliot_daemon.settings import AppSpec

log = structlog.get_logger("mliot.server")

WS_QUEUE = 1024  # messages waiting for one WebSocket client; a client that lets it fill is cut
PACED_POLL_S = 0.05  # how often a paused reader looks whether its client read (Client.paced)
# The kernel's send buffer of a stream (Linux doubles it): autotuned, it grows to tcp_wmem's
# 4 MiB, ~9,000 answers computed for a client that never reads them before it is paused.
WS_SEND_BUFFER = 128 * 1024
WS_IN_FLIGHT = 256  # predictions one WebSocket client may have pending
WS_DIRECT_MAX = 16 * 1024  # unsent bytes above which a reply queues instead (see Client.send)
# Messages past this are decoded in a child process: a thread would still hold the GIL (see
# mliot_daemon.learn.decode); those between the core's threshold (32 KiB) and this, in a thread.
DECODE_IN_PROCESS_BYTES = 2**20


class Streams:
    """The stream endpoint; the core keeps each app's streams as its watchers."""

    def __init__(self, core: ServingCore, limit: WriteLimit) -> None:
        self._core = core
        self._limit = limit  # daemon.max_writes_per_s: a stream's writes count one by one
        self._decoder: ProcessPoolExecutor | None = None  # started at the first big message

    async def close(self, _app: web.Application) -> None:
        """Stop the decoding process (the application's cleanup)."""
        if self._decoder is not None:
            await asyncio.to_thread(self._decoder.shutdown, wait=True, cancel_futures=True)
            self._decoder = None

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/apps/{app}/stream", self.stream)]

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        core = self._core
        app = core.app(request.match_info["app"]).name
        watch = request.query.get("watch") in ("1", "true")
        max_per_s = _rate(request.query.get("max_per_s", "0"))
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=int(
            core.settings.daemon.max_body_mb * 2**20))
        await ws.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            with contextlib.suppress(OSError):  # gone already: the reader finds out
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WS_SEND_BUFFER)
        in_flight = asyncio.Semaphore(WS_IN_FLIGHT)
        client: Client | None = None
        core.metrics.ws_connections.inc()
        try:
            async with asyncio.TaskGroup() as tg:
                client = Client(ws, tg, watch, max_per_s, request.transport, core.metrics)
                core.follow(app, client)
                writer = tg.create_task(client.write_loop(), name=f"ws.{app}.tx")
                async for msg in ws:
                    await client.paced(core.settings.daemon.idle_timeout_s)
                    if client.closing:
                        break
                    if msg.type == WSMsgType.ERROR:  # aiohttp closed it: 1009 past max_body_mb
                        log.info("ws_closed_on_error", app=app, error=str(msg.data))
                        break
                    if msg.type != WSMsgType.TEXT:
                        client.put({"type": "error", "ref": None,
                                    "message": "only JSON text messages are understood"})
                        continue
                    reply, later = await self._now(app, msg.data, request.remote)
                    if reply is not None:  # answered without waiting: no task, no queue
                        await client.send(reply)
                        continue
                    await in_flight.acquire()
                    tg.create_task(self._later(app, client, later, in_flight))
                writer.cancel()
        finally:
            core.metrics.ws_connections.dec()
            if client is not None:
                core.unfollow(app, client)
        return ws

    async def _now(self, app: str, data: str, address: str | None
                   ) -> tuple[dict[str, Any] | None, _Work]:
        """(the reply, when the message can be answered at once; else the parsed work for
        ``_later``). A prediction on an idle app is answered here, in the reader."""
        core = self._core
        work = _Work(size=len(data))
        try:
            entry = core.app(app)
            # A big message is decoded and checked off the loop (7 MB took it ~0.15 s); a
            # small one inline, without leaving this turn, so pipelined predictions still
            # share a batch.
            if work.size > DECODE_IN_PROCESS_BYTES:
                work.read(await self._decode(data), entry.spec, entry.shape)
            else:
                await core.offload(work.size, lambda: work.read(_loads(data), entry.spec,
                                                                entry.shape))
            if work.samples is None:  # not a prediction: a write, unless past the rate
                rate = core.settings.daemon.max_writes_per_s
                if rate and (wait := self._limit.wait(rate, address)):
                    return {"type": "error", "ref": work.ref, "retry_after": round(wait, 3),
                            "message": f"more than {rate:g} writes a second from this address "
                                       "(daemon.max_writes_per_s): not stored; send it again "
                                       "after retry_after s"}, work
                return None, work
            started = core.start(entry, work.samples, bool(work.msg.get("probabilities")))
            if not isinstance(started, list):  # queued here (this turn's batch) or a peer's
                work.started = started
                return None, work
            (prediction,) = core.publish(entry, work.samples, started, "ws")
            return {"type": "prediction", "ref": work.ref, **prediction}, work
        except Exception as exc:
            return _error(app, work.ref, exc), work

    async def _decode(self, data: str) -> Any:
        """A big message, decoded in the child process (its lists of numbers as arrays)."""
        if self._decoder is None:
            self._decoder = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("forkserver"),
                initializer=lifeline.die_with, initargs=(os.getpid(),))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._decoder, decode.loads,
                                                                    data)
        except ValueError as exc:
            raise Malformed(f"malformed JSON: {exc}") from None
        except BrokenProcessPool:  # killed (out of memory?): the next message starts another
            pool, self._decoder = self._decoder, None
            pool.shutdown(wait=False)
            raise Unavailable("the message decoder stopped; send it again") from None

    async def _later(self, app: str, client: Client, work: _Work,
                     in_flight: asyncio.Semaphore) -> None:
        core = self._core
        msg, ref = work.msg, work.ref
        try:
            kind = msg.get("type")
            if kind == "predict":  # started by _now
                assert work.samples is not None and work.started is not None
                (prediction,) = await core.finish(core.app(app), work.samples,
                                                  bool(msg.get("probabilities")), work.started,
                                                  "ws")
                client.put({"type": "prediction", "ref": ref, **prediction})
            elif kind == "sample":
                item = {"features": msg.get("features"), "label": msg.get("label")}
                result = await core.ingest(app, SamplesIn(items=(item,)), "ws", work.size)
                client.put({"type": "ack", "ref": ref, "n_samples": result["n_samples"]})
            elif kind == "readings":  # a stream app's batch, acknowledged after its commit
                result = await core.streams.ingest(app, msg.get("readings"), "ws",
                                                   msg.get("batch_id"))
                client.put({"type": "ack", "ref": ref, **result})
            elif kind == "feedback":
                await core.feedback(app, FeedbackIn(prediction_id=msg.get("prediction_id"),
                                                    label=msg.get("label")))
                client.put({"type": "ack", "ref": ref})
            else:
                raise Invalid("type: must be predict, sample, readings or feedback")
        except Exception as exc:
            client.put(_error(app, ref, exc))
        finally:
            in_flight.release()


def _loads(data: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"malformed JSON: {exc}") from exc


def _rate(text: str) -> float:
    """``max_per_s``: predictions a watcher wants a second at most (0: all of them)."""
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0 <= rate <= 1e6:
        raise Invalid("max_per_s: a number of predictions per second from 0 (no cap) to 1e6")
    return rate


def _error(app: str, ref: Any, exc: Exception) -> dict[str, Any]:
    """The error message a WebSocket client gets for a message that failed."""
    if isinstance(exc, DomainError):
        message = str(exc)
    elif isinstance(exc, TimeoutError):
        message = "timed out waiting for the daemon; try again"
    else:  # a bug must cost one answer, not the connection
        log.error("ws_message_failed", app=app, exc_info=exc)
        message = "internal error; see the log"
    return {"type": "error", "ref": ref, "message": message}


@dataclass(slots=True)
class _Work:
    """One parsed WebSocket message on its way to ``Streams._later``."""

    size: int = 0  # the message's length
    msg: dict[str, Any] = field(default_factory=dict)
    ref: Any = None
    samples: list[Any] | None = None  # a prediction's checked features
    started: Started | None = None  # see Router.start

    def read(self, msg: Any, spec: AppSpec, shape: tuple[int, ...] | None) -> None:
        """Take a decoded message, and check a prediction's features (no loop state: this may
        run on the parser thread)."""
        if not isinstance(msg, dict):
            raise Invalid("a message must be a JSON object")
        self.msg, self.ref = msg, msg.get("ref")
        if msg.get("type") == "predict":
            self.samples = [check_features(msg.get("features"), spec, shape)]


class Client:
    """One WebSocket connection's outgoing queue (a ``core.Watcher``)."""

    def __init__(self, ws: web.WebSocketResponse, tg: asyncio.TaskGroup, watch: bool,
                 max_per_s: float, transport: asyncio.Transport | None, metrics: Metrics
                 ) -> None:
        self.ws = ws
        self.metrics = metrics
        self.transport = transport
        self.watch = watch
        self.max_per_s = max_per_s
        self._allowance = max_per_s  # a token bucket: up to a second's worth in a burst
        self._refilled = time.monotonic()
        self.skipped = 0  # watched predictions not sent since the last one that was
        self.tg = tg  # the connection's task group: the close task belongs to it
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(WS_QUEUE)
        self.closing = False

    def put(self, message: dict[str, Any]) -> None:
        if self.closing:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.drop()

    async def paced(self, stall_s: float) -> None:
        """Before a message is handled: wait while the client's replies back up (the kernel's
        send buffer is full: more than WS_DIRECT_MAX waits in the transport). A client that
        sends and never reads then costs what its socket buffers hold (WS_SEND_BUFFER), not
        a prediction per message until its queue fills, and TCP holds its messages back
        meanwhile. One that reads nothing for ``stall_s`` (``daemon.idle_timeout_s``) is
        cut. A client that reads never waits here: one call per message."""
        transport = self.transport
        if transport is None or transport.get_write_buffer_size() <= WS_DIRECT_MAX:
            return
        waited = 0.0
        while transport.get_write_buffer_size() > WS_DIRECT_MAX and not self.closing:
            if transport.is_closing():
                return
            if waited >= stall_s:
                self.drop()
                return
            await asyncio.sleep(PACED_POLL_S)
            waited += PACED_POLL_S

    def watched(self, message: dict[str, Any]) -> None:
        """A prediction of the app from any channel: sent unless the client's rate cap says
        skip it (a browser must never be flooded); the next one sent says how many were."""
        if self.max_per_s:
            now = time.monotonic()
            self._allowance = min(self.max_per_s, self._allowance
                                  + (now - self._refilled) * self.max_per_s)
            self._refilled = now
            if self._allowance < 1.0:
                self.skipped += 1
                self.metrics.ws_watch_skipped.inc()
                return
            self._allowance -= 1.0
        if self.skipped:
            message = {**message, "skipped": self.skipped}
            self.skipped = 0
        self.put(message)

    def drop(self) -> None:
        """Cut a client that lets its queue fill: abort the connection at once (a close
        handshake would wait for a flush that never comes) and free what it had queued."""
        log.warning("ws_client_too_slow", queued=self.queue.qsize())
        self.metrics.ws_dropped.inc()
        self.closing = True
        while not self.queue.empty():
            self.queue.get_nowait()
        if self.transport is not None:
            self.transport.abort()  # the reader then ends, and the handler with it

    async def send(self, message: dict[str, Any]) -> None:
        """Write a reply now, from the reader's turn; through the queue (and its rule for
        slow clients) when messages wait there or the socket is backed up, so that a write
        never blocks the reader and replies never overtake queued ones."""
        if self.closing:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            self.closing = True
            return
        if self.queue.qsize() or transport.get_write_buffer_size() > WS_DIRECT_MAX:
            self.put(message)
            return
        try:
            await self.ws.send_frame(orjson.dumps(message), WSMsgType.TEXT)
        except ConnectionError:  # the client went away; the reader loop ends on its own
            self.closing = True

    def close(self) -> None:
        """Close with 1001 (going away): the app was deleted, or the daemon stops."""
        if self.closing:
            return
        self.closing = True
        self.tg.create_task(self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"closing"))

    async def write_loop(self) -> None:
        with contextlib.suppress(ConnectionError):  # dropped, or the client went away
            while not self.closing:
                message = await self.queue.get()
                # orjson's bytes are UTF-8 already: no decode here and encode in send_str
                await self.ws.send_frame(orjson.dumps(message), WSMsgType.TEXT)
