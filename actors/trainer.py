"""The trainer actor: lazy training, retraining on growth, adaptation to feedback.

It owns the process pool (forkserver, workers at lower priority) and runs at most one training
run per app, as a task the app's state holds (on_stop cancels and awaits them all). A run prepares features in the pool, fits the
plan's steps cheapest first, and after each fit assembles and publishes a version, so the first
model serves within seconds and the rest join as they finish. Runs report back to the mailbox
(`RunFinished`); versions go to the server (`VersionPublished`), progress as `TrainingEvent`s.

Adaptation: every piece of feedback updates a Page-Hinkley test on the error stream. After
`retrain_after` corrections, or when the test fires, the app is retrained with corrections
counted three times, and after a detected drift without the stale samples of the corrected
classes. The new version is published only if it is at least as accurate as the current one on
the newest corrections, which are held out of its training.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, assert_never

import structlog

from mliot_daemon.config import AppSpec, Settings
from mliot_daemon.drift import PageHinkley
from mliot_daemon.learn import jobs
from mliot_daemon.learn.ensemble import Policy
from mliot_daemon.learn.persist import library_versions
from mliot_daemon.learn.plan import PlanStep
from mliot_daemon.messages import (
    ApplyConfig,
    AppsChanged,
    FeedbackAdded,
    GetTrainerStatus,
    LoadFailed,
    RunFinished,
    SamplesAdded,
    TrainerMsg,
    TrainingEvent,
    VersionPublished,
)
from mliot_daemon.registry import Registry
from mliot_daemon.runtime import Actor, ActorRef
from mliot_daemon.store import Store

log = structlog.get_logger("mliot.trainer")


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: shutdown() alone waits for running jobs. ``_processes`` is private,
    but the executor offers no public way to end a running job."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
T = TypeVar("T")

MIN_PER_CLASS = 5  # labelled samples each of two classes before a first model is tried
FEEDBACK_REPEATS = 3
HOLDOUT_SHARE = 0.3
POLL_S = 2.0


@dataclass
class AppState:
    """What the trainer knows of one app."""

    spec: AppSpec
    trained_on: int = 0  # samples the current version was trained on
    failed_at: int = -1  # sample count of the last failed run (no retry until more data)
    running: asyncio.Task[None] | None = None
    generation: int = 0  # bumped when the policy changes: a run under the old one is outdated
    val_accuracy: float = 0.0
    detector: PageHinkley | None = None
    corrections: list[FeedbackAdded] = field(default_factory=list)  # since the last adaptation
    observed: list[FeedbackAdded] = field(default_factory=list)  # since the detector's reset
    drift_sample_id: int = 0  # set when the detector fires; consumed by the next adaptation
    # Samples older than this id with these labels describe a world that has changed; every
    # later run leaves them out (kept in the version's manifest across restarts).
    stale_before_id: int = 0
    stale_labels: frozenset[str] = frozenset()
    last_reason: str = ""


class Trainer(Actor[TrainerMsg]):
    """Fits models in a process pool and publishes versions."""

    name = "trainer"
    config_keys = frozenset({"training"})

    def __init__(self, settings: Settings, store: Store, registry: Registry,
                 server: ActorRef[Any], machine: str) -> None:
        super().__init__(mailbox_size=256)
        self._settings = settings
        self._store = store
        self._registry = registry
        self._server = server
        self._machine = machine
        self._pool: ProcessPoolExecutor | None = None
        self._slots = asyncio.Semaphore(settings.training.pool_size)
        self._apps: dict[str, AppState] = {}
        self._scratch = settings.daemon.data_path / "scratch"

    # -- lifecycle ----------------------------------------------------------------------------

    async def on_start(self) -> None:
        await asyncio.to_thread(self._registry.clear_staging)
        await asyncio.to_thread(shutil.rmtree, self._scratch, True)
        self._new_pool()
        # Warm every worker now: the first unpickle of sklearn in a fresh worker takes seconds.
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, jobs.warm_up)
                               for _ in range(self._settings.training.pool_size)))

    def background(self) -> list:
        return [self._poll()]

    async def on_stop(self) -> None:
        runs = [s.running for s in self._apps.values() if s.running is not None]
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        for state in self._apps.values():
            state.running = None  # a restart must be free to train these apps again
        if self._pool is not None:
            pool, self._pool = self._pool, None
            # Fits can run for minutes and their results are not needed: every input is in
            # the store, and a cut run is retrained at the next start.
            await asyncio.to_thread(_kill_pool, pool)

    def _replace_pool(self, broken: ProcessPoolExecutor) -> None:
        """Swap in a new pool, once per broken pool however many jobs saw it break."""
        if self._pool is broken:
            log.error("trainer_pool_rebuilt")
            self._new_pool()
            _kill_pool(broken)

    def _new_pool(self) -> None:
        self._pool = ProcessPoolExecutor(
            self._settings.training.pool_size,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=jobs.worker_init, initargs=(os.getpid(),))

    async def _poll(self) -> None:
        """Check every app now and then: a dropped SamplesAdded must not stall training."""
        while True:
            await asyncio.sleep(POLL_S)
            for name in list(self._apps):
                await self._maybe_train(name)

    # -- messages -----------------------------------------------------------------------------

    async def handle(self, msg: TrainerMsg) -> None:
        match msg:
            case AppsChanged(apps=apps):
                await self._set_apps(apps)
            case SamplesAdded(app=app):
                await self._maybe_train(app)
            case FeedbackAdded():
                await self._on_feedback(msg)
            case RunFinished(app=app, n_samples=n, error=error, generation=generation):
                state = self._apps.get(app)
                if state is not None:
                    state.running = None
                    if error is not None:
                        state.failed_at = n  # no retry until more data arrives
                    elif generation == state.generation:  # else the policy changed: retrain
                        state.trained_on = max(state.trained_on, n)
                    await self._maybe_train(app)
            case LoadFailed(app=app, version=version):
                state = self._apps.get(app)
                if state is not None:
                    log.warning("retraining_unloadable_version", app=app, version=version)
                    state.trained_on = 0
                    await self._maybe_train(app)
            case GetTrainerStatus(reply=reply):
                if not reply.done():
                    reply.set_result({name: {"training": s.running is not None,
                                             "trained_on": s.trained_on,
                                             "corrections_pending": len(s.corrections),
                                             "last_reason": s.last_reason}
                                      for name, s in self._apps.items()})
            case ApplyConfig(settings=settings):
                self._settings = settings
            case _:
                assert_never(msg)

    async def _set_apps(self, apps: tuple[AppSpec, ...]) -> None:
        wanted = {a.name: a for a in apps}
        for name in set(self._apps) - set(wanted):
            state = self._apps.pop(name)
            if state.running is not None:
                state.running.cancel()
                await asyncio.gather(state.running, return_exceptions=True)
            # after the run is gone, so nothing writes the app's models again
            await asyncio.to_thread(self._registry.delete_app, name)
        for name, spec in wanted.items():
            state = self._apps.get(name)
            if state is None:
                state = self._apps[name] = AppState(spec)
                await self._resume(state)
            elif state.spec != spec:
                changed_policy = state.spec.policy != spec.policy
                state.spec = spec
                if changed_policy:
                    state.trained_on = 0  # re-select under the new policy
                    state.generation += 1
            await self._maybe_train(name)

    async def _resume(self, state: AppState) -> None:
        """Pick up where the registry left off after a restart."""
        app = state.spec.name
        version = await asyncio.to_thread(self._registry.current, app)
        if version is None:
            return
        try:
            manifest = await asyncio.to_thread(self._registry.manifest, app, version)
        except ValueError:
            return
        extra = manifest.get("extra", {})
        state.val_accuracy = float(manifest.get("selection", {}).get("val_accuracy", 0.0))
        # A run cut short (kill, crash) or models pickled by other library versions: retrain
        # from the stored samples, while the last good version keeps serving.
        if extra.get("complete", True) and manifest.get("versions") == library_versions():
            state.trained_on = int(extra.get("n_samples", 0))
        state.stale_before_id = int(extra.get("stale_before_id", 0))
        state.stale_labels = frozenset(extra.get("stale_labels", ()))

    # -- deciding to train --------------------------------------------------------------------

    async def _maybe_train(self, app: str) -> None:
        state = self._apps.get(app)
        if state is None or state.running is not None:
            return
        n = self._store.count_samples(app)
        if n == 0 or n == state.failed_at:
            return
        policy = state.spec.policy
        if state.corrections and (len(state.corrections) >= policy.retrain_after
                                  or state.drift_sample_id):
            self._start(state, "feedback", n)
            return
        if state.trained_on == 0:
            enough = await self._enough_to_start(app)
            # the poll and the mailbox both get here: whoever awaited second must not start
            # a second run, nor one for an app deleted meanwhile
            if enough and self._apps.get(app) is state and state.running is None:
                self._start(state, "initial", n)
        elif n >= state.trained_on * self._settings.training.growth_factor:
            self._start(state, "data", n)

    async def _enough_to_start(self, app: str) -> bool:
        counts = self._store.label_counts(app)
        return sum(1 for c in counts.values() if c >= MIN_PER_CLASS) >= 2

    def _start(self, state: AppState, reason: str, n: int) -> None:
        # The task is the app state's; on_stop cancels and awaits every one of them.
        state.last_reason = reason
        state.running = asyncio.create_task(self._run(state, reason, n),
                                            name=f"trainer.run.{state.spec.name}")

    # -- a training run -----------------------------------------------------------------------

    async def _pool_call(self, fn: Callable[..., T], *args: Any) -> T:
        """One job in the pool, holding a slot, bounded by fit_timeout_s."""
        async with self._slots:
            pool = self._pool
            if pool is None:
                raise RuntimeError("the trainer is stopping")
            fut = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
            try:
                async with asyncio.timeout(self._settings.training.fit_timeout_s):
                    return await fut
            except (BrokenProcessPool, TimeoutError):
                # A worker died (OOM kill), or a job overran: a running job cannot be stopped,
                # so the pool is replaced and every job in flight fails.
                self._replace_pool(pool)
                raise

    async def _run(self, state: AppState, reason: str, n: int) -> None:
        app = state.spec.name
        error: str | None = None
        generation = state.generation
        run_dir = self._scratch / f"{app}-{time.time_ns()}"
        started = time.perf_counter()
        try:
            if reason == "feedback":
                await self._adapt(state, run_dir, n)
            else:
                await self._train(state, reason, run_dir, n)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed run is data: report it, keep the actor alive
            error = f"{type(exc).__name__}: {exc}"
            log.warning("training_failed", app=app, reason=reason, error=error)
            self._event(app, "retraining_finished", ok=False, error=error)
        finally:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, run_dir, True))
        log.info("training_run_finished", app=app, reason=reason, n_samples=n,
                 seconds=round(time.perf_counter() - started, 2), error=error)
        await self.ref.send(RunFinished(app=app, n_samples=n, error=error,
                                        generation=generation))

    def _data(self, state: AppState, upto: int, **kw: Any) -> jobs.TrainingData:
        return jobs.TrainingData(db_path=self._store.path, app=state.spec.name, upto_id=upto,
                                 feedback_repeats=FEEDBACK_REPEATS,
                                 stale_before_id=state.stale_before_id,
                                 stale_labels=tuple(sorted(state.stale_labels)), **kw)

    def _policy(self, spec: AppSpec) -> Policy:
        p = spec.policy
        return Policy.for_mode(p.mode, p.latency_ms, p.max_models, p.min_accuracy)

    async def _fit_steps(self, state: AppState, data: jobs.TrainingData, run_dir: Path,
                         reason: str, n: int, refit: dict[str, dict[str, Any]] | None = None
                         ) -> tuple[Path | None, dict[str, Any]]:
        """Prepare, then fit; assemble and publish after each fit (lazy), or, with ``refit``
        (family -> params of the served members), refit just those and assemble once without
        publishing. Returns the unpublished model's staging path and its summary."""
        spec = state.spec
        app = spec.name
        info = await self._pool_call(jobs.prepare_job, data, spec.data_type,
                                     spec.sample_rate or 16000, run_dir / "prepared")
        if refit is None:
            steps = info.plan
        else:
            steps = [PlanStep(family, info.n, 0.0) for family in refit]
        pca_decided = False
        fitted: dict[str, jobs.FitResult] = {}
        quick: jobs.FitResult | None = None
        policy = self._policy(spec)
        staging: Path | None = None
        summary: dict[str, Any] = {}
        for i, step in enumerate(steps):
            if not step.quick and not pca_decided:  # after the quick model has been served
                await self._pool_call(jobs.reduce_job, info.directory)
                pca_decided = True
            params = refit.get(step.family) if refit else None
            result = await self._pool_call(jobs.fit_job, info.directory, step, run_dir / "fits",
                                           None, 0, params)
            if step.quick:
                quick = result
            else:
                fitted[step.family] = result
            self._event(app, "model_fitted", family=step.family, quick=step.quick,
                        accuracy=result.summary.get("val_accuracy"))
            last = i == len(steps) - 1
            if refit is not None and not last:
                continue
            candidates = list(fitted.values()) or ([quick] if quick else [])
            staging = await asyncio.to_thread(self._registry.staging_path, app)
            extra = {"reason": reason, "n_samples": n, "complete": last,
                     "fitted_on": {r.family: self._machine for r in candidates},
                     "stale_before_id": state.stale_before_id,
                     "stale_labels": sorted(state.stale_labels)}
            summary = await self._pool_call(
                jobs.assemble_job, info.directory, [r.artifact for r in candidates], policy,
                spec.background_class, staging, extra)
            if refit is None:
                await self._publish(state, staging, reason if i == 0 else "lazy", summary)
                staging = None
        return staging, summary

    async def _train(self, state: AppState, reason: str, run_dir: Path, n: int) -> None:
        app = state.spec.name
        upto = await self._store.last_sample_id(app)
        self._event(app, "retraining_started", reason=reason)
        await self._fit_steps(state, self._data(state, upto), run_dir, reason, n)
        self._event(app, "retraining_finished", ok=True, reason=reason)

    async def _adapt(self, state: AppState, run_dir: Path, n: int) -> None:
        """Refit the served members from feedback; publish only if at least as good on the
        newest corrections, which are held out of training."""
        corrections, state.corrections = state.corrections, []
        drift_id, state.drift_sample_id = state.drift_sample_id, 0
        stale = state.stale_before_id, state.stale_labels
        try:
            await self._adapt_with(state, run_dir, n, corrections, drift_id)
        except BaseException:
            # keep the evidence for the next try (new corrections may have come meanwhile)
            state.corrections = corrections + state.corrections
            state.drift_sample_id = state.drift_sample_id or drift_id
            state.stale_before_id, state.stale_labels = stale
            raise

    async def _adapt_with(self, state: AppState, run_dir: Path, n: int,
                          corrections: list[FeedbackAdded], drift_id: int) -> None:
        app = state.spec.name
        if drift_id:
            state.stale_before_id = max(state.stale_before_id, drift_id)
        if state.stale_before_id:
            state.stale_labels |= {c.label for c in corrections} | {c.predicted
                                                                     for c in corrections}
        upto = await self._store.last_sample_id(app)
        held = max(1, int(len(corrections) * HOLDOUT_SHARE))
        holdout = [c.sample_id for c in corrections[-held:]]
        data = self._data(state, upto, holdout_ids=tuple(holdout))
        current = await asyncio.to_thread(self._registry.current, app)
        refit: dict[str, dict[str, Any]] = {}
        if current is not None:
            manifest = await asyncio.to_thread(self._registry.manifest, app, current)
            refit = {m["family"]: m.get("params", {}) for m in manifest["members"]}
        self._event(app, "retraining_started", reason="feedback", corrections=len(corrections),
                    drift=bool(drift_id))
        staging, summary = await self._fit_steps(state, data, run_dir, "feedback", n,
                                                 refit or {"ridge": {}})
        assert staging is not None
        dirs = [staging] + ([self._registry.version_path(app, current)] if current else [])
        scores = await self._pool_call(jobs.score_job, dirs, data, holdout)
        new, old = scores[0], (scores[1] if len(scores) > 1 else float("-inf"))
        decision = {"corrections": len(corrections), "holdout": len(holdout),
                    "new_accuracy": new, "current_accuracy": old, "drift": bool(drift_id),
                    "stale_before_id": state.stale_before_id,
                    "stale_labels": sorted(state.stale_labels), "published": bool(new >= old)}
        log.info("adaptation_decided", app=app, **decision)
        if new >= old:
            await self._publish(state, staging, "feedback", summary, decision)
        else:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            # keep the evidence for the next try, with what came in meanwhile
            state.corrections = corrections[-held:] + state.corrections
        self._event(app, "retraining_finished", ok=True, reason="feedback", **decision)

    async def _publish(self, state: AppState, staging: Path, reason: str,
                       summary: dict[str, Any], decision: dict[str, Any] | None = None) -> None:
        app = state.spec.name
        meta = {"reason": reason, "created": time.time(), "decision": decision}
        version = await asyncio.to_thread(self._registry.publish, app, staging,
                                          self._settings.training.keep_versions, meta)
        state.val_accuracy = float(summary.get("val_accuracy", 0.0))
        state.detector = PageHinkley(1.0 - state.val_accuracy)
        state.observed = []
        await self._store.add_event("version_published", app, {**meta, "version": version})
        await self._server.send(VersionPublished(app=app, version=version))
        log.info("version_published", app=app, version=version, reason=reason,
                 members=summary.get("members"), val_accuracy=state.val_accuracy)
        self._event(app, "version_published", version=version, reason=reason,
                    members=summary.get("members"))

    # -- feedback -----------------------------------------------------------------------------

    async def _on_feedback(self, msg: FeedbackAdded) -> None:
        state = self._apps.get(msg.app)
        if state is None:
            return
        if msg.wrong:
            state.corrections.append(msg)
        if state.detector is None:
            state.detector = PageHinkley(1.0 - state.val_accuracy)
        state.observed.append(msg)
        if state.detector.update(msg.wrong):
            # the change began just after the statistic's minimum: older samples of the
            # corrected classes describe the old world
            start = state.observed[state.detector.change_started_at]
            state.drift_sample_id = state.drift_sample_id or start.sample_id
            log.info("drift_detected", app=msg.app, feedback_seen=state.detector.n,
                     corrections=len(state.corrections), from_sample=start.sample_id)
            state.detector.reset()
            state.observed = []
        await self._maybe_train(msg.app)

    def _event(self, app: str, kind: str, **data: Any) -> None:
        self._server.offer(TrainingEvent(app=app, kind=kind, data=tuple(data.items())))
