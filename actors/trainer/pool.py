"""The trainer's local process pool, and a run's fits in it.

The pool is forkserver (3.11 on Linux defaults to fork, unsafe with threads present), its
workers at lower priority (`jobs.worker_init`; off the loop's CPU with
`daemon.dedicated_loop_cpu`, `mliot_daemon.cpus`), warmed in the background once the daemon
serves (the actor waits for the warm-ups no more than for any other job). Every job (the
quick version, prepare, reduce, fit, assemble, score) holds one of the pool's slots and is
bounded by ``fit_timeout_s``; a dead worker or an overrun job replaces the pool and fails every
job in flight.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from mliot_daemon import cpus
from mliot_daemon.settings import TrainingSettings

# The learning code (sklearn, xgboost: seconds to import) is imported where it is used, after
# the daemon serves (issue 20); the trainer imports it in a thread before its first job.
if TYPE_CHECKING:
    from mliot_daemon.learn.fit import FitResult
    from mliot_daemon.learn.plan import PlanStep

log = structlog.get_logger("mliot.trainer")

T = TypeVar("T")


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: shutdown() alone waits for running jobs. ``_processes`` is private,
    but the executor offers no public way to end a running job."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


class WorkerPool:
    """Owns the ``ProcessPoolExecutor``: made and warmed by ``start``, replaced when broken,
    killed by ``close``. ``training`` gives the settings in force (a reload may change them)."""

    def __init__(self, training: Callable[[], TrainingSettings]) -> None:
        self._training = training
        self._pool: ProcessPoolExecutor | None = None
        self._slots = asyncio.Semaphore(training().pool_size)

    def start(self) -> None:
        """Make the pool and warm every worker in the background: the first unpickle of
        sklearn in a fresh worker takes seconds; a job sent meanwhile queues behind."""
        from mliot_daemon.learn import jobs

        self._new_pool()
        assert self._pool is not None
        for _ in range(self._training().pool_size):
            self._pool.submit(jobs.warm_up)  # nothing waits for it: its result is ignored

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            # Fits can run for minutes and their results are not needed: every input is in
            # the store, and a cut run is retrained at the next start.
            await asyncio.to_thread(_kill_pool, pool)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """One job in the pool, holding a slot, bounded by fit_timeout_s."""
        async with self._slots:
            pool = self._pool
            if pool is None:
                raise RuntimeError("the trainer is stopping")
            fut = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
            try:
                async with asyncio.timeout(self._training().fit_timeout_s):
                    return await fut
            except (BrokenProcessPool, TimeoutError):
                # A worker died (OOM kill), or a job overran: a running job cannot be stopped,
                # so the pool is replaced and every job in flight fails.
                self._replace_pool(pool)
                raise

    def _replace_pool(self, broken: ProcessPoolExecutor) -> None:
        """Swap in a new pool, once per broken pool however many jobs saw it break."""
        if self._pool is broken:
            log.error("trainer_pool_rebuilt")
            self._new_pool()
            _kill_pool(broken)

    def _new_pool(self) -> None:
        from mliot_daemon.learn import jobs

        self._pool = ProcessPoolExecutor(
            self._training().pool_size,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=jobs.worker_init, initargs=(os.getpid(), cpus.worker_cpus()))


class PoolFits:
    """A run's fits in the local process pool."""

    def __init__(self, pool: WorkerPool, out_dir: Path, where: str, workers: int) -> None:
        self._pool = pool
        self._out_dir = out_dir
        self.where = where
        self.width = workers  # fits of one run in flight at once

    async def fit(self, directory: Path, step: PlanStep, params: dict[str, Any] | None,
                  warm: dict[str, Any] | None = None) -> FitResult:
        from mliot_daemon.learn import jobs

        result: FitResult = await self._pool.call(jobs.fit_job, directory, step,
                                                       self._out_dir, None, 0, params, warm)
        return result

    def release(self) -> None:
        pass
