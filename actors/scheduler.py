"""The scheduler actor (the paper's DSL): decides where every app is served.

Once a second, and at once when a peer goes up or down, a model is loaded or the config
changes, it gathers this machine's load (monitor), the peers' profiles (peers) and what each
served app needs (server: its budget, policy, measured latency per ensemble size, request
count), runs the placement rule of ``mliot_daemon.placement``, sends a model version to a peer
before routing an app there, and tells the server the routes. A changed decision is logged
as a ``placement`` event with its numbers.

Latencies measured here are brought to reference speed (x this machine's speed) so that the
rule can scale them to any machine by its own speed. Training placement is not decided here:
it is the local pool, or the Dask cluster when ``training.backend = "dask"``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, assert_never

import structlog

from mliot_daemon.config import Settings
from mliot_daemon.messages import (
    AppFacts,
    ApplyConfig,
    GetLoad,
    GetPeers,
    GetServingFacts,
    MachineLoad,
    PeerProfile,
    Placed,
    Replan,
    Route,
    SchedulerMsg,
    ShipModel,
)
from mliot_daemon.placement import AppDemand, Decision, MachineView, plan
from mliot_daemon.runtime import Actor, ActorRef, ActorStopped

log = structlog.get_logger("mliot.scheduler")

TICK_S = 1.0
RATE_HALF_LIFE_S = 10.0  # request rates are smoothed over about this long
ASK_TIMEOUT_S = 5.0
SHIP_TIMEOUT_S = 300.0
SHIP_RETRY_S = 30.0  # after a failed transfer, that peer is not tried again for this long
SHIPPED_GRACE_S = 5.0  # a peer's profile shows a model it was sent within a poll or two


class Scheduler(Actor[SchedulerMsg]):
    """Keeps every app's route current."""

    name = "scheduler"
    config_keys = frozenset({"apps", "peers", "daemon.name"})

    def __init__(self, settings: Settings, monitor: ActorRef[Any], peers: ActorRef[Any],
                 server: ActorRef[Any]) -> None:
        super().__init__(mailbox_size=256)
        self._settings = settings
        self._monitor = monitor
        self._peers = peers
        self._server = server
        self._routes: dict[str, Route] = {}
        self._counts: dict[str, tuple[int, float]] = {}  # app -> (predictions, when)
        self._rates: dict[str, float] = {}
        self._ship_failed: dict[tuple[str, str], float] = {}  # (peer, app) -> when
        self._shipped: dict[tuple[str, str], tuple[int, float]] = {}  # -> (version, when)

    def background(self) -> list:
        return [self._tick()]

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.ref.offer(Replan(reason="tick"))

    async def handle(self, msg: SchedulerMsg) -> None:
        match msg:
            case ApplyConfig(settings=settings):
                self._settings = settings
                await self._replan("config reloaded")
            case Replan(reason=reason):
                await self._replan(reason)
            case _:
                assert_never(msg)

    async def _replan(self, reason: str) -> None:
        try:
            load: MachineLoad = await self._monitor.ask(lambda f: GetLoad(reply=f),
                                                        ASK_TIMEOUT_S)
            peers: tuple[PeerProfile, ...] = await self._peers.ask(
                lambda f: GetPeers(reply=f), ASK_TIMEOUT_S)
            facts: tuple[AppFacts, ...] = await self._server.ask(
                lambda f: GetServingFacts(reply=f), ASK_TIMEOUT_S)
        except (TimeoutError, ActorStopped):
            return  # starting or stopping: the next tick tries again
        me = self._settings.daemon.machine_name
        machines = [MachineView(me, local=True, up=True, speed=load.speed, busy=load.busy)]
        machines += [MachineView(p.name, local=False, up=p.up and bool(p.speed),
                                 speed=p.speed or 0.0, busy=p.busy or 0.0, rtt_ms=p.rtt_ms or 0.0)
                     for p in peers if p.name != me]
        demands = [AppDemand(
            name=f.name, mode=f.mode, budget_ms=f.budget_ms,
            latency_ref_ms=tuple(ms * (f.measured_speed or load.speed) for ms in f.latencies_ms),
            rate_hz=self._rate(f), current=self._serving(f.name)) for f in facts]
        decisions = plan(demands, machines)
        hosted = {p.name: dict(p.hosted) for p in peers}
        routes: dict[str, Route] = {}
        for f in facts:
            decision = decisions[f.name]
            peer = decision.serving
            if peer not in (None, me) and \
                    hosted.get(peer, {}).get(f"{me}/{f.name}") != f.version and \
                    not self._recently_shipped(peer, f):
                decision = await self._ship(f, decision)
            routes[f.name] = Route(app=f.name, serving=decision.serving,
                                   members=decision.members, reason=decision.reason,
                                   predicted_ms=tuple(sorted(decision.predicted_ms.items())))
        self._log_changes(routes, reason)
        self._routes = routes
        placed: dict[str, list[str]] = {}
        for r in routes.values():
            if r.serving is not None:
                placed.setdefault(r.serving, []).append(r.app)
        status = [_local_status(me, load, placed.get(me, []))]
        status += [_peer_status(p, placed.get(p.name, [])) for p in peers if p.name != me]
        await self._server.send(Placed(routes=tuple(routes.values()),
                                       machines=tuple(tuple(s.items()) for s in status)))

    def _serving(self, app: str) -> str | None:
        route = self._routes.get(app)
        return route.serving if route else None

    def _rate(self, f: AppFacts) -> float:
        """Requests per second, smoothed (exponential, ``RATE_HALF_LIFE_S``)."""
        now = time.monotonic()
        before = self._counts.get(f.name)
        self._counts[f.name] = (f.predictions, now)
        if before is None or now <= before[1]:
            return self._rates.get(f.name, 0.0)
        instant = max(0, f.predictions - before[0]) / (now - before[1])
        keep = 0.5 ** ((now - before[1]) / RATE_HALF_LIFE_S)
        rate = keep * self._rates.get(f.name, instant) + (1 - keep) * instant
        self._rates[f.name] = rate
        return rate

    def _recently_shipped(self, peer: str, f: AppFacts) -> bool:
        version, when = self._shipped.get((peer, f.name), (None, 0.0))
        return version == f.version and time.monotonic() - when < SHIPPED_GRACE_S

    async def _ship(self, f: AppFacts, decision: Decision) -> Decision:
        """Send the app's current version to the chosen peer; on failure serve it here."""
        peer = decision.serving
        assert peer is not None
        failed_at = self._ship_failed.get((peer, f.name), -SHIP_RETRY_S)
        error = f"an earlier transfer failed {time.monotonic() - failed_at:.0f} s ago"
        if time.monotonic() - failed_at >= SHIP_RETRY_S:
            try:
                await self._peers.ask(lambda r: ShipModel(
                    peer=peer, app=f.name, version=f.version, directory=f.directory, reply=r),
                    SHIP_TIMEOUT_S)
                self._ship_failed.pop((peer, f.name), None)
                self._shipped[(peer, f.name)] = (f.version, time.monotonic())
                return decision
            except Exception as exc:  # any failure: the app is served here meanwhile
                self._ship_failed[(peer, f.name)] = time.monotonic()
                error = str(exc)
                log.error("model_transfer_failed", app=f.name, peer=peer, error=error)
        me = self._settings.daemon.machine_name
        return Decision(f.name, me, None, f"sending the model to {peer} failed ({error}); "
                                          "served locally meanwhile", decision.predicted_ms)

    def _log_changes(self, routes: dict[str, Route], reason: str) -> None:
        for app, r in routes.items():
            old = self._routes.get(app)
            if old is None or (old.serving, old.members) != (r.serving, r.members):
                log.info("placement", app=app, serving=r.serving, members=r.members,
                         reason=r.reason, trigger=reason, predicted_ms=dict(r.predicted_ms),
                         previous=old.serving if old else None)


def _local_status(name: str, load: MachineLoad, placed: list[str]) -> dict[str, Any]:
    return {"name": name, "local": True, "up": True,
            "cpu_percent": load.daemon_cpu_percent, "memory_percent": load.memory_percent,
            "cores": load.cores, "busy": load.busy, "rtt_ms": 0.0,
            "speed": round(load.speed, 3), "placed": sorted(placed)}


def _peer_status(p: PeerProfile, placed: list[str]) -> dict[str, Any]:
    return {"name": p.name, "local": False, "up": p.up, "url": p.url,
            "cpu_percent": p.cpu_percent, "memory_percent": p.memory_percent, "cores": p.cores,
            "busy": p.busy, "rtt_ms": p.rtt_ms, "speed": p.speed, "placed": sorted(placed),
            "error": p.error}
