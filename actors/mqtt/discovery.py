"""What the bridge announces: each app's retained status and state, and its Home Assistant
discovery config (a sensor whose state is the last predicted label), cleared when the app is
deleted. Published once per connect, on change, and again when Home Assistant restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiomqtt
import structlog

from actors.mqtt.topics import BridgeState, Topics, publish_json, stop_if_cancelled
from mliot_daemon import __version__
from mliot_daemon.messages import GetServerStatus, ServerMsg
from mliot_daemon.metrics import Metrics
from mliot_daemon.runtime import ActorRef, ActorStopped
from mliot_daemon.settings import MqttSettings

log = structlog.get_logger("mliot.mqtt")

STATUS_EVERY_S = 1.0
# the retained status: what devices read, and the diagnostic entities' state
STATUS_KEYS = {"model_version": "model_version", "ready": "ready", "accuracy": "accuracy",
               "n_samples": "n_samples", "feedback_accuracy": "feedback_accuracy",
               "training": "training_state"}  # status key: /v1/status app key


class Announcer:
    """Runs beside a session's receiver: it owns what the bridge publishes on its own."""

    def __init__(self, state: BridgeState, server: ActorRef[ServerMsg], metrics: Metrics,
                 client: aiomqtt.Client, s: MqttSettings, t: Topics) -> None:
        self._state = state
        self._server = server
        self._metrics = metrics
        self._client, self._s, self._t = client, s, t

    async def run(self) -> None:
        """Publish retained status and discovery once per connect and on change, the latest
        state when a prediction happened, and clear what belonged to a deleted app."""
        state, s, t = self._state, self._s, self._t
        published: dict[str, dict[str, Any]] = {}
        state.dirty |= set(state.latest)
        state.dirty_queries |= set(state.queries)
        next_poll = 0.0
        while True:
            stop_if_cancelled()
            state.wake.clear()
            if time.monotonic() >= next_poll or state.rediscover or state.on_broker - set(
                    published):
                next_poll = time.monotonic() + STATUS_EVERY_S
                await self._sync_apps(published)
            for app in list(state.dirty):
                state.dirty.discard(app)
                if app in published:
                    last = state.latest[app]
                    await publish_json(self._client, self._metrics, t.app(app, "state"), s.qos,
                                       last, "state", retain=True)
                    if app in state.event_apps:  # fired once: never retained
                        payload = {"event_type": last["label"],
                                   **{k: v for k, v in last.items() if k != "label"}}
                        await publish_json(self._client, self._metrics, t.app(app, "event"),
                                           s.qos, payload, "event")
            for app in list(state.dirty_activity):
                state.dirty_activity.discard(app)
                await publish_json(self._client, self._metrics, t.app(app, "activity"), 1,
                                   state.activity[app], "activity", retain=True)
            for app in list(state.dirty_queries):
                state.dirty_queries.discard(app)
                query = state.queries.get(app)
                if query is None:  # none open: clear the retained one
                    await self._client.publish(t.app(app, "query"), b"", qos=1, retain=True)
                else:
                    await publish_json(self._client, self._metrics, t.app(app, "query"), 1,
                                       query, "query", retain=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_poll - time.monotonic())):
                    await state.wake.wait()
            await asyncio.sleep(0.02)  # let a burst of predictions coalesce into one state

    async def _sync_apps(self, published: dict[str, dict[str, Any]]) -> None:
        state, client, t = self._state, self._client, self._t
        try:
            apps = await self._server.ask(lambda f: GetServerStatus(reply=f), timeout=5.0)
        except (TimeoutError, ActorStopped):
            return
        rediscover, state.rediscover = state.rediscover, False
        await self._subscribe(apps)
        for app, info in apps.items():
            labels = tuple(info.get("labels") or ())
            # Home Assistant's enum sensor and select need the classes: announced once two are
            # known, and again whenever they change
            event = info.get("announce_as") == "event"
            stream = bool(info.get("stream"))
            announced = (labels, event, stream)
            if len(labels) >= 2 and (state.discovered.get(app) != announced or rediscover):
                state.event_apps.discard(app)
                if event:
                    state.event_apps.add(app)
                for key, config in self._discovery(app, labels, event, stream).items():
                    if config is None:  # the other way to show the label: remove it
                        await client.publish(t.discovery(app, key), b"", qos=1, retain=True)
                    else:
                        await publish_json(client, self._metrics, t.discovery(app, key), 1,
                                           config, "discovery", retain=True)
                state.discovered[app] = announced
                if app in state.latest:
                    state.dirty.add(app)
            status = {k: info.get(key) for k, key in STATUS_KEYS.items()}
            if published.get(app) != status:
                await publish_json(client, self._metrics, t.app(app, "status"), 1, status,
                                   "status", retain=True)
                published[app] = status
        for app in (set(published) | state.on_broker) - set(apps):
            # Deleted: empty retained payloads remove the entities and the stale topics.
            for topic in (*t.discoveries(app), t.app(app, "status"), t.app(app, "state"),
                          t.app(app, "query"), t.app(app, "activity")):
                await client.publish(topic, b"", qos=1, retain=True)
            published.pop(app, None)
            state.on_broker.discard(app)
            state.discovered.pop(app, None)
            state.latest.pop(app, None)
            state.queries.pop(app, None)
            state.activity.pop(app, None)
            state.event_apps.discard(app)
            log.info("mqtt_app_removed", app=app)

    async def _subscribe(self, apps: dict[str, Any]) -> None:
        """Follow the stream apps' channel topics (the status says which)."""
        state, client = self._state, self._client
        sources: dict[str, list[tuple[str, str, str]]] = {}
        for app, info in apps.items():
            for topic, field, channel in info.get("sources") or ():
                sources.setdefault(topic, []).append((app, field, channel))
        state.sources = sources
        new, gone = set(sources) - state.subscribed, state.subscribed - set(sources)
        if new:
            await client.subscribe([(topic, self._s.qos) for topic in sorted(new)])
        if gone:
            await client.unsubscribe(sorted(gone))
        if new or gone:
            log.info("mqtt_channels_followed", topics=sorted(sources))
        state.subscribed = set(sources)

    def _discovery(self, app: str, labels: tuple[str, ...], event: bool, stream: bool
                   ) -> dict[str, dict[str, Any] | None]:
        """Home Assistant's entities of an app (fields checked against its MQTT discovery
        documentation): an ``enum`` sensor whose state is the last label (the state's other
        keys are attributes), or for an ``announce_as = "event"`` app an ``event`` entity
        whose event types are the classes (None: the one not used, to be removed); a
        ``select`` of the classes that corrects what was predicted, a ``button`` that
        confirms it, and diagnostic sensors read from the status topic. A stream app's sensor
        shows its activity, and a second ``select`` ("what is happening", the classes and
        ``none``) labels time ranges."""
        state, s, t = self._state, self._s, self._t
        topic = t.app(app, "state")
        device = {"identifiers": [f"mliot_{t.node}"], "name": f"mliot {state.machine}",
                  "manufacturer": "mliot", "model": "mliot daemon", "sw_version": __version__}
        if state.public_url:
            device["configuration_url"] = state.public_url

        def entity(key: str, name: str, **fields: Any) -> dict[str, Any]:
            return {"name": name, "unique_id": t.unique_id(app, key),
                    "availability_topic": t.availability, "payload_available": "online",
                    "payload_not_available": "offline", "qos": min(s.qos, 1), "device": device,
                    "origin": {"name": "mliot", "sw_version": __version__}, **fields}

        def diagnostic(key: str, name: str, field: str, **fields: Any) -> dict[str, Any]:
            return entity(key, f"{app} {name}", state_topic=t.app(app, "status"),
                          value_template=f"{{{{ value_json.{field} }}}}",
                          entity_category="diagnostic", **fields)

        # a stream app shows its debounced activity, not each window's label
        shown = t.app(app, "activity") if stream else topic
        return {
            "label": None if event else entity(
                "label", app, state_topic=shown, value_template="{{ value_json.label }}",
                json_attributes_topic=shown, device_class="enum", options=list(labels),
                icon="mdi:brain"),
            "happening": entity("happening", f"{app} what is happening",
                                command_topic=t.app(app, "happening"),
                                options=[*labels, "none"], icon="mdi:calendar-clock")
            if stream else None,
            "event": entity("event", app, state_topic=t.app(app, "event"),
                            event_types=list(labels), icon="mdi:bell-ring") if event else None,
            "correct": entity("correct", f"{app} correct", command_topic=t.app(app, "correct"),
                              options=list(labels), icon="mdi:tag-edit"),
            "confirm": entity("confirm", f"{app} confirm", command_topic=t.app(app, "confirm"),
                              icon="mdi:check"),
            "version": diagnostic("version", "model version", "model_version",
                                  icon="mdi:source-branch"),
            "feedback_accuracy": diagnostic("feedback_accuracy", "feedback accuracy",
                                            "feedback_accuracy", state_class="measurement",
                                            icon="mdi:bullseye-arrow"),
            "samples": diagnostic("samples", "samples", "n_samples", state_class="measurement",
                                  icon="mdi:database"),
            "training": diagnostic("training", "training", "training", icon="mdi:cogs"),
        }
