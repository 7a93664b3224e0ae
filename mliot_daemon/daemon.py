"""The composition root: builds the store and the actors, runs them, handles signals and reload.

Start order is monitor, trainer, scheduler, peers, mqtt, server (ingress opens last, once
everything behind it runs); stop order is the reverse, so ingress closes first and in-flight
requests still find the rest.
The store closes after every actor has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from pathlib import Path
from typing import Any

import structlog

from actors.monitor import Monitor
from actors.mqtt import MqttBridge
from actors.peers import Peers
from actors.scheduler import Scheduler
from actors.server import Server
from actors.trainer import Trainer
from mliot_daemon import cpus
from mliot_daemon.config import ConfigError, ConfigStore, load_file, parse_settings
from mliot_daemon.logs import configure_logging
from mliot_daemon.messages import ApplyConfig, GetServerStatus, Refs
from mliot_daemon.metrics import Metrics
from mliot_daemon.registry import Registry
from mliot_daemon.runtime import (
    Actor,
    ActorStopped,
    RestartBudget,
    RestartBudgetSpent,
    stop_in_order,
    supervise,
    wait_started,
)
from mliot_daemon.settings import Settings
from mliot_daemon.signals import Signals
from mliot_daemon.store import Store, StoreError
from mliot_daemon.systemd import Notifier

log = structlog.get_logger("mliot.daemon")

EX_CONFIG = 78  # sysexits: configuration error (systemd will not restart in a loop on it)
STOP_TIMEOUT_S = 10.0
POLL_CONFIG_S = 1.0
PRUNE_EVERY_S = 3600.0
STATUS_EVERY_S = 5.0


class Daemon:
    """One running mliot: its config, store, metrics and actors."""

    def __init__(self, config: ConfigStore, signals: Signals | None = None) -> None:
        self.config = config
        settings = config.current
        self.metrics = Metrics()
        self.store = Store(settings.daemon.data_path / "mliot.db")
        self.ready = asyncio.Event()
        # Set with the first ``ready`` and never cleared: what serving does not need (the
        # trainer's learning code and pool, the monitor's speed benchmark) starts then.
        self.serving = asyncio.Event()
        self.signals = signals or Signals()
        self.started_at = time.monotonic()
        self.registry = Registry(settings.daemon.data_path / "models")
        # Who asks whom (DESIGN.md): server and trainer only tell each other things; the
        # bridge asks the server, which only offers it Predicted telemetry; the scheduler asks
        # the monitor, peers and server; the peers actor only offers the scheduler Replan.
        refs = Refs.create()
        self.notifier = Notifier()  # systemd's, when it runs us as Type=notify
        self.monitor = Monitor(self.metrics, refs, self.notifier, after=self.serving)
        self.server = Server(config, self.store, self.metrics, self.registry, refs,
                             self.started_at, self.ready)
        self.trainer = Trainer(settings, self.store, self.registry, refs,
                               settings.daemon.machine_name, self.metrics, self.serving)
        self.bridge = MqttBridge(settings, refs, self.metrics)
        self.peers = Peers(settings, refs)
        self.scheduler = Scheduler(settings, refs)
        self.actors: list[Actor[Any]] = [self.monitor, self.trainer, self.scheduler,
                                         self.peers, self.bridge, self.server]  # start order
        config.subscribe(self._apply)
        self.metrics.config_version.set(config.version)

    async def _apply(self, settings: Settings, changed: frozenset[str], version: int) -> None:
        """Hand a reloaded config to the actors it concerns, in start order."""
        if changed & {"daemon.log_level", "daemon.log_format"}:
            configure_logging(settings.daemon.log_level, settings.daemon.log_format)
        self.metrics.config_version.set(version)
        msg = ApplyConfig(settings=settings, changed=changed, version=version)
        for actor in self.actors:
            if actor.wants(changed):
                await actor.ref.send(msg)

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or until an actor spends its restart budget."""
        await self.store.open()
        try:
            with self.signals.installed():
                async with asyncio.TaskGroup() as tg:
                    tasks: dict[str, asyncio.Task[None]] = {}
                    for actor in self.actors:
                        tasks[actor.name] = tg.create_task(
                            supervise(actor, RestartBudget()), name=f"{actor.name}.run")
                        await wait_started(actor, tasks[actor.name])
                    chores = [
                        tg.create_task(self._reload_on_request(), name="config.reload"),
                        tg.create_task(self._watch_config_file(), name="config.poll"),
                        tg.create_task(self._prune(), name="store.prune"),
                        tg.create_task(self._tell_systemd(), name="systemd.status"),
                        tg.create_task(self._freeze_heap(), name="gc.freeze"),
                    ]
                    self.ready.set()
                    self.serving.set()
                    log.info("daemon_ready", port=self.server.port,
                             machine=self.config.current.daemon.machine_name)
                    self.notifier.ready(f"ready on port {self.server.port}")
                    await self.signals.stop.wait()
                    log.info("daemon_stopping")
                    self.notifier.stopping()
                    self.ready.clear()
                    for chore in chores:
                        chore.cancel()
                    await stop_in_order(reversed(self.actors), tasks, STOP_TIMEOUT_S)
        finally:
            await self.store.close()
        log.info("daemon_stopped")
        return 0

    async def _freeze_heap(self) -> None:
        """Everything loaded at start lives for good: the modules, the models, and sklearn and
        xgboost, which the trainer imports once the daemon serves. Keep it out of the
        collector's full passes, which otherwise stall the loop for tens of milliseconds under
        allocation-heavy ingest; so after the trainer's imports, not before ``/readyz``."""
        await self.trainer.working.wait()
        gc.collect()
        gc.freeze()

    async def _reload_on_request(self) -> None:
        while True:
            await self.signals.reload.wait()
            self.signals.reload.clear()
            await self.config.reload("sighup")

    async def _watch_config_file(self) -> None:
        """Reload when the file changed and then stayed the same for one poll (debounce)."""
        path = self.config.path
        if path is None:
            return
        seen = _stamp(path)
        while True:
            await asyncio.sleep(POLL_CONFIG_S)
            now = _stamp(path)
            if now == seen:
                continue
            await asyncio.sleep(POLL_CONFIG_S)
            if _stamp(path) == now:  # editors write in steps: wait for the file to settle
                seen = now
                await self.config.reload("file")

    async def _tell_systemd(self) -> None:
        """``systemctl status`` shows the apps and what trains, refreshed on change."""
        shown = ""
        while self.notifier.enabled:
            await asyncio.sleep(STATUS_EVERY_S)
            with contextlib.suppress(TimeoutError, ActorStopped):
                apps = await self.server.ref.ask(lambda f: GetServerStatus(reply=f), 5.0)
                ready = sum(1 for a in apps.values() if a.get("ready"))
                training = sorted(n for n, a in apps.items()
                                  if a.get("training_state") == "training")
                text = f"{len(apps)} apps, {ready} ready" + (
                    f"; training {', '.join(training)}" if training else "")
                if text != shown:
                    self.notifier.status(text)
                    shown = text

    async def _prune(self) -> None:
        """Retention, hourly: predictions and readings past their days; and readings' small
        blocks merged into big ones (``store.readings``)."""
        while True:
            d = self.config.current.daemon
            with contextlib.suppress(StoreError):
                n = await self.store.prune_predictions(d.keep_predictions_days * 86400)
                if n:
                    log.info("predictions_pruned", n=n, older_than_days=d.keep_predictions_days)
                n = await self.store.prune_readings(d.keep_readings_days * 86400)
                merged = await self.store.compact_readings()
                if n or merged:
                    log.info("readings_pruned", blocks=n, merged=merged,
                             older_than_days=d.keep_readings_days)
            await asyncio.sleep(PRUNE_EVERY_S)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


