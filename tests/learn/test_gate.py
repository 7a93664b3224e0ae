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
    pred, stage = model.predict_two_stage(Xt, model.front_end.transform(Xt))
    assert set(stage) == {1, 2}
    assert (pred[stage == 1] == model.gate.background).all()
    labels = np.array(model.classes)[pred]
    assert (labels == yt).mean() > 0.85
    with pytest.raises(DataError, match="not among the labels"):
        assemble(prep, cands, Policy(), background_class="noise")


def _clips(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """1 s clips at 16 kHz: steady coloured noise or hum (background), or bursts of a tone
    over that noise (two foreground classes, by pitch)."""
    rng = np.random.default_rng(seed)
    t = np.arange(16_000) / 16_000
    X, y = [], []
    for i in range(n):
        kind = ["background", "beep", "boop"][i % 3]
        noise = np.cumsum(rng.normal(size=16_000)) * 1e-3 * rng.uniform(0.2, 2)
        noise = noise - noise.mean() + 0.05 * rng.uniform(0, 1) * np.sin(2 * np.pi * 50 * t)
        if kind != "background":
            f = 700 if kind == "beep" else 1500
            on = (np.sin(2 * np.pi * rng.uniform(2, 4) * t) > 0.3).astype(float)
            noise = noise + 0.3 * on * np.sin(2 * np.pi * f * t + rng.uniform(0, 6))
        X.append(noise.astype(np.float32))
        y.append(kind)
    return X, y


def test_audio_gate_answers_background_before_the_front_end():
    """An audio app's gate reads cheap waveform features of the raw clip: a clip it calls
    background never reaches the log-mel front end, one at a time or in a batch."""
    from actors.server.serving import ServedModel
    from mliot_daemon.learn.pipeline import train

    X, y = _clips(180, 1)
    model = train(X, y, "audio", background_class="background", families=("ridge",),
                  budget_s=1.0, workers=1)
    assert model.gate is not None and model.gate.raw
    served = ServedModel(1, model)
    front_end = model.front_end
    seen: list[int] = []
    transform = front_end.transform
    front_end.transform = lambda samples: (seen.append(len(samples)), transform(samples))[1]
    Xt, yt = _clips(60, 2)
    answers = served.predict(Xt)
    stage1 = [a.stage == 1 for a in answers]
    assert sum(seen) == len(Xt) - sum(stage1)  # the front end saw only what the gate passed
    bg = np.array(yt) == "background"
    assert np.mean(np.array(stage1)[bg]) >= 0.9 and not np.array(stage1)[~bg].any()
    assert all(a.label == "background" and a.confidence == served.gate_confidence
               for a in answers if a.stage == 1)
    assert np.mean([a.label == t for a, t in zip(answers, yt, strict=True)]) >= 0.9
    seen.clear()
    first_bg = next(i for i, s in enumerate(stage1) if s)
    one = served.predict([Xt[first_bg]])
    assert one[0].stage == 1 and seen == []  # one row: no front end either
    # log-mel patches carry no waveform: everything goes to the ensemble
    patches = np.zeros((2, 96, 64))
    assert model.front_end.gate_input(patches) is None
