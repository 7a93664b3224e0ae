"""Benchmark of the learning core: `python -m bench learn [--quick]`.

Reports, on this machine: digits best-effort / low-latency ensembles (test accuracy, members,
served latency and their ratio), the 7-member digits fast predictor (single-row p50/p99,
batched rows/s, agreement with the reference ensemble, and the naive per-member `.predict`
latency for comparison), MNIST 60k/10k best effort (accuracy, first model ready, total fit
time; skipped with --quick), and the sensor (seglearn watch) and audio (espeak-ng spoken
digits) ensembles against their best member. For every best-effort ensemble, the calibration
of the served ``confidence`` on the test rows: expected calibration error (10 equal bins) of
the calibrated confidence and of the raw vote share, and the reliability table behind it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from actors.server.serving import ServedModel
from bench import datasets
from mliot_daemon.learn.calibration import expected_calibration_error
from mliot_daemon.learn.ensemble import Policy, Selection, member_weight
from mliot_daemon.learn.families import make_estimator
from mliot_daemon.learn.fast import compile_member, single_thread_blas
from mliot_daemon.learn.pipeline import assemble, fit_all, prepare
from mliot_daemon.learn.plan import lazy_plan
from mliot_daemon.learn.profile import latency_percentiles_ms
from mliot_daemon.learn.search import default_budget


def _codes(classes: list[str], y: Any) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[str(v)] for v in y])


def _acc(pred: np.ndarray, y: np.ndarray) -> float:
    return round(float((pred == y).mean()), 5)


def _ensemble_report(model, X_test, y_test) -> dict[str, Any]:
    y = _codes(model.classes, y_test)
    Z = model.front_end.transform(X_test)
    Zr = model.reducer(Z) if model.reducer is not None else None
    members = {m.family: _acc(m.fast.predict(Zr if m.reduced else Z), y) for m in model.candidates}
    lat = latency_percentiles_ms(model.fast().predict, np.asarray(X_test[:300]), repeats=2000)
    return {**_calibration(model, X_test, y, Z), "members": model.selection.families,
            "weights": [round(w, 4) for w in model.selection.weights],
            "accuracy": _acc(model.fast().predict_features(Z), y),
            "best_member": max(members, key=members.get),
            "best_member_accuracy": max(members.values()),
            "candidates_accuracy": members, "latency_ms_p50": round(lat["p50"], 4),
            "latency_ms_p99": round(lat["p99"], 4)}


def _calibration(model, X_test, y: np.ndarray, Z: np.ndarray) -> dict[str, Any]:
    """ECE of the served confidence (as the daemon answers: ``ServedModel``) and of the raw
    vote share, on the test rows, with the reliability table of the served one."""
    pred, share, *_ = model.fast().vote(Z)
    served = ServedModel(0, model).predict(X_test)
    conf = np.array([a.confidence for a in served])
    right = pred == y
    ece, table = expected_calibration_error(conf, right)
    raw, _ = expected_calibration_error(share, right)
    return {"ece": round(ece, 5), "ece_raw_vote_share": round(raw, 5), "reliability": table,
            "calibration": model.calibration.as_dict() if model.calibration else None}


def _full_ensemble(prep, cands, soft: bool = False):
    model = assemble(prep, cands, Policy(latency_ms=1e9))
    model.selection = Selection(list(range(len(cands))),
                                [member_weight(c.val_accuracy, len(prep.classes)) for c in cands],
                                0.0, 0.0, True, [c.family for c in cands],
                                [c.sharpness for c in cands], soft)
    model._fast = None
    return model


def digits_part(budget: float) -> dict[str, Any]:
    Xtr, Xte, ytr, yte = datasets.digits()
    prep = prepare(Xtr, ytr, "vector")
    t = time.perf_counter()
    cands = fit_all(prep, budget_s=budget, workers=2)
    fit_s = time.perf_counter() - t
    out: dict[str, Any] = {"fit_seconds_total": round(fit_s, 2)}
    for mode in ("best_effort", "low_latency"):
        out[mode] = _ensemble_report(assemble(prep, cands, Policy(mode), X_probe=Xtr[:50]),
                                     Xte, yte)
    out["low_over_best_latency"] = round(out["low_latency"]["latency_ms_p50"]
                                         / out["best_effort"]["latency_ms_p50"], 3)
    # the 7-member ensemble, hard and soft vote: fast predictor vs the reference
    for key, soft in (("fast_predictor_7", False), ("fast_predictor_7_soft", True)):
        out[key] = _seven(_full_ensemble(prep, cands, soft), Xte, yte)
    return out


def _seven(full, Xte, yte) -> dict[str, Any]:
    """Single-row and batched speed of an all-members ensemble, and its agreement with the
    reference (each member's own ``.predict``, or its own scores for a soft vote)."""
    Z = full.front_end.transform(Xte)
    fast, ref = full.fast().predict_features(Z), full.reference_predict_features(Z)
    single = latency_percentiles_ms(full.fast().predict, Xte, repeats=3000)
    big = np.tile(Xte, (20, 1))
    runs = []
    for _ in range(3):  # best of three: one call of ~0.25 s is at the mercy of the neighbours
        t = time.perf_counter()
        full.fast().predict(big)
        runs.append(time.perf_counter() - t)
    rows_s = len(big) / min(runs)

    def naive(x):
        z = full.front_end.transform(x)
        return [m.estimator.predict(z) for m in full.members]

    naive_lat = latency_percentiles_ms(naive, Xte, repeats=200)
    return {
        "members": full.selection.families, "single_row_ms_p50": round(single["p50"], 4),
        "single_row_ms_p99": round(single["p99"], 4), "batched_rows_per_s": int(rows_s),
        "agreement_with_reference": round(float((fast == ref).mean()), 5),
        "test_accuracy": _acc(fast, _codes(full.classes, yte)),
        "naive_predict_ms_p50": round(naive_lat["p50"], 3),
        "member_latency_ms": {c.family: round(c.latency_ms, 4) for c in full.members}}


def first_model_seconds(X, y, data_type: str) -> dict[str, Any]:
    """Time from raw data to a served first model (the lazy plan's quick step)."""
    t0 = time.perf_counter()
    from mliot_daemon.learn.frontends import encode_labels, make_front_end

    codes, classes = encode_labels(y)
    fe = make_front_end(data_type).fit(X)
    step = lazy_plan(len(X), fe.n_features_)[0]
    rows = np.sort(np.random.default_rng(0).choice(len(X), step.rows, replace=False)) \
        if step.rows < len(X) else np.arange(len(X))
    Z = fe.transform(X[rows])  # the quick model needs only its own rows' features
    est = make_estimator(step.family).fit(Z, codes[rows])
    member = compile_member(step.family, est, False, Z)
    member.predict(Z[:1])
    return {"family": step.family, "rows": int(step.rows),
            "seconds": round(time.perf_counter() - t0, 3)}


def task_part(name: str, loader, data_type: str, budget: float | None) -> dict[str, Any]:
    Xtr, Xte, ytr, yte, *groups = loader()
    t = time.perf_counter()
    prep = prepare(Xtr, ytr, data_type, groups=groups[0] if groups else None)
    cands = fit_all(prep, budget_s=budget, workers=2)
    model = assemble(prep, cands, Policy("best_effort"), X_probe=Xtr[:50])
    total = time.perf_counter() - t
    rep = _ensemble_report(model, Xte, yte)
    n, d = prep.features.Z.shape
    rep.update({"n_train": len(ytr), "n_test": len(yte), "fit_seconds_total": round(total, 1),
                "budget_s_per_family": round(
                    budget if budget is not None else default_budget(n, d), 1),
                "fit_seconds": {c.family: round(c.fit_seconds, 1) for c in cands},
                "reduced_dims": {c.family: c.reduced_dims for c in cands},
                "ensemble_minus_best_member": round(
                    rep["accuracy"] - rep["best_member_accuracy"], 5)})
    return rep


def run(quick: bool) -> dict:
    single_thread_blas()  # serving-process setting; fits run in pool workers
    budget = 2.0 if quick else None
    out: dict[str, Any] = {"digits": digits_part(budget or 5.0)}
    out["sensor_watch"] = task_part("watch", lambda: datasets.watch(with_groups=True), "sensor",
                                    budget)
    out["audio_espeak"] = task_part("audio", datasets.audio, "audio", budget)
    if not quick:
        Xtr, Xte, ytr, yte = datasets.mnist()
        out["mnist_first_model"] = first_model_seconds(Xtr, ytr, "image")
        out["mnist"] = task_part("mnist", datasets.mnist, "image", None)
    return out