async def load_settings(path: Path | None) -> Settings:
    """The file's settings, or the built-in defaults without a file."""
    if path is None:
        return parse_settings({})
    return await asyncio.to_thread(load_file, path)


async def run_daemon(path: Path | None, signals: Signals | None = None) -> int:
    """`mliot run`: returns the process exit code. ``signals`` holds what arrived before the
    loop ran (see ``Signals.early``)."""
    configure_logging()
    signals = signals or Signals()
    with signals.installed():  # from here on a SIGHUP is a queued reload, SIGTERM a stop
        try:
            settings = await load_settings(path)
        except ConfigError as exc:
            log.error("config_invalid", path=str(path), errors=exc.errors)
            return EX_CONFIG
        configure_logging(settings.daemon.log_level, settings.daemon.log_format)
        for warning in settings.warnings:
            log.warning("config_warning", warning=warning)
        if signals.stop.is_set():
            return 0  # stopped before anything started
        # before the actors start threads: those started from the loop inherit its CPU
        reserved = (cpus.reserve_loop_cpu(settings.training.pool_size)
                    if settings.daemon.dedicated_loop_cpu else None)
        if reserved is not None:
            log.info("loop_cpu_reserved", loop_cpu=reserved[0], worker_cpus=sorted(reserved[1]))
        return await _run(Daemon(ConfigStore(path, settings), signals))


async def _run(daemon: Daemon) -> int:
    code = 0
    try:
        code = await daemon.run()
    except* (OSError, StoreError) as group:  # e.g. the listen address is taken
        for exc in group.exceptions:
            log.error("daemon_start_failed", error=str(exc))
        code = 1
    except* RestartBudgetSpent as group:
        for exc in group.exceptions:
            log.error("daemon_failed", error=str(exc))
        code = 1
    return code
