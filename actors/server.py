"""The server actor: the daemon's HTTP API (aiohttp), and the owner of the app catalog.

Handlers run as aiohttp tasks on the daemon's loop. They reach the store directly (it is a
resource with its own threads, not an actor) and other actors only through their refs. Bodies
are read with a size limit that follows the live config; big ones are parsed in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, assert_never

import numpy as np
import orjson
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict

from mliot_daemon import logs, oip, signing
from mliot_daemon.catalog import AppEntry, Catalog
from mliot_daemon.config import ConfigError, ConfigStore, Rejected, Settings, parse_app
from mliot_daemon.hosting import HostedModels, HostError
from mliot_daemon.learn.fast import single_thread_blas
from mliot_daemon.learn.persist import load_model
from mliot_daemon.messages import (
    AppFacts,
    ApplyConfig,
    AppsChanged,
    FeedbackAdded,
    GetLoad,
    GetServerStatus,
    GetServingFacts,
    GetTrainerStatus,
    IngestSamples,
    LoadFailed,
    MachineLoad,
    Placed,
    Predict,
    Predicted,
    Refs,
    RemotePredict,
    Route,
    SamplesAdded,
    ServerMsg,
    SubmitFeedback,
    TrainingEvent,
    VersionPublished,
)
from mliot_daemon.metrics import Metrics
from mliot_daemon.payloads import (
    BadInput,
    check_features,
    check_label,
    label_text,
    parse_json,
    parse_samples,
    peer_instance,
    version_number,
)
from mliot_daemon.registry import Registry
from mliot_daemon.runtime import Actor, ActorStopped, reply_to
from mliot_daemon.serving import Answer, ServedApp, ServedModel
from mliot_daemon.store import (
    NotFound,
    PredictionRecord,
    Store,
    StoreError,
    StoreFull,
    new_prediction_id,
)

log = structlog.get_logger("mliot.server")

PARSE_IN_THREAD_BYTES = 32 * 1024  # below this, parsing on the loop is cheaper than a thread hop
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
QUERY_ROUTES = frozenset({"/v1/apps/{app}/predict", "/v2/models/{app}/infer"})  # reads by POST
WS_QUEUE = 1024  # messages waiting for one WebSocket client; a client that lets it fill is cut
WS_IN_FLIGHT = 256  # predictions one WebSocket client may have pending
WS_DIRECT_MAX = 16 * 1024  # unsent bytes above which a reply queues instead (see _Client.send)
MAX_INSTANCES = 10_000
MAX_MODEL_ARCHIVE = 4 * 2**30  # a peer's model version (a KNN keeps its training rows)
REMOTE_TIMEOUT_S = 3.0  # the peers actor gives up after 2 s; this only guards the mailbox
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_JSON_HEADERS = CIMultiDict({"Content-Type": "application/json"})  # aiohttp copies it


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=_JSON_HEADERS)


def error_response(status: int, message: str, details: list[str] | None = None) -> web.Response:
    return json_response({"error": message, "details": details or []}, status)


def _too_big(limit: int, size: int) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size,
                                         text=f"body larger than {limit} bytes "
                                              "(daemon.max_body_mb)")


class Server(Actor[ServerMsg]):
    """HTTP API and app catalog. Stops first on shutdown: in-flight requests finish."""

    name = "server"
    config_keys = frozenset({"secrets", "daemon.protect_reads",
                             "daemon.max_body_mb", "daemon.name", "apps",
                             "training.backend", "training.dask_scheduler"})

    def __init__(self, config: ConfigStore, store: Store, metrics: Metrics, registry: Registry,
                 refs: Refs, started_at: float, ready: asyncio.Event,
                 shutdown_timeout: float = 5.0) -> None:
        super().__init__(refs.server)
        self._config = config
        self._settings: Settings = config.current
        self._token = self._settings.token.encode()
        self._peer_secret = self._settings.peer_secret.encode()
        self._machine_name = self._settings.daemon.machine_name
        self._store = store
        self._metrics = metrics
        self._monitor = refs.monitor
        self._trainer = refs.trainer
        self._mqtt = refs.mqtt
        self._peers = refs.peers
        self._routes: dict[str, Route] = {}  # from the scheduler; none yet: serve here
        self._failed_peers: dict[str, float] = {}  # peer -> when a forwarded request failed
        self._uploads = asyncio.Semaphore(1)  # model archives received one at a time
        self._machines: list[dict[str, Any]] = []  # as the scheduler last saw them
        self._hosted = HostedModels(self._settings.daemon.data_path / "hosted")
        self._registry = registry
        self._served: dict[str, ServedApp] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._queries: set[asyncio.Task[None]] = set()  # MQTT requests in progress
        self._sockets: dict[str, set[_Client]] = {}
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
        await asyncio.to_thread(self._hosted.reset)
        api_apps = await self._store.list_apps()
        names = {a.name for a in self._settings.apps} | set(api_apps)
        shapes = {n: await self._store.sample_shape(n) for n in names}
        self.catalog.load(self._settings.apps, api_apps, shapes)
        single_thread_blas()  # serving is one row at a time: BLAS threads only add overhead
        await self._apps_changed()  # first, so the trainer knows the apps a failed load names
        for name in self.catalog.names():  # the last good versions answer as soon as we listen
            version = await asyncio.to_thread(self._registry.current, name)
            if version is not None:
                await self._load(name, version)
        self._runner = web.AppRunner(self.build_app(), handle_signals=False, access_log=None,
                                     shutdown_timeout=self._shutdown_timeout)
        await self._runner.setup()
        d = self._settings.daemon
        site = web.TCPSite(self._runner, d.host, d.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("http_listening", host=d.host, port=self.port)

    async def on_stop(self) -> None:
        for task in list(self._queries):
            task.cancel()
        await asyncio.gather(*self._queries, return_exceptions=True)
        for clients in self._sockets.values():
            for client in list(clients):
                client.close(going_away=True)
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
                self._token = settings.token.encode()
                self._peer_secret = settings.peer_secret.encode()
                self._machine_name = settings.daemon.machine_name
                if "apps" in changed:
                    async with self._catalog_lock:
                        for name in self.catalog.set_file_apps(settings.apps):
                            log.info("app_config_applied", app=name)
                    await self._apps_changed()
            case VersionPublished(app=app, version=version):
                await self._load(app, version)
            case IngestSamples(app=app, payload=payload, source=source, reply=reply):
                self._query(reply, lambda: self._store_samples(app, payload, source))
            case Predict(app=app, instances=instances, reply=reply):
                self._query(reply, lambda: self._answer(
                    self._app(app), self._instances(self._app(app), list(instances))))
            case SubmitFeedback(app=app, payload=payload, reply=reply):
                self._query(reply, lambda: self._record_feedback(self._app(app), payload))
            case TrainingEvent(app=app, kind=kind, data=data):
                self._broadcast(app, {"type": "event", "kind": kind, **dict(data)})
            case GetServerStatus(reply=reply):
                if not reply.done():
                    reply.set_result(self._apps_status())
            case GetServingFacts(reply=reply):
                if not reply.done():
                    reply.set_result(self._serving_facts())
            case Placed(routes=routes, machines=machines, planned_at=planned_at):
                # A peer that failed after the plan's inputs were read stays unused.
                failed = {p for p, t in self._failed_peers.items() if t > planned_at}
                self._routes = {r.app: r if r.serving not in failed else self._local_route(
                    r.app, f"{r.serving} failed; served locally until the next plan")
                    for r in routes}
                self._machines = [dict(m) for m in machines]
                for m in self._machines:
                    self._metrics.machine_up.labels(m["name"]).set(1 if m["up"] else 0)
                    self._metrics.machine_busy.labels(m["name"]).set(m["busy"] or 0.0)
                for r in routes:
                    if (served := self._served.get(r.app)) is not None:
                        served.members = r.members if r.serving == self._me else None
            case _:
                assert_never(msg)

    def _query(self, reply: asyncio.Future[Any], produce: Callable[[], Awaitable[Any]]) -> None:
        """Answer a query from another channel in a task of its own, so a slow one (a commit)
        does not hold up the mailbox; a query its sender gave up on is not carried out."""
        if reply.done():
            return
        task = asyncio.create_task(reply_to(reply, produce), name="server.query")
        self._queries.add(task)
        task.add_done_callback(self._queries.discard)

    # -- the aiohttp application --------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The aiohttp application with every route and middleware (tests call this too)."""
        # aiohttp's own limit is set high: `_read_body` enforces the live max_body_mb.
        app = web.Application(client_max_size=2**40,
                              middlewares=[self._front])
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
        r.add_post("/v1/apps/{app}/predict", self._predict)
        r.add_post("/v1/apps/{app}/feedback", self._feedback)
        r.add_get("/v1/apps/{app}/models", self._models)
        r.add_post("/v1/apps/{app}/models/{version}/activate", self._activate)
        r.add_get("/v1/apps/{app}/stream", self._stream)
        r.add_get("/v2/health/live", self._healthz)
        r.add_get("/v2/health/ready", self._readyz)
        r.add_get("/v2/models/{app}", self._oip_metadata)
        r.add_get("/v2/models/{app}/ready", self._oip_ready)
        r.add_post("/v2/models/{app}/infer", self._oip_infer)
        r.add_get("/v1/peer/profile", self._peer_profile)
        r.add_put("/v1/peer/models/{origin}/{app}/{version}", self._peer_install)
        r.add_post("/v1/peer/models/{origin}/{app}/predict", self._peer_predict)
        return app

    @web.middleware
    async def _front(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request's wrapper, in one layer (each layer is a coroutine more on the
        prediction path): the bearer token, errors as JSON answers, metrics, a debug line."""
        start = time.perf_counter()
        response: web.StreamResponse | None = None
        try:
            if request.path.startswith("/v1/peer/"):
                response = self._peer_auth(request)
            elif self._token and request.path not in OPEN_PATHS and self._needs_token(
                    request) and not hmac.compare_digest(_bearer(request, True), self._token):
                response = error_response(401, "missing or wrong bearer token")
            if response is None:
                response = await handler(request)
        except BadInput as exc:
            response = error_response(exc.status, exc.message, exc.details)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(exc.status, exc.text or exc.reason)
        except StoreFull as exc:
            response = error_response(503, str(exc))
        except StoreError as exc:
            response = error_response(503, f"store unavailable: {exc}")
        except TimeoutError:
            response = error_response(503, "timed out waiting for the daemon; try again")
        except Exception:  # the daemon keeps serving; the bug is in the log
            log.exception("http_handler_failed", path=request.path)
            response = error_response(500, "internal error; see the daemon log")
        finally:
            status = response.status if response is not None else 500
            info = request.match_info.route.resource
            route = info.canonical if info is not None else "unmatched"
            elapsed = time.perf_counter() - start
            self._metrics.observe_http(request.method, route, status, elapsed)
            if logs.DEBUG:
                log.debug("http_request", method=request.method, route=route, status=status,
                          ms=round(elapsed * 1000, 3), app=request.match_info.get("app"))
        return response

    def _needs_token(self, request: web.Request) -> bool:
        if self._settings.daemon.protect_reads:
            return True
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else ""
        if route == "/v1/apps/{app}/stream":
            return True  # a stream carries samples and feedback: writes
        return request.method not in ("GET", "HEAD", "OPTIONS") and route not in QUERY_ROUTES

    def _peer_auth(self, request: web.Request) -> web.Response | None:
        """The peer API answers only the peer secret (in the header), never the device token:
        a peer may send models, and devices must not."""
        if not self._peer_secret:
            return error_response(403, "the peer API is off: this daemon has no "
                                       "daemon.peer_secret")
        if not hmac.compare_digest(_bearer(request, query=False), self._peer_secret):
            return error_response(401, "missing or wrong peer secret (the peer API takes "
                                       "daemon.peer_secret, not the device token)")
        return None

    async def _read_body(self, request: web.Request) -> bytes:
        limit = int(self._settings.daemon.max_body_mb * 2**20)
        length = request.content_length
        if length is not None:
            if length > limit:
                raise _too_big(limit, length)
            return await request.read()  # aiohttp's own cap is off; the length is checked
        body = bytearray()  # chunked: count as it arrives
        async for chunk in request.content.iter_chunked(256 * 1024):
            body += chunk
            if len(body) > limit:
                raise _too_big(limit, len(body))
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
        return self._app(request.match_info["app"])

    def _app(self, name: str) -> AppEntry:
        entry = self.catalog.get(name)
        if entry is None:
            raise BadInput(404, f"unknown app {name!r}")
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
        training = await self._trainer.ask(lambda f: GetTrainerStatus(reply=f),
                                                  timeout=5.0)
        d = self._settings.daemon
        apps = self._apps_status()
        for name, app in apps.items():
            app["training"] = training.get(name, {})
        me = d.machine_name
        machines = self._machines or [{  # before the scheduler's first plan
            "name": me, "local": True, "up": True, "cpu_percent": load.daemon_cpu_percent,
            "memory_percent": load.memory_percent, "cores": load.cores, "busy": load.busy,
            "rtt_ms": 0.0, "speed": round(load.speed, 3), "placed": []}]
        return json_response({
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "version": _version(),
            "config_version": self._config.version,
            "restart_required": bool(self._config.restart_required),
            "restart_keys": sorted(self._config.restart_required),
            "apps": apps,
            "machines": machines,
            "process": {"cpu_percent": load.process_cpu_percent,
                        "rss_mib": round(load.process_rss_mib, 1),
                        "host_cpu_percent": load.cpu_percent,
                        "host_memory_mib": round(load.memory_mib)},
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
                "n_samples": self._store.count_samples(name),
                "model_version": self._version_of(name), "ready": self._is_ready(entry),
                "accuracy": self._accuracy(name),
                "placement": self._placement(name),
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
                "model_version": self._version_of(entry.name), "ready": self._is_ready(entry)}

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
        await self._apps_changed()
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
            self._served.pop(entry.name, None)
            self._routes.pop(entry.name, None)
            # The trainer deletes the app's models, after stopping a run that could write more.
            await self._apps_changed()
        self._broadcast(entry.name, None)
        log.info("app_deleted", app=entry.name)
        return web.Response(status=204)

    async def _post_samples(self, request: web.Request) -> web.Response:
        self._entry(request)
        body = await self._read_body(request)
        payload = await self._offload(len(body), lambda: parse_json(body))
        return json_response(await self._store_samples(request.match_info["app"], payload,
                                                       "http", len(body)))

    async def _store_samples(self, app: str, payload: Any, source: str, size: int = 0
                             ) -> dict[str, Any]:
        """Check and commit a `{"samples": [...], "batch_id"?}` payload from any channel."""
        entry = self._app(app)
        if entry.shape is None and entry.spec.data_type != "audio":
            # The first batch fixes the app's shape: let no other batch race it to the store.
            async with self._catalog_lock:
                return await self._commit_samples(self._app(app), payload, source, size)
        return await self._commit_samples(entry, payload, source, size)

    async def _commit_samples(self, entry: AppEntry, payload: Any, source: str, size: int
                              ) -> dict[str, Any]:
        batch = await self._offload(size, lambda: parse_samples(payload, entry.spec, entry.shape))
        try:
            result = await self._store.add_samples(entry.name, batch.features, batch.labels,
                                                   source, batch.batch_id)
        except NotFound:  # deleted while this request was on its way: nothing was stored
            raise BadInput(404, f"unknown app {entry.name!r}: it was deleted") from None
        if not result.duplicate:
            self._metrics.samples_ingested.labels(entry.name, source).inc(result.accepted)
            self.catalog.note_shape(entry.name, batch.shape)
            self._trainer.offer(SamplesAdded(app=entry.name, n_samples=result.n_samples))
        log.debug("samples_committed", app=entry.name, source=source, accepted=result.accepted,
                  duplicate=result.duplicate, n_samples=result.n_samples)
        return {"accepted": result.accepted, "n_samples": result.n_samples,
                "duplicate": result.duplicate}

    # -- models and serving ---------------------------------------------------------------------

    async def _apps_changed(self) -> None:
        specs = tuple(e.spec for n in self.catalog.names() if (e := self.catalog.get(n)))
        await self._trainer.send(AppsChanged(apps=specs))

    async def _load(self, app: str, version: int) -> None:
        """Load a version from this machine's registry and swap it in (requests in flight
        finish on the old one)."""
        path = self._registry.version_path(app, version)
        async with self._load_locks.setdefault(app, asyncio.Lock()):  # publish vs. activate
            try:
                served = await asyncio.to_thread(lambda: ServedModel(
                    version, load_model(path), self._registry.model_id(app, version)))
            except Exception as exc:  # e.g. pickles of an older library: the trainer retrains
                log.error("model_load_failed", app=app, version=version, error=repr(exc))
                await self._trainer.send(LoadFailed(app=app, version=version))
                return
            if self.catalog.get(app) is None:
                return  # deleted while loading
            if await asyncio.to_thread(self._registry.current, app) != version:
                return  # another version became current meanwhile: it is loaded after us
            self._swap(app, served)
            # The speed its latencies were measured at (the pool measured them moments ago):
            # the scheduler scales them by it to other machines, and keeps it after a quota.
            with contextlib.suppress(TimeoutError, ActorStopped):
                load: MachineLoad = await self._monitor.ask(lambda f: GetLoad(reply=f), 5.0)
                served.measured_speed = load.speed

    def _swap(self, app: str, served: ServedModel) -> None:
        current = self._served.get(app)
        if current is None:
            self._served[app] = ServedApp(served)
        else:
            current.swap(served)
        log.info("model_loaded", app=app, version=served.version)

    def _version_of(self, app: str) -> int | None:
        served = self._served.get(app)
        return served.current.version if served else None

    def _accuracy(self, app: str) -> float | None:
        """The served ensemble's validation accuracy."""
        served = self._served.get(app)
        if served is None:
            return None
        return round(float(served.current.model.selection.val_accuracy), 5)

    def _is_ready(self, entry: AppEntry) -> bool:
        served = self._served.get(entry.name)
        if served is None:
            return False
        return float(served.current.model.selection.val_accuracy) >= entry.spec.policy.min_accuracy

    @property
    def _me(self) -> str:
        return self._machine_name  # the setting asks the OS for the host name every time

    def _placement(self, app: str) -> dict[str, Any]:
        t = self._settings.training
        training = f"dask:{t.dask_scheduler}" if t.backend == "dask" else self._me
        route = self._routes.get(app)
        if app not in self._served:
            return {"serving": None, "training": training, "reason": "no model yet"}
        if route is None:
            return {"serving": self._me, "training": training,
                    "reason": "local (not planned yet)"}
        return {"serving": route.serving, "training": training, "reason": route.reason,
                "members": route.members, "predicted_ms": dict(route.predicted_ms)}

    def _serving_facts(self) -> tuple[AppFacts, ...]:
        facts = []
        for name, served in self._served.items():
            entry = self.catalog.get(name)
            if entry is None:
                continue
            policy = entry.spec.policy
            model = served.current
            facts.append(AppFacts(
                name=name, version=model.version, mode=policy.mode,
                budget_ms=float(policy.latency_ms or 0.0), latencies_ms=model.latencies_ms(),
                min_members=model.min_members(policy.min_accuracy),
                measured_speed=model.measured_speed, model_id=model.model_id,
                predictions=served.predictions,
                directory=str(self._registry.version_path(name, model.version))))
        return tuple(facts)

    def _serving(self, entry: AppEntry) -> ServedApp:
        served = self._served.get(entry.name)
        if served is None:
            n = self._store.count_samples(entry.name)
            raise BadInput(503, f"no model yet for {entry.name!r}: {n} labelled samples so far; "
                                "a first model trains once two classes have 5 samples each")
        return served

    def _instances(self, entry: AppEntry, items: Any) -> list[Any]:
        if not isinstance(items, list) or not items:
            raise BadInput(422, "instances: a non-empty list of samples is expected")
        if len(items) > MAX_INSTANCES:
            raise BadInput(422, f"instances: at most {MAX_INSTANCES} per request")
        spec, shape = entry.spec, entry.shape
        if len(items) == 1:
            return [check_features(items[0], spec, shape, "instances[0]")]
        return [check_features(x, spec, shape, f"instances[{i}]") for i, x in enumerate(items)]

    async def _answer(self, entry: AppEntry, samples: list[Any], probabilities: bool = False
                      ) -> list[dict[str, Any]]:
        """Predict, record the predictions (group-committed off the hot path), shape the JSON."""
        return self._publish(entry, samples, await self._route(entry, samples, probabilities))

    def _start(self, entry: AppEntry, samples: list[Any], probabilities: bool
               ) -> list[Answer] | asyncio.Future[list[Answer]] | Route:
        """Count the request and start answering it where the scheduler placed the app: the
        answers when this machine gives them at once, the batch's future when it queues them
        here, or the route to the peer that serves the app (503 when placement refused it).
        Nothing awaits here, so requests of one loop turn join one batch."""
        served = self._serving(entry)
        served.predictions += len(samples)
        route = self._routes.get(entry.name)
        if route is not None and route.serving is None:
            raise BadInput(503, f"placement refused for {entry.name!r}: {route.reason}")
        if route is None or route.serving == self._me:
            answers = served.predict_now(samples, probabilities)
            return answers if answers is not None else served.enqueue(samples, probabilities)
        return route

    def _publish(self, entry: AppEntry, samples: list[Any], answers: list[Answer]
                 ) -> list[dict[str, Any]]:
        """The answers as JSON items; their records, metrics, MQTT state and watchers."""
        app = entry.name
        records = []
        out = []
        for a, x in zip(answers, samples, strict=True):
            i = new_prediction_id()
            records.append(PredictionRecord(id=i, app=app, label=a.label,
                                            confidence=a.confidence, stage=a.stage,
                                            model_version=a.version, features=x))
            item = {"id": i, "label": a.label, "confidence": round(a.confidence, 6),
                    "stage": a.stage, "model_version": a.version}
            if a.probabilities is not None:
                item["probabilities"] = a.probabilities
            out.append(item)
        self._store.record_predictions(records)
        self._metrics.predicted(app, len(out))
        # Home Assistant shows the last label, from any channel; no broker, no message
        if self._settings.mqtt is not None and out:
            last = out[-1]
            self._mqtt.offer(Predicted(app=app, label=last["label"],
                                      confidence=last["confidence"],
                                      model_version=last["model_version"]))
        for client in self._sockets.get(app, ()):
            if client.watch:  # `mliot watch`: every prediction, from any channel
                for item in out:
                    client.put({"type": "prediction", "ref": None, **item})
        return out

    async def _route(self, entry: AppEntry, samples: list[Any], probabilities: bool
                     ) -> list[Answer]:
        """Answer where the scheduler placed the app: here, on a peer, or refuse (503)."""
        return await self._finish(entry, samples, probabilities,
                                  self._start(entry, samples, probabilities))

    async def _finish(self, entry: AppEntry, samples: list[Any], probabilities: bool,
                      started: list[Answer] | asyncio.Future[list[Answer]] | Route
                      ) -> list[Answer]:
        """The answers of a request ``_start`` began. A peer that fails is asked no more
        until the next plan, and the request is answered here."""
        if isinstance(started, list):
            return started
        if isinstance(started, asyncio.Future):
            return await started
        peer, members = started.serving, started.members
        try:
            remote = await self._peers.ask(lambda f: RemotePredict(
                peer=peer, app=entry.name, members=members, probabilities=probabilities,
                instances=tuple(samples), reply=f), REMOTE_TIMEOUT_S)
            return [Answer(str(p["label"]), float(p["confidence"]), int(p["stage"]),
                           int(p["model_version"]), p.get("probabilities")) for p in remote]
        except (Exception, ActorStopped) as exc:  # any failure: answered here instead
            log.warning("remote_predict_failed", app=entry.name, peer=peer, error=str(exc))
            self._metrics.remote_failures.labels(peer).inc()
            self._failed_peers[peer] = time.monotonic()
            for app, r in list(self._routes.items()):  # every app it served, not just this one
                if r.serving == peer:
                    self._routes[app] = self._local_route(
                        app, f"{peer} failed ({exc}); served locally until the next plan")
            return await self._serving(entry).predict(samples, probabilities)

    def _local_route(self, app: str, reason: str) -> Route:
        return Route(app=app, serving=self._me, members=None, reason=reason)

    async def _predict(self, request: web.Request) -> web.Response:
        entry = self._entry(request)
        body = await self._read_body(request)
        small = len(body) <= PARSE_IN_THREAD_BYTES  # the usual case: no closures, no thread
        payload = parse_json(body) if small else await self._offload(
            len(body), lambda: parse_json(body))
        if not isinstance(payload, dict) or "instances" not in payload:
            raise BadInput(422, 'expected {"instances": [...], "probabilities"?: bool}')
        self._serving(entry)
        samples = self._instances(entry, payload["instances"]) if small else \
            await self._offload(len(body), lambda: self._instances(entry, payload["instances"]))
        predictions = await self._answer(entry, samples, bool(payload.get("probabilities")))
        return json_response({"predictions": predictions})

    async def _record_feedback(self, entry: AppEntry, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict) or not isinstance(payload.get("prediction_id"), str) \
                or "label" not in payload:
            raise BadInput(422, 'expected {"prediction_id": "...", "label": "..."}')
        label = label_text(payload["label"], "label")
        check_label(entry.spec, label, "label")
        served = self._served.get(entry.name)
        if entry.spec.classes is None and served is not None \
                and label not in served.current.classes:
            raise BadInput(422, f"label: unknown label {label!r}; known labels are "
                                f"{served.current.classes}")
        try:
            result = await self._store.add_feedback(entry.name, payload["prediction_id"], label)
        except NotFound:
            raise BadInput(404, f"unknown prediction id {payload['prediction_id']!r}") from None
        if not result.duplicate:
            await self._trainer.send(FeedbackAdded(
                app=entry.name, wrong=result.label != result.predicted,
                sample_id=result.sample_id, label=result.label, predicted=result.predicted))
        return {"prediction_id": payload["prediction_id"], "label": result.label,
                "predicted": result.predicted, "duplicate": result.duplicate}

    async def _feedback(self, request: web.Request) -> web.Response:
        entry = self._entry(request)
        return json_response(await self._record_feedback(entry, await self._read_json(request)))

    async def _models(self, request: web.Request) -> web.Response:
        entry = self._entry(request)

        def read() -> dict[str, Any]:
            versions = []
            for v in reversed(self._registry.versions(entry.name)):
                try:
                    m = self._registry.manifest(entry.name, v)
                except ValueError:
                    continue
                meta = self._registry.meta(entry.name, v)
                fitted_on = m.get("extra", {}).get("fitted_on", {})
                versions.append({
                    "version": v, "created": m.get("created"),
                    "reason": meta.get("reason", m.get("extra", {}).get("reason")),
                    "members": [{"family": x["family"], "weight": x["weight"]}
                                for x in m.get("members", [])],
                    "candidates": [{"family": c["family"], "accuracy": c.get("val_accuracy"),
                                    "latency_ms": c.get("latency_ms"),
                                    "fit_seconds": c.get("fit_seconds"),
                                    "fitted_on": fitted_on.get(c["family"])}
                                   for c in m.get("candidates", [])],
                    "metrics": {**m.get("metrics", {}), **m.get("selection", {})},
                    "gate": m.get("gate"), "decision": meta.get("decision")})
            return {"current": self._version_of(entry.name), "versions": versions}

        return json_response(await asyncio.to_thread(read))

    async def _activate(self, request: web.Request) -> web.Response:
        entry = self._entry(request)
        text = request.match_info["version"]
        try:
            version = version_number(text)
            await asyncio.to_thread(self._registry.activate, entry.name, version)
        except (ValueError, KeyError):
            raise web.HTTPNotFound(text=f"no kept version {text[:20]!r}") from None
        await self._load(entry.name, version)
        if self._version_of(entry.name) != version:
            raise web.HTTPServiceUnavailable(text=f"version {version} could not be loaded")
        log.info("version_activated", app=entry.name, version=version)
        return json_response({"current": version})

    # -- Open Inference Protocol v2 -------------------------------------------------------------

    async def _oip_metadata(self, request: web.Request) -> web.Response:
        entry = self._entry(request)
        shape = [-1, *(entry.shape or [-1])]
        return json_response({
            "name": entry.name, "platform": "mliot",
            "versions": [str(v) for v in await asyncio.to_thread(self._registry.versions,
                                                                   entry.name)],
            "inputs": [{"name": "input", "datatype": "FP32", "shape": shape}],
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                        {"name": "confidence", "datatype": "FP32", "shape": [-1]}]})

    async def _oip_ready(self, request: web.Request) -> web.Response:
        entry = self._entry(request)
        if entry.name not in self._served:
            return error_response(400, "not ready: no model yet")
        return web.Response(status=200)

    async def _oip_infer(self, request: web.Request) -> web.Response:
        entry = self._entry(request)
        body = await self._read_body(request)
        header = request.headers.get("Inference-Header-Content-Length")
        try:
            header_length = int(header) if header is not None else None
        except ValueError:
            raise BadInput(400, "Inference-Header-Content-Length must be an integer") from None
        req, array = await self._offload(len(body), lambda: oip.decode_request(body, header_length))
        self._serving(entry)
        samples = await self._offload(len(body), lambda: self._instances(entry, list(array)))
        answers = await self._answer(entry, samples)
        payload, json_len = oip.encode_response(
            entry.name, answers[0]["model_version"], req.get("id"),
            [a["label"] for a in answers],
            np.array([a["confidence"] for a in answers], dtype=np.float32), oip.wants_binary(req))
        headers = {} if json_len is None else {"Inference-Header-Content-Length": str(json_len)}
        return web.Response(body=payload, headers=headers,
                            content_type="application/octet-stream" if json_len is not None
                            else "application/json")

    # -- the peer API: models other daemons place here ------------------------------------------

    async def _peer_profile(self, request: web.Request) -> web.Response:
        load: MachineLoad = await self._monitor.ask(lambda f: GetLoad(reply=f), timeout=5.0)
        for origin, app in self._hosted.evict_idle():
            log.info("peer_model_evicted", origin=origin, app=app)
        return json_response({
            "name": self._me, "speed": load.speed, "busy": load.busy, "cores": load.cores,
            "cpu_percent": load.daemon_cpu_percent, "memory_percent": load.memory_percent,
            "hosted": self._hosted.ids()})

    async def _peer_install(self, request: web.Request) -> web.Response:
        """A signed model version from a peer: verified as it arrives, unpacked, loaded."""
        origin, app = request.match_info["origin"], request.match_info["app"]
        try:
            version = version_number(request.match_info["version"])
        except ValueError:
            raise BadInput(422, "the version must be a number from 1 to 999999999") from None
        signature = request.headers.get(signing.HEADER)
        model = request.headers.get(signing.MODEL_HEADER, "")
        if not signature or not model:
            raise BadInput(422, f"missing {signing.HEADER} or {signing.MODEL_HEADER}: model "
                                "archives must be signed")
        if (request.content_length or 0) > MAX_MODEL_ARCHIVE:
            raise BadInput(413, f"model archive larger than {MAX_MODEL_ARCHIVE} bytes")
        mac = signing.signer(self._settings.peer_secret, origin, app, version, model)
        size = 0
        async with self._uploads:
            with self._hosted.incoming() as archive:
                async for chunk in request.content.iter_chunked(signing.CHUNK):
                    size += len(chunk)
                    if size > MAX_MODEL_ARCHIVE:
                        raise BadInput(413, f"model archive larger than {MAX_MODEL_ARCHIVE} "
                                            "bytes")
                    mac.update(chunk)
                    await asyncio.to_thread(archive.write, chunk)
                try:
                    signing.check(mac, signature)
                    await self._hosted.receive(origin, app, version, model, archive)
                except (signing.BadSignature, HostError) as exc:
                    log.warning("peer_model_rejected", origin=origin, app=app, version=version,
                                error=str(exc))
                    raise BadInput(422, str(exc)) from None
        log.info("peer_model_loaded", origin=origin, app=app, version=version, bytes=size)
        return json_response({"loaded": version})

    async def _peer_predict(self, request: web.Request) -> web.Response:
        origin, app = request.match_info["origin"], request.match_info["app"]
        served = self._hosted.get(origin, app)
        if served is None:
            raise BadInput(404, f"no model of {origin}/{app} is hosted here")
        payload = await self._read_json(request)
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise BadInput(422, 'expected {"instances": [...], "members"?: int, '
                                '"probabilities"?: bool}')
        members = payload.get("members")
        samples = [peer_instance(x) for x in payload["instances"]]
        answers = await served.predict(samples, payload.get("probabilities") is True,
                                       members if type(members) is int and members > 0 else None)
        return json_response({"predictions": [
            {"label": a.label, "confidence": a.confidence, "stage": a.stage,
             "model_version": a.version, "probabilities": a.probabilities} for a in answers]})

    # -- WebSocket streams ----------------------------------------------------------------------

    def _broadcast(self, app: str, message: dict[str, Any] | None) -> None:
        """Send to every stream of an app (None closes them: the app is gone)."""
        for client in list(self._sockets.get(app, ())):
            if message is None:
                client.close(going_away=True)
            else:
                client.put(message)

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        entry = self._entry(request)
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=int(
            self._settings.daemon.max_body_mb * 2**20))
        await ws.prepare(request)
        in_flight = asyncio.Semaphore(WS_IN_FLIGHT)
        client: _Client | None = None
        self._metrics.ws_connections.inc()
        try:
            async with asyncio.TaskGroup() as tg:
                client = _Client(ws, tg, request.query.get("watch") in ("1", "true"),
                                 request.transport, self._metrics)
                self._sockets.setdefault(entry.name, set()).add(client)
                writer = tg.create_task(client.write_loop(), name=f"ws.{entry.name}.tx")
                async for msg in ws:
                    if msg.type != web.WSMsgType.TEXT:
                        client.put({"type": "error", "ref": None,
                                    "message": "only JSON text messages are understood"})
                        continue
                    reply, later = self._ws_now(entry.name, msg.data)
                    if reply is not None:  # answered without waiting: no task, no queue
                        await client.send(reply)
                        continue
                    await in_flight.acquire()
                    tg.create_task(self._ws_message(entry.name, client, later, in_flight))
                writer.cancel()
        finally:
            self._metrics.ws_connections.dec()
            if client is not None:
                self._sockets.get(entry.name, set()).discard(client)
        return ws

    def _ws_now(self, app: str, data: str) -> tuple[dict[str, Any] | None, _WsWork]:
        """(the reply, when the message can be answered at once; else the parsed work for
        ``_ws_message``). A prediction on an idle app is answered here, in the reader."""
        work = _WsWork()
        try:
            try:
                msg = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise BadInput(400, f"malformed JSON: {exc}") from exc
            if not isinstance(msg, dict):
                raise BadInput(422, "a message must be a JSON object")
            work.msg, work.ref = msg, msg.get("ref")
            if msg.get("type") != "predict":
                return None, work
            entry = self._app(app)
            work.samples = [check_features(msg.get("features"), entry.spec, entry.shape)]
            started = self._start(entry, work.samples, bool(msg.get("probabilities")))
            if not isinstance(started, list):  # queued here (this turn's batch) or a peer's
                work.started = started
                return None, work
            (prediction,) = self._publish(entry, work.samples, started)
            return {"type": "prediction", "ref": work.ref, **prediction}, work
        except Exception as exc:
            return self._ws_error(app, work.ref, exc), work

    async def _ws_message(self, app: str, client: _Client, work: _WsWork,
                          in_flight: asyncio.Semaphore) -> None:
        msg, ref = work.msg, work.ref
        try:
            entry = self._app(app)
            kind = msg.get("type")
            if kind == "predict":  # started by _ws_now
                assert work.samples is not None and work.started is not None
                answers = await self._finish(entry, work.samples,
                                             bool(msg.get("probabilities")), work.started)
                (prediction,) = self._publish(entry, work.samples, answers)
                client.put({"type": "prediction", "ref": ref, **prediction})
            elif kind == "sample":
                result = await self._store_samples(app, {"samples": [
                    {"features": msg.get("features"), "label": msg.get("label")}]}, "ws")
                client.put({"type": "ack", "ref": ref, "n_samples": result["n_samples"]})
            elif kind == "feedback":
                await self._record_feedback(entry, msg)
                client.put({"type": "ack", "ref": ref})
            else:
                raise BadInput(422, "type: must be predict, sample or feedback")
        except Exception as exc:
            client.put(self._ws_error(app, ref, exc))
        finally:
            in_flight.release()

    def _ws_error(self, app: str, ref: Any, exc: Exception) -> dict[str, Any]:
        """The error message a WebSocket client gets for a message that failed."""
        if isinstance(exc, BadInput):
            message = f"{exc.message}: {'; '.join(exc.details)}" if exc.details else exc.message
        elif isinstance(exc, web.HTTPException):
            message = exc.text or exc.reason
        elif isinstance(exc, StoreError | TimeoutError):
            message = f"not stored: {exc}"
        else:  # a bug must cost one answer, not the connection
            log.error("ws_message_failed", app=app, exc_info=exc)
            message = "internal error; see the log"
        return {"type": "error", "ref": ref, "message": message}


