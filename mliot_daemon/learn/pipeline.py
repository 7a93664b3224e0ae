"""End-to-end training: front end -> features -> families (in a pool) -> ensemble -> gate.

:func:`train` is what ``mliot evaluate`` and notebooks call; the trainer actor can call the
same pieces step by step (``prepare``, ``fit_family_job`` per family in its own pool, then
:func:`assemble`) to serve lazily as models finish.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mliot_daemon.learn.calibration import Calibration
from mliot_daemon.learn.ensemble import (
    Policy,
    Selection,
    confusion,
    member_probabilities,
    member_weight,
    select_ensemble,
    trim_accuracies,
    vote_with_share,
)
from mliot_daemon.learn.errors import DataError
from mliot_daemon.learn.families import FAMILIES, check_family, make_estimator
from mliot_daemon.learn.fast import FastEnsemble, compile_member
from mliot_daemon.learn.features import FeatureSet, make_folds, prepare_features
from mliot_daemon.learn.fit import FittedModel, fit_family, fit_family_job, load_fitted
from mliot_daemon.learn.frontends import FrontEnd, encode_labels, make_front_end
from mliot_daemon.learn.gate import Gate, fit_gate
from mliot_daemon.learn.plan import lazy_plan
from mliot_daemon.learn.profile import median_latency_ms
from mliot_daemon.learn.soft import probabilities, reference_scores

Progress = Callable[[int, int, str], None]  # (done, total, family just finished)


@dataclass
class Prepared:
    """A fitted front end, the class names and the training features with folds."""

    front_end: FrontEnd
    classes: list[str]
    features: FeatureSet
    data_hash: str


def data_hash(X: Any, y: Any) -> str:
    """sha256 over the training arrays (order-sensitive), for the manifest."""
    h = hashlib.sha256()
    for a in (X, y):
        arr = np.ascontiguousarray(np.asarray(a) if not isinstance(a, list)
                                   else np.asarray(a, dtype=object))
        if arr.dtype == object:
            for item in arr.ravel():  # clips of any length, or labels given as a list
                h.update(item.encode() if isinstance(item, str) else
                         np.ascontiguousarray(np.asarray(item, dtype=np.float64)).tobytes())
        else:
            h.update(str(arr.shape).encode() + arr.dtype.str.encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def prepare(X: Any, y: Any, data_type: str = "vector", *, sample_rate: int = 16000,
            seed: int = 0, groups: Any = None) -> Prepared:
    """Validate and encode labels, fit the front end, compute features, folds and PCA.

    ``groups`` (one id per sample, e.g. its recording) keeps related samples in one fold.
    """
    codes, classes = encode_labels(y)
    n = len(X) if isinstance(X, Sequence | np.ndarray) else 0
    if n != len(codes):
        raise DataError(f"got {n} samples but {len(codes)} labels")
    g = None if groups is None else np.asarray(groups)
    if g is not None and len(g) != len(codes):
        raise DataError(f"got {len(g)} group ids for {len(codes)} samples")
    fold = make_folds(codes, seed, g)
    front_end = make_front_end(data_type, sample_rate)
    front_end.choose(X, codes, fold, seed)
    Z = front_end.fit_transform(X)
    fs = prepare_features(Z, codes, len(classes), seed, g, fold)
    fs.G = front_end.gate_input(X)
    return Prepared(front_end, classes, fs, data_hash(X, y))


@dataclass
class TrainedModel:
    """A trained app model: front end, fitted candidates, the chosen ensemble and gate."""

    front_end: FrontEnd
    classes: list[str]
    candidates: list[FittedModel]
    selection: Selection
    policy: Policy
    reducer: Any = None
    gate: Gate | None = None
    calibration: Calibration | None = None  # vote share -> probability of being right
    data_hash: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    _fast: FastEnsemble | None = field(default=None, repr=False)

    @property
    def members(self) -> list[FittedModel]:
        return [self.candidates[i] for i in self.selection.members]

    def fast(self) -> FastEnsemble:
        """The served predictor (built once)."""
        if self._fast is None:
            self._fast = FastEnsemble(self.front_end, [m.fast for m in self.members],
                                      self.selection.weights, self.classes, self.reducer,
                                      self.selection.sharpness, self.selection.soft)
        return self._fast

    def reference_predict_features(self, Z: np.ndarray) -> np.ndarray:
        """The slow reference: each member's own ``.predict`` (or, for a soft vote, its own
        scores: ``learn.soft``), then the weighted vote."""
        from mliot_daemon.learn.ensemble import vote

        Zr = self.reducer(Z) if self.reducer is not None else None
        inputs = [Zr if m.reduced else Z for m in self.members]
        preds = np.stack([m.estimator.predict(x) for m, x in zip(self.members, inputs,
                                                                  strict=True)])
        probs = None
        if self.selection.soft:
            probs = np.stack([probabilities(reference_scores(m.family, m.estimator, x), a)
                              for m, x, a in zip(self.members, inputs, self.selection.sharpness,
                                                 strict=True)])
        return vote(preds.astype(np.intp), self.selection.weights, len(self.classes), probs)

    def background(self, X: Any, Z: np.ndarray) -> np.ndarray:
        """Which rows the gate answers (stage 1), for raw samples ``X`` and their front-end
        features ``Z``; none without a gate, or for a waveform gate on non-waveform input."""
        if self.gate is None:
            return np.zeros(len(Z), dtype=bool)
        if not self.gate.raw:
            return self.gate.is_background(Z)
        G = self.front_end.gate_input(X)
        return self.gate.is_background(G) if G is not None else np.zeros(len(Z), dtype=bool)

    def predict_two_stage(self, X: Any, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class indices, stage 1 or 2 per row) for raw samples and their features."""
        pred = self.fast().predict_features(Z)
        bg = self.background(X, Z)
        if self.gate is not None:
            pred = np.where(bg, self.gate.background, pred)
        return pred, np.where(bg, 1, 2)


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))


