"""A small reverse proxy that serves a daemon under a path prefix (as nginx or Home Assistant's
ingress would): requests and WebSockets under the prefix go to the daemon without it, with the
browser's Host and Origin kept. It runs on its own loop in a thread, for the browser tests."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
from aiohttp import web
from support import free_port

HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "content-length",
       "content-encoding"}


class PrefixProxy:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream = ""  # the daemon's URL, set before the first request
        self.paths: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> PrefixProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=2**30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        await self._session.close()  # ends the piped WebSockets first
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        if not request.path.startswith(self.prefix + "/"):
            return web.Response(status=404, text="outside the prefix")
        target = self.upstream + request.path_qs[len(self.prefix):]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, target, headers)
        async with self._session.request(request.method, target, headers=headers,
                                         data=await request.read(),
                                         allow_redirects=False) as upstream:
            body = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP}
            return web.Response(status=upstream.status, body=body, headers=out)

    async def _websocket(self, request: web.Request, target: str, headers: dict[str, str]
                         ) -> web.WebSocketResponse:
        keep = {k: v for k, v in headers.items()
                if k.lower() in ("host", "origin", "authorization", "cookie")}
        async with self._session.ws_connect(target.replace("http", "ws", 1),
                                            headers=keep) as upstream:
            client = web.WebSocketResponse()
            await client.prepare(request)

            async def pipe(source: Any, sink: Any) -> None:
                async for msg in source:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await sink.send_str(msg.data)
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        await sink.send_bytes(msg.data)
                await sink.close()

            await asyncio.gather(pipe(client, upstream), pipe(upstream, client),
                                 return_exceptions=True)
            return client
