"""The server actor: the serving core's mailbox and the HTTP server's lifecycle.

Messages from other actors become core operations (a version to load, the scheduler's plan,
training events for streams, the MQTT bridge's requests). A request from another channel runs
in a task of its own, so a slow one (a commit) does not hold up the mailbox; one its sender
gave up on is not carried out. The HTTP site opens last in ``on_start``, once the last good
versions are loaded, and closes first in ``on_stop``: in-flight requests finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, assert_never

import structlog
from aiohttp import web

from actors.server import views
from actors.server.app import build_app
from actors.server.bounds import Runner
from actors.server.core import ServingCore
from actors.server.guard import Guard, machine_names
from actors.server.hosting import HostedModels
from mliot_daemon.config import ConfigStore
from mliot_daemon.learn.fast import single_thread_blas
from mliot_daemon.messages import (
    ApplyConfig,
    Correct,
    GetServerStatus,
    GetServingFacts,
    Happening,
    IngestReadings,
    IngestSamples,
    Placed,
    Predict,
    Refs,
    ServerMsg,
    SubmitFeedback,
    TrainingEvent,
    VersionPublished,
)
from mliot_daemon.metrics import Metrics
from mliot_daemon.registry import Registry
from mliot_daemon.runtime import Actor, reply_to
from mliot_daemon.store import Store

log = structlog.get_logger("mliot.server")


class Server(Actor[ServerMsg]):
    """HTTP API and app catalog. Stops first on shutdown: in-flight requests finish."""

    name = "server"
    # "mqtt": whether predictions are offered to the bridge (``ServingCore.publish``)
    config_keys = frozenset({"secrets", "daemon.protect_reads", "daemon.max_body_mb",
                             "daemon.header_timeout_s", "daemon.body_timeout_s",
                             "daemon.idle_timeout_s", "daemon.max_connections",
                             "daemon.max_writes_per_s",
                             "daemon.name", "apps", "training.backend",
                             "training.dask_scheduler", "mqtt"})

    def __init__(self, config: ConfigStore, store: Store, metrics: Metrics, registry: Registry,
                 refs: Refs, started_at: float, ready: asyncio.Event,
                 shutdown_timeout: float = 5.0) -> None:
        super().__init__(refs.server)
        self._args = (config, store, metrics, registry, refs)
        self._started_at = started_at
        self._ready = ready
        self._shutdown_timeout = shutdown_timeout
        self._runner: Runner | None = None
        self._queries: set[asyncio.Task[None]] = set()  # other channels' requests in progress
        self.core: ServingCore | None = None
        self.port: int | None = None

    async def on_start(self) -> None:
        # a restart rebuilds the core from the store, the registry and the config in force
        config, store, metrics, registry, refs = self._args
        core = self.core = ServingCore(config, store, metrics, registry, refs)
        hosted = HostedModels(config.current.daemon.data_path / "hosted")
        await asyncio.to_thread(hosted.reset)
        single_thread_blas()  # serving is one row at a time: BLAS threads only add overhead
        await core.open()
        guard = Guard(await asyncio.to_thread(machine_names))  # may ask DNS: not on the loop
        # Runner: aiohttp's AppRunner, each connection bounded (actors/server/bounds.py)
        self._runner = Runner(build_app(core, self._started_at, self._ready, hosted, guard),
                              core, handle_signals=False, shutdown_timeout=self._shutdown_timeout)
        await self._runner.setup()
        d = core.settings.daemon
        site = web.TCPSite(self._runner, d.host, d.port, reuse_address=True)
        await site.start()
        self.port = guard.port = self._runner.addresses[0][1]
        log.info("http_listening", host=d.host, port=self.port)

    async def on_stop(self) -> None:
        for task in list(self._queries):
            task.cancel()
        await asyncio.gather(*self._queries, return_exceptions=True)
        if self.core is not None:
            self.core.close()
        # Closes the listening socket, lets in-flight requests finish, then closes connections.
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, msg: ServerMsg) -> None:
        core = self.core
        assert core is not None
        match msg:
            case ApplyConfig(settings=settings, changed=changed):
                await core.apply(settings, changed)
            case VersionPublished(app=app, version=version):
                await core.load(app, version)
            case IngestSamples(app=app, samples=samples, source=source, reply=reply):
                self._query(reply, lambda: core.ingest(app, samples, source))
            case Predict(app=app, instances=instances, reply=reply):
                self._query(reply, lambda: core.predict(app, list(instances), "mqtt"))
            case SubmitFeedback(app=app, feedback=feedback, reply=reply):
                self._query(reply, lambda: core.feedback(app, feedback))
            case Correct(app=app, label=label, prediction_id=prediction_id, reply=reply):
                self._query(reply, lambda: core.correct(app, label, prediction_id))
            case IngestReadings(app=app, items=items, source=source, reply=reply):
                self._query(reply, lambda: core.streams.ingest(app, list(items), source))
            case Happening(app=app, label=label, reply=reply):
                self._query(reply, lambda: core.ranges.happening(app, label))
            case TrainingEvent(app=app, kind=kind, data=data):
                if kind in ("retraining_started", "retraining_finished"):
                    core.training[app] = "training" if kind == "retraining_started" else "idle"
                core.broadcast(app, {"type": "event", "kind": kind, **dict(data)})
            case GetServerStatus(reply=reply):
                if not reply.done():
                    reply.set_result(views.apps_status(core))
            case GetServingFacts(reply=reply):
                if not reply.done():
                    reply.set_result(core.serving_facts())
            case Placed():
                core.router.placed(msg)
            case _:
                assert_never(msg)

    def _query(self, reply: asyncio.Future[Any], produce: Callable[[], Awaitable[Any]]) -> None:
        """Answer another channel's request in a task of its own; skip it if its sender gave
        up already."""
        if reply.done():
            return
        task = asyncio.create_task(reply_to(reply, produce), name="server.query")
        self._queries.add(task)
        task.add_done_callback(self._queries.discard)
