"""MQTT topics and payloads: every topic of one configuration, the bridge's shared state, and
how a payload is decoded or refused.

Topics (``P`` = ``mqtt.prefix``, ``D`` = ``mqtt.discovery_prefix``, ``N`` = daemon name):

  in   P/{app}/samples      one ``{"features", "label"?, "ref"?}`` or ``{"samples": [...],
                            "batch_id"?}``: labelled items are training data, unlabelled ones
                            prediction requests
  in   P/{app}/feedback     ``{"prediction_id", "label"}``
  in   P/{app}/correct      a bare label (Home Assistant's select), or ``{"label",
                            "prediction_id"?}``: corrects that prediction, else the open label
                            query, else the latest prediction
  in   P/{app}/confirm      anything (Home Assistant's button): confirms the open query, else
                            the latest prediction
  in   P/{app}/happening    a stream app's class (Home Assistant's "what is happening" select)
                            opens a time-range label, closing the open one; ``none`` closes it
  in   a channel's topic    a stream app's readings (``actors/mqtt/readings``), any topic
  out  P/{app}/predictions  the prediction fields plus the request's ``ref``
  out  P/{app}/errors       ``{"ref", "kind", "error", "details"}`` for a refused message;
                            ``kind`` is the domain error's (``mliot_daemon.errors``)
  out  P/{app}/status       retained ``{"model_version", "ready", "accuracy", "n_samples"}``
  out  P/{app}/state        retained ``{"label", "prediction_id", "confidence", "margin",
                            "at"}``: the last prediction from any channel (Home Assistant's
                            state topic)
  out  P/{app}/event        an ``announce_as = "event"`` app's predictions (not retained):
                            ``{"event_type": label, "prediction_id", "confidence", "margin",
                            "at"}``, the last of each 20 ms burst
  out  P/{app}/activity     retained ``{"label", "since"}``: a stream app's debounced activity
  out  P/{app}/query        retained: the open label query (``GET /v1/apps/{app}/queries``'
                            first), an empty payload when none is open
  out  P/{N}/availability   retained ``online``; last will ``offline`` (per daemon: several share
                            a broker; the old ``P/availability`` is cleared on connect)
  out  D/{component}/mliot_{N}_{app}{suffix}/config  retained Home Assistant discovery, one
                            per ``ENTITIES``
  in   D/status             ``online``: Home Assistant restarted, discovery is re-sent
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import orjson

from mliot_daemon.metrics import Metrics
from mliot_daemon.settings import MqttSettings

_UNSAFE = re.compile(r"[^a-z0-9_-]")
# an app's Home Assistant entities: key -> (component, unique id suffix)
ENTITIES = {"label": ("sensor", ""), "event": ("event", ""), "correct": ("select", "_correct"),
            "confirm": ("button", "_confirm"), "happening": ("select", "_happening"),
            "version": ("sensor", "_version"),
            "feedback_accuracy": ("sensor", "_feedback_accuracy"),
            "samples": ("sensor", "_samples"), "training": ("sensor", "_training")}


def node_id(machine_name: str) -> str:
    """The daemon's name reduced to ``[a-z0-9_-]``: its topics, client id and entity ids."""
    return _UNSAFE.sub("_", machine_name.lower()) or "mliot"


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic of one configuration."""

    prefix: str
    discovery_prefix: str
    node: str

    @property
    def availability(self) -> str:
        return f"{self.prefix}/{self.node}/availability"

    @property
    def shared_availability(self) -> str:
        """Where every daemon announced itself before: cleared, so none marks another off."""
        return f"{self.prefix}/availability"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    def app(self, app: str, kind: str) -> str:
        return f"{self.prefix}/{app}/{kind}"

    def unique_id(self, app: str, entity: str = "label") -> str:
        return f"mliot_{self.node}_{app}{ENTITIES[entity][1]}"

    def discovery(self, app: str, entity: str = "label") -> str:
        return f"{self.discovery_prefix}/{ENTITIES[entity][0]}/{self.unique_id(app, entity)}/config"

    def discoveries(self, app: str) -> list[str]:
        """Every discovery topic of an app (cleared when it goes)."""
        return [self.discovery(app, c) for c in ENTITIES]

    def filters(self, qos: int) -> list[tuple[str, int]]:
        """What the bridge subscribes to. Our own retained statuses come back once per connect,
        which tells us about apps deleted while we were away."""
        return [(f"{self.prefix}/+/samples", qos), (f"{self.prefix}/+/feedback", qos),
                (f"{self.prefix}/+/correct", qos), (f"{self.prefix}/+/confirm", qos),
                (f"{self.prefix}/+/happening", qos),
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


@dataclass(eq=False)
class BridgeState:
    """What the bridge's mailbox, its session and its announcer share (all on one loop)."""

    settings: MqttSettings | None
    machine: str  # the daemon's name
    public_url: str = ""  # the dashboard's address: Home Assistant's configuration_url
    restart: asyncio.Event = field(default_factory=asyncio.Event)  # leave the session
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # the announcer has work
    rediscover: bool = False  # Home Assistant said `online`: send every discovery again
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)  # app -> last prediction
    dirty: set[str] = field(default_factory=set)  # apps whose state is not yet published
    queries: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # the open ones
    event_apps: set[str] = field(default_factory=set)  # announced as Home Assistant events
    dirty_queries: set[str] = field(default_factory=set)  # apps whose query is not published
    activity: dict[str, dict[str, Any]] = field(default_factory=dict)  # stream apps' activity
    dirty_activity: set[str] = field(default_factory=set)
    stream_apps: set[str] = field(default_factory=set)
    sources: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # see readings
    subscribed: set[str] = field(default_factory=set)  # channel topics of this session
    on_broker: set[str] = field(default_factory=set)  # apps with a retained status there
    # app -> (its classes, announced as an event, a stream app) as last announced
    discovered: dict[str, tuple[tuple[str, ...], bool, bool]] = field(default_factory=dict)
    connected: bool = False
    sessions: int = 0  # successful connects

    @property
    def node(self) -> str:
        return node_id(self.machine)


