"""With ``daemon.dedicated_loop_cpu`` a running daemon's event loop has a CPU to itself and its
fitting workers run on the others; without it nothing is pinned."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")


def fitting_workers(pid: int, timeout: float) -> list[psutil.Process]:
    """The pool's workers (nice 10), once the pool has warmed (it starts after /readyz)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = [p for p in psutil.Process(pid).children(recursive=True) if p.nice() == 10]
        if workers:
            return workers
        time.sleep(0.2)
    raise AssertionError("no fitting worker started")


def test_the_loop_keeps_a_cpu_and_the_workers_use_the_others(daemon_factory: Any) -> None:
    allowed = os.sched_getaffinity(0)  # the daemon inherits the test's CPUs
    d = daemon_factory("pinned")
    d.write_config(f"[training]\nworkers = {len(allowed) - 1}\n", "dedicated_loop_cpu = true")
    d.start()
    assert d.proc is not None
    loop = max(allowed)
    assert os.sched_getaffinity(d.proc.pid) == {loop}  # the main thread: the loop's
    for worker in fitting_workers(d.proc.pid, 60):
        assert os.sched_getaffinity(worker.pid) == allowed - {loop}


def test_by_default_nothing_is_pinned(daemon_factory: Any) -> None:
    allowed = os.sched_getaffinity(0)
    d = daemon_factory("default").start()
    assert d.proc is not None
    assert os.sched_getaffinity(d.proc.pid) == allowed
    for worker in fitting_workers(d.proc.pid, 60):
        assert os.sched_getaffinity(worker.pid) == allowed
