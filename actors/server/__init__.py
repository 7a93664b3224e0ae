"""The server: the serving core and every surface that reaches it.

Owns the app catalog, the served models and their routes (``core``, ``routing``,
``serving``, ``catalog``), the HTTP application (``http``: the middleware and the one map from
domain errors to status codes) and its surfaces — v1 REST (``v1``), the Open Inference
Protocol v2 (``oip``, ``oip_codec``), the peer API (``peer_api``, ``hosting``), WebSocket
streams (``streams``) and stream apps' readings and range labels (``stream_api``, over
``readings`` and ``ranges``) — the bounds on every connection (``bounds``: timeouts, the
connection cap, masked WebSocket frames) and the actor that runs them (``actor``).

May import: the shared core (``mliot_daemon``: config, settings, store, registry, messages,
runtime, metrics, errors, signing), the learning library, aiohttp (``http`` and the surface
modules only: never ``core``, ``routing``, ``serving``, ``catalog``, ``payloads``, ``views``,
``readings`` or ``ranges``). Never another actor's package: other actors are reached through
``Refs``.
"""

from actors.server.actor import Server

__all__ = ["Server"]
