"""The trainer actor: its mailbox, its lifecycle, and when to train what.

It runs at most one training run per app, as a task the app's state holds (on_stop cancels and
awaits them all). An app is trained first (``initial``) once it has ``MIN_PER_CLASS`` labelled
samples of two classes, again (``data``) when its sample count grows by `growth_factor`, from
feedback (``feedback``, see `adaptation.py`) after `retrain_after` corrections or a detected
drift, and again after a policy change or a version the server failed to load. Runs report back
to the mailbox (`RunFinished`). A failed run is not retried until more data arrives, or, when
the Dask cluster was unreachable (or lost), after ``CLUSTER_RETRY_S``; a reload that changes the
fit backend retries at once the apps whose last run failed. A poll catches up on dropped
`SamplesAdded`.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from typing import Any, assert_never

import structlog

from actors.trainer.adaptation import FEEDBACK_KEPT, adapt, observe_feedback
from actors.trainer.cluster import CLUSTER_RETRY_S, ClusterUnavailable, DaskClients
from actors.trainer.pipeline import Pipeline
from actors.trainer.pool import WorkerPool
from actors.trainer.state import AppState
from mliot_daemon.messages import (
    ApplyConfig,
    AppsChanged,
    FeedbackAdded,
    GetTrainerStatus,
    LoadFailed,
    Refs,
    RunFinished,
    SamplesAdded,
    TrainerMsg,
)
from mliot_daemon.metrics import Metrics
from mliot_daemon.registry import Registry
from mliot_daemon.runtime import Actor
from mliot_daemon.settings import AppSpec, Settings, TrainingSettings
from mliot_daemon.store import Store

log = structlog.get_logger("mliot.trainer")

MIN_PER_CLASS = 5  # labelled samples each of two classes before a first model is tried
POLL_S = 2.0


class Trainer(Actor[TrainerMsg]):
    """Fits models in a process pool and publishes versions."""

    name = "trainer"
    config_keys = frozenset({"training"})

    def __init__(self, settings: Settings, store: Store, registry: Registry, refs: Refs,
                 machine: str, metrics: Metrics, after: asyncio.Event | None = None) -> None:
        super().__init__(refs.trainer)
        self._after = after  # work starts once this is set (the daemon: serving)
        self.working = asyncio.Event()  # set once the learning code and the pool are in
        self._settings = settings
        self._metrics = metrics
        self._store = store
        self._registry = registry
        self._apps: dict[str, AppState] = {}
        self._scratch = settings.daemon.data_path / "scratch"
        self._pool = WorkerPool(self._training)
        self._dask = DaskClients(self._training)
        self._pipeline = Pipeline(store, registry, self._pool, self._dask, refs.server, machine,
                                  self._training)

    def _training(self) -> TrainingSettings:
        return self._settings.training  # a reload swaps the settings

    # -- lifecycle ----------------------------------------------------------------------------

    async def on_start(self) -> None:
        await asyncio.to_thread(self._registry.clear_staging)
        await asyncio.to_thread(shutil.rmtree, self._scratch, True)
        self._dask.check_installed()
        self.working.clear()  # set by _start_work; messages wait for it
        self._early_apps: tuple[AppSpec, ...] | None = None  # AppsChanged before then
        self._versions: dict[str, str] = {}

    def background(self) -> list:
        return [self._start_work(), self._poll()]

    async def _start_work(self) -> None:
        """Once the daemon serves (issue 20): import the learning code in a thread (sklearn,
        xgboost: seconds that would otherwise delay serving, or stall the loop), then make the
        pool, whose workers warm in the background."""
        if self._after is not None:
            await self._after.wait()
        self._versions = await asyncio.to_thread(_import_learning)
        await asyncio.to_thread(self._pool.start)  # blocks while the forkserver starts
        while self._early_apps is not None:  # another may come while these are resumed
            apps, self._early_apps = self._early_apps, None
            await self._set_apps(apps)
        self.working.set()

    async def on_stop(self) -> None:
        runs = [s.running for s in self._apps.values() if s.running is not None]
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        for state in self._apps.values():
            state.running = None  # a restart must be free to train these apps again
        await self._dask.close()
        await self._pool.close()

    async def _backend_changed(self, old: str) -> None:
        """A reload changed the backend or the address: the next runs use the new one."""
        t = self._settings.training
        log.info("training_backend_changed", old=old, backend=t.backend,
                 dask_scheduler=t.dask_scheduler if t.backend == "dask" else None)
        self._dask.check_installed()
        await self._dask.retire()
        for name, state in list(self._apps.items()):
            if state.last_error is not None:  # the last run failed: give the new backend a go
                state.retry_at = 0.0
            await self._maybe_train(name)

    async def _poll(self) -> None:
        """Check every app now and then: a dropped SamplesAdded must not stall training."""
        while True:
            await asyncio.sleep(POLL_S)
            await self.working.wait()
            for name in list(self._apps):
                await self._maybe_train(name)

    # -- messages -----------------------------------------------------------------------------

    async def handle(self, msg: TrainerMsg) -> None:
        if not self.working.is_set():
            # The learning code takes seconds to import (more on a cold disk): /v1/status must
            # not wait for it, and the apps at start are resumed once it is in (_start_work).
            match msg:
                case GetTrainerStatus(reply=reply) if not reply.done():
                    reply.set_result({name: _status(s) for name, s in self._apps.items()})
                    return
                case AppsChanged(apps=apps):
                    self._early_apps = apps
                    return
            await self.working.wait()  # other messages wait for the pool
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
                        state.failed_at = n  # no retry until more data arrives (or retry_at)
                    elif generation == state.generation:  # else the policy changed: retrain
                        state.trained_on = max(state.trained_on, n)
                    await self._maybe_train(app)
            case LoadFailed(app=app, version=version):
                state = self._apps.get(app)
                if state is not None:
                    log.warning("retraining_unloadable_version", app=app, version=version)
                    state.unloadable = version
                    state.trained_on = 0
                    await self._maybe_train(app)
            case GetTrainerStatus(reply=reply):
                if not reply.done():
                    reply.set_result({name: _status(s) for name, s in self._apps.items()})
            case ApplyConfig(settings=settings):
                old, self._settings = self._settings.training, settings
                new = settings.training
                if (old.backend, old.dask_scheduler) != (new.backend, new.dask_scheduler):
                    await self._backend_changed(old.backend)
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
                state = AppState(spec)
                # resumed before _poll can see it: else a poll in between trains it from zero
                await self._resume(state)
                self._apps[name] = state
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
        if extra.get("complete", True) and manifest.get("versions") == self._versions:
            state.trained_on = int(extra.get("n_samples", 0))
        state.stale_before_id = int(extra.get("stale_before_id", 0))
        state.stale_labels = frozenset(extra.get("stale_labels", ()))

    async def _on_feedback(self, msg: FeedbackAdded) -> None:
        state = self._apps.get(msg.app)
        if state is None:
            return
        if msg.wrong:
            state.corrections.append(msg)
        state.feedback = [*state.feedback[-(FEEDBACK_KEPT - 1):], msg]
        drift_at = state.drift_at
        observe_feedback(state, msg)
        if state.drift_at != drift_at:
            self._metrics.drift_detections.labels(msg.app).inc()
        await self._maybe_train(msg.app)

    # -- deciding to train --------------------------------------------------------------------

    async def _maybe_train(self, app: str) -> None:
        state = self._apps.get(app)
        if state is None or state.running is not None:
            return
        n = self._store.count_samples(app)
        if n == 0 or (n == state.failed_at and time.monotonic() < state.retry_at):
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
        state.retry_at = math.inf
        state.last_error = None
        state.run_started, state.planned, state.fitted = time.monotonic(), 0, 0
        state.running = asyncio.create_task(self._run(state, reason, n),
                                            name=f"trainer.run.{state.spec.name}")

    async def _run(self, state: AppState, reason: str, n: int) -> None:
        """A run's task: train (`pipeline.py`) or adapt (`adaptation.py`) in a scratch
        folder, then report back to the mailbox."""
        app = state.spec.name
        error: str | None = None
        generation = state.generation
        run_dir = self._scratch / f"{app}-{time.time_ns()}"
        started = time.perf_counter()
        try:
            if reason == "feedback":
                await adapt(self._pipeline, state, run_dir, n)
            else:
                await self._pipeline.train(state, reason, run_dir, n)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed run is data: report it, keep the actor alive
            error = f"{type(exc).__name__}: {exc}"
            log.warning("training_failed", app=app, reason=reason, error=error)
            self._pipeline.event(app, "retraining_finished", ok=False, error=error)
            if isinstance(exc, ClusterUnavailable) and exc.retry:
                state.retry_at = time.monotonic() + CLUSTER_RETRY_S
        finally:
            state.fitting_on = None
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, run_dir, True))
        state.last_error = error
        seconds = time.perf_counter() - started
        self._metrics.training_runs.labels(app, reason, "failed" if error else "ok").inc()
        self._metrics.training_seconds.labels(app).observe(seconds)
        log.info("training_run_finished", app=app, reason=reason, n_samples=n,
                 seconds=round(seconds, 2), error=error)
        await self.ref.send(RunFinished(app=app, n_samples=n, error=error,
                                        generation=generation))


def _status(s: AppState) -> dict[str, Any]:
    """One app's training state as ``/v1/status`` shows it."""
    running = s.running is not None
    return {"training": running, "trained_on": s.trained_on,
            "corrections_pending": len(s.corrections), "last_reason": s.last_reason,
            "last_error": s.last_error, "fitting_on": s.fitting_on,
            "planned": s.planned if running else None, "fitted": s.fitted if running else None,
            "elapsed_s": round(time.monotonic() - s.run_started, 1) if running else None,
            "drift_at": s.drift_at}


def _import_learning() -> dict[str, str]:
    """Import what jobs run (in a thread): the library versions models are saved with."""
    from mliot_daemon.learn import jobs  # noqa: F401  (then cheap wherever it is imported)
    from mliot_daemon.learn.persist import library_versions

    return library_versions()
