"""The trainer actor: lazy training, retraining on growth, adaptation to feedback.

It owns the process pool (forkserver, workers at lower priority) and runs at most one training
run per app, as a task the app's state holds (on_stop cancels and awaits them all). A run
for an app with nothing to serve (no version yet, or the current one failed to load) first
publishes a quick version (`jobs.quick_job`: a subsample read from the store, the quick model,
a one-member model folder; within 2 s even on MNIST-60k); then it prepares features from all
rows in the pool, fits the plan's steps cheapest first, and after each fit assembles and
publishes a version, so the rest join as they finish. A run for an app that serves a version
already (more data, a new policy) skips the quick version rather than replace a better model
with it. Runs report back to the mailbox (`RunFinished`); versions go to the server
(`VersionPublished`), progress as `TrainingEvent`s.

Adaptation: every piece of feedback updates a Page-Hinkley test on the error stream. After
`retrain_after` corrections, or when the test fires, the app is retrained with corrections
counted three times, and after a detected drift without the stale samples of the corrected
classes. The new version is published only if it is at least as accurate as the current one on
the newest corrections, which are held out of its training.

Fit backend: with ``[training] backend = "dask"`` a run's fit jobs go to a Dask cluster through
one ``distributed.Client(asynchronous=True)`` per scheduler address, connected when a run first
needs it (before the quick version or anything else, so an unreachable cluster fails the run at
once). The run scatters its prepared features once and gets each fitted model back as bytes,
written where the pool would have written it; the quick version, prepare, reduce, assemble and
score stay in the local pool (they read the local store and write local model folders). A run
keeps the backend it started with; a reload that changes the backend or the address takes
effect for the next run, retires the old client (closed when its last run ends) and retries at
once the apps whose last run failed. A run failed because the cluster was unreachable (or lost)
is retried after ``CLUSTER_RETRY_S`` even without new data; other failed runs wait for more
data, as before.
`distributed` is imported only then: it is an optional extra (``mliot[dask]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import math
import multiprocessing
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, assert_never

import structlog

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
    Refs,
    RunFinished,
    SamplesAdded,
    TrainerMsg,
    TrainingEvent,
    VersionPublished,
)
from mliot_daemon.registry import Registry
from mliot_daemon.runtime import Actor
from mliot_daemon.settings import AppSpec, Settings
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
CLUSTER_CONNECT_S = 10.0  # to reach a Dask scheduler (and to find a worker for the features)
CLUSTER_RETRY_S = 30.0  # a run failed on an unreachable cluster is retried after this
CLUSTER_CLOSE_S = 5.0
DASK_MISSING = ('training.backend is "dask" but the distributed package is not installed: '
                "pip install 'mliot[dask]'")


class ClusterUnavailable(RuntimeError):
    """The Dask cluster cannot take the run's fits (unreachable, no worker, not installed)."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry  # worth another try later without new data


@dataclass(eq=False)
class DaskLink:
    """The Dask client for one scheduler address, shared by the runs started while that
    address was configured; closed when retired (a reload) and no run uses it any more."""

    address: str
    client: Any = None  # distributed.Client, once connected
    users: int = 0
    retired: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def where(self) -> str:
        return f"dask:{self.address}"


async def _close_client(client: Any) -> None:
    with contextlib.suppress(Exception, TimeoutError):  # closing must not fail a stop/reload
        async with asyncio.timeout(CLUSTER_CLOSE_S):
            await client.close()


class _PoolFits:
    """A run's fits in the local process pool."""

    def __init__(self, pool_call: Callable[..., Any], out_dir: Path, where: str,
                 workers: int) -> None:
        self._pool_call = pool_call
        self._out_dir = out_dir
        self.where = where
        self.width = workers  # fits of one run in flight at once

    async def fit(self, directory: Path, step: PlanStep, params: dict[str, Any] | None
                  ) -> jobs.FitResult:
        result: jobs.FitResult = await self._pool_call(jobs.fit_job, directory, step,
                                                       self._out_dir, None, 0, params)
        return result

    def release(self) -> None:
        pass


