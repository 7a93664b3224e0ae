"""Fit one model family on prepared features: PCA decision, budgeted search, validation, profile.

This is what a process-pool worker runs (see :func:`fit_family_job` for the file-based form);
the result is a :class:`FittedModel`. The features, their folds and the shared PCA come from
``features``; the search's budget arithmetic from ``search``.

Validation is out-of-fold (folds: see ``features``): a family's validation predictions are
those of models fitted without that row's fold; the served model is then refitted on every row.

Search: scikit-learn's successive halving (``HalvingGridSearchCV`` over candidates drawn by
``ParameterSampler``, which is ``HalvingRandomSearchCV``'s own draw, made here so that a warm
start can put the previous version's best parameters first and draw the others near them;
3-fold CV, resource = rows; group-aware like the validation folds when the rows have groups:
with the windows of one recording split between a candidate's training and scoring rows,
overlapping windows rewarded memorising, and the watch set's search chose 1-NN). The search
classes have no clock, so the search is sized to the time budget: a probe fit of the default
estimator on a few hundred rows gives the cost per row, the cost of the validation and final
fits is reserved, and the largest number of candidates and rows whose simulated halving cost
fits the rest is chosen (``search.plan_search``). With too little budget the default parameters
are used. ``fit_seconds`` reports the measured total. An MLP's cost is epochs x rows and its
probe says little about the epochs the full data needs, so its ``max_iter`` is capped
(``MLP_MIN_EPOCHS``..``MLP_MAX_EPOCHS``) to what half of the remaining budget allows for the
validation and final fits, and the search runs with that cap too; forests and boosted models
shrink their number of trees the same way (``SIZE_KNOBS``). Fits run with one BLAS thread
(threadpoolctl): with OpenBLAS's default two threads spinning against the other pool worker, a
1,257-row MLP fit was 10x slower, which is how an MLP once took 15 s of a 5 s budget.

PCA: when the feature set carries the shared PCA (see ``features``), a family uses it only
when, on a subsample hold-out, its accuracy drops by no more than 0.5 point and its single-row
latency falls.
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.experimental import enable_halving_search_cv  # noqa: F401  (enables the import below)
from sklearn.model_selection import (
    HalvingGridSearchCV,
    ParameterSampler,
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)

from mliot_daemon.learn.families import FIT_COST, make_estimator, search_space
from mliot_daemon.learn.fast import FastMember, Reducer, compile_member
from mliot_daemon.learn.features import FeatureSet
from mliot_daemon.learn.persist import atomic_write
from mliot_daemon.learn.profile import artifact_bytes, median_latency_ms
from mliot_daemon.learn.search import (
    default_budget,
    grid_size,
    near,
    plan_search,
    quiet_warnings,
    timed_fit,
)
from mliot_daemon.learn.soft import fit_sharpness, oof_scores

MLP_MIN_EPOCHS = 5
MLP_MAX_EPOCHS = 200
# budget knob of the tree families: (parameter, smallest value)
SIZE_KNOBS = {"random_forest": ("n_estimators", 10), "xgboost": ("n_estimators", 10)}
PCA_MAX_ACCURACY_DROP = 0.005


@dataclass
class FittedModel:
    """One fitted family: the estimator plus everything selection and reports need.

    Picklable; ``estimator`` and ``fast`` are the artifact, the rest is small.
    ``val_pred`` holds out-of-fold predictions for ``FeatureSet.val_rows``, ``val_scores``
    the matching per-class scores (``learn.soft``; None for the quick first model) and
    ``sharpness`` the factor that turns them into calibrated probabilities.
    """

    family: str
    params: dict[str, Any]
    estimator: Any
    fast: FastMember
    reduced: bool
    reduced_dims: int | None
    val_accuracy: float
    val_pred: np.ndarray
    fit_seconds: float
    latency_ms: float
    size_bytes: int
    candidates: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    val_scores: np.ndarray | None = None
    sharpness: float = 1.0

    def summary(self) -> dict[str, Any]:
        """JSON-able facts (no arrays, no estimator)."""
        return {"family": self.family, "params": _jsonable(self.params),
                "val_accuracy": round(self.val_accuracy, 5),
                "fit_seconds": round(self.fit_seconds, 3),
                "latency_ms": round(self.latency_ms, 4), "size_bytes": self.size_bytes,
                "reduced_dims": self.reduced_dims, "candidates": self.candidates,
                "warm_start": self.notes.get("warm_start")}


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


def _oof(family: str, est: Any, X: np.ndarray, y: np.ndarray, fold: np.ndarray,
         n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions and per-class scores (``learn.soft``) of the validation rows."""
    rows = np.flatnonzero(fold >= 0)
    pred = np.empty(len(fold), dtype=np.int64)
    scores = np.zeros((len(fold), n_classes))
    for f in np.unique(fold[rows]):
        test = fold == f
        m = clone(est)
        with quiet_warnings():
            m.fit(X[~test], y[~test])
        pred[test] = m.predict(X[test])
        scores[test] = oof_scores(family, m, X[test], n_classes)
    return pred[rows], scores[rows]


