"""The MQTT bridge: devices publish samples and corrections, read predictions and status, and
Home Assistant discovers one sensor per app. The only module that knows MQTT (aiomqtt 2.x).

Topics (``P`` = ``mqtt.prefix``, ``D`` = ``mqtt.discovery_prefix``, ``N`` = daemon name):

  in   P/{app}/samples      one ``{"features", "label"?, "ref"?}`` or ``{"samples": [...],
                            "batch_id"?}``: labelled items are training data, unlabelled ones
                            prediction requests
  in   P/{app}/feedback     ``{"prediction_id", "label"}``
  out  P/{app}/predictions  the prediction fields plus the request's ``ref``
  out  P/{app}/errors       ``{"ref", "status", "error", "details"}`` for a rejected message
  out  P/{app}/status       retained ``{"model_version", "ready", "accuracy", "n_samples"}``
  out  P/{app}/state        retained ``{"label", "confidence", "model_version"}``: the last
                            prediction from any channel (Home Assistant's state topic)
  out  P/availability       retained ``online``; last will ``offline``
  out  D/sensor/mliot_{N}_{app}/config  retained Home Assistant discovery
  in   D/status             ``online``: Home Assistant restarted, discovery is re-sent

Delivery policy:
  * QoS ``mqtt.qos`` with a persistent session (``clean_session=False``, a client id derived from
    the daemon name): the broker keeps what arrives while the daemon is down.
  * Labelled samples and corrections are acknowledged (PUBACK) only after the server committed
    them: paho's manual acknowledgement replaces aiomqtt's ack-on-receipt. The receive loop
    awaits the server's answer before it takes the next message (backpressure), and the broker's
    in-flight window bounds what is unacknowledged. A transient failure (timeout, store error) is
    retried, never dropped; a rejected message (bad JSON, shape, label) is counted and acked.
  * Unlabelled prediction requests go to a bounded queue; when it is full the oldest request is
    shed and counted (``mliot_mqtt_predictions_shed_total``). Predictions are acked on receipt.
  * ``Predicted`` (telemetry, ``offer``) only updates the latest state per app.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, assert_never
from urllib.parse import urlsplit

import aiomqtt
import orjson
import structlog

from mliot_daemon import __version__
from mliot_daemon.config import MqttSettings, Settings
from mliot_daemon.messages import (
    ApplyConfig,
    GetServerStatus,
    IngestSamples,
    MqttMsg,
    Predict,
    Predicted,
    Refs,
    SubmitFeedback,
)
from mliot_daemon.metrics import Metrics
from mliot_daemon.payloads import BadInput
from mliot_daemon.runtime import Actor, ActorStopped
from mliot_daemon.store import StoreError

log = structlog.get_logger("mliot.mqtt")

INBOX = 10_000  # aiomqtt's incoming queue (max_queued_incoming_messages)
PREDICT_QUEUE = 1024  # unlabelled requests waiting for a prediction; beyond: shed the oldest
PREDICT_BATCH = 256  # requests of one app answered with one Predict
ASK_TIMEOUT_S = 30.0
STATUS_EVERY_S = 1.0
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.5, 10.0
RETRY_MAX_S = 5.0
LEAVE_TIMEOUT_S = 2.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def node_id(machine_name: str) -> str:
    """The daemon's name as Home Assistant and MQTT client ids accept it."""
    return _UNSAFE.sub("_", machine_name) or "mliot"


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic of one configuration."""

    prefix: str
    discovery_prefix: str
    node: str

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    def app(self, app: str, kind: str) -> str:
        return f"{self.prefix}/{app}/{kind}"

    def discovery(self, app: str) -> str:
        return f"{self.discovery_prefix}/sensor/mliot_{self.node}_{app}/config"

    def filters(self, qos: int) -> list[tuple[str, int]]:
        """What the bridge subscribes to. Our own retained statuses come back once per connect,
        which tells us about apps deleted while we were away."""
        return [(f"{self.prefix}/+/samples", qos), (f"{self.prefix}/+/feedback", qos),
                (self.ha_status, 1), (f"{self.prefix}/+/status", 0)]

    def parse(self, topic: str) -> tuple[str, str] | None:
        """(app, kind) of a topic under the prefix, else None."""
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            return None
        app, sep, kind = topic[len(head):].partition("/")
        if not sep or not app or "/" in kind:
            return None
        return app, kind


@dataclass(frozen=True, slots=True)
class _PredictJob:
    app: str
    features: Any
    ref: Any


class _Rejected(Exception):
    """A message that can never succeed: count it, report it, acknowledge it."""

    def __init__(self, reason: str, status: int, error: str, details: list[str] | None = None):
        super().__init__(error)
        self.reason, self.status, self.error, self.details = reason, status, error, details or []


class _Restart(Exception):
    """Leave the current session: the config changed, or the inbox dropped an unacked message."""


class MqttBridge(Actor[MqttMsg]):
    """Connects the daemon to an MQTT broker; idle while the `[mqtt]` section is absent."""

    name = "mqtt"
    config_keys = frozenset({"mqtt", "daemon.name"})

    def __init__(self, settings: Settings, refs: Refs, metrics: Metrics) -> None:
        super().__init__(refs.mqtt)
        self._settings = settings.mqtt
        self._machine = settings.daemon.machine_name
        self._node = node_id(self._machine)
        self._server = refs.server
        self._metrics = metrics
        self._restart = asyncio.Event()  # leave the session (config change, inbox overflow)
        self._wake = asyncio.Event()  # the announcer has something to publish
        self._rediscover = False  # Home Assistant said `online`: send every discovery again
        self._latest: dict[str, dict[str, Any]] = {}  # app -> last prediction (HA state)
        self._dirty: set[str] = set()  # apps whose state is not yet published
        self._on_broker: set[str] = set()  # apps with a retained status on the broker
        self._discovered: set[str] = set()  # apps announced to Home Assistant this session
        self.connected = False
        self._sessions = 0  # successful connects

    # -- the mailbox --------------------------------------------------------------------------

    def background(self) -> list:
        return [self._connection()]

    async def handle(self, msg: MqttMsg) -> None:
        match msg:
            case ApplyConfig(settings=settings):
                machine = settings.daemon.machine_name
                if settings.mqtt != self._settings or machine != self._machine:
                    # a new name is a new client id, topics and Home Assistant device: the
                    # session restarts under it
                    log.info("mqtt_config_applied", enabled=settings.mqtt is not None,
                             name=machine)
                    self._settings = settings.mqtt
                    self._machine, self._node = machine, node_id(machine)
                    self._restart.set()
            case Predicted(app=app, label=label, confidence=confidence,
                           model_version=version):
                self._latest[app] = {"label": label, "confidence": confidence,
                                     "model_version": version}
                self._dirty.add(app)
                self._wake.set()
            case _:
                assert_never(msg)

    # -- connection -----------------------------------------------------------------------------

    async def _connection(self) -> None:
        """Connect, serve, and on any broker error reconnect with jittered exponential back-off.
        Runs beside the mailbox, so a broker outage never holds up anything else."""
        failures = 0
        while True:
            settings = self._settings
            sessions = self._sessions
            self._restart.clear()
            if settings is None:
                await self._restart.wait()
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
                self._disconnected()
            if self._sessions != sessions:
                failures = 0  # it was connected: back off from the start again
            failures += 1
            self._metrics.mqtt_connection_errors.inc()
            delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(failures - 1, 10))
            delay = random.uniform(delay / 2, delay)  # jitter: many daemons, one broker
            log.warning("mqtt_disconnected", error=str(error) or repr(error),
                        retry_in_s=round(delay, 2), failures=failures)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._restart.wait()  # a config change retries at once

    def _client(self, s: MqttSettings, t: Topics) -> aiomqtt.Client:
        url = urlsplit(s.url)
        tls = url.scheme == "mqtts"
        bridge = self

        class Inbox(asyncio.Queue):  # type: ignore[type-arg]
            """aiomqtt's incoming queue, stamping receipt times and counting overflow."""

            def put_nowait(self, item: aiomqtt.Message) -> None:
                item.received_at = time.perf_counter()  # type: ignore[attr-defined]
                try:
                    super().put_nowait(item)
                except asyncio.QueueFull:
                    bridge._inbox_full(item)
                    raise

        client = aiomqtt.Client(
            url.hostname or "127.0.0.1", url.port or (8883 if tls else 1883),
            username=s.username or None, password=s.password or None,
            identifier=f"mliot-{self._node}", clean_session=False,
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
        t = Topics(s.prefix, s.discovery_prefix, self._node)
        client = self._client(s, t)
        async with client:
            self.connected = True
            self._sessions += 1
            self._metrics.mqtt_connected.set(1)
            self._metrics.mqtt_connects.inc()
            self._on_broker.clear()
            self._discovered.clear()
            await client.subscribe(t.filters(s.qos))
            await client.publish(t.availability, b"online", qos=1, retain=True)
            log.info("mqtt_connected", url=s.url, client_id=client.identifier, prefix=s.prefix)
            requests: asyncio.Queue[_PredictJob] = asyncio.Queue(PREDICT_QUEUE)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._receive(client, s, t, requests), name="mqtt.rx")
                    tg.create_task(self._predict(client, s, t, requests), name="mqtt.predict")
                    tg.create_task(self._announce(client, s, t), name="mqtt.announce")
                    tg.create_task(self._until_restart(), name="mqtt.restart")
            finally:
                # A deliberate leave (reload, stop) says so; a lost connection leaves it to the
                # broker's last will.
                await self._leave(client, s, t)

    async def _until_restart(self) -> None:
        await self._restart.wait()
        raise _Restart

    async def _leave(self, client: aiomqtt.Client, s: MqttSettings, t: Topics) -> None:
        new = self._settings
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
            async with asyncio.timeout(LEAVE_TIMEOUT_S):
                renamed = self._node != t.node
                moved = new is None or new.url != s.url or (new.prefix, new.discovery_prefix) \
                    != (s.prefix, s.discovery_prefix) or renamed
                if self._restart.is_set() and moved:
                    # The session persists: without this the broker would keep queueing
                    # messages on the old topics for us.
                    await client.unsubscribe([f for f, _ in t.filters(s.qos)])
                if self._restart.is_set() and renamed:
                    # The new name is a new Home Assistant device: remove the old entities.
                    for app in self._discovered:
                        await client.publish(t.discovery(app), b"", qos=1, retain=True)
                await client.publish(t.availability, b"offline", qos=1, retain=True)

    def _disconnected(self) -> None:
        self.connected = False
        self._metrics.mqtt_connected.set(0)

    def _inbox_full(self, message: aiomqtt.Message) -> None:
        self._metrics.mqtt_incoming_dropped.inc()
        log.warning("mqtt_inbox_full", topic=message.topic.value, qos=message.qos)
        if message.qos > 0:
            # Never acked, so the broker still owns it, but it would hold an in-flight slot
            # until we reconnect: reconnect now and let the broker redeliver it.
            self._restart.set()

    # -- receiving ------------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client, s: MqttSettings, t: Topics,
                       requests: asyncio.Queue[_PredictJob]) -> None:
        async for message in client.messages:
            topic = message.topic.value
            if topic == t.ha_status:
                self._metrics.mqtt_received.labels("ha_status").inc()
                if message.payload in (b"online", "online"):
                    log.info("mqtt_home_assistant_online")
                    self._rediscover = True
                    self._wake.set()
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
                        self._on_broker.add(parsed[0])
                        self._wake.set()
                elif kind == "samples":
                    await self._samples(client, parsed[0], _decode(message, s), requests)
                    _observe_ack(self._metrics, message)
                elif kind == "feedback":
                    await self._feedback(parsed[0], _decode(message, s))
                    _observe_ack(self._metrics, message)
            except _Rejected as exc:
                self._metrics.mqtt_bad_payloads.labels(exc.reason).inc()
                log.warning("mqtt_message_rejected", topic=topic, reason=exc.reason,
                            status=exc.status, error=exc.error, details=exc.details[:5])
                if parsed is not None:
                    ref = getattr(exc, "ref", None)
                    await self._publish_json(client, t.app(parsed[0], "errors"), s.qos, {
                        "ref": ref, "status": exc.status, "error": exc.error,
                        "details": exc.details}, "error")
            _ack(client, message)

    async def _samples(self, client: aiomqtt.Client, app: str, obj: Any,
                       requests: asyncio.Queue[_PredictJob]) -> None:
        """Labelled items: commit, awaiting the answer (backpressure). Unlabelled: queue a
        prediction, shedding the oldest request when the queue is full."""
        if isinstance(obj, dict) and "samples" in obj:
            items, batch_id, ref = obj["samples"], obj.get("batch_id"), obj.get("ref")
        else:
            items, batch_id, ref = [obj], obj.get("batch_id") if isinstance(obj, dict) \
                else None, None
        if not isinstance(items, list) or not items or not all(
                isinstance(i, dict) and "features" in i for i in items):
            raise _ref(_Rejected("wrong_shape", 422, 'expected {"features": [...], "label"?, '
                                 '"ref"?} or {"samples": [...]}'), obj)
        labelled = [i for i in items if i.get("label") is not None]
        if labelled:
            payload: dict[str, Any] = {"samples": [{"features": i["features"],
                                                    "label": i["label"]} for i in labelled]}
            if batch_id is not None:
                payload["batch_id"] = batch_id
            try:
                await self._deliver(lambda f: IngestSamples(app=app, payload=payload,
                                                            source="mqtt", reply=f), app)
            except _Rejected as exc:
                exc.ref = labelled[0].get("ref", ref)  # type: ignore[attr-defined]
                raise
        for item in items:
            if item.get("label") is not None:
                continue
            job = _PredictJob(app, item["features"], item.get("ref", ref))
            if requests.full():
                requests.get_nowait()  # the oldest request is the least useful one
                self._metrics.mqtt_predictions_shed.inc()
            requests.put_nowait(job)

    async def _feedback(self, app: str, obj: Any) -> None:
        if not isinstance(obj, dict) or "prediction_id" not in obj or "label" not in obj:
            raise _ref(_Rejected("wrong_shape", 422,
                                 'expected {"prediction_id": "...", "label": "..."}'), obj)
        await self._deliver(lambda f: SubmitFeedback(app=app, payload=obj, reply=f), app)

    async def _deliver(self, make: Callable[[asyncio.Future[Any]], Any], app: str) -> Any:
        """Ask the server until it answers: a transient failure is retried with back-off (the
        message stays unacknowledged meanwhile), a rejection raises _Rejected."""
        delay = 0.1
        while True:
            try:
                return await self._server.ask(make, timeout=ASK_TIMEOUT_S)
            except BadInput as exc:
                if exc.status < 500:
                    reason = "unknown_app" if exc.status == 404 and "app" in exc.message \
                        else "invalid"
                    raise _Rejected(reason, exc.status, exc.message, exc.details) from None
                error = exc.message
            except (TimeoutError, ActorStopped, StoreError) as exc:
                error = str(exc) or type(exc).__name__
            except Exception as exc:  # a server bug: never wedge the bridge on one message
                log.exception("mqtt_delivery_failed", app=app)
                raise _Rejected("server_error", 500, repr(exc)) from None
            self._metrics.mqtt_delivery_retries.inc()
            log.warning("mqtt_delivery_retry", app=app, error=error, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX_S, delay * 2)

    # -- predicting -----------------------------------------------------------------------------

    async def _predict(self, client: aiomqtt.Client, s: MqttSettings, t: Topics,
                       requests: asyncio.Queue[_PredictJob]) -> None:
        """Answer queued requests, those of one app together in one Predict (micro-batch)."""
        while True:
            jobs = [await requests.get()]
            while len(jobs) < PREDICT_BATCH and not requests.empty():
                jobs.append(requests.get_nowait())
            by_app: dict[str, list[_PredictJob]] = {}
            for job in jobs:
                by_app.setdefault(job.app, []).append(job)
            for app, group in by_app.items():
                answers = await self._answers(app, group)
                async with asyncio.TaskGroup() as tg:
                    for job, answer in zip(group, answers, strict=True):
                        if isinstance(answer, BadInput):
                            out, topic, kind = {"ref": job.ref, "status": answer.status,
                                                "error": answer.message,
                                                "details": answer.details}, "errors", "error"
                        else:
                            out, topic, kind = {"ref": job.ref, **answer}, "predictions", \
                                "prediction"
                        tg.create_task(self._publish_json(client, t.app(app, topic), s.qos,
                                                          out, kind))

    async def _answers(self, app: str, jobs: list[_PredictJob]) -> list[Any]:
        """One prediction dict or BadInput per job; a bad instance is found by asking alone."""
        try:
            return await self._server.ask(lambda f: Predict(
                app=app, instances=tuple(j.features for j in jobs), reply=f),
                timeout=ASK_TIMEOUT_S)
        except BadInput as exc:
            if exc.status == 422 and len(jobs) > 1:
                return [a for j in jobs for a in await self._answers(app, [j])]
            if exc.status == 404:
                self._metrics.mqtt_bad_payloads.labels("unknown_app").inc(len(jobs))
            elif exc.status < 500:
                self._metrics.mqtt_bad_payloads.labels("invalid").inc(len(jobs))
            return [exc] * len(jobs)
        except (TimeoutError, ActorStopped) as exc:
            return [BadInput(503, f"not answered: {exc or 'timed out'}")] * len(jobs)

    # -- announcing: status, state, Home Assistant discovery ------------------------------------

    async def _announce(self, client: aiomqtt.Client, s: MqttSettings, t: Topics) -> None:
        """Publish retained status and discovery once per connect and on change, the latest
        state when a prediction happened, and clear what belonged to a deleted app."""
        published: dict[str, dict[str, Any]] = {}
        self._dirty |= set(self._latest)
        next_poll = 0.0
        while True:
            self._wake.clear()
            if time.monotonic() >= next_poll or self._rediscover or self._on_broker - set(
                    published):
                next_poll = time.monotonic() + STATUS_EVERY_S
                await self._sync_apps(client, s, t, published)
            for app in list(self._dirty):
                self._dirty.discard(app)
                if app in published:
                    await self._publish_json(client, t.app(app, "state"), s.qos,
                                             self._latest[app], "state", retain=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_poll - time.monotonic())):
                    await self._wake.wait()
            await asyncio.sleep(0.02)  # let a burst of predictions coalesce into one state

    async def _sync_apps(self, client: aiomqtt.Client, s: MqttSettings, t: Topics,
                         published: dict[str, dict[str, Any]]) -> None:
        try:
            apps = await self._server.ask(lambda f: GetServerStatus(reply=f), timeout=5.0)
        except (TimeoutError, ActorStopped):
            return
        rediscover, self._rediscover = self._rediscover, False
        for app, info in apps.items():
            if app not in published or rediscover:
                await self._publish_json(client, t.discovery(app), 1,
                                         self._discovery(app, s, t), "discovery", retain=True)
                self._discovered.add(app)
                if app in self._latest:
                    self._dirty.add(app)
            status = {k: info.get(k) for k in ("model_version", "ready", "accuracy",
                                               "n_samples")}
            if published.get(app) != status:
                await self._publish_json(client, t.app(app, "status"), 1, status, "status",
                                         retain=True)
                published[app] = status
        for app in (set(published) | self._on_broker) - set(apps):
            # Deleted: empty retained payloads remove the entity and the stale topics.
            for topic in (t.discovery(app), t.app(app, "status"), t.app(app, "state")):
                await client.publish(topic, b"", qos=1, retain=True)
            published.pop(app, None)
            self._on_broker.discard(app)
            self._discovered.discard(app)
            self._latest.pop(app, None)
            log.info("mqtt_app_removed", app=app)

    def _discovery(self, app: str, s: MqttSettings, t: Topics) -> dict[str, Any]:
        """A Home Assistant sensor: state is the last label, the JSON's other keys
        (confidence, model_version) are attributes."""
        state = t.app(app, "state")
        return {
            "name": app,
            "unique_id": f"mliot_{self._node}_{app}",
            "state_topic": state,
            "value_template": "{{ value_json.label }}",
            "json_attributes_topic": state,
            "availability_topic": t.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
            "qos": min(s.qos, 1),
            "icon": "mdi:brain",
            "device": {"identifiers": [f"mliot_{self._node}"], "name": f"mliot {self._machine}",
                       "manufacturer": "mliot", "model": "mliot daemon",
                       "sw_version": __version__},
            "origin": {"name": "mliot", "sw_version": __version__},
        }

    async def _publish_json(self, client: aiomqtt.Client, topic: str, qos: int, payload: Any,
                            kind: str, retain: bool = False) -> None:
        await client.publish(topic, orjson.dumps(payload), qos=qos, retain=retain)
        self._metrics.mqtt_published.labels(kind).inc()


def _decode(message: aiomqtt.Message, s: MqttSettings) -> Any:
    payload = message.payload
    raw = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
    if len(raw) > s.max_payload_kb * 1024:
        raise _Rejected("too_large", 413, f"payload of {len(raw)} bytes is over "
                                          f"mqtt.max_payload_kb = {s.max_payload_kb}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Rejected("not_json", 400, f"malformed JSON: {exc}") from None


def _ref(exc: _Rejected, obj: Any) -> _Rejected:
    exc.ref = obj.get("ref") if isinstance(obj, dict) else None  # type: ignore[attr-defined]
    return exc


def _ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """PUBACK (or PUBCOMP) now: the message is committed, rejected, or needs no commit."""
    if message.qos > 0:
        client._client.ack(message.mid, message.qos)


def _observe_ack(metrics: Metrics, message: aiomqtt.Message) -> None:
    received = getattr(message, "received_at", None)
    if received is not None and message.qos > 0:
        metrics.mqtt_ack_seconds.observe(time.perf_counter() - received)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
