"""The monitor actor: CPU and memory of this daemon and machine, event-loop lag, mailboxes.

It samples once a second (psutil calls that read /proc, cheap enough for the loop) and runs a
ticker whose oversleep is the loop lag. Other actors ask it for the latest `MachineLoad`.

CPU is measured per daemon (its process and its pool workers), not for the host, so two
daemons on one box are told apart; the cores it may use honour a cgroup CPU quota (cgroup v2
``cpu.max`` or v1 ``cpu.cfs_quota_us``), as container-aware runtimes do. ``busy`` is the share
of the daemon's serving capacity in use, smoothed over a few seconds: the event loop's share
of the core it may use; under a CPU quota, the larger of that and the whole daemon's share of
the quota (the niced pool workers then take from the same quota; without one they only use
cores the loop does not need).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from pathlib import Path
from typing import assert_never

import numpy as np
import psutil
import structlog

from mliot_daemon.messages import GetLoad, MachineLoad, MonitorMsg, Refs
from mliot_daemon.metrics import Metrics
from mliot_daemon.runtime import Actor, ActorStopped
from mliot_daemon.systemd import Notifier

log = structlog.get_logger("mliot.monitor")

TICK_S = 0.05
BUSY_TIME_CONSTANT_S = 3.0
LAG_WINDOW = 1200  # ticks: about the last minute


class Monitor(Actor[MonitorMsg]):
    """Measures everything the status page and the scheduler need."""

    name = "monitor"

    def __init__(self, metrics: Metrics, refs: Refs, notifier: Notifier | None = None,
                 sample_every_s: float = 1.0, after: asyncio.Event | None = None) -> None:
        super().__init__(refs.monitor)
        self._after = after  # the speed is measured once this is set (the daemon: serving)
        self._metrics = metrics
        self._notifier = notifier or Notifier({})
        self._every = sample_every_s
        self._watched = refs.all()  # their mailbox depths are exported
        self._lags: deque[float] = deque(maxlen=LAG_WINDOW)
        self._load: MachineLoad | None = None

    async def on_start(self) -> None:
        self._cpu_speed: float | None = None  # until _measure_speed
        self._waiting: list[asyncio.Future[MachineLoad]] = []  # GetLoad before the speed
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)  # the first reading is a meaningless 0.0: prime it
        self._children: dict[int, psutil.Process] = {}
        self._cores = usable_cores()
        self._busy = 0.0
        self._dropped: dict[str, int] = {}  # per mailbox: drops counted so far
        psutil.cpu_percent(None)

    def background(self) -> list:
        return [self._ticker(), self._sampler(), self._measure_speed()]

    async def on_stop(self) -> None:
        for reply in getattr(self, "_waiting", ()):  # a half-done start has none
            if not reply.done():
                reply.set_exception(ActorStopped(self.name))

    async def _measure_speed(self) -> None:
        """A short standard fit (the learning core's cost reference): model latencies measured
        on one machine scale to another by the ratio of their speeds. The daemon's speed is the
        CPU's, times the share of one core a CPU quota leaves it.

        It needs sklearn (~2 s to import), which serving does not: so it runs in a thread once
        the daemon serves (issue 20), and GetLoad asked before then is answered after it.
        """
        if self._after is not None:
            await self._after.wait()
        self._cpu_speed = await asyncio.to_thread(_measure)
        load = self._sample()
        for reply in self._waiting:
            if not reply.done():
                reply.set_result(load)
        self._waiting.clear()

    async def handle(self, msg: MonitorMsg) -> None:
        match msg:
            case GetLoad(reply=reply, wait_for_speed=wait):
                if self._cpu_speed is None and wait:
                    self._waiting.append(reply)  # answered once measured: never a made-up speed
                elif not reply.done():
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
            self._notifier.alive()  # the loop turns: systemd's watchdog is fed

    async def _sampler(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            cores = usable_cores()
            if cores != self._cores:  # a CPU quota was set or changed
                log.info("cpu_quota_changed", cores_before=self._cores, cores=cores)
                self._cores = cores
            self._sample()

    def _sample(self) -> MachineLoad:
        m = self._metrics
        with self._proc.oneshot():
            cpu = self._proc.cpu_percent(None)
            rss = self._proc.memory_info().rss
        tree = cpu + self._children_cpu()
        vm = psutil.virtual_memory()
        lags = np.fromiter(self._lags, float) if self._lags else np.zeros(1)
        p50, p99 = np.percentile(lags, [50, 99]) * 1000
        boxes = tuple((r.name, r.qsize()) for r in self._watched)
        busy = cpu / (100.0 * min(1.0, self._cores))
        if self._cores < _host_cores():
            busy = max(busy, tree / (100.0 * self._cores))
        keep = math.exp(-self._every / BUSY_TIME_CONSTANT_S)
        self._busy = keep * self._busy + (1 - keep) * min(1.0, busy)
        load = MachineLoad(
            process_cpu_percent=cpu, process_rss_mib=rss / 2**20,
            daemon_cpu_percent=round(tree, 1), busy=round(self._busy, 3),
            cpu_percent=psutil.cpu_percent(None), memory_percent=vm.percent,
            cores=self._cores, memory_mib=vm.total / 2**20,
            loop_lag_p50_ms=float(p50), loop_lag_p99_ms=float(p99), mailboxes=boxes,
            speed=(self._cpu_speed or 0.0) * min(1.0, self._cores))
        m.machine_cpu.set(load.cpu_percent / 100.0)
        m.machine_memory.set(vm.percent / 100.0)
        for ref in self._watched:
            m.mailbox_depth.labels(ref.name).set(ref.qsize())
            dropped = ref.dropped - self._dropped.get(ref.name, 0)  # a counter: add what is new
            if dropped > 0:
                m.mailbox_dropped.labels(ref.name).inc(dropped)
            self._dropped[ref.name] = ref.dropped
        self._load = load
        return load

    def _children_cpu(self) -> float:
        """CPU percent of the pool workers (and the forkserver) since the last sample."""
        total = 0.0
        seen: dict[int, psutil.Process] = {}
        for pid in descendants(self._proc):
            try:
                proc = self._children.get(pid) or psutil.Process(pid)
                total += proc.cpu_percent(None)  # 0.0 on a new child's first reading
            except psutil.Error:
                continue
            seen[pid] = proc
        self._children = seen
        return total


def descendants(proc: psutil.Process) -> list[int]:
    """The pids of a process's descendants, read from ``/proc/PID/task/TID/children``: the
    tree only. psutil's ``children(recursive=True)`` reads every process's ``stat`` on the
    machine (1.4–2 ms with ~70 processes, on the loop every second). Kernels without that
    file (``CONFIG_PROC_CHILDREN``) get psutil's answer."""
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        try:
            return [c.pid for c in proc.children(recursive=True)]
        except psutil.Error:
            return []
    out: list[int] = []
    todo = [proc.pid]
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:  # it ended meanwhile
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _measure() -> float:
    from mliot_daemon.learn.plan import measure_speed  # sklearn: imported in this thread

    return measure_speed()


def _host_cores() -> float:
    return float(len(os.sched_getaffinity(0)) or psutil.cpu_count() or 1)


def usable_cores() -> float:
    """Cores this process may use: the host's, or its cgroup's CPU quota when lower."""
    host = _host_cores()
    quota = _cgroup_quota_cores()
    return min(host, quota) if quota else host


def _cgroup_quota_cores(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The tightest CPU quota on this process's cgroup or any of its ancestors, in cores."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: cpu.max is "max 100000" or "50000 100000"
            base = root
        elif "cpu" in controllers.split(","):  # v1: cpu.cfs_quota_us is -1 when unlimited
            base = root / controllers
        else:
            continue
        group = base / path.lstrip("/")
        for d in [group, *group.parents]:
            if not d.is_relative_to(base):
                break
            quotas.extend(_quota_in(d))
    return min(quotas) if quotas else None


def _quota_in(d: Path) -> list[float]:
    try:
        if (d / "cpu.max").exists():
            quota, period = (d / "cpu.max").read_text().split()
            return [] if quota == "max" else [int(quota) / int(period)]
        quota = int((d / "cpu.cfs_quota_us").read_text())
        return [quota / int((d / "cpu.cfs_period_us").read_text())] if quota > 0 else []
    except (OSError, ValueError):
        return []
