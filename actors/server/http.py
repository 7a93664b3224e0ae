"""The HTTP layer: the one middleware, the single place that maps domain errors to HTTP status
codes and JSON error bodies, body reading, and the probes (``app.build_app`` puts it together).

The middleware is one layer (each layer is a coroutine more on the prediction path): the
bearer token (or the peer secret, on the peer API), errors as JSON answers, metrics and a debug
line. Bodies are read with a size limit that follows the live config; big ones are parsed on
the core's parser thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from multidict import CIMultiDict

from actors.server.bounds import WriteLimit
from actors.server.core import ServingCore
from actors.server.guard import QUERY_ROUTES, Guard
from actors.server.payloads import parse_json
from mliot_daemon import logs
from mliot_daemon.errors import (
    Conflict,
    DomainError,
    Invalid,
    Malformed,
    NotFound,
    TooLarge,
    Unavailable,
)
from mliot_daemon.settings import Settings

log = structlog.get_logger("mliot.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/"})
STATIC = "/ui/"  # the dashboard's files: no token, even with protect_reads
STATUS = {Malformed: 400, Invalid: 422, NotFound: 404, Conflict: 409, TooLarge: 413,
          Unavailable: 503}  # the one map from domain errors to HTTP
CORE = web.AppKey("core", ServingCore)
READY = web.AppKey("ready", asyncio.Event)  # set once every actor has started
GUARD = web.AppKey("guard", Guard)

_JSON_HEADERS = CIMultiDict({"Content-Type": "application/json"})  # aiohttp copies it


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=_JSON_HEADERS)


def error_response(status: int, message: str, details: list[str] | None = None) -> web.Response:
    return json_response({"error": message, "details": details or []}, status)


async def live(request: web.Request) -> web.Response:
    """The liveness probe (``/healthz``, ``/v2/health/live``): the process runs."""
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """The readiness probe (``/readyz``, ``/v2/health/ready``): 200 once every actor has
    started."""
    if not request.app[READY].is_set():
        return error_response(503, "starting")
    return json_response({"status": "ready"})


def http_status(exc: DomainError) -> int:
    for kind, status in STATUS.items():
        if isinstance(exc, kind):
            return status
    return 422


class Front:
    """The middleware: auth, errors, metrics. It reads the live settings from the core."""

    def __init__(self, core: ServingCore, guard: Guard, limit: WriteLimit) -> None:
        self._core = core
        self._guard = guard
        self._limit = limit
        self._secrets: tuple[Settings, bytes, bytes] | None = None

    def _keys(self) -> tuple[bytes, bytes]:
        """(token, peer secret) as bytes, encoded once per config."""
        settings = self._core.settings
        if self._secrets is None or self._secrets[0] is not settings:
            self._secrets = (settings, settings.token.encode(), settings.peer_secret.encode())
        return self._secrets[1], self._secrets[2]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        response: web.StreamResponse | None = None
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        try:
            token, peer_secret = self._keys()
            self._guard.refresh(self._core.settings)
            refused = self._guard.check(request, route)
            if refused is not None:
                response = error_response(*refused)
            elif request.path.startswith("/v1/peer/"):
                response = self._peer_auth(request, peer_secret)
            elif token and request.path not in OPEN_PATHS and not request.path.startswith(
                    STATIC) and self._needs_token(request, route) and not hmac.compare_digest(
                    _bearer(request, True), token):
                response = error_response(401, "missing or wrong bearer token")
            elif (refused := self._guard.check_body(request, route)) is not None:
                response = error_response(*refused)
            elif wait := self._write_wait(request, route):
                response = too_many_writes(self._core.settings.daemon.max_writes_per_s, wait)
            if response is None:
                response = await handler(request)
        except DomainError as exc:
            response = error_response(http_status(exc), exc.message, exc.details)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(exc.status, exc.text or exc.reason)
        except TimeoutError:
            response = error_response(503, "timed out waiting for the daemon; try again")
        except Exception:  # the daemon keeps serving; the bug is in the log
            log.exception("http_handler_failed", path=request.path)
            response = error_response(500, "internal error; see the daemon log")
        finally:
            status = response.status if response is not None else 500
            elapsed = time.perf_counter() - start
            self._core.metrics.observe_http(request.method, route, status, elapsed)
            if logs.DEBUG:
                log.debug("http_request", method=request.method, route=route, status=status,
                          ms=round(elapsed * 1000, 3), app=request.match_info.get("app"))
        return response

    def _write_wait(self, request: web.Request, route: str) -> float:
        """Seconds a write must wait under ``daemon.max_writes_per_s`` (0.0: go ahead). A
        stream's messages are counted one by one, not its upgrade."""
        rate = self._core.settings.daemon.max_writes_per_s
        if not rate or request.method in ("GET", "HEAD", "OPTIONS") or route in QUERY_ROUTES \
                or route == "/v1/apps/{app}/stream":
            return 0.0
        return self._limit.wait(rate, request.remote)

    def _needs_token(self, request: web.Request, route: str) -> bool:
        if self._core.settings.daemon.protect_reads:
            return True
        if route == "/v1/apps/{app}/stream":
            return True  # a stream carries samples and feedback: writes
        return request.method not in ("GET", "HEAD", "OPTIONS") and route not in QUERY_ROUTES

    @staticmethod
    def _peer_auth(request: web.Request, peer_secret: bytes) -> web.Response | None:
        """The peer API answers only the peer secret (in the header), never the device token:
        a peer may send models, and devices must not."""
        if not peer_secret:
            return error_response(403, "the peer API is off: this daemon has no "
                                       "daemon.peer_secret")
        if not hmac.compare_digest(_bearer(request, query=False), peer_secret):
            return error_response(401, "missing or wrong peer secret (the peer API takes "
                                       "daemon.peer_secret, not the device token)")
        return None


