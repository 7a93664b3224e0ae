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
