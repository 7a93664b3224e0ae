"""Fast predictor members reproduce scikit-learn/XGBoost labels, binary and multiclass."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification

from mliot_daemon.learn.families import FAMILIES, make_estimator
from mliot_daemon.learn.fast import FastEnsemble, compile_member, single_thread_blas

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_member_matches_library_predict(family, n_classes):
    X, y = make_classification(400, 12, n_informative=6, n_classes=n_classes, random_state=3)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    params = {"n_estimators": 20} if family in ("random_forest", "xgboost") else {}
    est = make_estimator(family, params).fit(X[:300], y[:300])
    fast = compile_member(family, est, False, X[:300])
    Xt = X[300:]
    agree = fast.predict(Xt) == est.predict(Xt)
    assert agree.all(), family
    assert fast.predict(Xt[:1])[0] == est.predict(Xt[:1])[0]


def test_ensemble_vote_and_confidence():
    X, y = make_classification(300, 8, n_informative=5, n_classes=3, random_state=1)
    members = [compile_member(f, make_estimator(f).fit(X, y), False, X) for f in ("ridge", "knn")]
    ens = FastEnsemble(None, members, [1.0, 2.0], ["a", "b", "c"])
    pred, share = ens.vote(X[:20])
    knn_pred = members[1].predict(X[:20])
    np.testing.assert_array_equal(pred, knn_pred)  # the heavier member always wins a 2-way vote
    assert set(np.round(share, 6)) <= {1.0, round(2 / 3, 6)}
    with pytest.raises(ValueError, match="front end"):
        ens.predict(X[:1])
    with pytest.raises(ValueError, match="one weight per member"):
        FastEnsemble(None, members, [1.0], ["a", "b", "c"])


def test_single_thread_blas_returns_a_handle():
    handle = single_thread_blas()
    handle.restore_original_limits()
