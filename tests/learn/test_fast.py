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
    pred, share, *_ = ens.vote(X[:20])
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


def _fit(family, X, y, **params):
    return make_estimator(family, params).fit(X, y)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_knn_screened_batches_and_single_rows_match(weights):
    # enough training rows that the float32 screen + float64 refinement path is taken
    X, y = make_classification(900, 10, n_informative=6, n_classes=3, random_state=5)
    est = _fit("knn", X[:700], y[:700], n_neighbors=7, weights=weights)
    fast = compile_member("knn", est, False)
    assert fast.screen
    Xt = X[700:]
    np.testing.assert_array_equal(fast.predict(Xt), est.predict(Xt))
    np.testing.assert_array_equal([fast.predict_one(x) for x in Xt], est.predict(Xt))
    # a training row itself: distance 0, sklearn gives the exact match all the weight
    assert fast.predict_one(X[3]) == est.predict(X[3:4])[0]


def test_rbf_far_row_takes_the_safe_path():
    X, y = make_classification(300, 6, n_informative=4, n_classes=3, random_state=2)
    est = _fit("svm_rbf", X, y, gamma=1.0)
    fast = compile_member("svm_rbf", est, False)
    far = np.full((1, 6), 40.0)  # gamma * |z|^2 >> 300: exp would overflow in the fast form
    assert fast.predict_one(far[0]) == est.predict(far)[0]
    np.testing.assert_array_equal(fast.predict(X[:40]), est.predict(X[:40]))


@pytest.mark.parametrize("integer_data", [True, False])
def test_fused_trees_match_members(integer_data):
    """Forest + boosted trees walked together (condition table on repeated split values, plain
    walk otherwise) give each member's own labels, also through a reduced (PCA) member."""
    X, y = make_classification(500, 8, n_informative=5, n_classes=4, random_state=4)
    if integer_data:
        X = np.round(X * 2)
    rf = _fit("random_forest", X[:400], y[:400], n_estimators=15)
    xg = _fit("xgboost", X[:400], y[:400], n_estimators=10)
    from sklearn.decomposition import PCA

    from mliot_daemon.learn.fast import Reducer

    pca = PCA(4).fit(X[:400])
    red = Reducer.from_pca(pca)
    xg_r = _fit("xgboost", red(X[:400]), y[:400], n_estimators=8)
    members = [compile_member("random_forest", rf, False), compile_member("xgboost", xg, False, X),
               compile_member("xgboost", xg_r, True, red(X[:400]))]
    ens = FastEnsemble(None, members, [1.0, 1.5, 0.7], list("abcd"), red)
    assert ens._fused is not None and ens._fused.use_table == integer_data
    Xt = X[400:]
    own = [rf.predict(Xt), xg.predict(Xt), xg_r.predict(red(Xt))]
    for i, x in enumerate(Xt):
        preds = ens._fused.predict_one(np.concatenate([x, ens.reducer.one(x)]).astype(np.float32))
        assert preds == [int(o[i]) for o in own]
    single = np.array([ens.vote(Xt[i:i + 1]).label[0] for i in range(len(Xt))])
    np.testing.assert_array_equal(single, ens.vote(Xt).label)


def test_binary_fused_paths_and_pickle_round_trip():
    import pickle

    X, y = make_classification(400, 10, n_informative=5, n_classes=2, random_state=8)
    fams = ("ridge", "svm_linear", "mlp", "svm_rbf", "knn", "random_forest", "xgboost")
    params = {"random_forest": {"n_estimators": 10}, "xgboost": {"n_estimators": 10}}
    ests = [_fit(f, X[:300], y[:300], **params.get(f, {})) for f in fams]
    members = [compile_member(f, e, False, X[:300]) for f, e in zip(fams, ests, strict=True)]
    ens = FastEnsemble(None, members, [1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6], ["no", "yes"])
    assert ens._dense is not None and ens._fused is not None
    Xt = X[300:]
    batch, share, margin, *_ = ens.vote(Xt)
    single = [ens.vote_one(x) for x in Xt]
    np.testing.assert_array_equal(batch, [v.label for v in single])
    np.testing.assert_allclose(share, [v.share for v in single])
    np.testing.assert_allclose(margin, [v.margin for v in single])
    back = pickle.loads(pickle.dumps(ens))
    np.testing.assert_array_equal(back.vote(Xt).label, batch)
    assert back.vote_one(Xt[0]) == single[0]


def _all_families(X, y, reducer):
    """One compiled member per family on raw features, plus a KNN on the reducer's features."""
    fams = ("ridge", "svm_linear", "mlp", "svm_rbf", "knn", "random_forest", "xgboost")
    params = {"random_forest": {"n_estimators": 10}, "xgboost": {"n_estimators": 10}}
    members = [compile_member(f, _fit(f, X, y, **params.get(f, {})), False, X) for f in fams]
    Xr = reducer(X)
    members.append(compile_member("knn", _fit("knn", Xr, y), True, Xr))
    return members


def test_matrix_first_flag_matches_the_row_hooks():
    X, y = make_classification(300, 8, n_informative=5, n_classes=3, random_state=6)
    from sklearn.decomposition import PCA

    from mliot_daemon.learn.fast import Reducer

    for m in _all_families(X, y, Reducer.from_pca(PCA(4).fit(X))):
        hooks = [callable(getattr(m, name, None)) for name in ("first_rows", "finish_one")]
        assert hooks == [m.matrix_first] * 2, m.family


def test_pickles_naming_the_single_module_classes_still_load():
    """Saved models hold pickles written when the predictor was one module, fast.py: they name
    mliot_daemon.learn.fast._Knn, ._Trees, .FastEnsemble, ... A pickle of today's objects,
    rewritten to those names, loads and votes the same."""
    import pickle

    from sklearn.decomposition import PCA

    import mliot_daemon.learn.fast as fast_pkg
    from mliot_daemon.learn.fast import Reducer

    X, y = make_classification(400, 10, n_informative=5, n_classes=3, random_state=9)
    red = Reducer.from_pca(PCA(4).fit(X[:300]))
    members = _all_families(X[:300], y[:300], red)
    ens = FastEnsemble(None, members, [1.0 + 0.1 * i for i in range(len(members))],
                       ["a", "b", "c"], red)
    old_names = {"LinearMember": "_Linear", "MlpMember": "_Mlp", "RbfSvmMember": "_RbfSvm",
                 "KnnMember": "_Knn", "TreesMember": "_Trees", "FastEnsemble": "FastEnsemble",
                 "Reducer": "Reducer"}
    # protocol 2 names a class as a text line pair ("c<module>\n<name>\n"), so it can be rewritten
    data = pickle.dumps(ens, protocol=2)
    for cls in {type(o) for o in [ens, red, *members]}:
        new_ref = f"c{cls.__module__}\n{cls.__qualname__}\n".encode()
        assert new_ref in data, cls
        data = data.replace(new_ref, f"cmliot_daemon.learn.fast\n{old_names[cls.__name__]}\n"
                            .encode())
    assert b"mliot_daemon.learn.fast." not in data  # only the old, single-module paths are left
    assert b"cmliot_daemon.learn.fast\n_Knn\n" in data

    back = pickle.loads(data)
    assert [type(m) for m in back.members] == [type(m) for m in members]
    assert type(back.members[4]) is fast_pkg._Knn
    Xt = X[300:]
    np.testing.assert_array_equal(back.vote(Xt).label, ens.vote(Xt).label)
    assert [back.vote_one(x) for x in Xt] == [ens.vote_one(x) for x in Xt]
