"""Two-stage gate: a cheap background-vs-rest classifier in front of the ensemble.

Stage 1 is a ridge classifier on the front end's features (one dot product per row). Its
threshold is chosen on out-of-fold validation scores: the lowest threshold at which at most
``max_foreground_loss`` (default 1 %) of foreground rows would be wrongly answered
"background" — i.e. the highest background recall for that small foreground loss. Rows the gate
calls background get the background label at once (stage 1); all others go to the ensemble
(stage 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import RidgeClassifier

from mliot_daemon.learn.errors import DataError


@dataclass
class Gate:
    """A fitted stage-1 gate: ``is_background(Z)`` -> bool per row."""

    background: int
    w: np.ndarray
    b: float
    threshold: float
    val_precision: float
    val_recall: float
    val_foreground_loss: float

    def scores(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self.w + self.b

    def is_background(self, Z: np.ndarray) -> np.ndarray:
        return self.scores(Z) >= self.threshold

    def report(self) -> dict[str, Any]:
        return {"threshold": round(self.threshold, 6), "precision": round(self.val_precision, 5),
                "recall": round(self.val_recall, 5),
                "foreground_loss": round(self.val_foreground_loss, 5)}


def _ridge(Z: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, float]:
    m = RidgeClassifier(alpha=1.0, class_weight="balanced").fit(Z, t)
    return np.atleast_2d(m.coef_)[0].astype(np.float64), float(np.ravel(m.intercept_)[0])


def fit_gate(Z: np.ndarray, y: np.ndarray, background: int, fold: np.ndarray,
             max_foreground_loss: float = 0.01) -> Gate:
    """Fit the gate for class index ``background``, choosing its threshold out of fold."""
    t = (y == background).astype(int)
    if t.sum() == 0 or t.sum() == len(t):
        raise DataError("the two-stage gate needs both background and other samples")
    rows = np.flatnonzero(fold >= 0)
    scores = np.empty(len(y))
    for f in np.unique(fold[rows]):
        test = fold == f
        w, b = _ridge(Z[~test], t[~test])
        scores[test] = Z[test] @ w + b
    s, tv = scores[rows], t[rows]
    fg = np.sort(s[tv == 0])
    # smallest threshold with at most max_foreground_loss of the foreground at or above it
    allowed = int(np.floor(max_foreground_loss * len(fg)))
    thr = float(np.nextafter(fg[len(fg) - 1 - allowed], np.inf)) if len(fg) else float(s.min())
    called = s >= thr
    tp = int((called & (tv == 1)).sum())
    precision = tp / max(int(called.sum()), 1)
    recall = tp / max(int((tv == 1).sum()), 1)
    loss = float((called & (tv == 0)).sum() / max(int((tv == 0).sum()), 1))
    w, b = _ridge(Z, t)
    return Gate(background=int(background), w=w, b=b, threshold=thr, val_precision=precision,
                val_recall=recall, val_foreground_loss=loss)
