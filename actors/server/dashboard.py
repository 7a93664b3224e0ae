"""The dashboard surface: the page at ``/`` and its files under ``/ui/``, shipped as package data
(``actors/server/static``: plain HTML, CSS and ES modules, no build step, no CDN). The files
need no token, even with ``protect_reads``: the page asks for it and sends it on its API calls.
Every URL in the page is relative, so it works behind a reverse proxy or an ingress prefix."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from mliot_daemon.errors import NotFound

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
HEADERS = {"Cache-Control": "no-cache",  # revalidate: a new mliot serves its own page at once
           "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; "
                                      "img-src 'self' data: blob:; media-src 'self' blob:; "
                                      "object-src 'none'; frame-ancestors 'self'"}


class Dashboard:
    """``GET /`` and ``GET /ui/{name}``."""

    def __init__(self) -> None:
        # read once: a handful of small files, served from memory
        self._files = {p.name: p.read_bytes() for p in STATIC.iterdir() if p.suffix in TYPES}

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.index), web.get("/ui/{name}", self.file)]

    async def index(self, request: web.Request) -> web.Response:
        return self._serve("index.html")

    async def file(self, request: web.Request) -> web.Response:
        return self._serve(request.match_info["name"])

    def _serve(self, name: str) -> web.Response:
        body = self._files.get(name)
        if body is None:
            raise NotFound(f"no file {name[:60]!r} in the dashboard")
        return web.Response(body=body, content_type=TYPES[Path(name).suffix],
                            charset="utf-8", headers=HEADERS)
