"""The Dask fit backend (``[training] backend = "dask"``).

A run's fit jobs go to a Dask cluster through one ``distributed.Client(asynchronous=True)`` per
scheduler address, connected when a run first needs it (before the quick version or anything
else, so an unreachable cluster fails the run at once). The run scatters its prepared features
once and gets each fitted model back as bytes, written where the pool would have written it;
the quick version, prepare, reduce, assemble and score stay in the local pool (they read the
local store and write local model folders). A run keeps the backend it started with; a reload
that changes the backend or the address takes effect for the next run and retires the old
client (closed when its last run ends). A run failed because the cluster was unreachable (or
lost) is retried after ``CLUSTER_RETRY_S`` even without new data (the actor decides that).
`distributed` is imported only when a run connects: it is an optional extra (``mliot[dask]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import importlib.util
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from mliot_daemon.settings import TrainingSettings

# The learning code (``shipping`` imports sklearn and xgboost) is imported where a run uses it,
# after the daemon serves (issue 20).
if TYPE_CHECKING:
    from mliot_daemon.learn.fit import FitResult
    from mliot_daemon.learn.plan import PlanStep

log = structlog.get_logger("mliot.trainer")

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


class DaskClients:
    """The trainer's Dask links: the configured scheduler's, made on first use, and the
    retired ones (an old address's) that runs in flight still use. ``training`` gives the
    settings in force (a reload may change them)."""

    def __init__(self, training: Callable[[], TrainingSettings]) -> None:
        self._training = training
        self._link: DaskLink | None = None  # the configured scheduler's, made on first use
        self._retired: set[DaskLink] = set()  # old addresses' clients, still used by a run
        self._versions: dict[str, str] | None = None  # shipping.compatible_versions(), once

    def check_installed(self) -> None:
        if (self._training().backend == "dask"
                and importlib.util.find_spec("distributed") is None):
            log.error("dask_not_installed", error=DASK_MISSING)

    def take(self) -> DaskLink | None:
        """The client link a run starting now fits on (None: the local pool); the run gives
        it back with ``drop``."""
        t = self._training()
        if t.backend != "dask":
            return None
        if self._link is None:
            self._link = DaskLink(t.dask_scheduler)
        self._link.users += 1
        return self._link

    async def drop(self, link: DaskLink) -> None:
        link.users -= 1
        if link.retired and link.users == 0:
            self._retired.discard(link)
            if link.client is not None:
                await _close_client(link.client)

    async def fits(self, link: DaskLink, app: str, out_dir: Path) -> ClusterFits:
        """A run's fits on the link's cluster, connected first."""
        from mliot_daemon.learn import shipping

        client = await self._connect(link)
        if self._versions is None:  # imports xgboost: not on the loop
            self._versions = await asyncio.to_thread(shipping.compatible_versions)
        return ClusterFits(client, link, app, out_dir, self._training().fit_timeout_s,
                           self._versions)

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

    async def retire(self) -> None:
        """A reload changed the backend or the address: the next run makes a new link."""
        link, self._link = self._link, None
        if link is not None:
            link.retired = True
            if link.users:  # runs in flight keep their cluster; closed when the last ends
                self._retired.add(link)
            elif link.client is not None:
                await _close_client(link.client)

    async def close(self) -> None:
        """Close every client (the actor stops, its runs are over)."""
        links = [link for link in (self._link, *self._retired) if link is not None]
        self._link, self._retired = None, set()
        await asyncio.gather(*(_close_client(link.client) for link in links
                               if link.client is not None))


class ClusterFits:
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

    async def fit(self, directory: Path, step: PlanStep, params: dict[str, Any] | None,
                  warm: dict[str, Any] | None = None) -> FitResult:
        from mliot_daemon.learn import shipping

        async with self._scatter:
            if self._data is None:
                await self._scatter_features(directory)
        reducer = await asyncio.to_thread(shipping.load_reducer, directory)
        future = self._client.submit(
            shipping.dask_fit_job, self._data, reducer, step, None, 0, params, self._versions,
            warm,
            key=f"mliot-fit-{self._app}-{step.family}-{uuid.uuid4().hex[:12]}")
        deadline = asyncio.timeout(self._timeout_s)
        try:
            async with deadline:
                shipped: shipping.ShippedFit = await future
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
        return await asyncio.to_thread(shipping.save_shipped, shipped, self._out_dir)

    async def _scatter_features(self, directory: Path) -> None:
        from mliot_daemon.learn import shipping

        features = await asyncio.to_thread(shipping.load_features, directory)
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