def fit_all(prep: Prepared, families: Sequence[str] = FAMILIES, *, budget_s: float | None = None,
            seed: int = 0, workers: int = 1, progress: Progress | None = None) -> list[FittedModel]:
    """Fit every family, cheapest first; in a forkserver pool when ``workers > 1``."""
    for f in families:
        check_family(f)
    n, d = prep.features.Z.shape
    order = [s.family for s in lazy_plan(n, d, tuple(families), quick=False)]
    done: list[FittedModel] = []
    if workers <= 1:
        for i, fam in enumerate(order):
            done.append(fit_family(fam, prep.features, budget_s=budget_s, seed=seed))
            if progress:
                progress(i + 1, len(order), fam)
        return done
    with tempfile.TemporaryDirectory(prefix="mliot-fit-") as tmp:
        path = prep.features.save(Path(tmp) / "features.npz")
        with _pool(workers) as pool:
            futures: dict[Future[Any], str] = {
                pool.submit(fit_family_job, fam, path, Path(tmp), budget_s, seed): fam
                for fam in order}
            for i, fut in enumerate(as_completed(futures)):
                res = fut.result()
                done.append(load_fitted(res.artifact))
                if progress:
                    progress(i + 1, len(order), res.family)
    done.sort(key=lambda m: order.index(m.family))
    return done


