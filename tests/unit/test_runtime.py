"""The actor runtime: mailbox semantics, asks, stop, restart budgets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from mliot_daemon.runtime import (
    Actor,
    ActorRef,
    ActorStopped,
    RestartBudget,
    RestartBudgetSpent,
    stop_in_order,
    supervise,
    wait_started,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Add:
    n: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Total:
    reply: asyncio.Future[int] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Crash:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    until: asyncio.Event


class Counter(Actor[Add | Total | Crash | Block]):
    name = "counter"

    def __init__(self, mailbox_size: int = 4) -> None:
        super().__init__(ActorRef("counter", mailbox_size))
        self.starts = 0
        self.stops = 0

    async def on_start(self) -> None:
        self.starts += 1
        self.total = 0  # state is rebuilt on every (re)start

    async def on_stop(self) -> None:
        self.stops += 1

    async def handle(self, msg: Add | Total | Crash | Block) -> None:
        match msg:
            case Add(n=n):
                self.total += n
            case Total(reply=reply):
                reply.set_result(self.total)
            case Crash():
                raise RuntimeError("boom")
            case Block(until=until):
                await until.wait()


async def test_send_then_ask_sees_everything_before_it() -> None:
    actor = Counter()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(supervise(actor, RestartBudget()))
        await wait_started(actor, task)
        for _ in range(10):  # more than the mailbox holds: send waits instead of dropping
            await actor.ref.send(Add(n=1))
        assert await actor.ref.ask(lambda f: Total(reply=f)) == 10
        await stop_in_order([actor], {"counter": task}, timeout=1)
    assert actor.stops == 1


async def test_offer_drops_and_counts_when_full() -> None:
    actor = Counter(mailbox_size=2)  # not running: nothing drains the mailbox
    assert actor.ref.offer(Add(n=1)) and actor.ref.offer(Add(n=1))
    assert not actor.ref.offer(Add(n=1))
    assert actor.ref.dropped == 1


async def test_ask_times_out() -> None:
    actor = Counter()
    with pytest.raises(TimeoutError):
        await actor.ref.ask(lambda f: Total(reply=f), timeout=0.05)


async def test_queued_asks_fail_when_the_actor_stops() -> None:
    actor = Counter()
    release = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(supervise(actor, RestartBudget()))
        await wait_started(actor, task)
        await actor.ref.send(Block(until=release))

        async def asking() -> BaseException | int:
            try:
                return await actor.ref.ask(lambda f: Total(reply=f), timeout=5)
            except ActorStopped as exc:
                return exc

        pending = tg.create_task(asking())
        await asyncio.sleep(0.01)
        stopping = tg.create_task(stop_in_order([actor], {"counter": task}, timeout=5))
        await asyncio.sleep(0.01)
        release.set()
        assert isinstance(await pending, ActorStopped)
        await stopping


async def test_crash_restarts_and_rebuilds_state() -> None:
    actor = Counter()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(supervise(actor, RestartBudget(max_restarts=3, within=60)))
        await wait_started(actor, task)
        await actor.ref.send(Add(n=5))
        await actor.ref.send(Crash())
        assert await actor.ref.ask(lambda f: Total(reply=f)) == 0
        assert actor.starts == 2
        await stop_in_order([actor], {"counter": task}, timeout=1)


async def test_spent_budget_raises_and_cancels_siblings() -> None:
    actor = Counter()
    sibling_cancelled = asyncio.Event()

    async def sibling() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            sibling_cancelled.set()
            raise

    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sibling())
            task = tg.create_task(supervise(actor, RestartBudget(max_restarts=2, within=60)))
            await wait_started(actor, task)
            for _ in range(3):
                await actor.ref.send(Crash())
    assert info.group_contains(RestartBudgetSpent)
    assert sibling_cancelled.is_set()
    assert actor.starts == 3


async def test_a_crash_answers_the_ask_in_hand() -> None:
    actor = Counter()

    class Asker(Counter):
        async def handle(self, msg):  # type: ignore[no-untyped-def]
            if isinstance(msg, Total):
                raise RuntimeError("crash while answering")
            await super().handle(msg)

    actor = Asker()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(supervise(actor, RestartBudget()))
        await wait_started(actor, task)
        with pytest.raises(ActorStopped):
            await actor.ref.ask(lambda f: Total(reply=f), timeout=5)
        await stop_in_order([actor], {"counter": task}, timeout=1)
