"""Fit one model family on prepared features: PCA decision, budgeted search, validation, profile.

This is what a process-pool worker runs (see :func:`fit_family_job` for the file-based form).

Validation is out-of-fold so that ensemble selection never sees its own training rows and is
robust on small data: each row gets a fold id (5-fold CV up to 4,000 rows, 3-fold up to
20,000, above that a single 15 % hold-out; fold -1 means "train only"). A family's validation
predictions are those of models fitted without that row's fold; the served model is then
refitted on every row.

Search: scikit-learn's ``HalvingRandomSearchCV`` (successive halving over random candidates,
3-fold CV, resource = rows). The search classes have no clock, so the search is sized to the
time budget: a probe fit of the default estimator on a few hundred rows gives the cost per row,
the cost of the validation and final fits is reserved, and the largest number of candidates and
rows whose simulated halving cost fits the rest is chosen. With too little budget the default
parameters are used. ``fit_seconds`` reports the measured total. An MLP's cost is epochs x
rows and its probe says little about the epochs the full data needs, so its ``max_iter`` is
capped (``MLP_MIN_EPOCHS``..``MLP_MAX_EPOCHS``) to what half of the remaining budget allows
for the validation and final fits, and the search runs with that cap too; forests and boosted
models shrink their number of trees the same way (``SIZE_KNOBS``). Fits run with one
BLAS thread (threadpoolctl): with OpenBLAS's default two threads spinning against the other
pool worker, a 1,257-row MLP fit was 10x slower, which is how an MLP once took 15 s of a 5 s
budget.

PCA: for inputs with at least ``PCA_MIN_DIMS`` features the data set carries one shared PCA
(IncrementalPCA above ``INCREMENTAL_ROWS`` rows) keeping 90 % of the variance (at most
``PCA_MAX_DIMS`` components). A family uses it only when, on a subsample hold-out, its accuracy
drops by no more than 0.5 point and its single-row latency falls.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.experimental import enable_halving_search_cv  # noqa: F401  (enables the import below)
from sklearn.model_selection import HalvingRandomSearchCV, StratifiedKFold, train_test_split

from mliot_daemon.learn.errors import DataError
from mliot_daemon.learn.families import FIT_COST, make_estimator, search_space
from mliot_daemon.learn.fast import FastMember, Reducer, compile_member
from mliot_daemon.learn.profile import artifact_bytes, median_latency_ms

PCA_MIN_DIMS = 100
PCA_MAX_DIMS = 64
PCA_VARIANCE = 0.90
INCREMENTAL_ROWS = 20_000
MLP_MIN_EPOCHS = 5
MLP_MAX_EPOCHS = 200
# budget knob of the tree families: (parameter, smallest value)
SIZE_KNOBS = {"random_forest": ("n_estimators", 10), "xgboost": ("n_estimators", 10)}
PCA_MAX_ACCURACY_DROP = 0.005


@dataclass
class FeatureSet:
    """Front-end features of a training set, with fold ids and the optional shared PCA."""

    Z: np.ndarray
    y: np.ndarray
    n_classes: int
    fold: np.ndarray
    reducer: Reducer | None = None

    @property
    def val_rows(self) -> np.ndarray:
        """Indices of rows with out-of-fold validation predictions."""
        return np.flatnonzero(self.fold >= 0)

    def reduced(self) -> np.ndarray:
        if self.reducer is None:
            raise ValueError("this feature set has no PCA")
        if not hasattr(self, "_Zr"):
            self._Zr = self.reducer(self.Z)
        return self._Zr

    def save(self, path: Path) -> Path:
        """Write as .npz (atomically) so pool workers can load it by path."""
        arrays: dict[str, Any] = {"Z": self.Z, "y": self.y, "fold": self.fold,
                                  "n_classes": np.int64(self.n_classes)}
        if self.reducer is not None:
            arrays["pca_mean"] = self.reducer.mean
            arrays["pca_components"] = self.reducer.components
        return _atomic_write(Path(path), lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: Path) -> FeatureSet:
        with np.load(path, allow_pickle=False) as d:
            reducer = Reducer(d["pca_mean"], d["pca_components"]) if "pca_mean" in d else None
            return cls(Z=d["Z"], y=d["y"], n_classes=int(d["n_classes"]), fold=d["fold"],
                       reducer=reducer)


def make_folds(y: np.ndarray, seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold id per row: k-fold CV for small data, a 15 % hold-out (others -1) for large.

    With ``groups`` (e.g. the recording each window was cut from) rows of one group stay in one
    fold, so overlapping windows cannot leak between training and validation.
    """
    n = len(y)
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    fold = np.full(n, -1, dtype=np.int64)
    if n > 20_000:
        _, val = train_test_split(np.arange(n), test_size=0.15, stratify=y, random_state=seed)
        fold[val] = 0
        return fold
    k = min(5 if n <= 4000 else 3, smallest)
    if k < 2:
        raise DataError("every class needs at least 2 samples for validation")
    if groups is not None:
        from sklearn.model_selection import StratifiedGroupKFold

        k = min(k, len(np.unique(groups)))
        splitter: Any = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        splits = splitter.split(fold, y, groups)
    else:
        splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(fold, y)
    for i, (_, val) in enumerate(splits):
        fold[val] = i
    return fold


