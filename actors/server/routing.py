"""The served models and where each app is served: this machine, a peer, or nowhere.

``Router`` holds one ``ServedApp`` per app with a loaded version, and the scheduler's routes.
A prediction is *started* without awaiting (``start``): the answers when this machine gives
them at once, the batch's future when it queues them here, or the route to the peer that
serves the app; ``finish`` completes it. Nothing awaits in ``start``, so the requests of one
loop turn (a WebSocket read's frames, concurrent clients) join one batch. A peer that fails is
asked no more until the next plan, and the request is answered here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from actors.server.serving import Answer, ServedApp, ServedModel
from mliot_daemon.errors import Unavailable
from mliot_daemon.learn.persist import load_model
from mliot_daemon.learn.portable import PORTABLE_DIR, PortableError, load_portable
from mliot_daemon.messages import (
    AppFacts,
    GetLoad,
    LoadFailed,
    MachineLoad,
    Placed,
    Refs,
    RemotePredict,
    Route,
)
from mliot_daemon.metrics import Metrics
from mliot_daemon.registry import Registry
from mliot_daemon.runtime import ActorStopped

log = structlog.get_logger("mliot.server")

REMOTE_TIMEOUT_S = 3.0  # the peers actor gives up after 2 s; this only guards the mailbox
Started = list[Answer] | asyncio.Future[list[Answer]] | Route  # see Router.start


class Router:
    """App -> its served model and its route. Plain state on the server's loop."""

    def __init__(self, registry: Registry, refs: Refs, metrics: Metrics, me: str) -> None:
        self.me = me  # this machine's name (the config asks the OS for it every time)
        self.served: dict[str, ServedApp] = {}
        self.routes: dict[str, Route] = {}  # from the scheduler; none yet: serve here
        self.machines: list[dict[str, Any]] = []  # as the scheduler last saw them
        self._registry = registry
        self._refs = refs
        self._metrics = metrics
        self._failed_peers: dict[str, float] = {}  # peer -> when a forwarded request failed
        self._load_locks: dict[str, asyncio.Lock] = {}

    # -- versions -------------------------------------------------------------------------------

    async def load(self, app: str, version: int, exists: Any, fresh: bool = True) -> None:
        """Load a version from this machine's registry and swap it in (requests in flight
        finish on the old one). ``exists()`` says whether the app is still there; ``fresh``
        that its latencies were just measured (false at start: see below)."""
        path = self._registry.version_path(app, version)
        async with self._load_locks.setdefault(app, asyncio.Lock()):  # publish vs. activate
            try:
                served = await asyncio.to_thread(lambda: ServedModel(
                    version, _read(app, version, path), self._registry.model_id(app, version)))
            except Exception as exc:  # e.g. pickles of an older library: the trainer retrains
                log.error("model_load_failed", app=app, version=version, error=repr(exc))
                await self._refs.trainer.send(LoadFailed(app=app, version=version))
                return
            if not exists():
                return  # deleted while loading
            if await asyncio.to_thread(self._registry.current, app) != version:
                return  # another version became current meanwhile: it is loaded after us
            current = self.served.get(app)
            if current is None:
                self.served[app] = ServedApp(served)
            else:
                current.swap(served)
            log.info("model_loaded", app=app, version=served.version)
            self._metrics.model_version.labels(app).set(served.version)
            self._metrics.model_accuracy.labels(app).set(
                float(served.model.selection.val_accuracy))
            # The speed its latencies were measured at (the pool measured them moments ago):
            # the scheduler scales them by it to other machines, and keeps it after a quota.
            # Not at start: the monitor measures the speed only once the daemon serves, and
            # without it the scheduler takes the machine's speed, the same thing.
            if not fresh:
                return
            with contextlib.suppress(TimeoutError, ActorStopped):
                load: MachineLoad = await self._refs.monitor.ask(lambda f: GetLoad(reply=f), 5.0)
                served.measured_speed = load.speed

    def forget(self, app: str) -> None:
        self.served.pop(app, None)
        self.routes.pop(app, None)

    def version_of(self, app: str) -> int | None:
        served = self.served.get(app)
        return served.current.version if served else None

    def accuracy(self, app: str) -> float | None:
        """The served ensemble's validation accuracy."""
        served = self.served.get(app)
        if served is None:
            return None
        return round(float(served.current.model.selection.val_accuracy), 5)

    # -- placement ------------------------------------------------------------------------------

    def placed(self, msg: Placed) -> None:
        """The scheduler's plan. A peer that failed after the plan's inputs were read stays
        unused."""
        failed = {p for p, t in self._failed_peers.items() if t > msg.planned_at}
        self.routes = {r.app: r if r.serving not in failed else self._local(
            r.app, f"{r.serving} failed; served locally until the next plan")
            for r in msg.routes}
        self.machines = [dict(m) for m in msg.machines]
        for m in self.machines:
            self._metrics.machine_up.labels(m["name"]).set(1 if m["up"] else 0)
            self._metrics.machine_busy.labels(m["name"]).set(m["busy"] or 0.0)
        for r in msg.routes:
            if (served := self.served.get(r.app)) is not None:
                served.members = r.members if r.serving == self.me else None

    def placement(self, app: str, training: str) -> dict[str, Any]:
        route = self.routes.get(app)
        if app not in self.served:
            return {"serving": None, "training": training, "reason": "no model yet"}
        if route is None:
            return {"serving": self.me, "training": training, "reason": "local (not planned yet)"}
        return {"serving": route.serving, "training": training, "reason": route.reason,
                "members": route.members, "predicted_ms": dict(route.predicted_ms)}

    def facts(self, policies: dict[str, Any]) -> tuple[AppFacts, ...]:
        """What the scheduler needs of every served app (``policies``: app -> its policy)."""
        out = []
        for name, served in self.served.items():
            policy = policies.get(name)
            if policy is None:
                continue
            model = served.current
            out.append(AppFacts(
                name=name, version=model.version, mode=policy.mode,
                budget_ms=float(policy.latency_ms or 0.0), latencies_ms=model.latencies_ms(),
                min_members=model.min_members(policy.min_accuracy),
                measured_speed=model.measured_speed, model_id=model.model_id,
                predictions=served.predictions,
                directory=str(self._registry.version_path(name, model.version))))
        return tuple(out)

    # -- predictions ----------------------------------------------------------------------------

    def start(self, app: str, served: ServedApp, samples: list[Any], probabilities: bool
              ) -> Started:
        """Count the request and start answering it where the scheduler placed the app
        (``Unavailable`` when placement refused it)."""
        served.predictions += len(samples)
        route = self.routes.get(app)
        if route is None or route.serving == self.me:
            answers = served.predict_now(samples, probabilities)
            return answers if answers is not None else served.enqueue(samples, probabilities)
        if route.serving is None:
            raise Unavailable(f"placement refused for {app!r}: {route.reason}")
        return route

    async def finish(self, app: str, served: ServedApp, samples: list[Any],
                     probabilities: bool, started: Started) -> list[Answer]:
        """The answers of a request ``start`` began."""
        if isinstance(started, list):
            return started
        if isinstance(started, asyncio.Future):
            return await started
        peer, members = started.serving, started.members
        assert peer is not None
        try:
            remote = await self._refs.peers.ask(lambda f: RemotePredict(
                peer=peer, app=app, members=members, probabilities=probabilities,
                instances=tuple(samples), reply=f), REMOTE_TIMEOUT_S)
            return [Answer(str(p["label"]), float(p["confidence"]), int(p["stage"]),
                           int(p["model_version"]), p.get("probabilities"),
                           float(p.get("margin", 1.0)), float(p.get("doubt", 0.0)))
                    for p in remote]
        except (Exception, ActorStopped) as exc:  # any failure: answered here instead
            log.warning("remote_predict_failed", app=app, peer=peer, error=str(exc))
            self._metrics.remote_failures.labels(peer).inc()
            self._failed_peers[peer] = time.monotonic()
            for other, r in list(self.routes.items()):  # every app it served, not just this
                if r.serving == peer:
                    self.routes[other] = self._local(
                        other, f"{peer} failed ({exc}); served locally until the next plan")
            return await served.predict(samples, probabilities)

    def _local(self, app: str, reason: str) -> Route:
        return Route(app=app, serving=self.me, members=None, reason=reason)


def _read(app: str, version: int, path: Any) -> Any:
    """The served predictor of a version: its portable form (arrays and JSON, numpy only: no
    unpickling, no sklearn, so a restart serves within a second) when the version has one;
    the pickles otherwise (versions published before issue 20, or a part with no array
    form), which a pool worker wrote on this machine."""
    portable = path / PORTABLE_DIR
    if portable.is_dir():
        try:
            return load_portable(portable)
        except PortableError as exc:
            log.warning("portable_model_refused", app=app, version=version, error=str(exc))
    log.info("model_loaded_from_pickles", app=app, version=version)
    return load_model(path)
