"""Fits shipped to a Dask cluster (``[training] backend = "dask"``), whose workers may be other
machines.

This module owns both ends of a shipped fit: what the daemon sends (:func:`load_features`, the
prepared features without the PCA, scattered once per training run; :func:`load_reducer`, the
PCA, small enough to travel with each fit; :func:`compatible_versions`), the worker's entry
point (:func:`dask_fit_job`, which takes the features themselves rather than a path and
returns the fitted model as bytes) and the daemon writing what comes back
(:func:`save_shipped`, where ``jobs.fit_job`` would have written it), so the rest of the run
sees the same :class:`FitResult` as from ``jobs.fit_job``. Workers need this package
installed, in the daemon's versions (:func:`dask_fit_job` checks).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mliot_daemon.learn.fast import Reducer
from mliot_daemon.learn.features import FeatureSet
from mliot_daemon.learn.fit import FitResult
from mliot_daemon.learn.jobs import artifact_path, fit_step
from mliot_daemon.learn.persist import atomic_write, library_versions
from mliot_daemon.learn.plan import PlanStep


@dataclass(frozen=True)
class ShippedFit:
    """What :func:`dask_fit_job` returns: the pickled :class:`FittedModel` and its summary."""

    step: PlanStep
    model: bytes
    summary: dict[str, Any]
    val_pred: np.ndarray


class WorkerMismatch(RuntimeError):
    """A Dask worker runs other library versions than the daemon: its models would not load,
    or not behave, where they are served."""


def compatible_versions() -> dict[str, str]:
    """The versions a worker must share with the daemon: every library the fitted models
    are pickled with, and Python's minor version."""
    versions = library_versions()
    versions["python"] = ".".join(versions["python"].split(".")[:2])
    return versions


def load_features(prepared_dir: Path) -> FeatureSet:
    """The prepared features without the shared PCA: what a run ships to the cluster once."""
    fs = FeatureSet.load(prepared_dir / "features.npz")
    fs.reducer = None
    return fs


def load_reducer(prepared_dir: Path) -> Reducer | None:
    """The shared PCA ``reduce_job`` added, if any (small: it travels with each fit)."""
    with np.load(prepared_dir / "features.npz", allow_pickle=False) as d:
        if "pca_mean" not in d:
            return None
        return Reducer(d["pca_mean"], d["pca_components"])


def dask_fit_job(features: FeatureSet, reducer: Reducer | None, step: PlanStep,
                 budget_s: float | None, seed: int, params: dict[str, Any] | None,
                 versions: dict[str, str], warm: dict[str, Any] | None = None) -> ShippedFit:
    """Dask worker entry point: ``jobs.fit_job`` on features received rather than read.

    ``features`` is the run's scattered :class:`FeatureSet`, shared by the fits on this worker,
    so it is not modified; ``versions`` are the daemon's :func:`compatible_versions`.
    Estimators use one thread (``n_jobs=1``, one BLAS thread), as in the local pool: a worker
    runs ``--nthreads`` fits at a time.
    """
    mine = compatible_versions()
    if mine != versions:
        diff = {k: (mine.get(k), v) for k, v in versions.items() if mine.get(k) != v}
        raise WorkerMismatch("this Dask worker's versions differ from the daemon's "
                             f"(worker, daemon): {diff}; install the same mliot there")
    fs = FeatureSet(Z=features.Z, y=features.y, n_classes=features.n_classes,
                    fold=features.fold, reducer=reducer)
    model = fit_step(fs, step, budget_s, seed, params, warm)
    return ShippedFit(step=step, model=pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL),
                      summary=model.summary(), val_pred=model.val_pred)


def save_shipped(shipped: ShippedFit, out_dir: Path) -> FitResult:
    """Write a model fitted on the cluster where ``fit_job`` would have (in the daemon, in a
    thread); the bytes come from our own cluster, see the README on trusting it."""
    out = artifact_path(out_dir, shipped.step)
    atomic_write(out, lambda f: f.write(shipped.model))
    return FitResult(family=shipped.step.family, artifact=out, summary=shipped.summary,
                     val_pred=shipped.val_pred)
