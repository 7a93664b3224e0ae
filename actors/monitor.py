"""The monitor actor: CPU and memory of this process and machine, event-loop lag, mailboxes.

It samples once a second (psutil calls that read /proc, cheap enough for the loop) and runs a
ticker whose oversleep is the loop lag. Other actors ask it for the latest `MachineLoad`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from typing import assert_never

import numpy as np
import psutil

from mliot_daemon.learn.plan import machine_speed
from mliot_daemon.messages import GetLoad, MachineLoad, MonitorMsg
from mliot_daemon.metrics import Metrics
from mliot_daemon.runtime import Actor, ActorRef

TICK_S = 0.05
LAG_WINDOW = 1200  # ticks: about the last minute


class Monitor(Actor[MonitorMsg]):
    """Measures everything the status page and the scheduler need."""

    name = "monitor"

    def __init__(self, metrics: Metrics, sample_every_s: float = 1.0) -> None:
        super().__init__()
        self._metrics = metrics
        self._every = sample_every_s
        self._watched: list[ActorRef[object]] = []
        self._lags: deque[float] = deque(maxlen=LAG_WINDOW)
        self._load: MachineLoad | None = None

    def watch(self, refs: list[ActorRef[object]]) -> None:
        """Export these actors' mailbox depths."""
        self._watched = list(refs)

    async def on_start(self) -> None:
        # A short standard fit (the learning core's cost reference): model latencies measured
        # on one machine scale to another by the ratio of their speeds.
        self._speed = await asyncio.to_thread(machine_speed)
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)  # the first reading is a meaningless 0.0: prime it
        psutil.cpu_percent(None)
        self._sample()

    def background(self) -> list:
        return [self._ticker(), self._sampler()]

    async def handle(self, msg: MonitorMsg) -> None:
        match msg:
            case GetLoad(reply=reply):
                if not reply.done():
                    reply.set_result(self._load or self._sample())
            case _:
                assert_never(msg)

    async def _ticker(self) -> None:
        # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
        while True:
            start = time.perf_counter()
            await asyncio.sleep(TICK_S)
            lag = max(0.0, time.perf_counter() - start - TICK_S)
            self._lags.append(lag)
            self._metrics.loop_lag.observe(lag)

    async def _sampler(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            self._sample()

    def _sample(self) -> MachineLoad:
        m = self._metrics
        with self._proc.oneshot():
            cpu = self._proc.cpu_percent(None)
            rss = self._proc.memory_info().rss
        vm = psutil.virtual_memory()
        lags = np.fromiter(self._lags, float) if self._lags else np.zeros(1)
        p50, p99 = np.percentile(lags, [50, 99]) * 1000
        boxes = tuple((r.name, r.qsize()) for r in self._watched)
        load = MachineLoad(
            process_cpu_percent=cpu, process_rss_mib=rss / 2**20,
            cpu_percent=psutil.cpu_percent(None), memory_percent=vm.percent,
            cores=psutil.cpu_count() or 1, memory_mib=vm.total / 2**20,
            loop_lag_p50_ms=float(p50), loop_lag_p99_ms=float(p99), mailboxes=boxes,
            speed=self._speed)
        m.process_cpu.set(cpu)
        m.process_rss.set(rss)
        m.machine_cpu.set(load.cpu_percent)
        m.machine_memory.set(vm.percent)
        for ref in self._watched:
            m.mailbox_depth.labels(ref.name).set(ref.qsize())
            m.mailbox_dropped.labels(ref.name).set(ref.dropped)
        self._load = load
        return load
