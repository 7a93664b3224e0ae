"""The server actor: the daemon's HTTP API (aiohttp), and the owner of the app catalog.

Handlers run as aiohttp tasks on the daemon's loop. They reach the store directly (it is a
resource with its own threads, not an actor) and other actors only through their refs. Bodies
are read with a size limit that follows the live config; big ones are parsed in a thread.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, assert_never

import orjson
import structlog
from aiohttp import web

from mliot_daemon.catalog import AppEntry, Catalog
from mliot_daemon.config import ConfigError, ConfigStore, Rejected, Settings, parse_app
from mliot_daemon.messages import ApplyConfig, GetLoad, GetServerStatus, MachineLoad, ServerMsg
from mliot_daemon.metrics import Metrics
from mliot_daemon.payloads import BadInput, parse_json, parse_samples
from mliot_daemon.runtime import Actor, ActorRef
from mliot_daemon.store import Store, StoreError, StoreFull

log = structlog.get_logger("mliot.server")

PARSE_IN_THREAD_BYTES = 32 * 1024  # below this, parsing on the loop is cheaper than a thread hop
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(status: int, message: str, details: list[str] | None = None) -> web.Response:
    return json_response({"error": message, "details": details or []}, status)


class Server(Actor[ServerMsg]):
    """HTTP API and app catalog. Stops first on shutdown: in-flight requests finish."""

    name = "server"
    config_keys = frozenset({"daemon.token", "daemon.token_file", "daemon.protect_reads",
                             "daemon.max_body_mb", "daemon.name", "apps"})

    def __init__(self, config: ConfigStore, store: Store, metrics: Metrics,
                 monitor: ActorRef[Any], started_at: float, ready: asyncio.Event,
                 shutdown_timeout: float = 5.0) -> None:
        super().__init__()
        self._config = config
        self._settings: Settings = config.current
        self._token = self._settings.token
        self._store = store
        self._metrics = metrics
        self._monitor = monitor
        self._started_at = started_at
        self._ready = ready
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self.catalog = Catalog()
        self._catalog_lock = asyncio.Lock()
        self.port: int | None = None
        self._parser: ThreadPoolExecutor | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def on_start(self) -> None:
        self._parser = ThreadPoolExecutor(1, thread_name_prefix="parser")
        api_apps = await self._store.list_apps()
        names = {a.name for a in self._settings.apps} | set(api_apps)
        shapes = {n: await self._store.sample_shape(n) for n in names}
        self.catalog.load(self._settings.apps, api_apps, shapes)
        self._runner = web.AppRunner(self.build_app(), handle_signals=False, access_log=None,
                                     shutdown_timeout=self._shutdown_timeout)
        await self._runner.setup()
        d = self._settings.daemon
        site = web.TCPSite(self._runner, d.host, d.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("http_listening", host=d.host, port=self.port)

    async def on_stop(self) -> None:
        # Closes the listening socket, lets in-flight requests finish, then closes connections.
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._parser is not None:
            self._parser.shutdown(wait=False)

    async def handle(self, msg: ServerMsg) -> None:
        match msg:
            case ApplyConfig(settings=settings, changed=changed):
                self._settings = settings
                self._token = settings.token
                if "apps" in changed:
                    async with self._catalog_lock:
                        for name in self.catalog.set_file_apps(settings.apps):
                            log.info("app_config_applied", app=name)
            case GetServerStatus(reply=reply):
                if not reply.done():
                    reply.set_result(self._apps_status())
            case _:
                assert_never(msg)

    # -- the aiohttp application --------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The aiohttp application with every route and middleware (tests call this too)."""
        # aiohttp's own limit is set high: `_read_body` enforces the live max_body_mb.
        app = web.Application(client_max_size=2**40,
                              middlewares=[self._observe, self._errors, self._auth])
        r = app.router
        r.add_get("/healthz", self._healthz)
        r.add_get("/readyz", self._readyz)
        r.add_get("/metrics", self._metrics_page)
        r.add_get("/v1/status", self._status)
        r.add_post("/v1/reload", self._reload)
        r.add_get("/v1/apps", self._list_apps)
        r.add_get("/v1/apps/{app}", self._get_app)
        r.add_put("/v1/apps/{app}", self._put_app)
        r.add_delete("/v1/apps/{app}", self._delete_app)
        r.add_post("/v1/apps/{app}/samples", self._post_samples)
        return app

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            info = request.match_info.route.resource
            route = info.canonical if info is not None else "unmatched"
            self._metrics.http_requests.labels(request.method, route, str(status)).inc()
            self._metrics.http_seconds.labels(route).observe(time.perf_counter() - start)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadInput as exc:
            return error_response(exc.status, exc.message, exc.details)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(exc.status, exc.text or exc.reason)
        except StoreFull as exc:
            return error_response(503, str(exc))
        except StoreError as exc:
            return error_response(503, f"store unavailable: {exc}")
        except TimeoutError:
            return error_response(503, "timed out waiting for the daemon; try again")
        except Exception:  # the daemon keeps serving; the bug is in the log
            log.exception("http_handler_failed", path=request.path)
            return error_response(500, "internal error; see the daemon log")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = self._token
        if token and request.path not in OPEN_PATHS and self._needs_token(request):
            given = request.headers.get("Authorization", "")
            given = given[7:] if given.startswith("Bearer ") else request.query.get("token", "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return error_response(401, "missing or wrong bearer token")
        return await handler(request)

    def _needs_token(self, request: web.Request) -> bool:
        if self._settings.daemon.protect_reads:
            return True
        is_query = request.path.endswith(("/predict", "/infer"))
        return request.method not in ("GET", "HEAD", "OPTIONS") and not is_query

    async def _read_body(self, request: web.Request) -> bytes:
        limit = int(self._settings.daemon.max_body_mb * 2**20)
        too_big = web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length
                                                or limit + 1,
                                                text=f"body larger than {limit} bytes "
                                                     "(daemon.max_body_mb)")
        if request.content_length is not None and request.content_length > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.content.iter_chunked(256 * 1024):
            body += chunk
            if len(body) > limit:
                raise too_big
        return bytes(body)

    async def _read_json(self, request: web.Request) -> Any:
        body = await self._read_body(request)
        return await self._offload(len(body), lambda: parse_json(body))

    async def _offload(self, size: int, fn: Callable[[], T]) -> T:
        """Run CPU-bound parsing of a big body on the one parser thread, a small one inline.
        One thread, not many: each thread holding the GIL is time the loop waits."""
        if size <= PARSE_IN_THREAD_BYTES:
            return fn()
        return await asyncio.get_running_loop().run_in_executor(self._parser, fn)

    def _entry(self, request: web.Request) -> AppEntry:
        name = request.match_info["app"]
        entry = self.catalog.get(name)
        if entry is None:
            raise web.HTTPNotFound(text=f"unknown app {name!r}")
        return entry

    # -- probes, metrics, status, reload -------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self._ready.is_set():
            return error_response(503, "starting")
        return json_response({"status": "ready"})

    async def _metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _status(self, request: web.Request) -> web.Response:
        load: MachineLoad = await self._monitor.ask(lambda f: GetLoad(reply=f), timeout=5.0)
        d = self._settings.daemon
        apps = self._apps_status()
        me = d.machine_name
        return json_response({
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "version": _version(),
            "config_version": self._config.version,
            "restart_required": bool(self._config.restart_required),
            "restart_keys": sorted(self._config.restart_required),
            "apps": apps,
            "machines": [{
                "name": me, "local": True, "up": True,
                "cpu_percent": load.cpu_percent, "memory_percent": load.memory_percent,
                "cores": load.cores, "memory_mib": round(load.memory_mib),
                "rtt_ms": 0.0, "speed": 1.0,
                "placed": sorted(n for n, a in apps.items() if a["placement"]["serving"] == me),
            }],
            "process": {"cpu_percent": load.process_cpu_percent,
                        "rss_mib": round(load.process_rss_mib, 1)},
            "mailboxes": dict(load.mailboxes),
            "loop_lag_ms": {"p50": round(load.loop_lag_p50_ms, 3),
                            "p99": round(load.loop_lag_p99_ms, 3)},
        })

    def _apps_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.catalog.names():
            entry = self.catalog.get(name)
            assert entry is not None
            out[name] = {
                "data_type": entry.spec.data_type, "owner": entry.owner,
                "n_samples": self._store.count_samples(name), "model_version": None,
                "ready": False,
                "placement": {"serving": None, "training": self._settings.daemon.machine_name,
                              "reason": "no model yet"},
            }
        return out

    async def _reload(self, request: web.Request) -> web.Response:
        if self._config.path is None:
            return error_response(409, "the daemon runs on built-in defaults; start it with "
                                       "--config FILE to reload")
        outcome = await self._config.reload("api")
        if isinstance(outcome, Rejected):
            self._metrics.config_rejected.inc()
            return error_response(422, "configuration rejected; the old one stays in force",
                                  outcome.errors)
        return json_response({"config_version": outcome.version,
                              "changed": sorted(outcome.changed),
                              "restart_required": sorted(outcome.restart_required)})

    # -- apps -----------------------------------------------------------------------------------

    async def _app_json(self, entry: AppEntry) -> dict[str, Any]:
        return {**entry.spec.to_json(), "owner": entry.owner,
                "shape": list(entry.shape) if entry.shape else entry.spec.to_json()["shape"],
                "n_samples": self._store.count_samples(entry.name),
                "n_feedback": await self._store.count_feedback(entry.name),
                "model_version": None, "ready": False}

    async def _list_apps(self, request: web.Request) -> web.Response:
        return json_response(self.catalog.names())

    async def _get_app(self, request: web.Request) -> web.Response:
        return json_response(await self._app_json(self._entry(request)))

    async def _put_app(self, request: web.Request) -> web.Response:
        name = request.match_info["app"]
        raw = await self._read_json(request)
        if not isinstance(raw, dict):
            raise BadInput(422, "expected an app spec object")
        if raw.setdefault("name", name) != name:
            raise BadInput(422, f"name: {raw['name']!r} differs from the URL's {name!r}")
        try:
            spec = parse_app(raw)
        except ConfigError as exc:
            raise BadInput(422, "invalid app spec", exc.errors) from exc
        async with self._catalog_lock:
            old = self.catalog.get(name)
            if old is not None and old.owner == "file":
                raise web.HTTPConflict(text=f"app {name!r} is declared in the config file; "
                                            "change it there")
            if old is not None and self._store.count_samples(name):
                clash = old.spec.data_type != spec.data_type or (
                    spec.shape is not None and old.shape is not None and spec.shape != old.shape)
                if clash:
                    raise web.HTTPConflict(text=f"app {name!r} has stored samples of another "
                                                "type or shape; delete it first")
            await self._store.put_app(name, spec.to_json())
            self.catalog.put_api_app(spec)
        log.info("app_put", app=name, created=old is None)
        entry = self.catalog.get(name)
        assert entry is not None
        return json_response(await self._app_json(entry), 201 if old is None else 200)

    async def _delete_app(self, request: web.Request) -> web.Response:
        async with self._catalog_lock:
            entry = self._entry(request)
            if entry.owner == "file":
                raise web.HTTPConflict(text=f"app {entry.name!r} is declared in the config file; "
                                            "remove it there")
            await self._store.delete_app(entry.name)
            self.catalog.remove(entry.name)
        log.info("app_deleted", app=entry.name)
        return web.Response(status=204)

    async def _post_samples(self, request: web.Request) -> web.Response:
        entry = self._entry(request)
        body = await self._read_body(request)
        if entry.shape is None and entry.spec.data_type != "audio":
            # The first batch fixes the app's shape: let no other batch race it to the store.
            async with self._catalog_lock:
                return await self._ingest(self._entry(request), body)
        return await self._ingest(entry, body)

    async def _ingest(self, entry: AppEntry, body: bytes) -> web.Response:
        batch = await self._offload(
            len(body), lambda: parse_samples(parse_json(body), entry.spec, entry.shape))
        result = await self._store.add_samples(entry.name, batch.features, batch.labels, "http",
                                               batch.batch_id)
        if not result.duplicate:
            self._metrics.samples_ingested.labels(entry.name, "http").inc(result.accepted)
            self.catalog.note_shape(entry.name, batch.shape)
        return json_response({"accepted": result.accepted, "n_samples": result.n_samples,
                              "duplicate": result.duplicate})


def _version() -> str:
    from mliot_daemon import __version__
    return __version__
