"""The MQTT bridge: the daemon's MQTT client (aiomqtt 2.x).

Owns the broker session (``session``: connect, receive, acknowledge after commit, reconnect;
``requests``: prediction requests; ``readings``: stream apps' channel topics), what it
announces (``discovery``: retained status, state and activity, Home Assistant discovery) and
the topics and payloads (``topics``); ``actor`` is its mailbox.

May import: aiomqtt (inside the daemon only this package does; ``mliot demo --sensors`` is a
client and publishes with it too), the shared core (``mliot_daemon``: messages,
runtime, metrics, errors, settings). It reaches the serving core only through the server's
ref, with typed messages, and gets domain errors back: it knows nothing of HTTP.
"""

from actors.mqtt.actor import MqttBridge

__all__ = ["MqttBridge"]
