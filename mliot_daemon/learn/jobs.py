"""Process-pool entry points of the trainer actor: read, prepare, fit, assemble, score.

Each function runs in a pool worker (forkserver), takes paths and small values, reads what it
needs itself (samples straight from the SQLite file, read-only) and writes its result to disk
atomically, returning only a small picklable summary. No asyncio, no logging set-up.

With ``[training] backend = "dask"`` the fits run on a Dask cluster instead, whose workers may
be other machines: :func:`dask_fit_job` takes the features themselves (scattered once per
training run) rather than a path, and returns the fitted model as bytes, which the daemon
writes locally with :func:`save_shipped`, so the rest of the run sees the same
:class:`FitResult` as from :func:`fit_job`. Workers need this package installed, in the
daemon's versions (:func:`dask_fit_job` checks).
"""

from __future__ import annotations

import pickle
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mliot_daemon.learn.ensemble import Policy
from mliot_daemon.learn.fast import Reducer
from mliot_daemon.learn.fit import (
    FeatureSet,
    FitResult,
    FittedModel,
    _atomic_write,
    fit_family,
    load_fitted,
    make_folds,
    prepare_features,
)
from mliot_daemon.learn.frontends import encode_labels, make_front_end
from mliot_daemon.learn.persist import library_versions, load_model, save_model
from mliot_daemon.learn.pipeline import Prepared, TrainedModel, assemble, data_hash
from mliot_daemon.learn.plan import PlanStep, lazy_plan

PROBE_ROWS = 50


@dataclass(frozen=True)
class TrainingData:
    """Which stored samples a training run uses."""

    db_path: Path
    app: str
    upto_id: int  # the newest sample id included
    holdout_ids: tuple[int, ...] = ()  # kept out of training, for the publish decision
    feedback_repeats: int = 1  # corrections count this many times
    # After a detected drift: samples older than this id with these labels describe a world
    # that is gone (a swapped label, a shifted sensor) and are left out.
    stale_before_id: int = 0
    stale_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreparedInfo:
    """What ``prepare_job`` wrote, and the fitting plan for it."""

    directory: Path
    n: int
    d: int
    classes: list[str]
    plan: list[PlanStep]


def read_samples(db_path: Path, app: str, where: str, args: tuple[Any, ...]
                 ) -> tuple[list[np.ndarray], list[str], list[str], list[int]]:
    """(features, labels, sources, ids) of an app's samples matching ``where``."""
    uri = f"file:{db_path}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        rows = conn.execute(
            f"SELECT id, features, shape, label, source FROM samples WHERE app=? AND {where} "
            "ORDER BY id", (app, *args)).fetchall()
    feats = [np.frombuffer(r[1], dtype=np.float32).reshape(
        tuple(int(s) for s in r[2].split(","))) for r in rows]
    return feats, [r[3] for r in rows], [r[4] for r in rows], [r[0] for r in rows]


def _as_input(feats: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    if feats and all(f.shape == feats[0].shape for f in feats):
        return np.stack(feats)
    return feats


def prepare_job(data: TrainingData, data_type: str, sample_rate: int, out_dir: Path
                ) -> PreparedInfo:
    """Read the training samples, fit the front end, compute features and folds, plan fits."""
    feats, labels, sources, ids = read_samples(
        data.db_path, data.app, "id <= ?", (data.upto_id,))
    held = set(data.holdout_ids)
    stale = set(data.stale_labels)
    X: list[np.ndarray] = []
    y: list[str] = []
    for f, label, source, i in zip(feats, labels, sources, ids, strict=True):
        # corrections are never stale: they are the newest word on what a sample is
        if i in held or (i < data.stale_before_id and label in stale and source != "feedback"):
            continue
        repeats = data.feedback_repeats if source == "feedback" else 1
        X.extend([f] * repeats)
        y.extend([label] * repeats)
    # Front end and folds only: the PCA decision waits for reduce_job, after the quick first
    # model (IncrementalPCA on MNIST-sized data takes most of a minute).
    codes, classes = encode_labels(np.asarray(y))
    front_end = make_front_end(data_type, sample_rate)
    Z = front_end.fit_transform(_as_input(X))
    features = FeatureSet(Z=Z, y=codes, n_classes=len(classes), fold=make_folds(codes),
                          reducer=None)
    out_dir.mkdir(parents=True, exist_ok=True)
    features.save(out_dir / "features.npz")
    probe = X[:PROBE_ROWS]
    _atomic_write(out_dir / "prepared.pkl", lambda f: pickle.dump(
        {"front_end": front_end, "classes": classes, "probe": probe}, f,
        protocol=pickle.HIGHEST_PROTOCOL))
    n, d = Z.shape
    return PreparedInfo(out_dir, n, d, classes, lazy_plan(n, d))


def reduce_job(prepared_dir: Path) -> bool:
    """Add the shared PCA to the prepared features where it pays (high-dimensional inputs);
    True when it did."""
    fs = FeatureSet.load(prepared_dir / "features.npz")
    reduced = prepare_features(fs.Z, fs.y, fs.n_classes)
    if reduced.reducer is None:
        return False
    fs.reducer = reduced.reducer
    fs.save(prepared_dir / "features.npz")
    return True


def _load_prepared(directory: Path) -> tuple[Prepared, list[Any]]:
    with open(directory / "prepared.pkl", "rb") as f:
        meta = pickle.load(f)
    fs = FeatureSet.load(directory / "features.npz")
    # The hash of what the models were fitted on: the features and their labels.
    return Prepared(meta["front_end"], meta["classes"], fs, data_hash(fs.Z, fs.y)), meta["probe"]


def fit_job(prepared_dir: Path, step: PlanStep, out_dir: Path, budget_s: float | None = None,
            seed: int = 0, params: dict[str, Any] | None = None) -> FitResult:
    """Fit one plan step. A quick step fits default parameters on a subsample, and is then
    scored on the full validation rows so it can stand alone as the first version. With
    ``params`` (a refit of a served member) the search is skipped."""
    fs = FeatureSet.load(prepared_dir / "features.npz")
    model = _fit_step(fs, step, budget_s, seed, params)
    out = _artifact_path(out_dir, step)
    _atomic_write(out, lambda f: pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL))
    return FitResult(family=step.family, artifact=out, summary=model.summary(),
                     val_pred=model.val_pred)


