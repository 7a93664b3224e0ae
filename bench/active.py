"""Label queries against random and mistake-only labelling: `python -m bench active [--quick]`.

On digits, an MNIST pool of 10,000 (tested on MNIST's 10,000 test images) and the watch
sensor windows (through the sensor front end), labels start at 5 per class and grow in
rounds of half of what is labelled, chosen three ways:

- ``queries``: the daemon's label queries. The served predictor's margin (``FastEnsemble.vote``)
  gives each unlabelled row its doubt (``serving.uncertainty``); rows below ``QUERY_DOUBT``
  are never asked, the rest go through the daemon's ``QueryBook`` (most doubtful first,
  spread over the predicted classes, no near-duplicates), one query per simulated slot;
- ``random``: uniformly among the unlabelled rows;
- ``wrong_only``: uniformly among the rows the model currently gets wrong (a person who only
  reacts to mistakes).

The learner is the same for all three: one random forest of 50 trees, refitted on the labels
so far as the daemon fits a family (its sharpness out of fold) and served as a one-member
version, whose margin comes from its own probabilities (an MLP, tried first, swung by 30
points between rounds on a few dozen labels); the curves compare the choice of labels, not
the models. "Labels needed"
is the first round at which test accuracy reaches 95 % of the accuracy with every pool label
(interpolated between rounds). Target: the queries need at most 1/3 of random's labels.
``--quick``: digits only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actors.server.queries import MAX_OPEN, POOL, Query, QueryBook
from actors.server.serving import QUERY_DOUBT, uncertainty
from bench import datasets
from bench.common import wait_quiet
from mliot_daemon.learn.fast import FastEnsemble
from mliot_daemon.learn.features import prepare_features
from mliot_daemon.learn.fit import fit_family
from mliot_daemon.learn.frontends import encode_labels, make_front_end

START_PER_CLASS = 5
GROWTH = 0.5  # each round adds this share of the labels so far
FAMILY, PARAMS = "random_forest", {"n_estimators": 50}  # steady with few labels, and quick
TARGET_SHARE = 0.95  # of the accuracy with every pool label
STRATEGIES = ("queries", "random", "wrong_only")


def _sets(quick: bool) -> dict[str, tuple[np.ndarray, ...]]:
    """name -> (raw pool, pool features, pool labels, test features, test labels, max labels)."""
    out = {}
    Xtr, Xte, ytr, yte = datasets.digits()
    out["digits"] = _prepared(Xtr, Xte, ytr, yte, "vector", 600)
    if quick:
        return out
    Xtr, Xte, ytr, yte = datasets.mnist()
    pick = np.random.default_rng(0).choice(len(Xtr), 10_000, replace=False)
    out["mnist10k"] = _prepared(Xtr[pick], Xte, ytr[pick], yte, "image", 3000)
    Xtr, Xte, ytr, yte = datasets.watch()
    out["sensor_watch"] = _prepared(Xtr, Xte, ytr, yte, "sensor", 1500)
    return out


def _prepared(Xtr, Xte, ytr, yte, data_type: str, max_labels: int) -> tuple[Any, ...]:
    codes, classes = encode_labels(np.asarray(ytr).astype(str))
    index = {c: i for i, c in enumerate(classes)}
    fe = make_front_end(data_type).fit(Xtr)
    return (np.asarray(Xtr, dtype=np.float64).reshape(len(Xtr), -1), fe.transform(Xtr), codes,
            fe.transform(Xte), np.array([index[str(v)] for v in yte]), len(classes),
            max_labels)


def _fit(Z: np.ndarray, y: np.ndarray, n_classes: int) -> FastEnsemble:
    """The learner, fitted as the daemon fits a family with fixed parameters (out-of-fold
    sharpness, the PCA decision) and served as a one-member version."""
    fs = prepare_features(Z, y, n_classes, seed=0)
    fm = fit_family(FAMILY, fs, params=dict(PARAMS), seed=0)
    return FastEnsemble(None, [fm.fast], [1.0], [str(c) for c in range(n_classes)],
                        fs.reducer if fm.reduced else None, [fm.sharpness])


def _queries(model: Any, raw: np.ndarray, Z: np.ndarray, unlabelled: np.ndarray, k: int
             ) -> list[int]:
    """Up to ``k`` rows chosen as the daemon chooses its label queries."""
    v = model.vote(Z[unlabelled])
    doubt = np.array([uncertainty(float(m), float(a), None)
                      for m, a in zip(v.margin, v.agreement, strict=True)])
    order = [int(i) for i in np.argsort(-doubt, kind="stable") if doubt[i] >= QUERY_DOUBT]
    chosen: list[int] = []
    t = 0.0
    while order and len(chosen) < k:
        # a book per batch: every opened query is answered at once, as a person would
        book = QueryBook(per_hour=3600)
        batch, order = order[:POOL], order[POOL:]
        for i in batch:
            row = unlabelled[i]
            book.offer(Query(str(row), str(row), str(v.label[i]), float(doubt[i]),
                             float(v.margin[i]), [], t, raw[row]))
        for _ in range(MAX_OPEN):
            t += 1.0
            q = book.due(t)
            if q is None or len(chosen) >= k:
                break
            book.opened(q)
            chosen.append(int(q.id))
    return chosen


def _curve(strategy: str, data: tuple[Any, ...], seed: int) -> list[dict[str, float]]:
    raw, Z, y, Zt, yt, K, max_labels = data
    rng = np.random.default_rng(seed)
    labelled = np.concatenate([rng.choice(np.flatnonzero(y == c), START_PER_CLASS,
                                          replace=False) for c in range(K)])
    points = []
    while True:
        model = _fit(Z[labelled], y[labelled], K)
        points.append({"labels": int(len(labelled)),
                       "accuracy": round(float((model.vote(Zt).label == yt).mean()), 5)})
        if len(labelled) >= max_labels:
            return points
        k = max(K, int(GROWTH * len(labelled)))
        unlabelled = np.setdiff1d(np.arange(len(y)), labelled)
        if strategy == "queries":
            new = _queries(model, raw, Z, unlabelled, k)
        elif strategy == "random":
            new = list(rng.choice(unlabelled, min(k, len(unlabelled)), replace=False))
        else:
            wrong = unlabelled[model.vote(Z[unlabelled]).label != y[unlabelled]]
            new = list(rng.choice(wrong, min(k, len(wrong)), replace=False))
        if not new:  # nothing left worth (or possible) to ask
            return points
        labelled = np.concatenate([labelled, np.asarray(new, dtype=labelled.dtype)])


def labels_needed(points: list[dict[str, float]], target: float) -> float | None:
    """Labels at which accuracy first reaches ``target`` (linear between rounds)."""
    prev = None
    for p in points:
        if p["accuracy"] >= target:
            if prev is None:
                return float(p["labels"])
            f = (target - prev["accuracy"]) / (p["accuracy"] - prev["accuracy"])
            return round(prev["labels"] + f * (p["labels"] - prev["labels"]), 1)
        prev = p
    return None


def run(quick: bool) -> dict[str, Any]:
    env = wait_quiet(quick)
    out: dict[str, Any] = {**env, "sets": {}}
    for name, data in _sets(quick).items():
        _, Z, y, Zt, yt, K, _ = data
        full = float((_fit(Z, y, K).vote(Zt).label == yt).mean())
        target = TARGET_SHARE * full
        curves = {s: _curve(s, data, seed=0) for s in STRATEGIES}
        needed = {s: labels_needed(c, target) for s, c in curves.items()}
        q, r = needed["queries"], needed["random"]
        out["sets"][name] = {
            "pool": int(len(y)), "classes": int(K), "full_accuracy": round(full, 5),
            "target_accuracy": round(target, 5), "curves": curves, "labels_needed": needed,
            "queries_over_random": round(q / r, 3) if q and r else None,
            "met": bool(q and r and q <= r / 3)}
    out["targets"] = {"queries_over_random": round(1 / 3, 3), "share_of_full": TARGET_SHARE}
    out["met"] = {n: s["met"] for n, s in out["sets"].items()}
    return out
