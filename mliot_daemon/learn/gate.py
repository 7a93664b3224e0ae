"""Two-stage gate: a cheap background-vs-rest classifier in front of the ensemble.

Stage 1 is a ridge classifier (one dot product per row) on the front end's features, or, when
the front end offers cheaper ones (``FrontEnd.gate_input``: audio's waveform features, see
``waveform``), on those, before the front end runs (``raw``): a background clip then never
pays for its log-mel. Its threshold is chosen on out-of-fold validation scores: the lowest
threshold at which at most ``max_foreground_loss`` of foreground rows would be wrongly
answered "background", i.e. the highest background recall for that small foreground loss.
The default is 0.5 %, half the promised 1 point: at 1 % on validation, audio test clips lost
1.5 % of their foreground (measured, ``python -m bench two_stage``). Rows the gate
calls background get the background label at once (stage 1); all others go to the ensemble
(stage 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

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
    raw: bool = False  # reads FrontEnd.gate_input(samples), not the front end's features
    spread: float = 1.0  # the out-of-fold scores' standard deviation: the distance's unit

    def scores(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self.w + self.b

    def is_background(self, Z: np.ndarray) -> np.ndarray:
        return self.scores(Z) >= self.threshold

    def distance(self, Z: np.ndarray) -> np.ndarray:
        """Each row's score minus the threshold, in ``spread`` units: >= 0 is background."""
        return (self.scores(Z) - self.threshold) / self.spread

    def report(self) -> dict[str, Any]:
        return {"threshold": round(self.threshold, 6), "precision": round(self.val_precision, 5),
                "recall": round(self.val_recall, 5),
                "foreground_loss": round(self.val_foreground_loss, 5)}


def _ridge(Z: np.ndarray, t: np.ndarray, standardize: bool = False) -> tuple[np.ndarray, float]:
    """Weights and bias; with ``standardize`` fitted on standardized columns and folded back,
    so the gate still takes one dot product of the unscaled row."""
    mean, scale = (Z.mean(axis=0), Z.std(axis=0)) if standardize else (0.0, 1.0)
    scale = np.where(scale > 0, scale, 1.0) if standardize else scale
    from sklearn.linear_model import RidgeClassifier  # fitting only: serving never needs it

    m = RidgeClassifier(alpha=1.0, class_weight="balanced").fit((Z - mean) / scale, t)
    w = np.atleast_2d(m.coef_)[0].astype(np.float64) / scale
    return w, float(np.ravel(m.intercept_)[0] - np.sum(mean * w))


def fit_gate(Z: np.ndarray, y: np.ndarray, background: int, fold: np.ndarray,
             max_foreground_loss: float = 0.005, raw: bool = False) -> Gate:
    """Fit the gate for class index ``background``, choosing its threshold out of fold;
    ``raw``: ``Z`` is ``FrontEnd.gate_input``'s (unscaled), not the front end's features."""
    t = (y == background).astype(int)
    if t.sum() == 0 or t.sum() == len(t):
        raise DataError("the two-stage gate needs both background and other samples")
    rows = np.flatnonzero(fold >= 0)
    scores = np.empty(len(y))
    for f in np.unique(fold[rows]):
        test = fold == f
        w, b = _ridge(Z[~test], t[~test], raw)
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
    w, b = _ridge(Z, t, raw)
    return Gate(background=int(background), w=w, b=b, threshold=thr, val_precision=precision,
                val_recall=recall, val_foreground_loss=loss, raw=raw,
                spread=float(np.std(s)) or 1.0)