def front_end_latency_ms(front_end: FrontEnd, X_rows: Any, repeats: int = 100) -> float:
    """Median single-sample front end time on this machine."""
    rows = X_rows[:50] if not isinstance(X_rows, list) else X_rows[:50]
    if isinstance(rows, list):
        times = []
        for i in range(max(repeats * 3 // 5, 1)):
            t = time.perf_counter()
            front_end.transform([rows[i % len(rows)]])
            times.append(time.perf_counter() - t)
        return float(np.median(times) * 1e3)
    return median_latency_ms(front_end.transform, np.asarray(rows), repeats=repeats)


def assemble(prep: Prepared, candidates: list[FittedModel], policy: Policy, *,
             X_probe: Any = None, background_class: str | None = None) -> TrainedModel:
    """Select the ensemble for ``policy``, check its measured latency, fit the gate.

    The estimate (front end + members) is checked by timing the built fast predictor; when the
    measurement exceeds the budget the selection is redone with the budget scaled down by the
    observed ratio (once).
    """
    fs = prep.features
    y_val = fs.y[fs.val_rows]
    fe_ms = front_end_latency_ms(prep.front_end, X_probe) if X_probe is not None else 0.0
    groups = None if fs.groups is None else fs.groups[fs.val_rows]
    sel = select_ensemble(candidates, y_val, fs.n_classes, policy, fe_ms, groups=groups)
    model = TrainedModel(prep.front_end, prep.classes, candidates, sel, policy, fs.reducer,
                         data_hash=prep.data_hash)
    probe = fs.Z[fs.val_rows[:200]]
    measured = median_latency_ms(model.fast().predict_features, probe, repeats=200) + fe_ms
    if sel.within_budget and measured > policy.latency_ms:
        scaled = dataclasses.replace(policy, latency_ms=policy.latency_ms * sel.latency_ms
                                     / measured)
        sel = select_ensemble(candidates, y_val, fs.n_classes, scaled, fe_ms, groups=groups)
        model = TrainedModel(prep.front_end, prep.classes, candidates, sel, policy, fs.reducer,
                             data_hash=prep.data_hash)
        measured = median_latency_ms(model.fast().predict_features, probe, repeats=200) + fe_ms
    won, share = vote_with_share(np.stack([candidates[i].val_pred for i in sel.members]),
                                 sel.weights, fs.n_classes,
                                 member_probabilities(model.members,
                                                      sel.sharpness if sel.soft else None))
    model.calibration = Calibration.fit(share, won == y_val)
    model.metrics = {"val_accuracy": sel.val_accuracy, "estimated_latency_ms": sel.latency_ms,
                     "measured_latency_ms": measured, "front_end_ms": fe_ms,
                     "within_budget": bool(sel.within_budget and measured <= policy.latency_ms),
                     "trim_accuracy": trim_accuracies(candidates, sel, y_val, fs.n_classes),
                     "confusion": confusion(y_val, won, fs.n_classes)}
    if background_class is not None:
        if background_class not in prep.classes:
            raise DataError(f"background class {background_class!r} is not among the labels")
        raw = fs.G is not None  # cheaper features than the front end's: gate before it
        model.gate = fit_gate(fs.G if raw else fs.Z, fs.y, prep.classes.index(background_class),
                              fs.fold, raw=raw)
    return model


QUICK_LATENCY_REPEATS = 30


def fit_quick(family: str, Z: np.ndarray, y: np.ndarray, Z_val: np.ndarray, y_val: np.ndarray,
              n_classes: int, seed: int = 0) -> FittedModel:
    """The quick first model: ``family`` with default parameters fitted once on ``Z``, scored
    by its compiled form on a held-out slice ``Z_val`` (``y_val`` -1: a class it never saw),
    its single-row latency timed briefly. No search, no folds, no refit: it serves until the
    full preparation's models replace it.

    ``y`` must hold every class 0..n_classes-1 (the compiled members answer in that range).
    """
    from threadpoolctl import threadpool_limits

    if len(np.unique(y)) != n_classes:
        raise DataError("the quick model's training rows miss a class")
    started = time.perf_counter()
    with threadpool_limits(limits=1):
        est = make_estimator(family, seed=seed).fit(Z, y)
        fast = compile_member(family, est, False, Z)
        fitted = time.perf_counter()
        val_pred = fast.predict(Z_val) if len(Z_val) else np.empty(0, dtype=np.intp)
        latency = median_latency_ms(fast.predict, Z_val if len(Z_val) else Z,
                                    repeats=QUICK_LATENCY_REPEATS, warmup=3)
    accuracy = float((val_pred == y_val).mean()) if len(y_val) else 0.0
    # the rows and coefficients are the artifact (pickling it to measure cost a copy)
    size = sum(int(v.nbytes) for v in vars(est).values() if isinstance(v, np.ndarray))
    return FittedModel(family=family, params={}, estimator=est, fast=fast, reduced=False,
                       reduced_dims=None, val_accuracy=accuracy, val_pred=val_pred,
                       fit_seconds=fitted - started, latency_ms=latency, size_bytes=size,
                       notes={"rows": len(y), "val_rows": len(y_val),
                              "score_s": round(time.perf_counter() - fitted, 4)})


def quick_model(front_end: FrontEnd, classes: list[str], member: FittedModel, policy: Policy,
                *, front_end_ms: float, data_hash: str = "", gate: Gate | None = None,
                y_val: np.ndarray | None = None) -> TrainedModel:
    """A one-member version of the quick model, without :func:`assemble`'s selection and
    ensemble timing: its latency is the front end's plus the member's, both measured."""
    latency = front_end_ms + member.latency_ms
    within = latency <= policy.latency_ms
    sel = Selection(members=[0], weights=[member_weight(member.val_accuracy, len(classes))],
                    val_accuracy=member.val_accuracy, latency_ms=latency, within_budget=within,
                    families=[member.family])
    model = TrainedModel(front_end, classes, [member], sel, policy, None, gate=gate,
                         data_hash=data_hash)
    model.metrics = {"val_accuracy": member.val_accuracy, "estimated_latency_ms": latency,
                     "measured_latency_ms": latency, "front_end_ms": front_end_ms,
                     "within_budget": within, "quick": dict(member.notes)}
    if y_val is not None and len(y_val):
        model.metrics["confusion"] = confusion(y_val, member.val_pred, len(classes))
        # one member: its share is always 1, so its confidence is its held-out accuracy
        model.calibration = Calibration.fit(np.ones(len(y_val)), member.val_pred == y_val)
    return model


def train(X: Any, y: Any, data_type: str = "vector", policy: Policy | None = None, *,
          sample_rate: int = 16000, background_class: str | None = None,
          families: Sequence[str] = FAMILIES, budget_s: float | None = None, seed: int = 0,
          workers: int | None = None, progress: Progress | None = None,
          groups: Any = None) -> TrainedModel:
    """Train an app model from raw samples: the one-call API (``mliot evaluate`` uses it).

    Args:
        X: raw samples of ``data_type`` (see ``frontends``).
        y: labels (converted to str).
        policy: defaults to ``Policy()`` (best effort, 50 ms, 7 models).
        background_class: enables the two-stage gate.
        families: which families to fit.
        budget_s: search budget per family (None: grows with the data).
        workers: process-pool size; None = number of cores; 1 fits in this process.
        progress: called after each family with (done, total, family).
        groups: one id per sample (e.g. the recording a window was cut from): related samples
            stay in one validation fold, so overlapping windows do not flatter a model.
    """
    policy = policy or Policy()
    prep = prepare(X, y, data_type, sample_rate=sample_rate, seed=seed, groups=groups)
    w = (os.cpu_count() or 1) if workers is None else workers
    cands = fit_all(prep, families, budget_s=budget_s, seed=seed, workers=w, progress=progress)
    probe = X[:50] if not isinstance(X, np.ndarray) else X[:50]
    return assemble(prep, cands, policy, X_probe=probe, background_class=background_class)