def prepare_features(Z: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0,
                     groups: np.ndarray | None = None) -> FeatureSet:
    """Fold ids (group-aware when ``groups`` given) plus, for high-dimensional inputs, PCA."""
    fold = make_folds(y, seed, groups)
    reducer = None
    n, d = Z.shape
    if d >= PCA_MIN_DIMS and n > PCA_MIN_DIMS:
        k_max = min(PCA_MAX_DIMS, d, n - 1)
        if n > INCREMENTAL_ROWS:
            pca: Any = IncrementalPCA(n_components=k_max, batch_size=max(2000, 2 * k_max)).fit(Z)
        else:
            pca = PCA(n_components=k_max, svd_solver="randomized", random_state=seed).fit(Z)
        ratio = np.cumsum(pca.explained_variance_ratio_)
        k = int(min(k_max, np.searchsorted(ratio, PCA_VARIANCE) + 1))
        reducer = Reducer(np.asarray(pca.mean_, dtype=np.float64),
                          np.asarray(pca.components_[:k], dtype=np.float64))
    return FeatureSet(Z=Z, y=y, n_classes=n_classes, fold=fold, reducer=reducer)


@dataclass
class FittedModel:
    """One fitted family: the estimator plus everything selection and reports need.

    Picklable; ``estimator`` and ``fast`` are the artifact, the rest is small.
    ``val_pred`` holds out-of-fold predictions for ``FeatureSet.val_rows``.
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

    def summary(self) -> dict[str, Any]:
        """JSON-able facts (no arrays, no estimator)."""
        return {"family": self.family, "params": _jsonable(self.params),
                "val_accuracy": round(self.val_accuracy, 5), "fit_seconds": round(self.fit_seconds, 3),
                "latency_ms": round(self.latency_ms, 4), "size_bytes": self.size_bytes,
                "reduced_dims": self.reduced_dims, "candidates": self.candidates}


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


class _quiet(warnings.catch_warnings):
    """Silence the warnings a bounded search produces by design (iteration caps, failed fits)."""

    def __enter__(self) -> Any:
        r = super().__enter__()
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.filterwarnings("ignore", message=".*One or more of the test scores are non-finite.*")
        return r


def _timed_fit(est: Any, X: np.ndarray, y: np.ndarray) -> float:
    t = time.perf_counter()
    with _quiet():
        est.fit(X, y)
    return time.perf_counter() - t


def _halving_cost(c: int, r0: int, rmax: int, per_row: float, alpha: float, cv: int = 3) -> float:
    cost, i, cand = 0.0, 0, c
    while cand >= 1:
        r = min(r0 * 3 ** i, rmax)
        cost += cv * cand * per_row * (r * (cv - 1) / cv) ** alpha
        if cand == 1 or r >= rmax:
            break
        cand, i = math.ceil(cand / 3), i + 1
    return cost


def _plan_search(n: int, n_classes: int, per_row: float, alpha: float, budget: float,
                 min_per_class: int = 10) -> tuple[int, int, int] | None:
    """(candidates, min_resources, max_resources) fitting ``budget`` seconds, or None."""
    r_floor = max(min_per_class * n_classes, 30)
    for c in (27, 18, 9, 6, 3):
        iters = int(math.floor(math.log(c, 3)))
        rmax = n
        while rmax >= 3 * r_floor:
            r0 = max(r_floor, rmax // 3 ** iters)
            if _halving_cost(c, r0, rmax, per_row, alpha) <= budget:
                return c, r0, rmax
            rmax //= 2
    return None


def _grid_size(space: dict[str, Any]) -> int:
    """Number of distinct candidates (a large number when any distribution is continuous)."""
    size = 1
    for v in space.values():
        if not isinstance(v, list):
            return 10**9
        size *= len(v)
    return size


def _oof(est: Any, X: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(fold >= 0)
    pred = np.empty(len(fold), dtype=np.int64)
    for f in np.unique(fold[rows]):
        test = fold == f
        m = clone(est)
        with _quiet():
            m.fit(X[~test], y[~test])
        pred[test] = m.predict(X[test])
    return pred[rows]


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
        _timed_fit(est, X[tr], y[tr])
        acc = float((est.predict(X[te]) == y[te]).mean())
        fast = compile_member(family, est, name == "pca", X[tr])
        lat = _member_latency(fast, fs.Z[idx][te[:50]], fs.reducer)
        out[name] = {"accuracy": acc, "latency_ms": lat}
    keep = (out["pca"]["accuracy"] >= out["raw"]["accuracy"] - PCA_MAX_ACCURACY_DROP
            and out["pca"]["latency_ms"] < out["raw"]["latency_ms"])
    return keep, out


def fit_family(family: str, fs: FeatureSet, *, budget_s: float | None = None, seed: int = 0,
               params: dict[str, Any] | None = None) -> FittedModel:
    """Fit ``family`` on ``fs``: PCA decision, budgeted search (unless ``params`` given),
    out-of-fold validation, final fit on all rows, compile and profile.

    Args:
        family: one of ``FAMILIES``.
        fs: the prepared features (see :func:`prepare_features`).
        budget_s: seconds this family may take (approximate); None uses :func:`default_budget`.
        seed: seeds the folds' subsamples, the search and the estimators.
        params: fixed hyper-parameters; skips the search (used by retraining and tests).
    """
    # One BLAS/OpenMP thread: pool workers already use every core, and OpenBLAS threads that
    # spin against each other made a 1,257-row MLP fit 10x slower (measured: 7 ms per 200x64x128
    # product), the cause of an MLP search once taking 15 s against a 5 s budget.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _fit_family(family, fs, budget_s=budget_s, seed=seed, params=params)


def _fit_family(family: str, fs: FeatureSet, *, budget_s: float | None, seed: int,
                params: dict[str, Any] | None) -> FittedModel:
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
        probe_rows = np.random.default_rng(seed).choice(n, m0, replace=False) if m0 < n else np.arange(n)
        probe_est = make_estimator(family, seed=seed)
        t_probe = _timed_fit(probe_est, X[probe_rows], y[probe_rows])
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
        plan = (_plan_search(n, fs.n_classes, per_row, alpha, remaining, per_class)
                if remaining > 0 else None)
        space = {k: v for k, v in search_space(family, X).items() if k not in fixed}
        if plan is not None:
            c, r0, rmax = plan
            c = min(c, _grid_size(space))
            search = HalvingRandomSearchCV(
                make_estimator(family, fixed, seed=seed), space, n_candidates=c,
                factor=3, resource="n_samples", min_resources=r0, max_resources=rmax,
                cv=StratifiedKFold(3, shuffle=True, random_state=seed), scoring="accuracy",
                refit=False, random_state=seed, n_jobs=1, error_score=np.nan, return_train_score=False)
            with _quiet():
                search.fit(X, y)
            scores = np.asarray(search.cv_results_["mean_test_score"], dtype=float)
            if np.isfinite(scores).any():
                chosen = dict(search.best_params_)
            candidates = c
        chosen = {**fixed, **chosen}
    est = make_estimator(family, chosen, seed=seed)
    val_pred = _oof(est, X, y, fs.fold)
    val_acc = float((val_pred == y[fs.fold >= 0]).mean())
    _timed_fit(est, X, y)
    fast = compile_member(family, est, reduced, X)
    probe = fs.Z[fs.val_rows[:100]] if len(fs.val_rows) else fs.Z[:100]
    latency = _member_latency(fast, probe, fs.reducer)
    return FittedModel(
        family=family, params=chosen, estimator=est, fast=fast, reduced=reduced,
        reduced_dims=fs.reducer.n_components if reduced and fs.reducer else None,
        val_accuracy=val_acc, val_pred=val_pred, fit_seconds=time.perf_counter() - started,
        latency_ms=latency, size_bytes=artifact_bytes(est), candidates=candidates, notes=notes)


def default_budget(n: int, d: int) -> float:
    """Search budget (s) for one family, growing with the data: 5 s + 1 s per 0.5 M values."""
    return float(min(600.0, 5.0 + n * d / 5e5))


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
    _atomic_write(out, lambda f: pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL))
    return FitResult(family=family, artifact=out, summary=model.summary(), val_pred=model.val_pred)


def load_fitted(path: Path) -> FittedModel:
    """Load an artifact written by :func:`fit_family_job` (from this machine's own disk only)."""
    with open(path, "rb") as f:
        model = pickle.load(f)
    if not isinstance(model, FittedModel):
        raise ValueError(f"{path} does not hold a FittedModel")
    return model


def _atomic_write(path: Path, write: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
