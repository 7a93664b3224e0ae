"""How a training run goes: quick version, prepare, reduce, fits side by side, assemble, publish.

A run for an app with nothing to serve (no version yet, or the current one failed to load) first
publishes a quick version (`jobs.quick_job`: a subsample read from the store, the quick model,
a one-member model folder; within 2 s even on MNIST-60k); then it prepares features from all
rows in the pool, fits the plan's steps cheapest first, and after each fit assembles and
publishes a version, so the rest join as they finish. A run for an app that serves a version
already (more data, a new policy) skips the quick version rather than replace a better model
with it. Versions go to the server (`VersionPublished`), progress as `TrainingEvent`s.

The fits go to the backend the run takes at its start (`FitBackend`: the local pool, or a Dask
cluster connected before any work); every other step runs in the local pool. An adaptation run
(`adaptation.py`) takes the same steps with ``refit``: only the served members are refitted,
assembled once and left for it to publish or not.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from actors.trainer.backend import FitBackend
from actors.trainer.cluster import DaskClients
from actors.trainer.drift import PageHinkley
from actors.trainer.pool import PoolFits, WorkerPool
from actors.trainer.state import AppState
from mliot_daemon.learn.dataset import TrainingData
from mliot_daemon.messages import ServerMsg, TrainingEvent, VersionPublished
from mliot_daemon.registry import Registry
from mliot_daemon.runtime import ActorRef
from mliot_daemon.settings import TrainingSettings
from mliot_daemon.store import Store

# The learning code (sklearn, xgboost: seconds to import) is imported where a run uses it, after
# the daemon serves (issue 20): the trainer imports it in a thread before its first job.
if TYPE_CHECKING:
    from mliot_daemon.learn.ensemble import Policy
    from mliot_daemon.learn.fit import FitResult

log = structlog.get_logger("mliot.trainer")

FEEDBACK_REPEATS = 3  # every run counts each correction this many times


@dataclass(frozen=True, eq=False)
class Pipeline:
    """What runs work with; one for every run of the trainer, a run's own state being its
    app's ``AppState``. ``training`` gives the settings in force (a reload may change them)."""

    store: Store
    registry: Registry
    pool: WorkerPool
    dask: DaskClients
    server: ActorRef[ServerMsg]
    machine: str
    training: Callable[[], TrainingSettings]

    async def train(self, state: AppState, reason: str, run_dir: Path, n: int) -> None:
        """An ``initial`` or ``data`` run: every fit is published as it finishes."""
        app = state.spec.name
        upto = await self.store.last_sample_id(app)
        self.event(app, "retraining_started", reason=reason)
        # nothing to serve: no version yet, or the current one does not load
        current = await asyncio.to_thread(self.registry.current, app)
        quick = current is None or current == state.unloadable
        await self.fit_steps(state, self.training_data(state, upto), run_dir, reason, n,
                             quick=quick)
        self.event(app, "retraining_finished", ok=True, reason=reason)

    def training_data(self, state: AppState, upto: int, **kw: Any) -> TrainingData:
        return TrainingData(db_path=self.store.path, app=state.spec.name, upto_id=upto,
                            feedback_repeats=FEEDBACK_REPEATS,
                            stale_before_id=state.stale_before_id,
                            stale_labels=tuple(sorted(state.stale_labels)), **kw)

    async def fit_steps(self, state: AppState, data: TrainingData, run_dir: Path,
                        reason: str, n: int, refit: dict[str, dict[str, Any]] | None = None,
                        quick: bool = False) -> tuple[Path | None, dict[str, Any]]:
        """The quick version first (``quick``), then prepare and fit; assemble and publish
        after each fit (lazy), or, with ``refit`` (family -> params of the served members),
        refit just those and assemble once without publishing. Returns the unpublished
        model's staging path and its summary. Fits go to the configured backend, taken at the
        start: the local pool or the Dask cluster (the quick version is always local)."""
        link = self.dask.take()
        state.fitting_on = link.where if link is not None else self.machine
        try:
            fits: FitBackend
            if link is None:
                fits = PoolFits(self.pool, run_dir / "fits", self.machine,
                                self.training().pool_size)
            else:  # connect before any work: an unreachable cluster fails the run at once
                fits = await self.dask.fits(link, state.spec.name, run_dir / "fits")
            try:
                published = False
                if quick:
                    state.fitting_on = self.machine
                    published = await self._quick(state, data, reason, n)
                    state.fitting_on = fits.where
                return await self._prepare_and_fit(fits, state, data, run_dir, reason, n,
                                                   refit, published)
            finally:
                fits.release()
        finally:
            if link is not None:
                await asyncio.shield(self.dask.drop(link))

    async def _quick(self, state: AppState, data: TrainingData, reason: str, n: int
                     ) -> bool:
        """Publish the quick version; True when it was. A failure is logged and the run goes
        on: the quick version only brings the first one forward."""
        spec = state.spec
        app = spec.name
        started = time.perf_counter()
        staging = await asyncio.to_thread(self.registry.staging_path, app)
        extra = {"reason": reason, "n_samples": n, "complete": False,
                 "stale_before_id": state.stale_before_id,
                 "stale_labels": sorted(state.stale_labels)}
        from mliot_daemon.learn import jobs

        try:
            info = await self.pool.call(
                jobs.quick_job, data, spec.data_type, spec.sample_rate or 16000,
                spec.policy, spec.background_class, staging, extra, self.machine)
        except Exception as exc:  # the full run below still makes a version (or fails)
            await asyncio.to_thread(shutil.rmtree, staging, True)
            log.warning("quick_version_failed", app=app, error=f"{type(exc).__name__}: {exc}")
            return False
        job_s = time.perf_counter() - started
        accuracy = info.summary.get("val_accuracy")
        self.event(app, "model_fitted", family=info.family, quick=True, accuracy=accuracy,
                   rows=info.rows, of=info.n, seconds=info.seconds)
        await self.publish(state, staging, reason, info.summary)
        log.info("quick_version", app=app, family=info.family, rows=info.rows, of=info.n,
                 val_accuracy=accuracy, seconds={**info.seconds, "job": round(job_s, 3),
                 "publish": round(time.perf_counter() - started - job_s, 3)})
        return True

    def _best_params(self, app: str) -> dict[str, dict[str, Any]]:
        """Family -> the served version's searched parameters (none for a quick version's
        defaults, or when the manifest cannot be read: the search then starts cold)."""
        current = self.registry.current(app)
        if current is None:
            return {}
        try:
            candidates = self.registry.manifest(app, current).get("candidates", [])
        except (OSError, ValueError) as exc:
            log.warning("warm_start_unavailable", app=app, error=str(exc))
            return {}
        return {c["family"]: c["params"] for c in candidates
                if isinstance(c, dict) and c.get("params")}

    async def _prepare_and_fit(self, fits: FitBackend, state: AppState,
                               data: TrainingData, run_dir: Path, reason: str, n: int,
                               refit: dict[str, dict[str, Any]] | None, published: bool = False
                               ) -> tuple[Path | None, dict[str, Any]]:
        from mliot_daemon.learn import jobs
        from mliot_daemon.learn.plan import PlanStep

        spec = state.spec
        app = spec.name
        started = time.perf_counter()
        info = await self.pool.call(jobs.prepare_job, data, spec.data_type,
                                    spec.sample_rate or 16000, run_dir / "prepared")
        log.info("features_prepared", app=app, n=info.n, d=info.d,
                 seconds=round(time.perf_counter() - started, 3))
        # the shared PCA where it pays (IncrementalPCA on MNIST-60k: most of a minute, which
        # is why nothing of this preparation comes before the quick version)
        await self.pool.call(jobs.reduce_job, info.directory)
        steps = info.plan if refit is None else [PlanStep(f, info.n, 0.0) for f in refit]
        # a retrain on more data searches from the served version's best parameters
        warm = await asyncio.to_thread(self._best_params, app) if refit is None else {}
        state.planned, state.fitted = len(steps), 0
        fitted: dict[str, FitResult] = {}
        policy = spec.policy
        staging: Path | None = None
        summary: dict[str, Any] = {}
        # As many fits in flight as the pool (or the cluster) has workers, cheapest first;
        # each one that finishes is assembled and published at once (lazy), before the next
        # fit takes the freed worker (assembly runs in the pool too).
        todo = list(steps)
        running: dict[asyncio.Task[FitResult], PlanStep] = {}

        def start_next() -> None:
            if todo:
                step = todo.pop(0)
                params = refit.get(step.family) if refit else None
                running[asyncio.create_task(fits.fit(info.directory, step, params,
                                                     warm.get(step.family)))] = step

        try:
            for _ in range(fits.width):
                start_next()
            i = 0
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    fitted[step.family] = result = task.result()
                    state.fitted += 1
                    self.event(app, "model_fitted", family=step.family, quick=False,
                               accuracy=result.summary.get("val_accuracy"))
                last = not running and not todo
                if refit is None or last:
                    staging, summary = await self._assemble(
                        fits, state, info.directory, fitted, reason, n, last, policy)
                if refit is None:
                    first = i == 0 and not published
                    await self.publish(state, staging, reason if first else "lazy", summary)
                    staging = None
                i += 1
                for _ in done:
                    start_next()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        return staging, summary

    async def _assemble(self, fits: FitBackend, state: AppState,
                        directory: Path, fitted: dict[str, FitResult], reason: str,
                        n: int, last: bool, policy: Policy) -> tuple[Path, dict[str, Any]]:
        """Select the ensemble from what is fitted so far and save it to a staging path."""
        spec = state.spec
        app = spec.name
        candidates = list(fitted.values())
        staging = await asyncio.to_thread(self.registry.staging_path, app)
        extra = {"reason": reason, "n_samples": n, "complete": last,
                 "fitted_on": {r.family: fits.where for r in candidates},
                 "stale_before_id": state.stale_before_id,
                 "stale_labels": sorted(state.stale_labels)}
        from mliot_daemon.learn import jobs

        summary = await self.pool.call(
            jobs.assemble_job, directory, [r.artifact for r in candidates], policy,
            spec.background_class, staging, extra)
        return staging, summary

    async def publish(self, state: AppState, staging: Path, reason: str,
                      summary: dict[str, Any], decision: dict[str, Any] | None = None) -> None:
        """Make the staged model the app's current version and tell the server."""
        app = state.spec.name
        meta = {"reason": reason, "created": time.time(), "decision": decision}
        version = await asyncio.to_thread(self.registry.publish, app, staging,
                                          self.training().keep_versions, meta)
        state.val_accuracy = float(summary.get("val_accuracy", 0.0))
        # drift is measured against what the new version is expected to get wrong: its
        # validation error, or the error on held-out feedback when an adaptation saw more
        expected = 1.0 - state.val_accuracy
        if decision and isinstance(decision.get("new_accuracy"), float) \
                and math.isfinite(decision["new_accuracy"]):
            expected = max(expected, 1.0 - decision["new_accuracy"])
        state.detector = PageHinkley(expected)
        state.observed = []
        await self.store.add_version(app, version, meta["created"], reason,
                                     list(summary.get("members", [])),
                                     dict(summary.get("metrics", {})), decision)
        await self.server.send(VersionPublished(app=app, version=version))
        log.info("version_published", app=app, version=version, reason=reason,
                 members=summary.get("members"), val_accuracy=state.val_accuracy)
        self.event(app, "version_published", version=version, reason=reason,
                   members=summary.get("members"))

    def event(self, app: str, kind: str, **data: Any) -> None:
        """Progress for the server's watchers: telemetry, dropped when its mailbox is full."""
        self.server.offer(TrainingEvent(app=app, kind=kind, data=tuple(data.items())))
