"""Process-pool entry points of the trainer actor: quick first version, prepare, fit,
assemble, score.

Each function runs in a pool worker (forkserver), takes paths and small values, reads what it
needs itself (samples straight from the SQLite file, read-only: ``dataset``) and writes its
result to disk atomically, returning only a small picklable summary. No asyncio, no logging
set-up.

:func:`quick_job` makes an app's first version on its own, before :func:`prepare_job` reads
everything: it reads a subsample spread over the app's sample ids (the ids from the
``(app, id)`` index alone, then the chosen rows by primary key: no scan of the features, no
``ORDER BY random()``), sized by :func:`plan.quick_step` from the data's size and a probe's
measured cost, fits the front end and the quick model on it, scores it on a held-out slice
and saves a one-member model folder, ready to publish. On MNIST-60k (784-d) that is KNN on a
few thousand rows in about a second, where reading and preparing all rows takes 4 s and more.

With ``[training] backend = "dask"`` the fits run on a Dask cluster instead (``shipping``),
through the same :func:`fit_step` and into the same :func:`artifact_path` as :func:`fit_job`.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mliot_daemon.learn.dataset import (
    TrainingData,
    as_input,
    read_ids,
    read_samples,
    sample_ids,
    spread,
    training_rows,
)
from mliot_daemon.learn.ensemble import Policy
from mliot_daemon.learn.errors import DataError
from mliot_daemon.learn.features import FeatureSet, make_folds, prepare_features
from mliot_daemon.learn.fit import FitResult, FittedModel, fit_family, load_fitted
from mliot_daemon.learn.frontends import encode_labels, make_front_end
from mliot_daemon.learn.gate import fit_gate
from mliot_daemon.learn.persist import atomic_write, load_model, save_model
from mliot_daemon.learn.pipeline import (
    Prepared,
    TrainedModel,
    assemble,
    data_hash,
    fit_quick,
    front_end_latency_ms,
    quick_model,
)
from mliot_daemon.learn.plan import FIRST_DEADLINE_S, PlanStep, lazy_plan, quick_step

PROBE_ROWS = 50
QUICK_PROBE_ROWS = 64  # read first, to measure the cost of a row and learn the feature width
QUICK_VAL_SHARE = 0.15  # of the quick sample, held out to score the quick model ...
QUICK_MAX_VAL_ROWS = 500  # ... at most (a KNN scores each against all its rows)


@dataclass(frozen=True)
class PreparedInfo:
    """What ``prepare_job`` wrote, and the fitting plan for it."""

    directory: Path
    n: int
    d: int
    classes: list[str]
    plan: list[PlanStep]


@dataclass(frozen=True)
class QuickInfo:
    """What ``quick_job`` saved: a one-member model folder, and how it was made."""

    family: str
    rows: int  # the quick model's training rows
    val_rows: int  # held out to score it
    n: int  # the app's samples it was drawn from
    summary: dict[str, Any]  # as assemble_job's
    seconds: dict[str, float]  # per step, in this worker


def _holdout(y: list[str], k: int, seed: int) -> np.ndarray:
    """Indices of ``k`` rows to hold out, stratified when every class allows it."""
    from sklearn.model_selection import train_test_split

    if k <= 0:
        return np.empty(0, dtype=np.int64)
    idx = np.arange(len(y))
    try:
        return np.sort(train_test_split(idx, test_size=k, stratify=y, random_state=seed)[1])
    except ValueError:  # a class with a single row, or fewer held-out rows than classes
        return np.sort(np.random.default_rng(seed).choice(len(y), k, replace=False))


def quick_job(data: TrainingData, data_type: str, sample_rate: int, policy: Policy,
              background_class: str | None, out_path: Path, extra: dict[str, Any],
              fitted_on: str = "", deadline_s: float = FIRST_DEADLINE_S, seed: int = 0
              ) -> QuickInfo:
    """The app's first version, from a subsample, saved as a model folder at ``out_path``
    (``extra`` goes to its manifest, with ``fitted_on`` and ``quick``: what it was made of).

    A probe of ``QUICK_PROBE_ROWS`` rows spread over the data measures what a row costs to
    read and featurize here; :func:`plan.quick_step` sizes the sample from it, the data's size
    and this machine's speed; the sample, spread over the ids, is read, put through a front
    end fitted on it, split into training rows and a held-out slice, and the quick model
    (default parameters, no search) is fitted and scored. No ensemble selection and no
    probe-heavy timing: one member, its latency measured briefly. With a background class
    the gate is fitted on the sample too.
    """
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 4)
        clock = now

    held = set(data.holdout_ids)
    ids = [i for i in sample_ids(data.db_path, data.app, data.upto_id) if i not in held]
    lap("ids")
    if not ids:
        raise DataError(f"no samples of {data.app!r} to train on")
    t = time.perf_counter()
    feats, labels, sources, got = read_ids(data.db_path, data.app,
                                           spread(ids, QUICK_PROBE_ROWS))
    X, y = training_rows(data, feats, labels, sources, got)
    probe_fe = make_front_end(data_type, sample_rate)
    d = probe_fe.fit_transform(as_input(X)).shape[1] if X else 1
    row_s = (time.perf_counter() - t) / max(len(got), 1)
    step = quick_step(len(ids), d, deadline_s=deadline_s, row_s=row_s)
    lap("probe")
    feats, labels, sources, got = read_ids(data.db_path, data.app, spread(ids, step.rows))
    X, y = training_rows(data, feats, labels, sources, got)
    lap("read")
    n_val = min(QUICK_MAX_VAL_ROWS, int(len(y) * QUICK_VAL_SHARE))
    val = _holdout(y, n_val, seed)
    train = np.setdiff1d(np.arange(len(y)), val)
    # training rows first, the held-out slice last: both are views of one feature array
    order = np.concatenate([train, val])
    X, y = [X[i] for i in order], [y[i] for i in order]
    n_tr = len(train)
    codes, classes = encode_labels(np.asarray(y[:n_tr]))
    index = {c: i for i, c in enumerate(classes)}
    y_val = np.array([index.get(label, -1) for label in y[n_tr:]], dtype=np.int64)
    front_end = make_front_end(data_type, sample_rate)
    rows = as_input(X, np.float64)  # as the front end computes
    Z = front_end.fit_transform(rows)
    G = front_end.gate_input(rows) if background_class is not None else None
    del rows
    lap("front_end")
    member = fit_quick(step.family, Z[:n_tr], codes, Z[n_tr:], y_val, len(classes), seed)
    lap("fit")
    seconds["score"] = member.notes.pop("score_s")  # of the fit's lap: held-out slice, latency
    seconds["fit"] = round(seconds["fit"] - seconds["score"], 4)
    gate = None
    if background_class is not None:
        if background_class not in index:
            raise DataError(f"background class {background_class!r} is not among the labels")
        fold = np.full(len(y), -1, dtype=np.int64)
        fold[n_tr:] = 0
        gate = fit_gate(Z if G is None else G, np.concatenate([codes, y_val]),
                        index[background_class], fold, raw=G is not None)
        lap("gate")
    fe_ms = front_end_latency_ms(front_end, as_input(X[:PROBE_ROWS]), repeats=30)
    model = quick_model(front_end, classes, member, policy, front_end_ms=fe_ms,
                        data_hash=data_hash(Z[:n_tr], codes), gate=gate, y_val=y_val)
    lap("assemble")
    save_model(model, out_path, {**extra, "fitted_on": {step.family: fitted_on},
                                 "quick": {"family": step.family, "rows": n_tr,
                                           "val_rows": len(y) - n_tr, "of": len(ids)}})
    lap("save")
    summary = {"members": [step.family], "weights": model.selection.weights,
               "val_accuracy": model.selection.val_accuracy, "metrics": model.metrics}
    return QuickInfo(step.family, n_tr, len(y) - n_tr, len(ids), summary, seconds)


def prepare_job(data: TrainingData, data_type: str, sample_rate: int, out_dir: Path
                ) -> PreparedInfo:
    """Read the training samples, fit the front end, compute features and folds, plan fits
    (all on every row: the quick first version is :func:`quick_job`'s)."""
    feats, labels, sources, ids = read_samples(
        data.db_path, data.app, "id <= ?", (data.upto_id,))
    X, y = training_rows(data, feats, labels, sources, ids)
    del feats
    # Front end and folds only: the PCA decision waits for reduce_job, after the quick first
    # model (IncrementalPCA on MNIST-sized data takes most of a minute).
    codes, classes = encode_labels(np.asarray(y))
    fold = make_folds(codes)
    front_end = make_front_end(data_type, sample_rate)
    rows = as_input(X)  # one stacked copy (MNIST-60k: 376 MB) for all three readers
    front_end.choose(rows, codes, fold)
    Z = front_end.fit_transform(rows)
    features = FeatureSet(Z=Z, y=codes, n_classes=len(classes), fold=fold,
                          reducer=None, G=front_end.gate_input(rows))
    del rows
    out_dir.mkdir(parents=True, exist_ok=True)
    features.save(out_dir / "features.npz")
    probe = X[:PROBE_ROWS]
    atomic_write(out_dir / "prepared.pkl", lambda f: pickle.dump(
        {"front_end": front_end, "classes": classes, "probe": probe}, f,
        protocol=pickle.HIGHEST_PROTOCOL))
    n, d = Z.shape
    return PreparedInfo(out_dir, n, d, classes, lazy_plan(n, d, quick=False))


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
            seed: int = 0, params: dict[str, Any] | None = None,
            warm: dict[str, Any] | None = None) -> FitResult:
    """Fit one plan step on all prepared rows. With ``params`` (a refit of a served member)
    the search is skipped; with ``warm`` (the previous version's best) it starts there."""
    fs = FeatureSet.load(prepared_dir / "features.npz")
    model = fit_step(fs, step, budget_s, seed, params, warm)
    out = artifact_path(out_dir, step)
    atomic_write(out, lambda f: pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL))
    return FitResult(family=step.family, artifact=out, summary=model.summary(),
                     val_pred=model.val_pred)