def too_many_writes(rate: float, wait: float) -> web.Response:
    """429, with the whole seconds to wait in ``Retry-After``."""
    response = error_response(429, f"more than {rate:g} writes a second from this address "
                                   f"(daemon.max_writes_per_s); retry after {wait:.2f} s")
    response.headers["Retry-After"] = str(math.ceil(wait))
    return response


def _bearer(request: web.Request, query: bool) -> bytes:
    """The bearer token a request presents, as bytes: aiohttp keeps undecodable header bytes
    as surrogates, which a plain ``encode()`` would raise on (a 500, not the 401 it is)."""
    given = request.headers.get("Authorization", "")
    if given.startswith("Bearer "):
        given = given[7:]
    elif query:
        given = request.query.get("token", "")
    else:
        given = ""
    return given.encode("utf-8", "surrogateescape")


async def read_body(core: ServingCore, request: web.Request) -> bytes:
    """The body, refused (413) past ``daemon.max_body_mb`` before it is all read, and (408)
    when it has not all arrived ``daemon.body_timeout_s`` after the head."""
    d = core.settings.daemon
    limit = int(d.max_body_mb * 2**20)
    length = request.content_length
    if length is not None and length > limit:
        raise _too_big(limit)
    async with body_deadline(core):
        if length is not None:
            return await request.read()  # aiohttp's own cap is off; the length is checked
        body = bytearray()  # chunked: count as it arrives
        async for chunk in request.content.iter_chunked(256 * 1024):
            body += chunk
            if len(body) > limit:
                raise _too_big(limit)
        return bytes(body)


@contextlib.asynccontextmanager
async def body_deadline(core: ServingCore) -> AsyncIterator[None]:
    """A body read that has not ended ``daemon.body_timeout_s`` after it began is a 408: a
    client that stalls mid-body holds no connection (nor a peer an upload slot) for long."""
    seconds = core.settings.daemon.body_timeout_s
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        core.metrics.http_timeouts.labels("body").inc()
        raise web.HTTPRequestTimeout(text=f"the body did not arrive within {seconds:g} s "
                                          "(daemon.body_timeout_s)") from None


async def read_json(core: ServingCore, request: web.Request) -> Any:
    body = await read_body(core, request)
    return await core.offload(len(body), lambda: parse_json(body))


def _too_big(limit: int) -> TooLarge:
    return TooLarge(f"body larger than {limit} bytes (daemon.max_body_mb)")