class _ClusterFits:
    """A run's fits on a Dask cluster: the features are scattered once, at the first fit
    (the shared PCA, small and decided later, travels with each fit); each fitted model comes
    back as bytes and is written where the pool would have written it."""

    def __init__(self, client: Any, link: DaskLink, app: str, out_dir: Path,
                 timeout_s: float, versions: dict[str, str]) -> None:
        self._client = client
        self._address = link.address
        self._app = app
        self._out_dir = out_dir
        self._timeout_s = timeout_s
        self._versions = versions  # the daemon's: a worker with others refuses the fit
        self._data: Any = None  # the scattered FeatureSet (a distributed.Future)
        self._scatter = asyncio.Lock()  # concurrent first fits scatter once
        self.where = link.where
        workers = client.scheduler_info().get("workers", {})
        self.width = max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))

    async def fit(self, directory: Path, step: PlanStep, params: dict[str, Any] | None
                  ) -> jobs.FitResult:
        async with self._scatter:
            if self._data is None:
                await self._scatter_features(directory)
        reducer = await asyncio.to_thread(jobs.load_reducer, directory)
        future = self._client.submit(
            jobs.dask_fit_job, self._data, reducer, step, None, 0, params, self._versions,
            key=f"mliot-fit-{self._app}-{step.family}-{uuid.uuid4().hex[:12]}")
        deadline = asyncio.timeout(self._timeout_s)
        try:
            async with deadline:
                shipped: jobs.ShippedFit = await future
        except (OSError, concurrent.futures.CancelledError) as exc:
            # distributed's FutureCancelledError is a concurrent.futures.CancelledError: the
            # scheduler went away meanwhile (an overrun fit is a failure like in the pool)
            if deadline.expired():
                raise
            raise ClusterUnavailable(f"the Dask cluster at {self._address} lost the fit of "
                                     f"{step.family}: {exc}") from exc
        finally:
            # a fit cut short (timeout, cancelled run) is forgotten: the scheduler drops it
            # if it has not started, a worker cannot stop it once it has
            future.release()
        return await asyncio.to_thread(jobs.save_shipped, shipped, self._out_dir)

    async def _scatter_features(self, directory: Path) -> None:
        features = await asyncio.to_thread(jobs.load_features, directory)
        try:
            # distributed waits up to its connect timeout for a worker to take them
            async with asyncio.timeout(self._timeout_s):
                self._data = await self._client.scatter(features, hash=False)
        except (OSError, TimeoutError) as exc:
            raise ClusterUnavailable(f"no worker of the Dask cluster at {self._address} took "
                                     f"the training data: {str(exc) or 'timed out'}") from exc

    def release(self) -> None:
        if self._data is not None:
            data, self._data = self._data, None
            with contextlib.suppress(Exception):  # the client may be closed already
                data.release()


