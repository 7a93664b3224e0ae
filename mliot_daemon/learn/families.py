"""The seven model families: estimator factories, search spaces and rough cost models.

Every estimator is single-threaded (``n_jobs=1`` / ``n_jobs=1`` for XGBoost) because the
trainer runs several fits side by side in a process pool, one core each.

Search spaces are deliberately small and bounded so that a fit cannot run away (the trainer
cannot cancel a running child) and so that the fast predictor stays fast: forests are capped
at 100 trees and depth 9, boosted models at 30 rounds of depth <= 4 (the caps issue 4 allows
while the digits ensemble stays >= 0.975, tests/learn/test_digits.py). Measured on digits
(fast predictor, one row): a tree level costs 2-3 us whatever the number of trees (call
overhead), so forest depth 12 -> 10 saved 7 us at the same member test accuracy (0.974), and
9 saves one level more (depth 8 gave 0.969); XGBoost 60 -> 30 rounds saved 4 us for -0.004 member
test accuracy, and its 10-class model has 300 trees, not 600: the widest levels of the walk
and most of the batched cost.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import loguniform
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import RidgeClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC, LinearSVC
from xgboost import XGBClassifier

FAMILIES: tuple[str, ...] = (
    "knn", "ridge", "random_forest", "svm_linear", "svm_rbf", "mlp", "xgboost")

# Relative fit cost per (row * feature) and how it grows with rows; used by the lazy plan and
# the search sizing before anything is measured (ridge = 1).
FIT_COST: dict[str, tuple[float, float]] = {
    "ridge": (1.0, 1.0), "knn": (0.2, 1.0), "svm_linear": (20.0, 1.0),
    "random_forest": (40.0, 1.1), "mlp": (150.0, 1.0), "xgboost": (150.0, 1.0),
    "svm_rbf": (3.0, 1.6),
}


def check_family(family: str) -> None:
    """Raise ValueError for an unknown family name."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")


def make_estimator(family: str, params: dict[str, Any] | None = None, seed: int = 0) -> BaseEstimator:
    """A fresh single-threaded estimator of ``family`` with ``params`` applied."""
    check_family(family)
    est: BaseEstimator
    if family == "knn":
        # brute force: exact and tie behaviour the fast predictor reproduces
        est = KNeighborsClassifier(n_neighbors=5, algorithm="brute", n_jobs=1)
    elif family == "ridge":
        est = RidgeClassifier(alpha=1.0)
    elif family == "random_forest":
        est = RandomForestClassifier(n_estimators=100, max_depth=9, n_jobs=1, random_state=seed)
    elif family == "svm_linear":
        est = LinearSVC(C=0.1, max_iter=3000, random_state=seed)
    elif family == "svm_rbf":
        est = SVC(C=10.0, kernel="rbf", gamma="scale", random_state=seed)
    elif family == "mlp":
        est = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-4, max_iter=200,
                            early_stopping=True, n_iter_no_change=10, random_state=seed)
    else:
        est = XGBClassifier(n_estimators=30, max_depth=4, learning_rate=0.3, subsample=0.9,
                            colsample_bytree=0.8, tree_method="hist", n_jobs=1,
                            random_state=seed, verbosity=0)
    if params:
        est.set_params(**params)
    return est


def search_space(family: str, X: np.ndarray) -> dict[str, Any]:
    """Distributions for ``HalvingRandomSearchCV``; data-aware where the scale matters (gamma)."""
    check_family(family)
    n, d = X.shape
    if family == "knn":
        return {"n_neighbors": [1, 3, 5, 7, 9, 13], "weights": ["uniform", "distance"]}
    if family == "ridge":
        return {"alpha": loguniform(1e-3, 1e3)}
    if family == "random_forest":
        return {"n_estimators": [50, 100], "max_depth": [7, 9],
                "max_features": ["sqrt", 0.2, 0.35], "min_samples_leaf": [1, 2, 4]}
    if family == "svm_linear":
        return {"C": loguniform(1e-3, 3.0)}
    if family == "svm_rbf":
        var = float(X.var()) or 1.0
        scale = 1.0 / (d * var)  # sklearn's gamma="scale"
        return {"C": loguniform(0.5, 100.0), "gamma": list(scale * np.array([0.3, 0.6, 1.0, 2.0]))}
    if family == "mlp":
        return {"hidden_layer_sizes": [(64,), (128,), (256,), (128, 64)],
                "alpha": loguniform(1e-5, 1e-1), "learning_rate_init": [1e-3, 3e-3]}
    return {"n_estimators": [20, 30], "max_depth": [3, 4],
            "learning_rate": [0.2, 0.3, 0.5], "subsample": [0.8, 1.0],
            "colsample_bytree": [0.5, 0.8, 1.0]}


def estimated_fit_seconds(family: str, n: int, d: int, speed: float = 1.0) -> float:
    """Rough fit time of the default estimator; ``speed`` is ``plan.machine_speed()``."""
    per, exponent = FIT_COST[family]
    return per * 2e-8 * d * float(n) ** exponent / speed
