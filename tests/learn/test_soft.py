"""The soft vote: fast members' scores are the library's, the soft ensemble agrees with its
reference, and selection keeps the soft vote only where it measures better."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification

from mliot_daemon.learn.ensemble import Policy, select_ensemble
from mliot_daemon.learn.families import FAMILIES, make_estimator
from mliot_daemon.learn.fast import FastEnsemble, compile_member
from mliot_daemon.learn.soft import fit_sharpness, oof_scores, probabilities, reference_scores

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(n_classes: int, seed: int = 3):
    X, y = make_classification(400, 12, n_informative=6, n_classes=n_classes, random_state=seed)
    return (X - X.mean(axis=0)) / X.std(axis=0), y


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_member_scores_match_the_library(family, n_classes):
    X, y = _data(n_classes)
    params = {"n_estimators": 20} if family in ("random_forest", "xgboost") else {}
    est = make_estimator(family, params).fit(X[:300], y[:300])
    fast = compile_member(family, est, False, X[:300])
    ref = reference_scores(family, est, X[300:])
    got = fast.scores(X[300:])
    assert got.shape == (100, n_classes)
    # the MLP's logits and log predict_proba differ by a per-row constant: compare softmaxes;
    # XGBoost's base margin is measured, not parsed, so allow float32 rounding there
    tol = 1e-4 if family == "xgboost" else 1e-7
    np.testing.assert_allclose(probabilities(got, 1.0), probabilities(ref, 1.0), atol=tol)
    np.testing.assert_allclose(fast.scores(X[300:301]), got[:1], atol=1e-9)


def test_a_fold_without_a_class_scores_it_lowest():
    X, y = _data(4)
    keep = y != 3
    est = make_estimator("random_forest", {"n_estimators": 10}).fit(X[keep], y[keep])
    s = oof_scores("random_forest", est, X[:5], 4)
    assert s.shape == (5, 4)
    assert (s[:, 3] <= s[:, :3].min(axis=1)).all()


def test_sharpness_fits_the_log_loss():
    rng = np.random.default_rng(0)
    logits = 2 * rng.normal(size=(5000, 3))
    p = probabilities(logits, 1.0)
    y = (rng.random((5000, 1)) > p.cumsum(axis=1)).sum(axis=1)  # drawn from softmax(logits)
    # scores that are the true logits scaled by 10: the best sharpness undoes the scale
    a = fit_sharpness(10 * logits, y)
    assert 0.08 < a < 0.12


class _Fitted:
    def __init__(self, family, pred, scores, y, sharpness=1.0, latency_ms=0.01):
        self.family, self.val_pred, self.val_scores = family, pred, scores
        self.val_accuracy = float((pred == y).mean())
        self.sharpness, self.latency_ms = sharpness, latency_ms


def test_selection_votes_soft_only_where_probabilities_carry_more():
    """Three members, each sure where it is right and unsure where it is wrong: their hard vote
    is no better than the best of them (each two-against-one vote goes wrong as often as right),
    their soft vote is."""
    rng = np.random.default_rng(1)
    n, K = 3000, 3
    y = rng.integers(0, K, n)
    cands = []
    for i in range(3):
        right = rng.random(n) < 0.7 - 0.02 * i
        pred = np.where(right, y, (y + rng.integers(1, K, n)) % K)
        scores = np.full((n, K), 0.0)
        scores[np.arange(n), pred] = np.where(right, 4.0, 0.3)  # sure when right
        cands.append(_Fitted(f"m{i}", pred, scores, y))
    sel = select_ensemble(cands, y, K, Policy())
    assert sel.vote == "soft" and len(sel.members) > 1
    assert sel.val_accuracy > max(c.val_accuracy for c in cands) + 0.05
    # the same members without scores (the quick model's case) vote hard
    for c in cands:
        c.val_scores = None
    assert select_ensemble(cands, y, K, Policy()).vote == "hard"


def test_soft_ensemble_agrees_with_its_reference_and_survives_pickle():
    import pickle

    X, y = _data(4, seed=5)
    fams = ("ridge", "knn", "random_forest", "svm_rbf", "mlp", "xgboost")
    ests = [make_estimator(f, {"n_estimators": 20} if f in ("random_forest", "xgboost")
                           else {}).fit(X[:300], y[:300]) for f in fams]
    members = [compile_member(f, e, False, X[:300]) for f, e in zip(fams, ests, strict=True)]
    sharp = [0.5, 3.0, 4.0, 1.0, 1.0, 1.0]
    weights = [1.0, 2.0, 1.0, 3.0, 1.0, 2.0]
    ens = FastEnsemble(None, members, weights, list("abcd"), sharpness=sharp, soft=True)
    ref = sum(w * probabilities(reference_scores(f, e, X[300:]), a)
              for f, e, w, a in zip(fams, ests, weights, sharp, strict=True)) / sum(weights)
    v = ens.vote(X[300:])
    np.testing.assert_array_equal(v.label, ref.argmax(axis=1))
    np.testing.assert_allclose(v.share, ref.max(axis=1), atol=1e-4)
    top2 = np.sort(ref, axis=1)[:, -2:]
    np.testing.assert_allclose(v.margin, top2[:, 1] - top2[:, 0], atol=1e-4)
    np.testing.assert_array_equal(v.agreement, v.share)  # the members' belief in the winner
    one = [ens.vote_one(x) for x in X[300:]]
    np.testing.assert_array_equal([o.label for o in one], v.label)
    np.testing.assert_allclose([o.margin for o in one], v.margin, atol=1e-9)
    np.testing.assert_allclose([o.agreement for o in one], v.agreement, atol=1e-9)
    again = pickle.loads(pickle.dumps(ens))
    np.testing.assert_array_equal(again.vote(X[300:]).label, v.label)
    with pytest.raises(ValueError, match="one sharpness per member"):
        FastEnsemble(None, members, weights, list("abcd"), sharpness=[1.0])


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_one_member_answers_its_own_class_with_the_margin_of_its_probabilities(family,
                                                                               n_classes):
    X, y = _data(n_classes, seed=7)
    params = {"n_estimators": 20} if family in ("random_forest", "xgboost") else {}
    est = make_estimator(family, params).fit(X[:300], y[:300])
    fast = compile_member(family, est, False, X[:300])
    ens = FastEnsemble(None, [fast], [1.0], [str(c) for c in range(n_classes)], sharpness=[2.0])
    v = ens.vote(X[300:])
    np.testing.assert_array_equal(v.label, est.predict(X[300:]))
    probs = probabilities(reference_scores(family, est, X[300:]), 2.0)
    p = np.sort(probs, axis=1)
    # an RBF SVM's one-vs-one vote tie goes to the lowest class: no margin then
    expected = np.where(v.label == probs.argmax(axis=1), p[:, -1] - p[:, -2], 0.0)
    np.testing.assert_allclose(v.margin, expected, atol=1e-4)
    for i in range(5):
        one = ens.vote_one(X[300 + i])
        assert one.label == v.label[i] and one.share == pytest.approx(v.share[i])
        assert one.share == pytest.approx(probs[i, one.label])
        assert one.margin == pytest.approx(v.margin[i], abs=1e-9)


def test_hard_margin_is_the_top_two_vote_shares():
    X, y = _data(4, seed=2)
    fams = ("ridge", "knn", "mlp")
    members = [compile_member(f, make_estimator(f).fit(X[:300], y[:300]), False, X[:300])
               for f in fams]
    ens = FastEnsemble(None, members, [3.0, 2.0, 1.0], list("abcd"))
    v = ens.vote(X[300:])
    own = np.stack([m.predict(X[300:]) for m in members])
    for i in range(100):
        shares = np.bincount(own[:, i], [3.0, 2.0, 1.0], minlength=4) / 6.0
        top2 = np.sort(shares)[-2:]
        assert v.margin[i] == pytest.approx(top2[1] - top2[0])
        assert v.share[i] == pytest.approx(top2[1]) and v.agreement[i] == v.share[i]
        one = ens.vote_one(X[300 + i])
        assert (one.label, one.margin) == (v.label[i], pytest.approx(v.margin[i]))


def test_one_member_margin_with_many_classes_takes_the_numpy_path():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(800, 6)), np.arange(800) % 40  # more classes than SMALL_K
    est = make_estimator("ridge").fit(X, y)
    ens = FastEnsemble(None, [compile_member("ridge", est, False, X)], [1.0],
                       [str(c) for c in range(40)], sharpness=[3.0])
    v = ens.vote(X[:20])
    for i in range(20):
        one = ens.vote_one(X[i])
        assert (one.label, one.runner_up) == (v.label[i], v.runner_up[i])
        assert one.margin == pytest.approx(v.margin[i]) and one.share == pytest.approx(v.share[i])
