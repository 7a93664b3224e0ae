"""A family's search and fits are sized to its budget: MLP epochs and tree counts are capped."""

from __future__ import annotations

from mliot_daemon.learn.fit import MLP_MAX_EPOCHS, MLP_MIN_EPOCHS, SIZE_KNOBS, fit_family
from mliot_daemon.learn.pipeline import prepare


def test_mlp_epochs_are_capped_by_a_tight_budget(digits_split):
    Xtr, _, ytr, _ = digits_split
    prep = prepare(Xtr, ytr, "vector")
    tight = fit_family("mlp", prep.features, budget_s=0.3)
    assert MLP_MIN_EPOCHS <= tight.params["max_iter"] < MLP_MAX_EPOCHS
    assert tight.estimator.max_iter == tight.params["max_iter"]
    fixed = fit_family("mlp", prep.features, params={"max_iter": 7})
    assert fixed.estimator.max_iter == 7 and fixed.candidates == 0


def test_tree_counts_are_capped_by_a_tight_budget(digits_split):
    Xtr, _, ytr, _ = digits_split
    prep = prepare(Xtr, ytr, "vector")
    for family in SIZE_KNOBS:
        m = fit_family(family, prep.features, budget_s=0.3)
        key, floor = SIZE_KNOBS[family]
        assert floor <= m.params[key] < 100 and m.estimator.get_params()[key] == m.params[key]
        assert m.val_accuracy > 0.5


def test_a_retrain_starts_its_search_from_the_previous_best(digits_split):
    """Warm start: with no budget for a search the previous best parameters are used instead
    of the defaults; with a search, they are its first candidate and the rest are drawn near
    them (a list keeps the value and its neighbours, a log range a factor of 4 either side)."""
    import numpy as np

    from mliot_daemon.learn.families import search_space
    from mliot_daemon.learn.search import near

    Xtr, _, ytr, _ = digits_split
    prep = prepare(Xtr, ytr, "vector")
    previous = {"n_neighbors": 13, "weights": "distance"}
    cold = fit_family("knn", prep.features, budget_s=0.0)
    warm = fit_family("knn", prep.features, budget_s=0.0, warm=previous)
    assert cold.params == {} and cold.estimator.n_neighbors == 5
    assert warm.params == previous and warm.estimator.n_neighbors == 13
    assert warm.summary()["warm_start"] == previous and cold.summary()["warm_start"] is None

    searched = fit_family("knn", prep.features, budget_s=5.0, warm=previous)
    assert searched.candidates > 1 and searched.summary()["warm_start"] == previous
    assert searched.params["n_neighbors"] in (9, 13)  # the start and its neighbours only

    space = search_space("svm_rbf", prep.features.Z)
    around = near(space, {"C": 20.0, "gamma": space["gamma"][0]})
    assert around["gamma"] == space["gamma"][:2]
    draws = around["C"].rvs(size=500, random_state=np.random.default_rng(0))
    assert draws.min() >= 5.0 and draws.max() <= 80.0
    # an MLP's layer sizes come back from a manifest as lists
    mlp = fit_family("mlp", prep.features, budget_s=0.0,
                     warm={"hidden_layer_sizes": [64], "alpha": 1e-3})
    assert mlp.estimator.hidden_layer_sizes == (64,) and mlp.estimator.alpha == 1e-3


def test_the_search_never_splits_a_recording(digits_split, monkeypatch):
    """With groups (the recording each window came from), every split of the hyper-parameter
    search keeps a recording's rows on one side, as the validation folds do: split apart,
    overlapping windows reward a model that memorises."""
    import numpy as np

    from mliot_daemon.learn import fit

    Xtr, _, ytr, _ = digits_split
    recording = np.array([f"rec-{i // 6}" for i in range(len(ytr))])
    seen = []
    real = fit.HalvingGridSearchCV.fit

    def spy(self, X, y=None, **kw):
        seen.append((self.cv, X, y, kw.get("groups")))
        return real(self, X, y, **kw)

    monkeypatch.setattr(fit.HalvingGridSearchCV, "fit", spy)
    for groups in (recording, None):
        seen.clear()
        m = fit_family("ridge", prepare(Xtr, ytr, "vector", groups=groups).features,
                       budget_s=5.0)
        assert m.candidates > 1 and len(seen) == 1
        cv, X, y, given = seen[0]
        splits = list(cv.split(X, y, given))
        assert len(splits) == 3
        overlap = [len(set(recording[tr]) & set(recording[te])) for tr, te in splits]
        if groups is None:
            assert given is None and min(overlap) > 0  # rows are independent: any split
        else:
            assert overlap == [0, 0, 0]
