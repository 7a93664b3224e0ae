"""WebSocket streams (``/v1/apps/{app}/stream``): predictions, samples, readings and feedback
in, their answers, training events and (with ``?watch=true``) every prediction of the app out.

The reader starts every prediction of one read in the same loop turn, so pipelined frames
share a batch, and writes an answer it has at once straight to the socket. Anything that
waits (a batch, a commit, a peer) goes to a task per message, bounded per connection. Each
connection has a bounded queue of outgoing messages; a client that lets it fill is cut off at
once, so it never holds back the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from actors.server.core import ServingCore
from actors.server.payloads import check_features
from actors.server.routing import Started
from mliot_daemon.errors import DomainError, Invalid, Malformed
from mliot_daemon.messages import FeedbackIn, SamplesIn
from mliot_daemon.metrics import Metrics

log = structlog.get_logger("mliot.server")

WS_QUEUE = 1024  # messages waiting for one WebSocket client; a client that lets it fill is cut
WS_IN_FLIGHT = 256  # predictions one WebSocket client may have pending
WS_DIRECT_MAX = 16 * 1024  # unsent bytes above which a reply queues instead (see Client.send)


class Streams:
    """The stream endpoint; the core keeps each app's streams as its watchers."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core

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
        in_flight = asyncio.Semaphore(WS_IN_FLIGHT)
        client: Client | None = None
        core.metrics.ws_connections.inc()
        try:
            async with asyncio.TaskGroup() as tg:
                client = Client(ws, tg, watch, max_per_s, request.transport, core.metrics)
                core.follow(app, client)
                writer = tg.create_task(client.write_loop(), name=f"ws.{app}.tx")
                async for msg in ws:
                    if msg.type != web.WSMsgType.TEXT:
                        client.put({"type": "error", "ref": None,
                                    "message": "only JSON text messages are understood"})
                        continue
                    reply, later = self._now(app, msg.data)
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

    def _now(self, app: str, data: str) -> tuple[dict[str, Any] | None, _Work]:
        """(the reply, when the message can be answered at once; else the parsed work for
        ``_later``). A prediction on an idle app is answered here, in the reader."""
        core = self._core
        work = _Work()
        try:
            try:
                msg = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise Malformed(f"malformed JSON: {exc}") from exc
            if not isinstance(msg, dict):
                raise Invalid("a message must be a JSON object")
            work.msg, work.ref = msg, msg.get("ref")
            if msg.get("type") != "predict":
                return None, work
            entry = core.app(app)
            work.samples = [check_features(msg.get("features"), entry.spec, entry.shape)]
            started = core.start(entry, work.samples, bool(msg.get("probabilities")))
            if not isinstance(started, list):  # queued here (this turn's batch) or a peer's
                work.started = started
                return None, work
            (prediction,) = core.publish(entry, work.samples, started, "ws")
            return {"type": "prediction", "ref": work.ref, **prediction}, work
        except Exception as exc:
            return _error(app, work.ref, exc), work

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
                result = await core.ingest(app, SamplesIn(items=(item,)), "ws")
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

    msg: dict[str, Any] = field(default_factory=dict)
    ref: Any = None
    samples: list[Any] | None = None  # a prediction's checked features
    started: Started | None = None  # see Router.start


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
