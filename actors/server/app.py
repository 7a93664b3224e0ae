"""The aiohttp application: the HTTP layer's middleware and every surface's routes (v1 REST,
OIP v2, the peer API, WebSocket streams, the dashboard) around one serving core."""

from __future__ import annotations

import asyncio

from aiohttp import web

from actors.server.bounds import WriteLimit
from actors.server.core import ServingCore
from actors.server.dashboard import Dashboard
from actors.server.guard import Guard
from actors.server.hosting import HostedModels
from actors.server.http import CORE, GUARD, READY, Front
from actors.server.oip import OipApi
from actors.server.openapi import serve as openapi_document
from actors.server.peer_api import PeerApi
from actors.server.stream_api import StreamApi
from actors.server.streams import Streams
from actors.server.v1 import V1Api


def build_app(core: ServingCore, started_at: float, ready: asyncio.Event,
              hosted: HostedModels, guard: Guard) -> web.Application:
    """The aiohttp application with every surface's routes and the middleware (tests call
    this too). ``ready`` is set once every actor has started; ``hosted`` holds the models
    peers placed here; ``guard`` knows the names and origins the daemon answers to."""
    # aiohttp's own limit is set high: `read_body` enforces the live max_body_mb.
    limit = WriteLimit()  # one per daemon: HTTP and stream writes of an address count together
    app = web.Application(client_max_size=2**40,
                          middlewares=[Front(core, guard, limit).middleware])
    app[CORE] = core
    app[READY] = ready
    app[GUARD] = guard
    streams = Streams(core, limit)
    app.on_cleanup.append(streams.close)
    for surface in (V1Api(core, started_at), StreamApi(core), OipApi(core),
                    PeerApi(core, hosted), streams, Dashboard()):
        app.router.add_routes(surface.routes())
    app.router.add_get("/openapi.json", openapi_document)
    return app