@dataclass
class AppState:
    """What the trainer knows of one app."""

    spec: AppSpec
    trained_on: int = 0  # samples the current version was trained on
    failed_at: int = -1  # sample count of the last failed run (no retry until more data)
    retry_at: float = math.inf  # ... or until then (monotonic): the cluster was unreachable
    last_error: str | None = None  # why the last run failed; None from a run's start
    fitting_on: str | None = None  # where the run in flight fits: machine name or dask:address
    running: asyncio.Task[None] | None = None
    unloadable: int | None = None  # a version the server failed to load
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

    def __init__(self, settings: Settings, store: Store, registry: Registry, refs: Refs,
                 machine: str) -> None:
        super().__init__(refs.trainer)
        self._settings = settings
        self._store = store
        self._registry = registry
        self._server = refs.server
        self._machine = machine
        self._pool: ProcessPoolExecutor | None = None
        self._slots = asyncio.Semaphore(settings.training.pool_size)
        self._apps: dict[str, AppState] = {}
        self._scratch = settings.daemon.data_path / "scratch"
        self._link: DaskLink | None = None  # the configured scheduler's, made on first use
        self._retired: set[DaskLink] = set()  # old addresses' clients, still used by a run
        self._versions: dict[str, str] | None = None  # jobs.compatible_versions(), once

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
        self._check_backend()

    def background(self) -> list:
        return [self._poll()]

    async def on_stop(self) -> None:
        runs = [s.running for s in self._apps.values() if s.running is not None]
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        for state in self._apps.values():
            state.running = None  # a restart must be free to train these apps again
        links = [link for link in (self._link, *self._retired) if link is not None]
        self._link, self._retired = None, set()
        await asyncio.gather(*(_close_client(link.client) for link in links
                               if link.client is not None))
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

    # -- the Dask backend ----------------------------------------------------------------------

    def _check_backend(self) -> None:
        if (self._settings.training.backend == "dask"
                and importlib.util.find_spec("distributed") is None):
            log.error("dask_not_installed", error=DASK_MISSING)

    def _take_link(self) -> DaskLink | None:
        """The client link a run starting now fits on (None: the local pool)."""
        t = self._settings.training
        if t.backend != "dask":
            return None
        if self._link is None:
            self._link = DaskLink(t.dask_scheduler)
        self._link.users += 1
        return self._link

    async def _drop_link(self, link: DaskLink) -> None:
        link.users -= 1
        if link.retired and link.users == 0:
            self._retired.discard(link)
            if link.client is not None:
                await _close_client(link.client)

    async def _connect(self, link: DaskLink) -> Any:
        """The link's client, connected now if it is not (or no longer) connected."""
        async with link.lock:
            if link.client is not None and link.client.status == "running":
                return link.client
            if link.client is not None:  # lost its scheduler and gave up: start afresh
                old, link.client = link.client, None
                await _close_client(old)
            try:  # a heavy first import (dask, tornado): not on the loop
                distributed = await asyncio.to_thread(importlib.import_module, "distributed")
            except ImportError as exc:
                raise ClusterUnavailable(DASK_MISSING, retry=False) from exc
            client = distributed.Client(link.address, asynchronous=True,
                                        timeout=CLUSTER_CONNECT_S, set_as_default=False)
            try:
                await client
            except BaseException as exc:
                await asyncio.shield(_close_client(client))
                if isinstance(exc, OSError | TimeoutError):
                    log.error("dask_unreachable", address=link.address, error=str(exc))
                    raise ClusterUnavailable(
                        f"the Dask scheduler at {link.address} is unreachable: {exc}") from exc
                raise
            log.info("dask_connected", address=link.address)
            link.client = client
            return client

    async def _backend_changed(self, old: str) -> None:
        """A reload changed the backend or the address: the next runs use the new one."""
        t = self._settings.training
        log.info("training_backend_changed", old=old, backend=t.backend,
                 dask_scheduler=t.dask_scheduler if t.backend == "dask" else None)
        self._check_backend()
        link, self._link = self._link, None
        if link is not None:
            link.retired = True
            if link.users:  # runs in flight keep their cluster; closed when the last ends
                self._retired.add(link)
            elif link.client is not None:
                await _close_client(link.client)
        for name, state in list(self._apps.items()):
            if state.last_error is not None:  # the last run failed: give the new backend a go
                state.retry_at = 0.0
            await self._maybe_train(name)

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
                    reply.set_result({name: {"training": s.running is not None,
                                             "trained_on": s.trained_on,
                                             "corrections_pending": len(s.corrections),
                                             "last_reason": s.last_reason,
                                             "last_error": s.last_error,
                                             "fitting_on": s.fitting_on}
                                      for name, s in self._apps.items()})
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
            if isinstance(exc, ClusterUnavailable) and exc.retry:
                state.retry_at = time.monotonic() + CLUSTER_RETRY_S
        finally:
            state.fitting_on = None
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, run_dir, True))
        state.last_error = error
        log.info("training_run_finished", app=app, reason=reason, n_samples=n,
                 seconds=round(time.perf_counter() - started, 2), error=error)
        await self.ref.send(RunFinished(app=app, n_samples=n, error=error,
                                        generation=generation))

    def _data(self, state: AppState, upto: int, **kw: Any) -> jobs.TrainingData:
        return jobs.TrainingData(db_path=self._store.path, app=state.spec.name, upto_id=upto,
                                 feedback_repeats=FEEDBACK_REPEATS,
                                 stale_before_id=state.stale_before_id,
                                 stale_labels=tuple(sorted(state.stale_labels)), **kw)

    async def _fit_steps(self, state: AppState, data: jobs.TrainingData, run_dir: Path,
                         reason: str, n: int, refit: dict[str, dict[str, Any]] | None = None,
                         quick: bool = False) -> tuple[Path | None, dict[str, Any]]:
        """The quick version first (``quick``), then prepare and fit; assemble and publish
        after each fit (lazy), or, with ``refit`` (family -> params of the served members),
        refit just those and assemble once without publishing. Returns the unpublished
        model's staging path and its summary. Fits go to the configured backend, taken at the
        start: the local pool or the Dask cluster (the quick version is always local)."""
        link = self._take_link()
        state.fitting_on = link.where if link is not None else self._machine
        try:
            fits: _PoolFits | _ClusterFits
            if link is None:
                fits = _PoolFits(self._pool_call, run_dir / "fits", self._machine,
                                 self._settings.training.pool_size)
            else:  # connect before any work: an unreachable cluster fails the run at once
                client = await self._connect(link)
                if self._versions is None:  # imports xgboost: not on the loop
                    self._versions = await asyncio.to_thread(jobs.compatible_versions)
                fits = _ClusterFits(client, link, state.spec.name, run_dir / "fits",
                                    self._settings.training.fit_timeout_s, self._versions)
            try:
                published = False
                if quick:
                    state.fitting_on = self._machine
                    published = await self._quick(state, data, reason, n)
                    state.fitting_on = fits.where
                return await self._fit_steps_with(fits, state, data, run_dir, reason, n, refit,
                                                  published)
            finally:
                fits.release()
        finally:
            if link is not None:
                await asyncio.shield(self._drop_link(link))

    async def _quick(self, state: AppState, data: jobs.TrainingData, reason: str, n: int
                     ) -> bool:
        """Publish the quick version; True when it was. A failure is logged and the run goes
        on: the quick version only brings the first one forward."""
        spec = state.spec
        app = spec.name
        started = time.perf_counter()
        staging = await asyncio.to_thread(self._registry.staging_path, app)
        extra = {"reason": reason, "n_samples": n, "complete": False,
                 "stale_before_id": state.stale_before_id,
                 "stale_labels": sorted(state.stale_labels)}
        try:
            info = await self._pool_call(
                jobs.quick_job, data, spec.data_type, spec.sample_rate or 16000,
                spec.policy, spec.background_class, staging, extra, self._machine)
        except Exception as exc:  # the full run below still makes a version (or fails)
            await asyncio.to_thread(shutil.rmtree, staging, True)
            log.warning("quick_version_failed", app=app, error=f"{type(exc).__name__}: {exc}")
            return False
        job_s = time.perf_counter() - started
        accuracy = info.summary.get("val_accuracy")
        self._event(app, "model_fitted", family=info.family, quick=True, accuracy=accuracy,
                    rows=info.rows, of=info.n, seconds=info.seconds)
        await self._publish(state, staging, reason, info.summary)
        log.info("quick_version", app=app, family=info.family, rows=info.rows, of=info.n,
                 val_accuracy=accuracy, seconds={**info.seconds, "job": round(job_s, 3),
                 "publish": round(time.perf_counter() - started - job_s, 3)})
        return True

    async def _fit_steps_with(self, fits: _PoolFits | _ClusterFits, state: AppState,
                              data: jobs.TrainingData, run_dir: Path, reason: str, n: int,
                              refit: dict[str, dict[str, Any]] | None, published: bool = False
                              ) -> tuple[Path | None, dict[str, Any]]:
        spec = state.spec
        app = spec.name
        started = time.perf_counter()
        info = await self._pool_call(jobs.prepare_job, data, spec.data_type,
                                     spec.sample_rate or 16000, run_dir / "prepared")
        log.info("features_prepared", app=app, n=info.n, d=info.d,
                 seconds=round(time.perf_counter() - started, 3))
        # the shared PCA where it pays (IncrementalPCA on MNIST-60k: most of a minute, which
        # is why nothing of this preparation comes before the quick version)
        await self._pool_call(jobs.reduce_job, info.directory)
        steps = info.plan if refit is None else [PlanStep(f, info.n, 0.0) for f in refit]
        fitted: dict[str, jobs.FitResult] = {}
        policy = spec.policy
        staging: Path | None = None
        summary: dict[str, Any] = {}
        # As many fits in flight as the pool (or the cluster) has workers, cheapest first;
        # each one that finishes is assembled and published at once (lazy), before the next
        # fit takes the freed worker (assembly runs in the pool too).
        todo = list(steps)
        running: dict[asyncio.Task[jobs.FitResult], PlanStep] = {}

        def start_next() -> None:
            if todo:
                step = todo.pop(0)
                params = refit.get(step.family) if refit else None
                running[asyncio.create_task(fits.fit(info.directory, step, params))] = step

        try:
            for _ in range(fits.width):
                start_next()
            i = 0
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    fitted[step.family] = result = task.result()
                    self._event(app, "model_fitted", family=step.family, quick=False,
                                accuracy=result.summary.get("val_accuracy"))
                last = not running and not todo
                if refit is None or last:
                    staging, summary = await self._assemble(
                        fits, state, info.directory, fitted, reason, n, last, policy)
                if refit is None:
                    first = i == 0 and not published
                    await self._publish(state, staging, reason if first else "lazy", summary)
                    staging = None
                i += 1
                for _ in done:
                    start_next()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        return staging, summary

    async def _assemble(self, fits: _PoolFits | _ClusterFits, state: AppState,
                        directory: Path, fitted: dict[str, jobs.FitResult], reason: str,
                        n: int, last: bool, policy: Policy) -> tuple[Path, dict[str, Any]]:
        """Select the ensemble from what is fitted so far and save it to a staging path."""
        spec = state.spec
        app = spec.name
        candidates = list(fitted.values())
        staging = await asyncio.to_thread(self._registry.staging_path, app)
        extra = {"reason": reason, "n_samples": n, "complete": last,
                 "fitted_on": {r.family: fits.where for r in candidates},
                 "stale_before_id": state.stale_before_id,
                 "stale_labels": sorted(state.stale_labels)}
        summary = await self._pool_call(
            jobs.assemble_job, directory, [r.artifact for r in candidates], policy,
            spec.background_class, staging, extra)
        return staging, summary

    async def _train(self, state: AppState, reason: str, run_dir: Path, n: int) -> None:
        app = state.spec.name
        upto = await self._store.last_sample_id(app)
        self._event(app, "retraining_started", reason=reason)
        # nothing to serve: no version yet, or the current one does not load
        current = await asyncio.to_thread(self._registry.current, app)
        quick = current is None or current == state.unloadable
        await self._fit_steps(state, self._data(state, upto), run_dir, reason, n, quick=quick)
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
