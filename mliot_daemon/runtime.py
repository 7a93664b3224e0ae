"""Actor runtime: bounded mailboxes, typed messages, a supervisor with restart budgets.

Delivery policy per message kind:
  * commands and data someone is owed an acknowledgement for use ``send``: it waits while the
    mailbox is full, so a slow actor slows its producers (backpressure) and nothing is dropped;
  * telemetry uses ``offer``: when the mailbox is full the message is dropped and counted;
  * queries use ``ask``: the message carries a future, the caller waits with a timeout. Asks still
    queued when an actor stops are failed with ``ActorStopped``.

This module imports nothing from the project, so every other module can use it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import structlog

log = structlog.get_logger("mliot.runtime")

M = TypeVar("M")
R = TypeVar("R")


class ActorStopped(RuntimeError):
    """The actor stopped before it could answer."""

    def __init__(self, name: str) -> None:
        super().__init__(f"actor {name!r} has stopped")
        self.actor = name


class RestartBudgetSpent(RuntimeError):
    """An actor crashed more often than its restart budget allows."""


class Stop:
    """Sentinel: finish the current message, then leave the loop."""


STOP = Stop()


@dataclass(frozen=True, slots=True, kw_only=True)
class Query(Generic[R]):
    """Base for queries: carries the future the answer is set on."""

    reply: asyncio.Future[R] = field(compare=False, repr=False)


class ActorRef(Generic[M]):
    """The only handle other code holds on an actor: put messages in its mailbox. Refs (and
    so mailboxes) are made before the actors, so that every actor gets all the refs it talks
    to in its constructor; the actor named ``name`` then takes this one as its own."""

    def __init__(self, name: str, mailbox_size: int = 64) -> None:
        self._mailbox: asyncio.Queue[M | Stop] = asyncio.Queue(maxsize=mailbox_size)
        self.name = name
        self.dropped = 0

    async def send(self, msg: M) -> None:
        """Deliver a command; waits while the mailbox is full (backpressure)."""
        await self._mailbox.put(msg)

    def offer(self, msg: M) -> bool:
        """Deliver telemetry if there is room; otherwise drop it, count it and return False."""
        try:
            self._mailbox.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True

    async def ask(self, make: Callable[[asyncio.Future[R]], Query[R]], timeout: float = 5.0
                  ) -> R:
        """Send ``make(future)`` (a query of this actor's) and wait for the answer; raises
        TimeoutError or ActorStopped, or what the actor set on the future."""
        reply: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(timeout):
            await self._mailbox.put(make(reply))  # type: ignore[arg-type]
            return await reply

    def qsize(self) -> int:
        """Messages waiting in the mailbox (exported by the monitor)."""
        return self._mailbox.qsize()


class Actor(Generic[M]):
    """Owns its state and handles one message at a time from a bounded mailbox.

    Subclasses set ``name`` and implement ``handle``; ``on_start`` and ``on_stop`` are hooks.
    ``run`` may be called again after a crash: ``on_start`` must rebuild state from durable
    storage, the mailbox (and so every ``ActorRef``) survives the restart.
    """

    name: ClassVar[str]
    stop_timeout: ClassVar[float] = 10.0
    config_keys: ClassVar[frozenset[str]] = frozenset()  # dotted keys or section prefixes

    @classmethod
    def wants(cls, changed: frozenset[str]) -> bool:
        """Whether a reload that changed these keys concerns this actor."""
        return any(k == w or k.startswith(f"{w}.") for k in changed for w in cls.config_keys)

    def __init__(self, ref: ActorRef[M]) -> None:
        if ref.name != self.name:
            raise ValueError(f"actor {self.name!r} given the ref of {ref.name!r}")
        self.ref = ref
        self._mailbox = ref._mailbox
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self._stopping = False
        self._current: M | None = None

    async def on_start(self) -> None:
        """Runs before the first message; raising here aborts the start (or the restart)."""

    async def on_stop(self) -> None:
        """Runs once the loop is left (stop, crash or cancellation); must tolerate a half-done start."""

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """Coroutines run beside the mailbox loop (tickers, receivers); a crash in one crashes
        the actor. They are cancelled when the actor stops."""
        return []

    async def handle(self, msg: M) -> None:
        """Handle one message. Unexpected exceptions leave it and crash the actor."""
        raise TypeError(f"{self.name}: unhandled message {type(msg).__name__}")

    async def run(self) -> None:
        """The actor's life: start, handle messages until Stop, then clean up."""
        structlog.contextvars.bind_contextvars(actor=self.name)
        self.started.clear()
        self.stopped.clear()
        try:
            await self.on_start()
            async with asyncio.TaskGroup() as tg:
                extra = [tg.create_task(coro, name=f"{self.name}.{coro.__name__}")
                         for coro in self.background()]
                self.started.set()
                try:
                    while not isinstance(msg := await self._mailbox.get(), Stop):
                        self._current = msg
                        await self.handle(msg)
                        self._current = None
                finally:
                    for task in extra:
                        task.cancel()
        finally:
            # A crash mid-message must not leave its asker waiting for a timeout.
            reply = getattr(self._current, "reply", None)
            if isinstance(reply, asyncio.Future) and not reply.done():
                reply.set_exception(ActorStopped(self.name))
            self._current = None
            try:
                async with asyncio.timeout(self.stop_timeout):
                    await asyncio.shield(self.on_stop())
            except Exception:  # cleanup must not mask why we stopped, but must be seen
                log.exception("actor_stop_failed", actor=self.name)
            if self._stopping:
                self._fail_queued(ActorStopped(self.name))
            self.stopped.set()

    def request_stop(self) -> None:
        """Ask the actor to finish the message at hand and stop, even when the mailbox is full."""
        self._stopping = True
        self._fail_queued(ActorStopped(self.name))
        self._mailbox.put_nowait(STOP)

    def _fail_queued(self, exc: BaseException) -> None:
        """Drain the mailbox, failing every waiting query so no caller hangs."""
        while True:
            try:
                msg = self._mailbox.get_nowait()
            except asyncio.QueueEmpty:
                return
            reply = getattr(msg, "reply", None)
            if isinstance(reply, asyncio.Future) and not reply.done():
                reply.set_exception(exc)


@dataclass(slots=True)
class RestartBudget:
    """At most ``max_restarts`` restarts within ``within`` seconds."""

    max_restarts: int = 5
    within: float = 60.0
    _times: deque[float] = field(default_factory=deque)

    def spend(self) -> bool:
        """Record a crash; False when the budget is spent."""
        now = time.monotonic()
        while self._times and now - self._times[0] > self.within:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True


async def supervise(actor: Actor[Any], budget: RestartBudget) -> None:
    """Run an actor, restarting it after a crash until the budget is spent (then re-raise)."""
    ever_started = False
    while True:
        try:
            await actor.run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ever_started = ever_started or actor.started.is_set()
            if actor._stopping:  # it was going anyway: record the crash, finish the stop
                log.error("actor_crashed_while_stopping", actor=actor.name, error=repr(exc))
                return
            if not ever_started:  # a failed first start is not retried
                raise
            if not budget.spend():
                log.error("actor_restart_budget_spent", actor=actor.name, error=repr(exc))
                raise RestartBudgetSpent(f"{actor.name}: {exc!r}") from exc
            log.warning("actor_restarted", actor=actor.name, error=repr(exc))


async def wait_started(actor: Actor[Any], task: asyncio.Task[None], timeout: float = 30.0) -> None:
    """Wait until the actor has started; a failed start surfaces as the task's exception."""
    started = asyncio.ensure_future(actor.started.wait())
    try:
        async with asyncio.timeout(timeout):
            await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        started.cancel()
    if task.done():
        task.result()  # raises the start error
        raise RuntimeError(f"actor {actor.name} exited during start")


async def stop_in_order(actors: Iterable[Actor[Any]], tasks: dict[str, asyncio.Task[None]],
                        timeout: float) -> None:
    """Stop actors one after another; an actor that overruns its timeout is cancelled."""
    for actor in actors:
        task = tasks[actor.name]
        if task.done():
            continue
        actor.request_stop()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(actor.stopped.wait())
        except TimeoutError:
            log.warning("actor_stop_timeout", actor=actor.name, timeout_s=timeout)
            task.cancel()
        log.info("actor_stopped", actor=actor.name)


async def reply_to(reply: asyncio.Future[R], produce: Callable[[], Awaitable[R]]) -> None:
    """Answer a query with what ``produce`` returns, or with the exception it raised."""
    try:
        result = await produce()
    except Exception as exc:
        if not reply.done():
            reply.set_exception(exc)
        return
    if not reply.done():
        reply.set_result(result)
