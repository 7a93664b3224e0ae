"""The MQTT bridge actor: devices publish samples and corrections, read predictions and status,
and Home Assistant discovers one sensor per app. Idle while the ``[mqtt]`` section is absent.

Its mailbox takes config changes (a new broker, prefix or daemon name restarts the session
under the new client id and topics) and ``Predicted`` telemetry (``offer``), which only updates
the latest state per app; the connection (``session``) and the announcer (``discovery``) run
beside it and share ``BridgeState``.
"""

from __future__ import annotations

from typing import assert_never

import structlog

from actors.mqtt.session import Connection
from actors.mqtt.topics import BridgeState
from mliot_daemon.messages import (
    ActivityChanged,
    ApplyConfig,
    MqttMsg,
    Predicted,
    QueryChanged,
    Refs,
)
from mliot_daemon.metrics import Metrics
from mliot_daemon.runtime import Actor
from mliot_daemon.settings import Settings

log = structlog.get_logger("mliot.mqtt")


class MqttBridge(Actor[MqttMsg]):
    """Connects the daemon to an MQTT broker."""

    name = "mqtt"
    config_keys = frozenset({"mqtt", "daemon.name", "daemon.public_url"})

    def __init__(self, settings: Settings, refs: Refs, metrics: Metrics) -> None:
        super().__init__(refs.mqtt)
        self.state = BridgeState(settings.mqtt, settings.daemon.machine_name,
                                 settings.daemon.public_url)
        self._connection = Connection(self.state, refs.server, metrics)

    def background(self) -> list:
        return [self._connection.run()]

    async def handle(self, msg: MqttMsg) -> None:
        state = self.state
        match msg:
            case ApplyConfig(settings=settings):
                machine = settings.daemon.machine_name
                if settings.daemon.public_url != state.public_url:
                    state.public_url = settings.daemon.public_url
                    state.rediscover = True  # the device's configuration_url changed
                    state.wake.set()
                if settings.mqtt != state.settings or machine != state.machine:
                    # a new name is a new client id, topics and Home Assistant device: the
                    # session restarts under it
                    log.info("mqtt_config_applied", enabled=settings.mqtt is not None,
                             name=machine)
                    state.settings, state.machine = settings.mqtt, machine
                    state.restart.set()
            case Predicted(app=app, label=label, prediction_id=prediction_id,
                           confidence=confidence, margin=margin, at=at):
                state.latest[app] = {"label": label, "prediction_id": prediction_id,
                                     "confidence": confidence, "margin": margin, "at": at}
                state.dirty.add(app)
                state.wake.set()
            case QueryChanged(app=app, query=query):
                state.queries[app] = query
                state.dirty_queries.add(app)
                state.wake.set()
            case ActivityChanged(app=app, label=label, since=since):
                state.activity[app] = {"label": label, "since": since}
                state.dirty_activity.add(app)
                state.wake.set()
            case _:
                assert_never(msg)