def _search_folds(fs: FeatureSet, seed: int) -> tuple[Any, np.ndarray | None]:
    """The search's 3 folds (and the groups to split by): stratified, and group-aware when the
    rows have groups (see the module docstring)."""
    n_groups = 0 if fs.groups is None else len(np.unique(fs.groups))
    if n_groups >= 2:
        return StratifiedGroupKFold(min(3, n_groups), shuffle=True, random_state=seed), fs.groups
    return StratifiedKFold(3, shuffle=True, random_state=seed), None


def _member_latency(fast: FastMember, rows: np.ndarray, reducer: Reducer | None) -> float:
    if fast.reduced and reducer is not None:
        return median_latency_ms(lambda z: fast.predict(reducer(z)), rows, repeats=100)
    return median_latency_ms(fast.predict, rows, repeats=100)


def _pca_decision(family: str, fs: FeatureSet, seed: int) -> tuple[bool, dict[str, Any]]:
    n = len(fs.y)
    m = min(n, 3000)
    idx = np.random.default_rng(seed).choice(n, m, replace=False) if m < n else np.arange(n)
    y = fs.y[idx]
    try:
        tr, te = train_test_split(np.arange(m), test_size=1 / 3, stratify=y, random_state=seed)
    except ValueError:
        tr, te = train_test_split(np.arange(m), test_size=1 / 3, random_state=seed)
    out: dict[str, Any] = {}
    for name, X in (("raw", fs.Z[idx]), ("pca", fs.reduced()[idx])):
        est = make_estimator(family, seed=seed)
        timed_fit(est, X[tr], y[tr])
        acc = float((est.predict(X[te]) == y[te]).mean())
        fast = compile_member(family, est, name == "pca", X[tr])
        lat = _member_latency(fast, fs.Z[idx][te[:50]], fs.reducer)
        out[name] = {"accuracy": acc, "latency_ms": lat}
    keep = (out["pca"]["accuracy"] >= out["raw"]["accuracy"] - PCA_MAX_ACCURACY_DROP
            and out["pca"]["latency_ms"] < out["raw"]["latency_ms"])
    return keep, out


def fit_family(family: str, fs: FeatureSet, *, budget_s: float | None = None, seed: int = 0,
               params: dict[str, Any] | None = None, warm: dict[str, Any] | None = None
               ) -> FittedModel:
    """Fit ``family`` on ``fs``: PCA decision, budgeted search (unless ``params`` given),
    out-of-fold validation, final fit on all rows, compile and profile.

    Args:
        family: one of ``FAMILIES``.
        fs: the prepared features (see :func:`prepare_features`).
        budget_s: seconds this family may take (approximate); None uses :func:`default_budget`.
        seed: seeds the folds' subsamples, the search and the estimators.
        params: fixed hyper-parameters; skips the search (used by retraining and tests).
        warm: the previous version's best parameters (a retrain on more data): the search
            starts from them (their candidate first, the others drawn near them) and, when
            the budget allows no search, they are used instead of the defaults.
    """
    # One BLAS/OpenMP thread: pool workers already use every core, and OpenBLAS threads that
    # spin against each other made a 1,257-row MLP fit 10x slower (measured: 7 ms per 200x64x128
    # product), the cause of an MLP search once taking 15 s against a 5 s budget.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _fit_family(family, fs, budget_s=budget_s, seed=seed, params=params, warm=warm)


