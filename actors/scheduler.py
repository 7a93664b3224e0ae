"""The scheduler actor (the paper's DSL): decides where every app is served.

Once a second, at once when a peer goes up or down, and on a config reload, it gathers this
machine's load (monitor), the peers' profiles (peers) and what each served app needs (server:
its budget, policy, measured latency per ensemble size, request count), runs the placement
rule of ``actors.placement`` and tells the server the routes. A changed decision is
logged as a ``placement`` event with its numbers.

An app goes to a peer only once the peer holds its current version: the transfer runs in the
background (the peers actor signs and sends it), and until it is done the app is planned as if
that peer did not exist. A failed transfer is retried with a growing delay.

Latencies measured here are brought to reference speed (x this machine's speed when it measured
them) so that the rule can scale them to any machine by its own speed. Training placement is
not decided here: it is the local pool, or the Dask cluster when ``training.backend = "dask"``.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, replace
from typing import Any, assert_never

import structlog

from actors.placement import AppDemand, MachineView, plan
from mliot_daemon.messages import (
    AppFacts,
    ApplyConfig,
    GetLoad,
    GetPeers,
    GetServingFacts,
    MachineLoad,
    PeerProfile,
    Placed,
    Refs,
    Replan,
    Route,
    SchedulerMsg,
    ShipModel,
)
from mliot_daemon.runtime import Actor, ActorStopped
from mliot_daemon.settings import Settings

log = structlog.get_logger("mliot.scheduler")

TICK_S = 1.0
RATE_HALF_LIFE_S = 10.0  # request rates are smoothed over about this long
ASK_TIMEOUT_S = 5.0
SHIP_TIMEOUT_S = 300.0
RETRY_FIRST_S, RETRY_MAX_S = 10.0, 600.0  # after a failed transfer, then doubling
PROFILE_LAG_S = 5.0  # a peer's polled profile shows a model sent to it within this long


@dataclass
class _Transfer:
    """A model version on its way to a peer, or the last failed attempt."""

    model_id: str
    task: asyncio.Task[None] | None = None
    failures: int = 0
    retry_at: float = 0.0
    error: str = ""
    delivered_at: float | None = None


class Scheduler(Actor[SchedulerMsg]):
    """Keeps every app's route current."""

    name = "scheduler"
    config_keys = frozenset({"apps", "peers", "daemon.name"})

    def __init__(self, settings: Settings, refs: Refs) -> None:
        super().__init__(refs.scheduler)
        self._settings = settings
        self._monitor = refs.monitor
        self._peers = refs.peers
        self._server = refs.server
        self._routes: dict[str, Route] = {}
        self._counts: dict[str, tuple[int, float]] = {}  # app -> (predictions, when)
        self._rates: dict[str, float] = {}
        self._transfers: dict[tuple[str, str], _Transfer] = {}  # (peer, app) ->
        self._queued = False  # a Replan is in the mailbox: ticks add no more

    def background(self) -> list:
        return [self._tick()]

    async def on_stop(self) -> None:
        tasks = [t.task for t in self._transfers.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._request("tick")

    def _request(self, reason: str) -> None:
        if not self._queued:
            self._queued = self.ref.offer(Replan(reason=reason))

    async def handle(self, msg: SchedulerMsg) -> None:
        match msg:
            case ApplyConfig(settings=settings):
                self._settings = settings
                await self._replan("config reloaded")
            case Replan(reason=reason):
                self._queued = False
                await self._replan(reason)
            case _:
                assert_never(msg)

    async def _replan(self, reason: str) -> None:
        started = time.monotonic()
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
        others = [p for p in peers if p.name != me]
        self._forget(facts, others)
        machines = [MachineView(me, local=True, up=True, speed=load.speed, busy=load.busy)]
        machines += [MachineView(p.name, local=False, up=p.up and bool(p.speed),
                                 speed=p.speed or 0.0, busy=p.busy or 0.0, rtt_ms=p.rtt_ms or 0.0)
                     for p in others]
        hosted = {p.name: dict(p.hosted) for p in others}
        demands = [AppDemand(
            name=f.name, mode=f.mode, budget_ms=f.budget_ms,
            latency_ref_ms=tuple(ms * (f.measured_speed or load.speed) for ms in f.latencies_ms),
            min_members=f.min_members, rate_hz=self._rate(f), current=self._serving(f.name))
            for f in facts]
        # A peer without the app's current version gets it sent. Until it is there, an older
        # version of the same app serves (lazy training publishes often); a peer without
        # one, or with a model of an app of the same name deleted since, is left out and the
        # app planned again.
        missing: dict[str, frozenset[str]] = {}
        while True:
            decisions = plan([replace(d, exclude=missing.get(d.name, frozenset()))
                              for d in demands], machines)
            more = False
            for f in facts:
                peer = decisions[f.name].serving
                held = hosted.get(peer, {}).get(f"{me}/{f.name}", "")
                if peer in (None, me) or held == f.model_id or self._delivered(peer, f):
                    continue
                self._send(peer, f)
                if held.partition(":")[0] != f.model_id.partition(":")[0]:
                    missing[f.name] = missing.get(f.name, frozenset()) | {peer}
                    more = True
            if not more:
                break
        routes = {f.name: Route(app=f.name, serving=decisions[f.name].serving,
                                members=decisions[f.name].members,
                                reason=self._explain(decisions[f.name].reason, f.name, missing),
                                predicted_ms=tuple(sorted(decisions[f.name].predicted_ms.items())))
                  for f in facts}
        self._log_changes(routes, reason)
        self._routes = routes
        placed: dict[str, list[str]] = {}
        for r in routes.values():
            if r.serving is not None:
                placed.setdefault(r.serving, []).append(r.app)
        status = [_local_status(me, load, placed.get(me, []))]
        status += [_peer_status(p, placed.get(p.name, [])) for p in others]
        await self._server.send(Placed(routes=tuple(routes.values()),
                                       machines=tuple(tuple(s.items()) for s in status),
                                       planned_at=started))

    def _explain(self, reason: str, app: str, missing: dict[str, frozenset[str]]) -> str:
        for peer in missing.get(app, ()):
            t = self._transfers[(peer, app)]
            why = (f"the last transfer failed ({t.error})" if t.task is None
                   else "its model is on the way")
            reason += f"; {peer} would suit, {why}"
        return reason

    def _delivered(self, peer: str, f: AppFacts) -> bool:
        """Sent moments ago, so the peer has it even if its last profile does not say so yet
        (later, a profile without it means the peer lost it, e.g. it restarted)."""
        t = self._transfers.get((peer, f.name))
        return t is not None and t.model_id == f.model_id and t.delivered_at is not None \
            and time.monotonic() - t.delivered_at < PROFILE_LAG_S

    def _send(self, peer: str, f: AppFacts) -> None:
        """Start sending the app's current version to ``peer`` unless under way or backing off."""
        t = self._transfers.get((peer, f.name))
        if t is not None and t.model_id == f.model_id and (
                t.task is not None or time.monotonic() < t.retry_at):
            return
        if t is not None and t.task is not None:
            t.task.cancel()  # an older version still on its way
        t = _Transfer(f.model_id, failures=t.failures if t and t.model_id == f.model_id else 0)
        t.task = asyncio.create_task(self._transfer(peer, f, t))
        self._transfers[(peer, f.name)] = t

    async def _transfer(self, peer: str, f: AppFacts, t: _Transfer) -> None:
        try:
            await self._peers.ask(lambda r: ShipModel(
                peer=peer, app=f.name, version=f.version, model_id=f.model_id,
                directory=f.directory, reply=r), SHIP_TIMEOUT_S)
        except Exception as exc:  # any failure: retried later, the app is served elsewhere
            t.failures += 1
            t.error = str(exc) or type(exc).__name__
            t.retry_at = time.monotonic() + min(RETRY_MAX_S,
                                                RETRY_FIRST_S * 2 ** (t.failures - 1))
            log.error("model_transfer_failed", app=f.name, peer=peer, error=t.error,
                      retry_in_s=round(t.retry_at - time.monotonic()))
        else:
            t.delivered_at = time.monotonic()
            self._request(f"model of {f.name} sent to {peer}")
        finally:
            t.task = None

    def _forget(self, facts: tuple[AppFacts, ...], peers: list[PeerProfile]) -> None:
        """Drop what is kept about apps and peers that are gone."""
        apps = {f.name for f in facts}
        names = {p.name for p in peers}
        for d in (self._counts, self._rates, self._routes):
            for app in set(d) - apps:
                del d[app]
        for key in [k for k in self._transfers if k[1] not in apps or k[0] not in names]:
            task = self._transfers.pop(key).task
            if task is not None:
                task.cancel()

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

    def _log_changes(self, routes: dict[str, Route], reason: str) -> None:
        for app, r in routes.items():
            old = self._routes.get(app)
            if old is None or (old.serving, old.members) != (r.serving, r.members):
                log.info("placement", app=app, serving=r.serving, members=r.members,
                         reason=r.reason, trigger=reason, previous=old.serving if old else None,
                         predicted_ms={m: None if math.isinf(ms) else ms
                                       for m, ms in r.predicted_ms})


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