def fit_step(fs: FeatureSet, step: PlanStep, budget_s: float | None, seed: int,
             params: dict[str, Any] | None, warm: dict[str, Any] | None = None
             ) -> FittedModel:
    """Fit one plan step on ``fs`` (here or on a Dask worker: ``shipping.dask_fit_job``)."""
    if step.quick:
        raise ValueError("the quick first step is quick_job's, on rows of its own")
    return fit_family(step.family, fs, budget_s=budget_s, seed=seed, params=params, warm=warm)


def artifact_path(out_dir: Path, step: PlanStep) -> Path:
    """Where a step's fitted model is written, whichever backend fitted it."""
    return out_dir / f"{step.family}.pkl"


def assemble_job(prepared_dir: Path, candidates: list[Path], policy: Policy,
                 background_class: str | None, out_path: Path, extra: dict[str, Any]
                 ) -> dict[str, Any]:
    """Select the ensemble under ``policy`` from fitted candidates and save it as a model
    directory at ``out_path``; returns its selection summary."""
    prep, probe = _load_prepared(prepared_dir)
    fitted = [load_fitted(p) for p in candidates]
    model = assemble(prep, fitted, policy, X_probe=as_input(probe) if probe else None,
                     background_class=background_class)
    save_model(model, out_path, extra)
    return {"members": [m.family for m in model.members], "weights": model.selection.weights,
            "vote": model.selection.vote, "val_accuracy": model.selection.val_accuracy,
            "metrics": model.metrics}


