"""Drift detection on the stream of user feedback: was each served prediction wrong?

A one-sided Page-Hinkley test whose reference is the error rate the model was expected to have
(1 - its validation accuracy). Confirmations (x = 0) pull the statistic down, corrections
(x = 1) push it up; when it rises ``threshold`` above its minimum, the error rate has gone up
for real, and the change began just after that minimum.
"""

from __future__ import annotations


class PageHinkley:
    """Page-Hinkley test for an increase of a 0/1 error stream's mean."""

    def __init__(self, expected_error: float, delta: float = 0.05, threshold: float = 4.0) -> None:
        self.expected = min(max(expected_error, 0.0), 1.0)
        self.delta = delta
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._sum = 0.0
        self._min = 0.0
        self._min_at = 0  # observations seen when the minimum was reached

    def update(self, wrong: bool) -> bool:
        """Add one observation; True when the error rate has drifted up."""
        self.n += 1
        self._sum += float(wrong) - self.expected - self.delta
        if self._sum < self._min:
            self._min, self._min_at = self._sum, self.n
        return self._sum - self._min > self.threshold

    @property
    def change_started_at(self) -> int:
        """How many observations came before the change (index of its first observation)."""
        return self._min_at
