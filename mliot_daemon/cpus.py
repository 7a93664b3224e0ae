"""``daemon.dedicated_loop_cpu``: the event loop keeps a CPU of its own, the fitting workers
use the others.

Why: under `python -m bench soak` the loop thread was preempted about 1000 times a second while
a training run went on (``nonvoluntary_ctxt_switches``, its runqueue wait up to 20 % of the
time). A worker at nice 10 still takes its turns on a shared CPU, and the scheduler pulls a
woken thread onto the CPU of whoever woke it. Pinned this way the honest p99 went from 5.0,
4.7 and 6.1 ms to 3.6, 4.4 and 4.4 ms in an interleaved A/B (DESIGN.md, "Resource bounds").

It is off by default. Daemons sharing a box (peers on one machine, as the tests run them) all
take the same CPU: a peer test that passes unpinned failed, its survivor predicting 51 ms
against a 12 ms budget. And a pinned loop cannot move away from a busy process on its CPU.
The split is made once, at start (both keys need a restart), and only when the workers leave
a CPU free (the default, cores - 1) and the daemon may use two CPUs or more. The loop takes
the highest-numbered CPU the daemon was started on (``taskset``, systemd's ``CPUAffinity=``),
away from CPU 0, where interrupts and other services tend to land. The daemon's own threads,
started from the loop, inherit its CPU: they mostly wait for the GIL the loop holds. The
benches keep their load generators off that CPU, as other machines would be.
"""

from __future__ import annotations

import os

_workers: frozenset[int] | None = None  # set once by reserve_loop_cpu, read by the pools


def split(allowed: set[int], pool_size: int) -> tuple[int, frozenset[int]] | None:
    """(the loop's CPU, the workers' CPUs), or None when there is no CPU to spare."""
    if len(allowed) < 2 or pool_size >= len(allowed):
        return None
    loop = max(allowed)
    return loop, frozenset(allowed - {loop})


def reserve_loop_cpu(pool_size: int) -> tuple[int, frozenset[int]] | None:
    """Pin the calling thread (the loop's) and remember the workers' CPUs."""
    global _workers
    if not hasattr(os, "sched_setaffinity"):  # not Linux
        return None
    chosen = split(os.sched_getaffinity(0), pool_size)
    if chosen is not None:
        _workers = chosen[1]
        os.sched_setaffinity(0, {chosen[0]})
    return chosen


def worker_cpus() -> frozenset[int] | None:
    """The CPUs a fitting worker may use; None: any (no loop CPU was reserved)."""
    return _workers
