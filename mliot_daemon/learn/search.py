"""The time budget of one family's hyper-parameter search: its default, and what it buys.

scikit-learn's successive halving (random candidates, 3-fold CV, resource = rows) has no
clock, so ``fit`` sizes it beforehand: given the cost per row of a
probe fit and the seconds left, :func:`plan_search` simulates the halving rounds
(:func:`_halving_cost`) and picks the largest number of candidates and rows that fits. This
module also holds the two helpers every timed fit uses, :func:`timed_fit` and
:class:`quiet_warnings`, and :func:`near`, the space a warm-started search draws from.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
from scipy.stats import loguniform
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning


def default_budget(n: int, d: int) -> float:
    """Search budget (s) for one family, growing with the data: 5 s + 1 s per 0.5 M values."""
    return float(min(600.0, 5.0 + n * d / 5e5))


class quiet_warnings(warnings.catch_warnings):
    """Silence the warnings a bounded search produces by design (iteration caps, failed fits)."""

    def __enter__(self) -> Any:
        r = super().__enter__()
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.filterwarnings("ignore",
                                message=".*One or more of the test scores are non-finite.*")
        return r


def timed_fit(est: Any, X: np.ndarray, y: np.ndarray) -> float:
    """Fit ``est`` on (X, y) with the search's warnings silenced; the seconds it took."""
    t = time.perf_counter()
    with quiet_warnings():
        est.fit(X, y)
    return time.perf_counter() - t


def _halving_cost(c: int, r0: int, rmax: int, per_row: float, alpha: float, cv: int = 3
                  ) -> float:
    cost, i, cand = 0.0, 0, c
    while cand >= 1:
        r = min(r0 * 3 ** i, rmax)
        cost += cv * cand * per_row * (r * (cv - 1) / cv) ** alpha
        if cand == 1 or r >= rmax:
            break
        cand, i = math.ceil(cand / 3), i + 1
    return cost


def plan_search(n: int, n_classes: int, per_row: float, alpha: float, budget: float,
                min_per_class: int = 10) -> tuple[int, int, int] | None:
    """(candidates, min_resources, max_resources) fitting ``budget`` seconds, or None."""
    r_floor = max(min_per_class * n_classes, 30)
    for c in (27, 18, 9, 6, 3):
        iters = int(math.floor(math.log(c, 3)))
        rmax = n
        while rmax >= 3 * r_floor:
            r0 = max(r_floor, rmax // 3 ** iters)
            if _halving_cost(c, r0, rmax, per_row, alpha) <= budget:
                return c, r0, rmax
            rmax //= 2
    return None


def near(space: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
    """``space`` narrowed around a warm start: a list keeps the start's value and its
    neighbours; a log-uniform range shrinks to a factor of 4 either side of it (inside the
    range). Keys without a start value keep their whole range."""
    out: dict[str, Any] = {}
    for k, v in space.items():
        s = start.get(k)
        if s is None:
            out[k] = v
        elif isinstance(v, list):
            i = next((j for j, x in enumerate(v) if x == s), None)
            out[k] = v if i is None else v[max(i - 1, 0):i + 2]
        elif hasattr(v, "support") and isinstance(s, int | float) and s > 0:
            low, high = v.support()
            out[k] = loguniform(max(low, s / 4), min(high, s * 4)) \
                if max(low, s / 4) < min(high, s * 4) else [s]
        else:
            out[k] = v
    return out


def grid_size(space: dict[str, Any]) -> int:
    """Number of distinct candidates (a large number when any distribution is continuous)."""
    size = 1
    for v in space.values():
        if not isinstance(v, list):
            return 10**9
        size *= len(v)
    return size