def _fit_family(family: str, fs: FeatureSet, *, budget_s: float | None, seed: int,
                params: dict[str, Any] | None, warm: dict[str, Any] | None) -> FittedModel:
    started = time.perf_counter()
    n, d = fs.Z.shape
    budget = default_budget(n, d) if budget_s is None else float(budget_s)
    notes: dict[str, Any] = {}
    reduced = False
    if fs.reducer is not None:
        reduced, notes["pca"] = _pca_decision(family, fs, seed)
    X = fs.reduced() if reduced else fs.Z
    y = fs.y

    chosen: dict[str, Any] = dict(params or {})
    fixed: dict[str, Any] = {}  # budget-derived settings, applied to search and final fits
    candidates = 0
    if params is None:
        m0 = min(n, max(300, 30 * fs.n_classes))
        probe_rows = (np.random.default_rng(seed).choice(n, m0, replace=False) if m0 < n
                      else np.arange(n))
        probe_est = make_estimator(family, seed=seed)
        t_probe = timed_fit(probe_est, X[probe_rows], y[probe_rows])
        alpha = FIT_COST[family][1]
        per_row = t_probe / m0 ** alpha
        n_val_fits = len(np.unique(fs.fold[fs.fold >= 0]))
        if family == "mlp":
            # An MLP's cost is epochs x rows, and the probe's epoch count says little about the
            # full data's: cap the epochs so that validation + final fits take at most half of
            # what is left even if every fit runs to max_iter (once 15 s against a 5 s budget).
            per_epoch_row = t_probe / max(1, int(probe_est.n_iter_)) / m0
            left = budget - (time.perf_counter() - started)
            cap = int(0.5 * left / ((n_val_fits + 1) * per_epoch_row * n))
            fixed["max_iter"] = max(MLP_MIN_EPOCHS, min(MLP_MAX_EPOCHS, cap))
            per_row = per_epoch_row * fixed["max_iter"]
        elif family in SIZE_KNOBS:
            # Forests and boosted trees: the 5-fold validation plus the final fit alone took
            # 20 s of a 5.6 s budget on the watch set (RF: 6 fits of 3 s). Cost grows with
            # the number of trees, so shrink it until those fits take half of what is left.
            key, floor = SIZE_KNOBS[family]
            base = int(make_estimator(family, seed=seed).get_params()[key])
            left = budget - (time.perf_counter() - started)
            full = (n_val_fits + 1) * per_row * n ** alpha * 1.3
            size = max(floor, int(base * 0.5 * max(left, 0.0) / full)) if full > 0 else base
            if size < base:
                fixed[key] = size
                per_row *= size / base
        reserve = (n_val_fits + 1) * per_row * n ** alpha * 1.3
        remaining = budget - (time.perf_counter() - started) - reserve
        # XGBoost refuses a training fold that misses a class: give the small rounds more rows
        per_class = 20 if family == "xgboost" else 10
        plan = (plan_search(n, fs.n_classes, per_row, alpha, remaining, per_class)
                if remaining > 0 else None)
        space = {k: v for k, v in search_space(family, X).items() if k not in fixed}
        start = {k: tuple(v) if isinstance(v, list) else v
                 for k, v in (warm or {}).items() if k in space}
        if start:
            notes["warm_start"] = _jsonable(start)
            chosen = dict(start)  # what a budget too small for any search falls back to
        if plan is not None:
            c, r0, rmax = plan
            c = min(c, grid_size(space))
            # The candidates are drawn here (as HalvingRandomSearchCV would draw them) so that
            # a warm start can put the previous best first and draw the rest near it.
            around = near(space, start) if start else space
            n_drawn = min(c - bool(start), grid_size(around))
            drawn = [d for d in ParameterSampler(around, n_drawn, random_state=seed)
                     if d != start]
            grid = [{k: [v] for k, v in cand.items()} for cand in ([start] if start else [])
                    + drawn]
            cv, groups = _search_folds(fs, seed)
            search = HalvingGridSearchCV(
                make_estimator(family, fixed, seed=seed), grid,
                factor=3, resource="n_samples", min_resources=r0, max_resources=rmax,
                cv=cv, scoring="accuracy",
                refit=False, n_jobs=1, error_score=np.nan, return_train_score=False)
            with quiet_warnings():
                search.fit(X, y, groups=groups)
            scores = np.asarray(search.cv_results_["mean_test_score"], dtype=float)
            if np.isfinite(scores).any():
                chosen = dict(search.best_params_)
            candidates = len(grid)
        chosen = {**fixed, **chosen}
    est = make_estimator(family, chosen, seed=seed)
    val_pred, val_scores = _oof(family, est, X, y, fs.fold, fs.n_classes)
    val_acc = float((val_pred == y[fs.fold >= 0]).mean())
    timed_fit(est, X, y)
    fast = compile_member(family, est, reduced, X)
    probe = fs.Z[fs.val_rows[:100]] if len(fs.val_rows) else fs.Z[:100]
    latency = _member_latency(fast, probe, fs.reducer)
    return FittedModel(
        family=family, params=chosen, estimator=est, fast=fast, reduced=reduced,
        reduced_dims=fs.reducer.n_components if reduced and fs.reducer else None,
        val_accuracy=val_acc, val_pred=val_pred, fit_seconds=time.perf_counter() - started,
        latency_ms=latency, size_bytes=artifact_bytes(est), candidates=candidates, notes=notes,
        val_scores=val_scores, sharpness=fit_sharpness(val_scores, y[fs.fold >= 0]))


@dataclass(frozen=True)
class FitResult:
    """What a pool worker sends back: small and picklable; the model is in ``artifact``."""

    family: str
    artifact: Path
    summary: dict[str, Any]
    val_pred: np.ndarray


def fit_family_job(family: str, dataset: Path, out_dir: Path, budget_s: float | None = None,
                   seed: int = 0) -> FitResult:
    """Process-pool entry point: load a saved :class:`FeatureSet`, fit, write the artifact.

    The artifact (a pickled :class:`FittedModel`) is written atomically to ``out_dir``.
    """
    fs = FeatureSet.load(Path(dataset))
    model = fit_family(family, fs, budget_s=budget_s, seed=seed)
    out = Path(out_dir) / f"{family}-{os.getpid()}-{time.time_ns()}.pkl"
    atomic_write(out, lambda f: pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL))
    return FitResult(family=family, artifact=out, summary=model.summary(), val_pred=model.val_pred)


def load_fitted(path: Path) -> FittedModel:
    """Load an artifact written by :func:`fit_family_job` (from this machine's own disk only)."""
    with open(path, "rb") as f:
        model = pickle.load(f)
    if not isinstance(model, FittedModel):
        raise ValueError(f"{path} does not hold a FittedModel")
    return model
