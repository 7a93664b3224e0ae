"""Lazy-training plan, budget sizing, PCA decision and the pool job."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification

from mliot_daemon.learn.families import FAMILIES
from mliot_daemon.learn.features import FeatureSet, make_folds, prepare_features
from mliot_daemon.learn.fit import fit_family, fit_family_job, load_fitted
from mliot_daemon.learn.plan import lazy_plan, machine_speed
from mliot_daemon.learn.search import plan_search


def test_plan_is_cheapest_first_with_a_quick_first_model():
    plan = lazy_plan(1500, 64, speed=1.0)
    assert plan[0].quick and plan[0].family == "ridge" and plan[0].rows == 1500
    rest = plan[1:]
    assert sorted(s.family for s in rest) == sorted(FAMILIES)
    assert [s.est_seconds for s in rest] == sorted(s.est_seconds for s in rest)


def test_plan_for_mnist_size_starts_within_two_seconds():
    for speed in (0.2, 1.0):
        first = lazy_plan(60_000, 784, speed=speed)[0]
        assert first.quick and first.est_seconds <= 2.0
        assert first.family in ("ridge", "knn")
    assert machine_speed() > 0


def test_search_is_sized_to_the_budget():
    big = plan_search(10_000, 10, per_row=1e-5, alpha=1.0, budget=60.0)
    small = plan_search(10_000, 10, per_row=1e-5, alpha=1.0, budget=0.3)
    assert big is not None and small is not None
    assert small[0] * small[2] < big[0] * big[2]
    assert plan_search(10_000, 10, per_row=1e-3, alpha=1.0, budget=0.01) is None


def test_folds():
    y = np.repeat(np.arange(3), 50)
    assert set(make_folds(y)) == set(range(5))
    big = np.repeat(np.arange(2), 11_000)
    f = make_folds(big)
    assert set(f) == {-1, 0} and 0.14 < (f == 0).mean() < 0.16


def test_pca_for_high_dimensional_inputs(tmp_path):
    X, y = make_classification(400, 150, n_informative=8, n_redundant=100, n_classes=2,
                               random_state=0)
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    fs = prepare_features(Z, y, 2)
    assert fs.reducer is not None and fs.reducer.n_components <= 64
    m = fit_family("knn", fs, budget_s=2.0)
    assert "pca" in m.notes
    pca, raw = m.notes["pca"]["pca"], m.notes["pca"]["raw"]
    kept = pca["accuracy"] >= raw["accuracy"] - 0.005 and pca["latency_ms"] < raw["latency_ms"]
    assert m.reduced == kept
    assert (m.reduced_dims == fs.reducer.n_components) if kept else m.reduced_dims is None
    # the pool entry point: saved features in, artifact out
    path = fs.save(tmp_path / "fs.npz")
    back = FeatureSet.load(path)
    np.testing.assert_array_equal(back.reducer.components, fs.reducer.components)
    res = fit_family_job("ridge", path, tmp_path, 1.0)
    assert res.summary["family"] == "ridge" and len(res.val_pred) == len(y)
    assert load_fitted(res.artifact).estimator is not None


def test_fixed_params_skip_search():
    X, y = make_classification(200, 5, random_state=0)
    fs = prepare_features(X, y, 2)
    m = fit_family("svm_rbf", fs, params={"C": 3.0})
    assert m.params == {"C": 3.0} and m.candidates == 0
    with pytest.raises(ValueError, match="unknown model family"):
        fit_family("lasso", fs)


def test_group_folds_keep_a_group_together():
    y = np.repeat(np.arange(2), 60)
    groups = np.repeat(np.arange(24), 5)
    fold = make_folds(y, groups=groups)
    for g in range(24):
        assert len(set(fold[groups == g])) == 1
    # a big set's single hold-out takes whole groups too
    big = np.repeat(np.arange(2), 11_000)
    recordings = np.arange(len(big)) // 50
    fold = make_folds(big, groups=recordings)
    assert set(fold) == {-1, 0} and 0.12 < (fold == 0).mean() < 0.18
    for g in np.unique(recordings):
        assert len(set(fold[recordings == g])) == 1
