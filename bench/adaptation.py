"""Adaptation: accuracy against the number of corrections after injected drift.

The drift is produced as in tests/integration/test_adaptation.py: three sensor states with 8
channels; after the drift either the labels of two states are swapped (``swap``) or every
channel's gain and offset change (``gain``, a re-mounted sensor). Per drift kind, a real daemon
(``training.workers`` = 1) trains two identical apps on 150 samples per class: ``*_adapt``
gets corrective feedback, ``*_static`` gets the same prediction requests and no feedback
(without adaptation). Then drifted samples stream in: each is predicted by both apps; the
adapt app gets a correction when wrong (at most 50 per class, as in the test) and a
confirmation when right. After 1, 2, ... 6, 8, 10, 12, 15, 20, 25, ... corrections the client
waits until the trainer is idle and measures both apps' accuracy on a fixed drifted check set
(180 samples): the accuracy once the daemon has acted on that many corrections.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np

from bench.common import request, training, wait_quiet
from bench.daemon_proc import running_daemon

CLASSES = np.array(["a", "b", "c"])
CENTERS = np.random.default_rng(7).normal(scale=3.0, size=(3, 8))
_drift = np.random.default_rng(103)
GAIN, OFFSET = _drift.uniform(0.2, 2.5, 8), _drift.normal(scale=4.0, size=8)
# corrections after which the accuracy is measured: dense early, where adaptation happens
CHECKPOINTS = {*range(0, 7), 8, 10, 12, 15, *range(20, 51, 5), *range(60, 151, 10)}


def world(n_per_class: int, seed: int, drift: str | None = None) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    X = CENTERS[y] + rng.normal(size=(len(y), 8))
    labels = CLASSES[y]
    if drift == "swap":
        labels = np.where(labels == "a", "b", np.where(labels == "b", "a", labels))
    elif drift == "gain":
        X = X * GAIN + OFFSET
    order = rng.permutation(len(y))
    return X[order], [str(v) for v in labels[order]]


def accuracy(url: str, app: str, X: np.ndarray, y: list[str]) -> tuple[float, int]:
    status, body = request(url, "POST", f"/v1/apps/{app}/predict", {"instances": X.tolist()})
    assert status == 200, body
    preds = body["predictions"]
    return (round(float(np.mean([p["label"] == t for p, t in zip(preds, y, strict=True)])), 4),
            max(p["model_version"] for p in preds))


def wait_idle(url: str, apps: list[str], timeout: float = 600) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not any(training(url, a) for a in apps):
            time.sleep(1.0)
            if not any(training(url, a) for a in apps):
                return time.monotonic() - start
        time.sleep(0.3)
    raise TimeoutError("trainer did not settle")


def one_drift(url: str, drift: str, n_stream: int) -> dict[str, Any]:
    apps = [f"{drift}_adapt", f"{drift}_static"]
    X, y = world(150, seed=1)
    body = {"samples": [{"features": x.tolist(), "label": t} for x, t in zip(X, y, strict=True)]}
    for app in apps:
        assert request(url, "PUT", f"/v1/apps/{app}", {"data_type": "vector"})[0] == 201
        assert request(url, "POST", f"/v1/apps/{app}/samples", body)[0] == 200
    deadline = time.monotonic() + 600
    while any(request(url, "GET", f"/v1/apps/{a}")[1]["model_version"] is None for a in apps):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    wait_idle(url, apps)
    X_test, y_test = world(60, seed=2)
    before = accuracy(url, apps[0], X_test, y_test)[0]
    X_new, y_new = world(n_stream, seed=3, drift=drift)
    X_check, y_check = world(60, seed=4, drift=drift)
    curve = []

    def point(k: int) -> None:
        waited = wait_idle(url, apps)
        a, va = accuracy(url, apps[0], X_check, y_check)
        s, vs = accuracy(url, apps[1], X_check, y_check)
        curve.append({"corrections": k, "adapt_accuracy": a, "static_accuracy": s,
                      "adapt_version": va, "static_version": vs, "waited_s": round(waited, 1)})

    point(0)
    corrections: Counter[str] = Counter()
    confirmations = 0
    start = time.monotonic()
    for x, truth in zip(X_new, y_new, strict=True):
        inst = {"instances": [x.tolist()]}
        pred = request(url, "POST", f"/v1/apps/{apps[0]}/predict", inst)[1]["predictions"][0]
        request(url, "POST", f"/v1/apps/{apps[1]}/predict", inst)
        if pred["label"] != truth:
            if corrections[truth] >= 50:
                continue
            corrections[truth] += 1
            assert request(url, "POST", f"/v1/apps/{apps[0]}/feedback",
                           {"prediction_id": pred["id"], "label": truth})[0] == 200
            if sum(corrections.values()) in CHECKPOINTS:
                point(sum(corrections.values()))
        else:
            confirmations += 1
            request(url, "POST", f"/v1/apps/{apps[0]}/feedback",
                    {"prediction_id": pred["id"], "label": truth})
    total = sum(corrections.values())
    if curve[-1]["corrections"] != total:
        point(total)
    decisions = request(url, "GET", f"/v1/apps/{apps[0]}/models")[1]
    return {"accuracy_before_drift": before, "accuracy_after_drift": curve[0]["adapt_accuracy"],
            "final_adapt_accuracy": curve[-1]["adapt_accuracy"],
            "final_static_accuracy": curve[-1]["static_accuracy"],
            "corrections": total, "confirmations": confirmations,
            "stream_seconds": round(time.monotonic() - start, 1),
            "recovered_95pct_at_corrections": next(
                (c["corrections"] for c in curve if c["adapt_accuracy"] >= 0.95 * before), None),
            "curve": curve,
            "versions": [{"version": v["version"], "reason": v.get("reason"),
                          "decision": v.get("decision")} for v in decisions.get("versions", [])]}


def run(quick: bool) -> dict[str, Any]:
    env = wait_quiet(quick)
    result: dict[str, Any] = {**env}
    for drift in ("swap", "gain"):
        with running_daemon("[training]\nworkers = 1\n") as (url, _):
            result[drift] = one_drift(url, drift, 100 if quick else 200)
    result["targets"] = {"recovered_95pct_within_corrections": 150}
    return result
