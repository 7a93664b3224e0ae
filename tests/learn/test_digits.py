"""Acceptance on sklearn digits (70/30 stratified, seed 0): ensembles and the fast predictor."""

from __future__ import annotations

import numpy as np
import pytest

from mliot_daemon.learn.ensemble import LOW_LATENCY_TOLERANCE, Policy
from mliot_daemon.learn.families import FAMILIES
from mliot_daemon.learn.pipeline import assemble


@pytest.fixture(scope="module")
def models(digits_split, digits_fitted):
    Xtr, _, _, _ = digits_split
    prep, cands = digits_fitted
    return {mode: assemble(prep, cands, Policy(mode), X_probe=Xtr[:50])
            for mode in ("best_effort", "low_latency")}


def _right(model, X, y, encode) -> np.ndarray:
    Z = model.front_end.transform(X)
    return model.fast().predict_features(Z) == encode(model.classes, y)


def _test_acc(model, X, y, encode):
    return float(_right(model, X, y, encode).mean())


def test_every_family_fitted_and_profiled(digits_fitted):
    _, cands = digits_fitted
    assert sorted(c.family for c in cands) == sorted(FAMILIES)
    for c in cands:
        assert 0.8 < c.val_accuracy <= 1.0
        assert c.fit_seconds > 0 and c.latency_ms > 0 and c.size_bytes > 0


def test_best_effort_accuracy_and_best_member(models, digits_split, encode):
    _, Xte, _, yte = digits_split
    be = models["best_effort"]
    acc = _test_acc(be, Xte, yte, encode)
    Z = be.front_end.transform(Xte)
    best_member = max(float((m.fast.predict(Z) == encode(be.classes, yte)).mean())
                      for m in be.members)
    assert acc >= 0.975
    assert acc >= best_member - 0.005


def test_low_latency_small_and_close(models, digits_split, encode):
    _, Xte, _, yte = digits_split
    be, ll = models["best_effort"], models["low_latency"]
    assert len(ll.members) <= 3
    assert ll.selection.val_accuracy >= be.selection.val_accuracy - LOW_LATENCY_TOLERANCE
    # The rule is on validation accuracy. On the 540 test rows the gap may stray further by
    # the sampling error of a paired difference, sqrt(rows where exactly one is right) / n:
    # a fixed 0.03 failed once in CI (gap 0.033, the budgets timed on a busy machine).
    d = (_right(be, Xte, yte, encode).astype(int) - _right(ll, Xte, yte, encode).astype(int))
    assert d.mean() <= LOW_LATENCY_TOLERANCE + 3 * np.sqrt(np.count_nonzero(d)) / len(d)
    assert ll.selection.latency_ms <= be.selection.latency_ms


def _knn_tie(m, Z, row) -> bool:
    """True when the k-th and (k+1)-th nearest training rows are at the same distance."""
    est = m.estimator
    d = np.sort(((est._fit_X - Z[row]) ** 2).sum(axis=1))
    k = est.n_neighbors
    return bool(np.isclose(d[k - 1], d[k], rtol=1e-9, atol=1e-12))


def test_fast_predictor_agrees_with_reference(digits_fitted, digits_split):
    prep, cands = digits_fitted
    _, Xte, _, _ = digits_split
    # the full 7-member ensemble, whatever the policy would pick
    model = assemble(prep, cands, Policy(latency_ms=1e9))
    from mliot_daemon.learn.ensemble import Selection, member_weight

    model.selection = Selection(list(range(len(cands))),
                                [member_weight(c.val_accuracy, 10) for c in cands], 0, 0, True,
                                [c.family for c in cands])
    model._fast = None
    Z = model.front_end.transform(Xte)
    fast = model.fast().predict_features(Z)
    ref = model.reference_predict_features(Z)
    assert (fast == ref).mean() >= 0.999
    # the served single-row path (fused BLAS product, fused tree walk) on every test row
    single = np.array([model.fast().predict_features(Z[i:i + 1])[0] for i in range(len(Z))])
    assert (single == ref).mean() >= 0.999
    assert (single == fast).all()
    raw = np.array([model.fast().predict(Xte[i:i + 1])[0] for i in range(0, len(Xte), 7)])
    assert (raw == fast[::7]).all()
    for m in cands:
        own = m.fast.predict(Z)
        own1 = np.array([m.fast.predict_one(z) for z in Z])
        sk = m.estimator.predict(Z)
        for row in np.flatnonzero((own != sk) | (own1 != sk)):
            assert m.family == "knn" and _knn_tie(m, Z, row), (m.family, row)


def test_the_served_model_is_trimmed_no_further_than_its_accuracy_floor(models):
    from actors.server.serving import ServedModel

    be = models["best_effort"]
    trims = be.metrics["trim_accuracy"]
    assert len(trims) == len(be.members) and trims[-1] == pytest.approx(be.selection.val_accuracy)
    served = ServedModel(1, be)
    assert served.min_members(0.0) == 1
    floor = max(trims)  # the fewest members whose vote reaches the best trimmed accuracy
    k = served.min_members(floor)
    assert trims[k - 1] >= floor and all(a < floor for a in trims[:k - 1])
    assert served.min_members(1.01) == len(be.members)  # unreachable: never trimmed


def test_served_confidence_is_calibrated_on_test_data(models, digits_split, encode):
    """The served ``confidence`` (the version's Platt map of the vote share, fitted out of
    fold) matches the test accuracy at each confidence to within 3 points on average."""
    from actors.server.serving import ServedModel
    from mliot_daemon.learn.calibration import expected_calibration_error

    _, Xte, _, yte = digits_split
    be = models["best_effort"]
    assert be.calibration is not None
    y = encode(be.classes, yte)
    pred, share, *_ = be.fast().vote(be.front_end.transform(Xte))
    served = ServedModel(1, be).predict(Xte)
    conf = np.array([a.confidence for a in served])
    assert [a.label for a in served] == [be.classes[p] for p in pred]
    ece, table = expected_calibration_error(conf, pred == y)
    assert ece < 0.03, (ece, table)
    assert np.all(np.diff(be.calibration(np.linspace(0, 1, 11))) >= 0)  # more votes, surer
    one = ServedModel(1, be).predict(Xte[:1])[0]
    assert one.confidence == pytest.approx(be.calibration.one(float(share[0])))


def test_calibration_is_saved_with_the_version(models, tmp_path):
    from mliot_daemon.learn.calibration import Calibration
    from mliot_daemon.learn.persist import load_model, save_model

    be = models["best_effort"]
    loaded = load_model(save_model(be, tmp_path / "v1"))
    assert loaded.calibration == be.calibration
    assert Calibration.from_dict({"slope": 1.0, "intercept": "x"}) is None
    assert Calibration.from_dict({"slope": float("nan"), "intercept": 0.0}) is None
    assert Calibration.from_dict(None) is None
