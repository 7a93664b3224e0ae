"""The broker connection: connect, subscribe, receive, predict and publish, and reconnect.

Delivery policy:
  * QoS ``mqtt.qos`` with a persistent session (``clean_session=False``, a client id derived from
    the daemon name): the broker keeps what arrives while the daemon is down.
  * Labelled samples and corrections are acknowledged (PUBACK) only after the server committed
    them: paho's manual acknowledgement replaces aiomqtt's ack-on-receipt. The receive loop
    awaits the server's answer before it takes the next message (backpressure), and the broker's
    in-flight window bounds what is unacknowledged. A transient failure (``Unavailable``: a
    timeout, the store) is retried, never dropped; a refused message (bad JSON, shape, label)
    is counted, reported on the app's ``errors`` topic and acked.
  * Stream readings (a channel's topic) are committed in groups and acked after their group's
    commit (``readings``); any other message first waits for the pending readings, so
    acknowledgements keep the order of arrival.
  * Unlabelled prediction requests go to a bounded queue (``requests``); when it is full the
    oldest request is shed and counted. Predictions are acked on receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import structlog

from actors.mqtt.discovery import Announcer
from actors.mqtt.readings import ReadingsInbox
from actors.mqtt.requests import PREDICT_BATCH, Answerer, PredictJob
from actors.mqtt.topics import (
    BridgeState,
    Rejected,
    Topics,
    decode,
    publish_json,
    ref_of,
    stop_if_cancelled,
)
from mliot_daemon.errors import DomainError, Unavailable, UnknownApp
from mliot_daemon.messages import (
    Correct,
    FeedbackIn,
    Happening,
    IngestReadings,
    IngestSamples,
    Query,
    SamplesIn,
    ServerMsg,
    SubmitFeedback,
)
from mliot_daemon.metrics import Metrics
from mliot_daemon.runtime import ActorRef, ActorStopped
from mliot_daemon.settings import MqttSettings

log = structlog.get_logger("mliot.mqtt")

INBOX = 10_000  # aiomqtt's incoming queue (max_queued_incoming_messages)
ASK_TIMEOUT_S = 30.0
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.5, 10.0
RETRY_MAX_S = 5.0
LEAVE_TIMEOUT_S = 2.0


class _Restart(Exception):
    """Leave the current session: the config changed, or the inbox dropped an unacked message."""


class Connection:
    """The bridge's link to the broker; ``run`` lasts as long as the actor."""

    def __init__(self, state: BridgeState, server: ActorRef[ServerMsg], metrics: Metrics
                 ) -> None:
        self._state = state
        self._server = server
        self._metrics = metrics

    async def run(self) -> None:
        """Connect, serve, and on any broker error reconnect with jittered exponential back-off.
        Runs beside the mailbox, so a broker outage never holds up anything else."""
        state = self._state
        failures = 0
        while True:
            settings = state.settings
            sessions = state.sessions
            state.restart.clear()
            if settings is None:
                await state.restart.wait()
                continue
            try:
                await self._session(settings)
                failures = 0
                continue  # left on purpose: reconnect at once with the new settings
            except (aiomqtt.MqttError, OSError) as exc:
                error: BaseException = exc
            except ExceptionGroup as group:
                matched, rest = group.split((aiomqtt.MqttError, OSError, _Restart))
                if rest is not None:
                    raise rest from None
                assert matched is not None
                errors = [e for e in _leaves(matched) if not isinstance(e, _Restart)]
                if not errors:
                    failures = 0
                    continue
                error = errors[0]
            finally:
                state.connected = False
                self._metrics.mqtt_connected.set(0)
            if state.sessions != sessions:
                failures = 0  # it was connected: back off from the start again
            failures += 1
            self._metrics.mqtt_connection_errors.inc()
            delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(failures - 1, 10))
            delay = random.uniform(delay / 2, delay)  # jitter: many daemons, one broker
            log.warning("mqtt_disconnected", error=str(error) or repr(error),
                        retry_in_s=round(delay, 2), failures=failures)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await state.restart.wait()  # a config change retries at once

    def _client(self, s: MqttSettings, t: Topics) -> aiomqtt.Client:
        url = urlsplit(s.url)
        tls = url.scheme == "mqtts"
        connection = self

        class Inbox(asyncio.Queue):  # type: ignore[type-arg]
            """aiomqtt's incoming queue, stamping receipt times and counting overflow."""

            def put_nowait(self, item: aiomqtt.Message) -> None:
                item.received_at = time.perf_counter()  # type: ignore[attr-defined]
                try:
                    super().put_nowait(item)
                except asyncio.QueueFull:
                    connection._inbox_full(item)
                    raise

        client = aiomqtt.Client(
            url.hostname or "127.0.0.1", url.port or (8883 if tls else 1883),
            username=s.username or None, password=s.password or None,
            identifier=f"mliot-{t.node}", clean_session=False,
            will=aiomqtt.Will(t.availability, b"offline", qos=1, retain=True),
            keepalive=30, timeout=10, queue_type=Inbox, max_queued_incoming_messages=INBOX,
            # paho leaves Nagle on: a PUBACK or a small prediction would wait up to ~40 ms.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            tls_params=aiomqtt.TLSParameters(ca_certs=s.ca_file or None) if tls else None)
        # Acknowledge samples and corrections after their commit, not on receipt.
        client._client.manual_ack_set(True)
        client.pending_calls_threshold = PREDICT_BATCH * 2  # batches publish concurrently
        return client

    async def _session(self, s: MqttSettings) -> None:
        """One connection: subscribe, announce, then receive, predict and publish until the
        broker goes away (MqttError) or the settings change (_Restart)."""
        state = self._state
        t = Topics(s.prefix, s.discovery_prefix, state.node)
        client = self._client(s, t)
        async with client:
            state.connected = True
            state.sessions += 1
            self._metrics.mqtt_connected.set(1)
            self._metrics.mqtt_connects.inc()
            state.on_broker.clear()
            state.discovered.clear()
            state.subscribed.clear()  # the announcer subscribes the channel topics
            await client.subscribe(t.filters(s.qos))
            await client.publish(t.shared_availability, b"", qos=1, retain=True)
            await client.publish(t.availability, b"online", qos=1, retain=True)
            log.info("mqtt_connected", url=s.url, client_id=client.identifier, prefix=s.prefix)
            requests = Answerer(self._server, self._metrics)
            announcer = Announcer(state, self._server, self._metrics, client, s, t)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._receive(client, s, t, requests), name="mqtt.rx")
                    tg.create_task(requests.run(client, s, t), name="mqtt.predict")
                    tg.create_task(announcer.run(), name="mqtt.announce")
                    tg.create_task(self._until_restart(), name="mqtt.restart")
            finally:
                # A deliberate leave (reload, stop) says so; a lost connection leaves it to the
                # broker's last will.
                await self._leave(client, s, t)

    async def _until_restart(self) -> None:
        await self._state.restart.wait()
        raise _Restart

    async def _leave(self, client: aiomqtt.Client, s: MqttSettings, t: Topics) -> None:
        state = self._state
        new = state.settings
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
            async with asyncio.timeout(LEAVE_TIMEOUT_S):
                renamed = state.node != t.node
                moved = new is None or new.url != s.url or (new.prefix, new.discovery_prefix) \
                    != (s.prefix, s.discovery_prefix) or renamed
                if state.restart.is_set() and moved:
                    # The session persists: without this the broker would keep queueing
                    # messages on the old topics for us.
                    await client.unsubscribe([f for f, _ in t.filters(s.qos)])
                if state.restart.is_set() and renamed:
                    # The new name is a new Home Assistant device: remove the old entities.
                    for app in state.discovered:
                        for topic in t.discoveries(app):
                            await client.publish(topic, b"", qos=1, retain=True)
                await client.publish(t.availability, b"offline", qos=1, retain=True)

    def _inbox_full(self, message: aiomqtt.Message) -> None:
        self._metrics.mqtt_incoming_dropped.inc()
        log.warning("mqtt_inbox_full", topic=message.topic.value, qos=message.qos)
        if message.qos > 0:
            # Never acked, so the broker still owns it, but it would hold an in-flight slot
            # until we reconnect: reconnect now and let the broker redeliver it.
            self._state.restart.set()

    # -- receiving ------------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client, s: MqttSettings, t: Topics,
                       requests: Answerer) -> None:
        state = self._state
        inbox = ReadingsInbox(self._readings, lambda m: _ack(client, m), self._metrics)
        async for message in client.messages:
            stop_if_cancelled()
            topic = message.topic.value
            sources = state.sources.get(topic)
            if sources:  # a stream app's channel: acknowledged once its group committed
                self._metrics.mqtt_received.labels("reading").inc()
                await inbox.offer(message, sources)
                continue
            await inbox.drain()  # acknowledgements in arrival order
            if topic == t.ha_status:
                self._metrics.mqtt_received.labels("ha_status").inc()
                if message.payload in (b"online", "online"):
                    log.info("mqtt_home_assistant_online")
                    state.rediscover = True
                    state.wake.set()
                _ack(client, message)
                continue
            parsed = t.parse(topic)
            kind = parsed[1] if parsed else "other"
            self._metrics.mqtt_received.labels(kind).inc()
            try:
                if parsed is None:
                    pass
                elif kind == "status":
                    if message.retain:
                        state.on_broker.add(parsed[0])
                        state.wake.set()
                elif kind == "samples":
                    await self._samples(parsed[0], decode(message, s), requests)
                    _observe_ack(self._metrics, message)
                elif kind == "feedback":
                    await self._feedback(parsed[0], decode(message, s))
                    _observe_ack(self._metrics, message)
                elif kind in ("correct", "confirm"):
                    await self._correct(parsed[0], kind, message, s)
                    _observe_ack(self._metrics, message)
                elif kind == "happening":
                    label = _text(message)
                    await self._deliver(lambda f, a=parsed[0], x=label: Happening(
                        app=a, label=x, reply=f), None)
            except Rejected as exc:
                self._metrics.mqtt_bad_payloads.labels(exc.reason).inc()
                log.warning("mqtt_message_rejected", topic=topic, reason=exc.reason,
                            kind=exc.kind, error=exc.error, details=exc.details[:5])
                if parsed is not None:
                    await publish_json(client, self._metrics, t.app(parsed[0], "errors"), s.qos,
                                       exc.payload(), "error")
            _ack(client, message)

    async def _samples(self, app: str, obj: Any, requests: Answerer) -> None:
        """Labelled items: commit, awaiting the answer (backpressure). Unlabelled: queue a
        prediction, shedding the oldest request when the queue is full."""
        if isinstance(obj, dict) and "samples" in obj:
            items, batch_id, ref = obj["samples"], obj.get("batch_id"), obj.get("ref")
        else:
            items, batch_id, ref = [obj], obj.get("batch_id") if isinstance(obj, dict) \
                else None, None
        if not isinstance(items, list) or not items or not all(
                isinstance(i, dict) and "features" in i for i in items):
            raise Rejected("wrong_shape", "invalid", 'expected {"features": [...], "label"?, '
                           '"ref"?} or {"samples": [...]}', ref=ref_of(obj))
        labelled = tuple({"features": i["features"], "label": i["label"]} for i in items
                         if i.get("label") is not None)
        if labelled:
            samples = SamplesIn(items=labelled, batch_id=batch_id)
            first_ref = next(i.get("ref", ref) for i in items if i.get("label") is not None)
            await self._deliver(lambda f: IngestSamples(app=app, samples=samples,
                                                        source="mqtt", reply=f), first_ref)
        for item in items:
            if item.get("label") is not None:
                continue
            requests.put(PredictJob(app, item["features"], item.get("ref", ref)))

    async def _feedback(self, app: str, obj: Any) -> None:
        if not isinstance(obj, dict) or "prediction_id" not in obj or "label" not in obj:
            raise Rejected("wrong_shape", "invalid",
                           'expected {"prediction_id": "...", "label": "..."}', ref=ref_of(obj))
        feedback = FeedbackIn(prediction_id=obj["prediction_id"], label=obj["label"])
        await self._deliver(lambda f: SubmitFeedback(app=app, feedback=feedback, reply=f),
                            obj.get("ref"))

    async def _correct(self, app: str, kind: str, message: aiomqtt.Message,
                       s: MqttSettings) -> None:
        """Home Assistant's select (a bare label) and button (any payload), or a device's
        ``{"label", "prediction_id"?}``; see ``ServingCore.correct``."""
        label: str | None = None
        prediction_id = None
        if kind == "correct":
            text = _text(message)
            obj: Any = text
            if text.startswith(("{", '"')):
                obj = decode(message, s)
            if isinstance(obj, dict):
                label, prediction_id = obj.get("label"), obj.get("prediction_id")
                if not isinstance(label, str) or not (prediction_id is None
                                                      or isinstance(prediction_id, str)):
                    raise Rejected("wrong_shape", "invalid", 'expected a label, or {"label": '
                                   '"...", "prediction_id"?: "..."}', ref=ref_of(obj))
            elif isinstance(obj, str) and obj:
                label = obj
            else:
                raise Rejected("wrong_shape", "invalid", "expected a label, or {\"label\": "
                               '"...", "prediction_id"?: "..."}')
        await self._deliver(lambda f: Correct(app=app, label=label,
                                              prediction_id=prediction_id, reply=f), None)

    async def _readings(self, app: str, items: list[dict[str, Any]]) -> None:
        try:
            await self._deliver(lambda f: IngestReadings(app=app, items=tuple(items),
                                                         source="mqtt", reply=f), None)
        except Rejected as exc:  # the app went, or lost the channel: counted, logged, acked
            self._metrics.mqtt_bad_payloads.labels(exc.reason).inc()
            log.warning("mqtt_readings_rejected", app=app, error=exc.error,
                        details=exc.details[:3])

    async def _deliver(self, make: Callable[[asyncio.Future[Any]], Query[Any]], ref: Any
                       ) -> Any:
        """Ask the server until it answers: a transient failure is retried with back-off (the
        message stays unacknowledged meanwhile), a refusal raises Rejected."""
        delay = 0.1
        while True:
            try:
                return await self._server.ask(make, timeout=ASK_TIMEOUT_S)
            except (Unavailable, TimeoutError, ActorStopped) as exc:
                error = str(exc) or type(exc).__name__
            except DomainError as exc:
                reason = "unknown_app" if isinstance(exc, UnknownApp) else "invalid"
                raise Rejected(reason, exc.kind, exc.message, exc.details, ref) from None
            except Exception as exc:  # a server bug: never wedge the bridge on one message
                log.exception("mqtt_delivery_failed")
                raise Rejected("server_error", "error", repr(exc), ref=ref) from None
            self._metrics.mqtt_delivery_retries.inc()
            log.warning("mqtt_delivery_retry", error=error, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX_S, delay * 2)

def _ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """PUBACK (or PUBCOMP) now: the message is committed, rejected, or needs no commit."""
    if message.qos > 0:
        client._client.ack(message.mid, message.qos)


def _text(message: aiomqtt.Message) -> str:
    raw = message.payload
    return (raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray)
            else str(raw or "")).strip()


def _observe_ack(metrics: Metrics, message: aiomqtt.Message) -> None:
    received = getattr(message, "received_at", None)
    if received is not None and message.qos > 0:
        metrics.mqtt_ack_seconds.observe(time.perf_counter() - received)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