class Rejected(Exception):
    """A message that can never succeed: count it (``reason``), report it on the app's
    ``errors`` topic (``kind``), acknowledge it."""

    def __init__(self, reason: str, kind: str, error: str, details: list[str] | None = None,
                 ref: Any = None) -> None:
        super().__init__(error)
        self.reason, self.kind, self.error, self.details = reason, kind, error, details or []
        self.ref = ref

    def payload(self) -> dict[str, Any]:
        return {"ref": self.ref, "kind": self.kind, "error": self.error, "details": self.details}


def stop_if_cancelled() -> None:
    """Raise CancelledError when this task was asked to stop. Python 3.11's asyncio.wait_for
    (under every aiomqtt publish and subscribe) returns a result that arrives together with a
    cancellation and drops the cancellation (gh-86296), so a session's loops look for
    themselves: without this, a SIGTERM during a publish left the bridge running. Only the
    session's own tasks call it: ``Connection.run``'s task carries a cancel request left over
    from a lost session (it would then never reconnect)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def decode(message: aiomqtt.Message, s: MqttSettings) -> Any:
    """A message's JSON; ``Rejected`` when it is too large or not JSON."""
    payload = message.payload
    raw = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
    if len(raw) > s.max_payload_kb * 1024:
        raise Rejected("too_large", "too_large", f"payload of {len(raw)} bytes is over "
                                                 f"mqtt.max_payload_kb = {s.max_payload_kb}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejected("not_json", "malformed", f"malformed JSON: {exc}") from None


def ref_of(obj: Any) -> Any:
    return obj.get("ref") if isinstance(obj, dict) else None


async def publish_json(client: aiomqtt.Client, metrics: Metrics, topic: str, qos: int,
                       payload: Any, kind: str, retain: bool = False) -> None:
    """Publish one JSON payload and count it by ``kind``."""
    await client.publish(topic, orjson.dumps(payload), qos=qos, retain=retain)
    metrics.mqtt_published.labels(kind).inc()
