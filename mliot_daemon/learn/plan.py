"""Lazy-training plan: the order in which to fit families so a first model is served early.

The order is cheapest-first by estimated fit time on this machine (``families.FIT_COST`` scaled
by :func:`machine_speed`, a short ridge fit timed once). The first step, :func:`quick_step`, is
the quick first version (``jobs.quick_job``): fitted before anything else on rows of its own,
read from the store, and served within ``FIRST_DEADLINE_S`` of the training data's arrival.
Ridge on all rows when that fits, otherwise KNN (whose "fitting" is storing rows) on the
largest subsample that does. Its cost is more than the fit: every row is read from SQLite and
goes through the front end (``row_s``, measured on a probe by the job) into fresh arrays, and
a KNN version carries its rows as model bytes, which are copied, validated against, saved
(fsync) and loaded by the server (``QUICK_KNN_SECONDS_PER_VALUE``). Every later step fits on
all rows with the normal search budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from sklearn.linear_model import RidgeClassifier

from mliot_daemon.learn.families import FAMILIES, estimated_fit_seconds

FIRST_DEADLINE_S = 2.0  # the first version serves within this of the data's arrival
# Of that, for what does not grow with the quick model's rows: the trainer's hops, the ids and
# the probe, publishing (renames, fsyncs, the event's commit), the server's swap (measured on
# MNIST-60k: ~0.1 s), and a reserve for a busy machine.
QUICK_FIXED_S = 0.5
# Every row of the quick sample becomes fresh float64 arrays (the stacked input, the features):
# first-touch page faults, ~1.8 ns per byte on the bench machine, ~3e-8 s per value.
QUICK_MEMORY_SECONDS_PER_VALUE = 3e-8
# A quick KNN's rows are also its model: per value, the compiled copies (float64 and float32),
# the held-out validation against them, pickling with sha256 and fsync, then the server's
# read, sha256 and unpickle. Measured on MNIST-60k (784-d, ~7,000 rows, fresh pool worker,
# speed 0.8): quick job + server load 1.0-1.4 s, 1.8-2.5e-7 s per value in all, of which the
# probe's row cost and the fresh memory above are ~1e-7; mostly memory and disk, not arithmetic.
QUICK_KNN_SECONDS_PER_VALUE = 1.2e-7
# Reading a row from SQLite and the front end, per value, when not measured (image/vector).
DATA_SECONDS_PER_VALUE = 2e-8
QUICK_MARGIN = 1.5  # estimates x this must fit the deadline (the daemon serves meanwhile)
QUICK_MIN_ROWS = 100


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


def quick_step(n_samples: int, n_features: int, families: tuple[str, ...] = FAMILIES,
               speed: float | None = None, deadline_s: float = FIRST_DEADLINE_S,
               row_s: float | None = None) -> PlanStep:
    """The quick first version: ``family`` with default parameters on ``rows`` rows (read and
    held-out validation rows included), sized so that reading them, the front end, fitting,
    validating, saving and loading fit ``deadline_s`` on this machine.

    ``row_s`` is the measured time to read one row and put it through the front end (a probe
    in the job); without it, ``DATA_SECONDS_PER_VALUE`` per feature.
    """
    sp = machine_speed() if speed is None else speed
    budget = max(deadline_s - QUICK_FIXED_S, 0.1 * deadline_s) / QUICK_MARGIN
    per_data = (DATA_SECONDS_PER_VALUE * n_features / sp if row_s is None else row_s) \
        + QUICK_MEMORY_SECONDS_PER_VALUE * n_features / sp
    first = "ridge" if "ridge" in families else min(
        families, key=lambda f: estimated_fit_seconds(f, n_samples, n_features, sp))
    # ridge: one fit, the validation on the held-out slice, and the rows' data
    ridge_cost = 1.5 * estimated_fit_seconds(first, n_samples, n_features, sp) \
        + per_data * n_samples
    if ridge_cost <= budget or "knn" not in families:
        return PlanStep(first, n_samples, ridge_cost * QUICK_MARGIN, quick=True)
    per_row = (estimated_fit_seconds("knn", 1000, n_features, sp) / 1000 + per_data
               + QUICK_KNN_SECONDS_PER_VALUE * n_features / sp)
    rows = int(min(n_samples, max(QUICK_MIN_ROWS, budget / max(per_row, 1e-12))))
    return PlanStep("knn", rows, per_row * rows * QUICK_MARGIN, quick=True)


def lazy_plan(n_samples: int, n_features: int, families: tuple[str, ...] = FAMILIES,
              speed: float | None = None, first_deadline_s: float = FIRST_DEADLINE_S,
              quick: bool = True) -> list[PlanStep]:
    """Cheapest-first fitting order on all rows, after the quick first step (``quick``)."""
    sp = machine_speed() if speed is None else speed
    steps = sorted((estimated_fit_seconds(f, n_samples, n_features, sp), f) for f in families)
    plan = [quick_step(n_samples, n_features, families, sp, first_deadline_s)] if quick else []
    plan.extend(PlanStep(f, n_samples, est) for est, f in steps)
    return plan
