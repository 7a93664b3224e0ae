"""Calibrated confidence: the served ``confidence`` as a probability that the answer is right.

The ensemble's raw confidence is the winner's vote share. A share of 0.6 from three voting
members does not mean 60 % right: how often it is right depends on the members. So each
version maps share to probability with Platt scaling, a logistic regression on the share
(scikit-learn's ``LogisticRegression``), fitted on the out-of-fold validation rows, where
every member's prediction comes from a model that never saw the row. Two numbers, kept in the
manifest (JSON, no pickle), applied with ``math.exp`` for one row.

Why not isotonic regression: measured on digits and the watch set (three split seeds), its
steps fitted the few low-share validation rows (one bin answered 0.02 where test accuracy was
1.0) and its test ECE was no better than the raw share's; the sigmoid's was lower on 5 of 8.

A one-member version has a single share (1.0), so its confidence is its out-of-fold accuracy:
calibrated on average, not per row. Label queries and Home Assistant thresholds read this
number; ``python -m bench learn`` reports its expected calibration error on test data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """``P(right | share) = 1 / (1 + exp(-(slope * share + intercept)))``."""

    slope: float
    intercept: float

    @classmethod
    def fit(cls, share: np.ndarray, correct: np.ndarray) -> Calibration:
        """Fit on the winners' vote shares and whether each answer was right."""
        share = np.asarray(share, dtype=np.float64)
        correct = np.asarray(correct, dtype=bool)
        if len(share) == 0 or len(share) != len(correct):
            raise ValueError("calibration needs one correctness flag per share, and some rows")
        rate = (correct.sum() + 0.5) / (len(correct) + 1.0)  # kept off 0 and 1
        constant = cls(0.0, math.log(rate / (1 - rate)))
        if correct.all() or not correct.any() or np.ptp(share) == 0:
            return constant  # nothing to tell shares apart by: the rate of right answers
        # imported here: a served model reads its calibration without sklearn (issue 20)
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1.0).fit(share[:, None], correct)
        slope = float(lr.coef_[0, 0])
        # a larger share of the vote never means less sure (a negative slope is noise)
        return cls(slope, float(lr.intercept_[0])) if slope > 0 else constant

    def one(self, share: float) -> float:
        """The calibrated confidence of one answer."""
        return 1.0 / (1.0 + math.exp(-(self.slope * share + self.intercept)))

    def __call__(self, share: np.ndarray) -> np.ndarray:
        """The calibrated confidence of many answers."""
        z = self.slope * np.asarray(share, dtype=np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def as_dict(self) -> dict[str, float]:
        return {"slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: Any) -> Calibration | None:
        """From a manifest's ``calibration`` (None when absent: versions saved before it)."""
        if not isinstance(d, dict):
            return None
        slope, intercept = d.get("slope"), d.get("intercept")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (slope, intercept)):
            return None
        return cls(float(slope), float(intercept))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10
                               ) -> tuple[float, list[dict[str, float]]]:
    """ECE over ``bins`` equal-width confidence bins, and the reliability table (per bin:
    mean confidence, accuracy, rows)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        rows = which == b
        if not rows.any():
            continue
        conf, acc = float(confidence[rows].mean()), float(correct[rows].mean())
        ece += rows.mean() * abs(conf - acc)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                      "confidence": round(conf, 5), "accuracy": round(acc, 5),
                      "rows": int(rows.sum())})
    return float(ece), table
