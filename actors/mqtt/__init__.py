"""The MQTT bridge: the daemon's only MQTT client (aiomqtt 2.x).

Owns the broker session (``session``: connect, receive, predict, acknowledge after commit,
reconnect), what it announces (``discovery``: retained status and state, Home Assistant
discovery) and the topics and payloads (``topics``); ``actor`` is its mailbox.

May import: aiomqtt (only this package does), the shared core (``mliot_daemon``: messages,
runtime, metrics, errors, settings). It reaches the serving core only through the server's
ref, with typed messages, and gets domain errors back: it knows nothing of HTTP.
"""

from actors.mqtt.actor import MqttBridge

__all__ = ["MqttBridge"]
