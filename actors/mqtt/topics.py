"""MQTT topics and payloads: every topic of one configuration, the bridge's shared state, and
how a payload is decoded or refused.

Topics (``P`` = ``mqtt.prefix``, ``D`` = ``mqtt.discovery_prefix``, ``N`` = daemon name):

  in   P/{app}/samples      one ``{"features", "label"?, "ref"?}`` or ``{"samples": [...],
                            "batch_id"?}``: labelled items are training data, unlabelled ones
                            prediction requests
  in   P/{app}/feedback     ``{"prediction_id", "label"}``
  out  P/{app}/predictions  the prediction fields plus the request's ``ref``
  out  P/{app}/errors       ``{"ref", "kind", "error", "details"}`` for a refused message;
                            ``kind`` is the domain error's (``mliot_daemon.errors``)
  out  P/{app}/status       retained ``{"model_version", "ready", "accuracy", "n_samples"}``
  out  P/{app}/state        retained ``{"label", "confidence", "model_version"}``: the last
                            prediction from any channel (Home Assistant's state topic)
  out  P/{app}/query        retained: the open label query (``GET /v1/apps/{app}/queries``'
                            first), an empty payload when none is open
  out  P/availability       retained ``online``; last will ``offline``
  out  D/sensor/mliot_{N}_{app}/config  retained Home Assistant discovery
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


@dataclass(eq=False)
class BridgeState:
    """What the bridge's mailbox, its session and its announcer share (all on one loop)."""

    settings: MqttSettings | None
    machine: str  # the daemon's name
    restart: asyncio.Event = field(default_factory=asyncio.Event)  # leave the session
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # the announcer has work
    rediscover: bool = False  # Home Assistant said `online`: send every discovery again
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)  # app -> last prediction
    dirty: set[str] = field(default_factory=set)  # apps whose state is not yet published
    queries: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # the open ones
    dirty_queries: set[str] = field(default_factory=set)  # apps whose query is not published
    on_broker: set[str] = field(default_factory=set)  # apps with a retained status there
    discovered: set[str] = field(default_factory=set)  # apps announced this session
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