def _fit_step(fs: FeatureSet, step: PlanStep, budget_s: float | None, seed: int,
              params: dict[str, Any] | None) -> FittedModel:
    if not step.quick:
        return fit_family(step.family, fs, budget_s=budget_s, seed=seed, params=params)
    n = len(fs.y)
    rows = np.sort(np.random.default_rng(seed).choice(n, step.rows, replace=False)) \
        if step.rows < n else np.arange(n)
    try:
        sub_fold = make_folds(fs.y[rows], seed)
    except ValueError:
        sub_fold = np.full(len(rows), -1)
    sub = FeatureSet(Z=fs.Z[rows], y=fs.y[rows], n_classes=fs.n_classes, fold=sub_fold,
                     reducer=fs.reducer)
    model = fit_family(step.family, sub, params={}, seed=seed)
    Zv = fs.Z[fs.val_rows]
    Xv = fs.reducer(Zv) if model.reduced and fs.reducer is not None else Zv
    model.val_pred = np.asarray(model.estimator.predict(Xv))
    model.val_accuracy = float((model.val_pred == fs.y[fs.val_rows]).mean())
    return model


def _artifact_path(out_dir: Path, step: PlanStep) -> Path:
    return out_dir / f"{step.family}{'-quick' if step.quick else ''}.pkl"


# -- the Dask backend -------------------------------------------------------------------------


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
                 versions: dict[str, str]) -> ShippedFit:
    """Dask worker entry point: :func:`fit_job` on features received rather than read.

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
    model = _fit_step(fs, step, budget_s, seed, params)
    return ShippedFit(step=step, model=pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL),
                      summary=model.summary(), val_pred=model.val_pred)


def save_shipped(shipped: ShippedFit, out_dir: Path) -> FitResult:
    """Write a model fitted on the cluster where ``fit_job`` would have (in the daemon, in a
    thread); the bytes come from our own cluster, see the README on trusting it."""
    out = _artifact_path(out_dir, shipped.step)
    _atomic_write(out, lambda f: f.write(shipped.model))
    return FitResult(family=shipped.step.family, artifact=out, summary=shipped.summary,
                     val_pred=shipped.val_pred)


def assemble_job(prepared_dir: Path, candidates: list[Path], policy: Policy,
                 background_class: str | None, out_path: Path, extra: dict[str, Any]
                 ) -> dict[str, Any]:
    """Select the ensemble under ``policy`` from fitted candidates and save it as a model
    directory at ``out_path``; returns its selection summary."""
    prep, probe = _load_prepared(prepared_dir)
    fitted = [load_fitted(p) for p in candidates]
    model = assemble(prep, fitted, policy, X_probe=_as_input(probe) if probe else None,
                     background_class=background_class)
    save_model(model, out_path, extra)
    return {"members": [m.family for m in model.members], "weights": model.selection.weights,
            "val_accuracy": model.selection.val_accuracy, "metrics": model.metrics}


def score_job(model_dirs: list[Path], data: TrainingData, ids: list[int]) -> list[float]:
    """Accuracy of each saved model on the stored samples with these ids."""
    if not ids:
        return [float("nan")] * len(model_dirs)
    marks = ",".join("?" * len(ids))
    feats, labels, _, _ = read_samples(data.db_path, data.app, f"id IN ({marks})", tuple(ids))
    X = _as_input(feats)
    out = []
    for directory in model_dirs:
        model: TrainedModel = load_model(directory)
        pred = model.fast().predict(X)
        out.append(float(np.mean([model.classes[p] == t for p, t in zip(pred, labels,
                                                                         strict=True)])))
    return out


def worker_init(daemon_pid: int) -> None:
    """Pool initializer: yield the CPU to serving, and die with the daemon.

    A pool worker's parent is the forkserver, not the daemon, so after a ``kill -9`` of the
    daemon a worker would go on fitting for nobody; a watchdog thread ends it within a second.
    """
    import os
    import threading
    import time

    os.nice(10)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(daemon_pid, 0)
            except ProcessLookupError:
                os._exit(0)

    threading.Thread(target=watch, name="daemon-watchdog", daemon=True).start()


def warm_up() -> int:
    """Import the heavy libraries in a fresh worker, so the first real job does not pay."""
    import sklearn.ensemble  # noqa: F401
    import xgboost  # noqa: F401

    import mliot_daemon.learn.pipeline  # noqa: F401

    return 0