@dataclass(slots=True)
class _WsWork:
    """One parsed WebSocket message on its way to ``_ws_message``."""

    msg: dict[str, Any] = field(default_factory=dict)
    ref: Any = None
    samples: list[Any] | None = None  # a prediction's checked features
    started: asyncio.Future[list[Answer]] | Route | None = None  # see Server._start


class _Client:
    """One WebSocket connection's outgoing queue. A client too slow to drain it is closed,
    so it never holds back the others."""

    def __init__(self, ws: web.WebSocketResponse, tg: asyncio.TaskGroup, watch: bool,
                 transport: asyncio.Transport | None, metrics: Metrics) -> None:
        self.ws = ws
        self.metrics = metrics
        self.transport = transport
        self.watch = watch
        self.tg = tg  # the connection's task group: the close task belongs to it
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(WS_QUEUE)
        self.closing = False

    def put(self, message: dict[str, Any]) -> None:
        if self.closing:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.drop()

    def drop(self) -> None:
        """Cut a client that lets its queue fill: abort the connection at once (a close
        handshake would wait for a flush that never comes) and free what it had queued."""
        log.warning("ws_client_too_slow", queued=self.queue.qsize())
        self.metrics.ws_dropped.inc()
        self.closing = True
        while not self.queue.empty():
            self.queue.get_nowait()
        if self.transport is not None:
            self.transport.abort()  # the reader then ends, and the handler with it

    async def send(self, message: dict[str, Any]) -> None:
        """Write a reply now, from the reader's turn; through the queue (and its rule for
        slow clients) when messages wait there or the socket is backed up, so that a write
        never blocks the reader and replies never overtake queued ones."""
        if self.closing:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            self.closing = True
            return
        if self.queue.qsize() or transport.get_write_buffer_size() > WS_DIRECT_MAX:
            self.put(message)
            return
        try:
            await self.ws.send_frame(orjson.dumps(message), WSMsgType.TEXT)
        except ConnectionError:  # the client went away; the reader loop ends on its own
            self.closing = True

    def close(self, going_away: bool) -> None:
        if self.closing:
            return
        self.closing = True
        code = WSCloseCode.GOING_AWAY if going_away else WSCloseCode.POLICY_VIOLATION
        self.tg.create_task(self.ws.close(code=code, message=b"closing"))

    async def write_loop(self) -> None:
        with contextlib.suppress(ConnectionError):  # dropped, or the client went away
            while not self.closing:
                message = await self.queue.get()
                # orjson's bytes are UTF-8 already: no decode here and encode in send_str
                await self.ws.send_frame(orjson.dumps(message), WSMsgType.TEXT)


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


def _version() -> str:
    from mliot_daemon import __version__
    return __version__
