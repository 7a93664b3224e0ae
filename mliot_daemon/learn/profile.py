"""Profiling helpers: single-row latency on this machine and artifact size."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def median_latency_ms(predict_one: Callable[[np.ndarray], Any], rows: np.ndarray,
                      repeats: int = 200, warmup: int = 10) -> float:
    """Median time (ms) of ``predict_one(row[None])`` cycling over ``rows``, in this thread's
    CPU time: single-row prediction is single-threaded CPU work, so on an idle machine this is
    its wall time, and a pool worker measuring while the machine is busy (other fits, other
    processes) is not misled by the wait for a core. The scheduler accounts for load apart."""
    n = len(rows)
    for i in range(min(warmup, repeats)):
        predict_one(rows[i % n:i % n + 1])
    times = np.empty(repeats)
    for i in range(repeats):
        r = rows[i % n:i % n + 1]
        t = time.thread_time()
        predict_one(r)
        times[i] = time.thread_time() - t
    return float(np.median(times) * 1e3)


def latency_percentiles_ms(predict_one: Callable[[np.ndarray], Any], rows: np.ndarray,
                           repeats: int = 2000) -> dict[str, float]:
    """p50 and p99 single-row latency in ms (for benchmarks)."""
    n = len(rows)
    times = np.empty(repeats)
    for i in range(20):
        predict_one(rows[i % n:i % n + 1])
    for i in range(repeats):
        r = rows[i % n:i % n + 1]
        t = time.perf_counter()
        predict_one(r)
        times[i] = time.perf_counter() - t
    return {"p50": float(np.percentile(times, 50) * 1e3), "p99": float(np.percentile(times, 99) * 1e3)}


def artifact_bytes(obj: Any) -> int:
    """Size of ``obj`` pickled, as it would be stored."""
    return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