def score_job(model_dirs: list[Path], data: TrainingData, ids: list[int]) -> list[float]:
    """Accuracy of each saved model on the stored samples with these ids."""
    if not ids:
        return [float("nan")] * len(model_dirs)
    marks = ",".join("?" * len(ids))
    feats, labels, _, _ = read_samples(data.db_path, data.app, f"id IN ({marks})", tuple(ids))
    X = as_input(feats)
    out = []
    for directory in model_dirs:
        model: TrainedModel = load_model(directory)
        pred = model.fast().predict(X)
        out.append(float(np.mean([model.classes[p] == t for p, t in zip(pred, labels,
                                                                         strict=True)])))
    return out


def worker_init(daemon_pid: int, cpus: frozenset[int] | None = None) -> None:
    """Pool initializer: yield the CPU to serving (nice 10, and off the loop's CPU when one is
    reserved: ``mliot_daemon.cpus``), and die with the daemon (``lifeline``)."""
    import os

    from mliot_daemon.lifeline import die_with

    os.nice(10)
    if cpus:
        os.sched_setaffinity(0, cpus)
    die_with(daemon_pid)


def warm_up() -> int:
    """Import the heavy libraries in a fresh worker, so the first real job does not pay."""
    import sklearn.ensemble  # noqa: F401
    import xgboost  # noqa: F401

    import mliot_daemon.learn.pipeline  # noqa: F401
    from mliot_daemon.learn.plan import machine_speed

    machine_speed()  # measured once per worker (0.2 s): not in the first app's quick step
    return 0
