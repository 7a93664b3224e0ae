"""Member scores for the soft vote ``argmax_c sum_i w_i p_i(c)``.

Every family gives a score per class (its natural output): decision values for ridge and the
linear SVM, output logits for the MLP (as log ``predict_proba``: the same up to a per-row
constant), scikit-learn's one-vs-rest decision values for the RBF SVM, margins for XGBoost,
class probabilities for the random forest and neighbour vote fractions for KNN. A binary
member's single score ``s`` becomes ``[0, s]``. A member's probabilities are
``softmax(sharpness * scores)``, with the one ``sharpness`` per member that minimises the
log loss on its out-of-fold scores: the members' scales differ by orders of magnitude (a
forest's fractions against an SVM's margins), and a plain sum would let one of them decide.

The fast members compute the same scores (``scores(Z)``); tests hold them to these.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SHARPNESS_RANGE = (1e-3, 1e3)


def as_columns(s: np.ndarray) -> np.ndarray:
    """(rows, K) scores; a binary member's (rows,) or (rows, 1) score ``s`` as ``[0, s]``."""
    s = np.asarray(s, dtype=np.float64)
    if s.ndim == 1 or s.shape[1] == 1:
        s = s.reshape(len(s), 1)
        return np.concatenate([np.zeros_like(s), s], axis=1)
    return s


def reference_scores(family: str, est: Any, X: np.ndarray) -> np.ndarray:
    """The library's own per-class scores of a fitted estimator (see the module docstring)."""
    if family in ("random_forest", "knn"):
        return np.asarray(est.predict_proba(X), dtype=np.float64)
    if family == "mlp":
        return np.log(np.maximum(est.predict_proba(X), 1e-300))
    if family == "xgboost":
        return as_columns(est.predict(X, output_margin=True))
    return as_columns(est.decision_function(X))


def oof_scores(family: str, est: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``reference_scores`` of an estimator fitted on one fold, as (rows, n_classes): a class
    its fold lacked gets the row's lowest score."""
    s = reference_scores(family, est, X)
    seen = np.asarray(est.classes_, dtype=np.intp)
    if len(seen) == n_classes:
        return s
    out = np.repeat(s.min(axis=1, keepdims=True), n_classes, axis=1)
    out[:, seen] = s
    return out


def probabilities(scores: np.ndarray, sharpness: float) -> np.ndarray:
    """Row-wise ``softmax(sharpness * scores)`` of a (rows, K) or (K,) array."""
    s = np.asarray(scores, dtype=np.float64) * sharpness
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


def fit_sharpness(scores: np.ndarray, y: np.ndarray) -> float:
    """The sharpness whose probabilities have the least log loss on ``(scores, y)``, against
    targets smoothed by ``1 / (n + 2)`` (Platt's correction): a member that is right on every
    out-of-fold row would otherwise get the largest sharpness, and every probability 0 or 1
    (a KNN on well-separated data answered a point between two clusters with margin 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(y))
    if not len(y):
        return 1.0
    eps = 1.0 / (len(y) + 2)
    k = scores.shape[1]

    def loss(log_a: float) -> float:
        s = scores * np.exp(log_a)
        top = s.max(axis=1)
        target = (1 - eps) * s[rows, y] + eps / k * s.sum(axis=1)
        return float(np.mean(top + np.log(np.exp(s - top[:, None]).sum(axis=1)) - target))

    from scipy.optimize import minimize_scalar  # fitting only: serving never needs scipy

    lo, hi = np.log(SHARPNESS_RANGE[0]), np.log(SHARPNESS_RANGE[1])
    return float(np.exp(minimize_scalar(loss, bounds=(lo, hi), method="bounded").x))
