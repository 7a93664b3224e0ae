"""The two-stage gate: background recall at little foreground loss, and the served path."""

from __future__ import annotations

import numpy as np
import pytest

from mliot_daemon.learn.ensemble import Policy
from mliot_daemon.learn.errors import DataError
from mliot_daemon.learn.features import make_folds
from mliot_daemon.learn.gate import fit_gate
from mliot_daemon.learn.pipeline import assemble, fit_all, prepare


def _data(seed: int, n: int = 900):
    r = np.random.default_rng(seed)
    y = r.choice(["background", "kettle", "tap"], size=n, p=[0.6, 0.2, 0.2])
    centers = {"background": [0, 0, 0, 0], "kettle": [4, 0, 1, 0], "tap": [0, 4, 0, 1]}
    X = np.array([centers[c] for c in y], dtype=float) + r.normal(size=(n, 4))
    return X, y


def test_gate_threshold_and_metrics():
    X, y = _data(0)
    codes = (y != "background").astype(int) + (y == "tap")  # background 0, kettle 1, tap 2
    gate = fit_gate(X, codes, 0, make_folds(codes))
    assert gate.val_foreground_loss <= 0.01 + 1e-9
    assert gate.val_recall > 0.5
    assert gate.val_precision > 0.95
    Xt, yt = _data(1)
    called = gate.is_background(Xt)
    assert (called & (yt != "background")).mean() < 0.03
    assert called[yt == "background"].mean() > 0.5


def test_gate_needs_both_kinds():
    y = np.zeros(20, dtype=int)
    with pytest.raises(DataError, match="background and other"):
        fit_gate(np.zeros((20, 2)), y, 0, np.zeros(20, dtype=int))


def test_two_stage_model():
    X, y = _data(2)
    prep = prepare(X, y)
    cands = fit_all(prep, ("ridge", "knn"), budget_s=1.0)
    model = assemble(prep, cands, Policy(), background_class="background")
    assert model.gate is not None and model.classes[model.gate.background] == "background"
    Xt, yt = _data(3)
    pred, stage = model.predict_two_stage(model.front_end.transform(Xt))
    assert set(stage) == {1, 2}
    assert (pred[stage == 1] == model.gate.background).all()
    labels = np.array(model.classes)[pred]
    assert (labels == yt).mean() > 0.85
    with pytest.raises(DataError, match="not among the labels"):
        assemble(prep, cands, Policy(), background_class="noise")
