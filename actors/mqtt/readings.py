"""Stream readings from the topics sensors already publish (Zigbee2MQTT, Tasmota, Home
Assistant's ``mqtt_statestream``): each message is read at the time it arrived, its value taken
from the channel's JSON field (``ENERGY.Power`` reaches into nested objects) or, without a
field, from the bare payload. Numbers, numeric text, booleans and ON/OFF are values.

Readings are committed in groups: while one group commits, new messages gather for the next,
and each message is acknowledged (PUBACK) only after the group holding it committed, in the
order they arrived. A message with nothing usable is counted, logged (once a minute per channel
and reason) and acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import orjson
import structlog

from mliot_daemon.metrics import Metrics
from mliot_daemon.windows import numeric

log = structlog.get_logger("mliot.mqtt")

MAX_PENDING = 5000  # messages waiting for their group's commit; beyond, the receiver waits
LOG_EVERY_S = 60.0

# topic -> [(app, JSON field, channel)]
Sources = dict[str, list[tuple[str, str, str]]]


def value_of(payload: bytes, field: str) -> tuple[float | None, str]:
    """(the value, "") or (None, why)."""
    try:
        obj: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        obj = payload.decode("utf-8", "replace")  # ON, OFF, or text that is no number
    if field:
        for key in field.split("."):
            if not isinstance(obj, dict) or key not in obj:
                return None, "missing_field"
            obj = obj[key]
    elif isinstance(obj, dict | list):
        return None, "missing_field"
    value = numeric(obj)
    return (value, "") if value is not None else (None, "not_numeric")


class ReadingsInbox:
    """Readings gathered from channel topics, committed and acknowledged in groups."""

    def __init__(self, deliver: Callable[[str, list[dict[str, Any]]], Awaitable[Any]],
                 ack: Callable[[aiomqtt.Message], None], metrics: Metrics) -> None:
        self._deliver = deliver  # commits one app's readings (retrying what is transient)
        self._ack = ack
        self._metrics = metrics
        self._readings: dict[str, list[dict[str, Any]]] = {}
        self._messages: list[aiomqtt.Message] = []
        self._task: asyncio.Task[None] | None = None
        self._logged: dict[tuple[str, str, str], float] = {}

    async def offer(self, message: aiomqtt.Message, sources: list[tuple[str, str, str]]
                    ) -> None:
        """Take a message from a channel topic; waits only when MAX_PENDING are pending."""
        received = getattr(message, "received_at", None)
        t = time.time() - (time.perf_counter() - received if received is not None else 0.0)
        payload = message.payload
        raw = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
        for app, field, channel in sources:
            value, why = value_of(bytes(raw), field)
            if value is None:
                self._refused(app, channel, why, message.topic.value)
                continue
            self._readings.setdefault(app, []).append(
                {"t": t, "channel": channel, "value": value})
        self._messages.append(message)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="mqtt.readings")
        if len(self._messages) >= MAX_PENDING:
            await self.drain()

    async def drain(self) -> None:
        """Wait until every message taken so far is committed and acknowledged (before a
        message of another kind is handled, so acknowledgements stay in arrival order)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _flush(self) -> None:
        while self._messages:
            readings, self._readings = self._readings, {}
            messages, self._messages = self._messages, []
            for app, items in readings.items():
                await self._deliver(app, items)
            for message in messages:
                self._ack(message)

    def _refused(self, app: str, channel: str, why: str, topic: str) -> None:
        self._metrics.readings_rejected.labels(app, why).inc()
        now = time.monotonic()
        if now - self._logged.get((app, channel, why), -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged[(app, channel, why)] = now
            log.warning("mqtt_reading_refused", app=app, channel=channel, topic=topic,
                        reason=why, note="logged once a minute; see "
                        "mliot_readings_rejected_total")
