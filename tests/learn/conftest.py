"""Shared fixtures for the learning-core tests: digits split and one set of fitted candidates."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from mliot_daemon.learn.pipeline import fit_all, prepare

DIGITS_BUDGET_S = 5.0  # 3 s left an MLP 5 epochs on a busy machine (0.79 validation)


@pytest.fixture(scope="session")
def digits_split():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)


@pytest.fixture(scope="session")
def digits_fitted(digits_split):
    """(prepared, candidates) on the digits training split, fitted in a forkserver pool."""
    Xtr, _, ytr, _ = digits_split
    prep = prepare(Xtr, ytr, "vector")
    cands = fit_all(prep, budget_s=DIGITS_BUDGET_S, workers=2)
    return prep, cands


@pytest.fixture(scope="session")
def encode():
    """A function: class indices of labels ``y`` under a prepared model's class order."""

    def _encode(classes, y) -> np.ndarray:
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[str(v)] for v in y])

    return _encode
