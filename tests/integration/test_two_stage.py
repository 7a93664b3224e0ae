"""Two-stage serving: for an app with a background class, a gate answers background first."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(600)


def sounds(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Mostly quiet background; now and then a kettle or a tap (distinct spectra)."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["background", "kettle", "tap"], size=n, p=[0.7, 0.15, 0.15])
    centers = {"background": np.zeros(16), "kettle": np.r_[np.full(8, 4.0), np.zeros(8)],
               "tap": np.r_[np.zeros(8), np.full(8, 4.0)]}
    X = np.stack([centers[k] for k in kinds]) + rng.normal(scale=0.7, size=(n, 16))
    return X, [str(k) for k in kinds]


def test_background_is_answered_by_the_gate(daemon_factory: Any) -> None:
    d = daemon_factory(extra="[training]\nworkers = 1\n").start()
    spec = {"data_type": "vector", "classes": ["background", "kettle", "tap"],
            "background_class": "background"}
    assert d.request("PUT", "/v1/apps/kitchen", spec)[0] == 201
    d.teach("kitchen", *sounds(600, seed=1))
    X_test, y_test = sounds(300, seed=2)
    status, body = d.request("POST", "/v1/apps/kitchen/predict", {"instances": X_test.tolist()})
    assert status == 200
    preds = body["predictions"]
    stages = np.array([p["stage"] for p in preds])
    truth = np.array(y_test)
    assert (stages[truth == "background"] == 1).mean() >= 0.8  # the gate takes most background
    assert (stages[truth != "background"] == 2).mean() >= 0.95  # and lets events through
    accuracy = np.mean([p["label"] == t for p, t in zip(preds, y_test, strict=True)])
    assert accuracy >= 0.95
    models = d.request("GET", "/v1/apps/kitchen/models")[1]
    gate = models["versions"][0]["gate"]
    assert gate["background"] == "background" and gate["recall"] > 0.5
