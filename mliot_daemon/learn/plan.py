"""Lazy-training plan: the order in which to fit families so a first model is served early.

The order is cheapest-first by estimated fit time on this machine (``families.FIT_COST`` scaled
by :func:`machine_speed`, a short ridge fit timed once). The first step must be ready within
``first_deadline_s`` (2 s): ridge on all rows when that fits, otherwise KNN on the largest
subsample that does (KNN "fitting" is storing rows; its cost is the search-free validation).
Every later step fits on all rows with the normal search budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from sklearn.linear_model import RidgeClassifier

from mliot_daemon.learn.families import FAMILIES, estimated_fit_seconds

DATA_SECONDS_PER_VALUE = 2e-8


@dataclass(frozen=True)
class PlanStep:
    """Fit ``family`` on ``rows`` rows (a subsample when fewer than the data); ``quick`` means
    default parameters, no search (the first, serve-at-once model)."""

    family: str
    rows: int
    est_seconds: float
    quick: bool = False


@lru_cache(maxsize=1)
def machine_speed() -> float:
    """:func:`measure_speed`, measured once per process."""
    return measure_speed()


def measure_speed(seconds: float = 0.2) -> float:
    """CPU speed relative to the machine the cost table was written on (1.0).

    A short ridge fit, repeated, on one BLAS thread, timed in this thread's CPU time: the
    result describes the processor, not how busy it is now (load is measured separately) nor
    a CPU quota (the monitor scales by the share of a core the daemon may use).
    """
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 64))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    with threadpool_limits(1):
        RidgeClassifier().fit(X, y)  # warm caches and imports
        reps = 0
        start, cpu_start = time.perf_counter(), time.thread_time()
        while time.perf_counter() - start < seconds or reps < 3:
            RidgeClassifier().fit(X, y)
            reps += 1
        cpu = time.thread_time() - cpu_start
    expected = estimated_fit_seconds("ridge", 4000, 64, 1.0) * reps
    return float(np.clip(expected / max(cpu, 1e-6), 0.01, 20.0))


def lazy_plan(n_samples: int, n_features: int, families: tuple[str, ...] = FAMILIES,
              speed: float | None = None, first_deadline_s: float = 2.0) -> list[PlanStep]:
    """Cheapest-first fitting order; the first step is sized to finish within the deadline."""
    sp = machine_speed() if speed is None else speed
    steps = sorted(((estimated_fit_seconds(f, n_samples, n_features, sp), f) for f in families))
    plan: list[PlanStep] = []
    first_family = "ridge" if "ridge" in families else steps[0][1]
    # quick first model: default parameters plus one validation fit on the rows (x 2.5 margin)
    first_cost = 2.5 * estimated_fit_seconds(first_family, n_samples, n_features, sp)
    if first_cost <= first_deadline_s:
        plan.append(PlanStep(first_family, n_samples, first_cost, quick=True))
    else:
        fam = "knn" if "knn" in families else first_family
        # besides the fit: the front end's float64 copy of the rows and the fast predictor's
        # float32 copy (measured on MNIST: ~2e-8 s per value, mostly first-touch page faults)
        per_row = (estimated_fit_seconds(fam, 1000, n_features, sp) / 1000
                   + DATA_SECONDS_PER_VALUE * n_features / sp) * 2.5
        rows = int(min(n_samples, max(100, first_deadline_s / max(per_row, 1e-9))))
        plan.append(PlanStep(fam, rows, per_row * rows, quick=True))
    plan.extend(PlanStep(f, n_samples, est) for est, f in steps)
    return plan
