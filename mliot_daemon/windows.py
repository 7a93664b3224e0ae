"""Windows cut from readings: each channel resampled onto a stream app's grid.

A window ends at a multiple of ``hop_s`` (so every daemon and every replay cuts the same
windows) and spans ``window_s`` before it, on the readings' own timestamps. Its grid has
``window_s x sample_hz`` points, each the end of one grid step:

  * ``hold``: the last reading at or before the point (event-driven sensors report changes);
  * ``mean``: the mean of the readings in the step, or the last reading before it when the
    step has none (dense sensors).

A window is invalid on a channel that has no reading at or before its first point, or that
went longer than its ``stale_s`` without a reading anywhere in the window (up to its end).
Everything here is vectorised over windows: a range label cuts thousands at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mliot_daemon.settings import AppSpec

NUMERIC_WORDS = {"on": 1.0, "off": 0.0, "true": 1.0, "false": 0.0}


@dataclass(frozen=True, slots=True)
class Series:
    """One channel's readings in time order."""

    t: np.ndarray  # float64 unix seconds, ascending
    v: np.ndarray  # float64

    @classmethod
    def empty(cls) -> Series:
        return cls(np.empty(0), np.empty(0))


@dataclass(frozen=True, slots=True)
class Cut:
    """Windows of an app: ``X[i]`` is window ``i`` as (channels, points); ``bad[i, c]`` says
    channel ``c`` made it invalid (no reading yet, or stale)."""

    ends: np.ndarray
    X: np.ndarray  # float32 (n, channels, points)
    bad: np.ndarray  # bool (n, channels)

    @property
    def valid(self) -> np.ndarray:
        return ~self.bad.any(axis=1)


def numeric(value: Any) -> float | None:
    """A reading's value as a float: numbers, booleans, numeric text and ON/OFF (as
    Zigbee2MQTT, Tasmota and Home Assistant's statestream publish them); None otherwise."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        f = float(value)
    elif isinstance(value, str):
        word = NUMERIC_WORDS.get(value.strip().lower())
        if word is not None:
            return word
        try:
            f = float(value)
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def window_ends(after: float, upto: float, hop_s: float, limit: int | None = None
                ) -> np.ndarray:
    """The window ends (multiples of ``hop_s``) in ``(after, upto]``; past ``limit`` of them,
    ``limit`` spread evenly over the span (a range of years is never held whole)."""
    first = math.floor(after / hop_s + 1e-9) + 1
    last = math.floor(upto / hop_s + 1e-9)
    if limit is not None and last - first + 1 > limit:
        return np.unique(np.linspace(first, last, limit).round()) * hop_s
    return np.arange(first, last + 1, dtype=np.float64) * hop_s


def ends_within(start: float, end: float, spec: AppSpec, limit: int | None = None
                ) -> np.ndarray:
    """The ends of the windows lying wholly inside ``[start, end]``."""
    return window_ends(start + spec.window_s - spec.hop_s * 1e-6, end, spec.hop_s, limit)


def cut(series: list[Series], ends: np.ndarray, spec: AppSpec) -> Cut:
    """Windows ending at ``ends``, one ``series`` per channel of ``spec`` in its order."""
    n, points = len(ends), spec.window_points
    step = 1.0 / spec.sample_hz
    # grid points: the end of each step, (n, points)
    grid = ends[:, None] - spec.window_s + step * np.arange(1, points + 1)[None, :]
    X = np.zeros((n, len(spec.channels), points), np.float32)
    bad = np.zeros((n, len(spec.channels)), bool)
    for c, (channel, s) in enumerate(zip(spec.channels, series, strict=True)):
        if not len(s.t):
            bad[:, c] = True
            continue
        last = np.searchsorted(s.t, grid, side="right") - 1  # the last reading at or before
        held = s.v[np.maximum(last, 0)]
        if channel.resample == "mean":
            before = np.searchsorted(s.t, grid - step, side="right")
            sums = np.concatenate(([0.0], np.cumsum(s.v)))
            count = last + 1 - before
            means = (sums[last + 1] - sums[before]) / np.maximum(count, 1)
            held = np.where(count > 0, means, held)
        X[:, c, :] = held
        bad[:, c] = last[:, 0] < 0
        if channel.stale_s is not None:
            bad[:, c] |= _stale(s.t, ends, spec.window_s, channel.stale_s)
    return Cut(ends, X, bad)


def _stale(t: np.ndarray, ends: np.ndarray, window_s: float, stale_s: float) -> np.ndarray:
    """Per window: whether a gap longer than ``stale_s`` between readings (or between the last
    reading and the window's end) overlaps it."""
    gap = np.flatnonzero(np.diff(t) > stale_s)  # gap j runs from t[j] to t[j + 1]
    starts, stops = t[gap], t[gap + 1]
    # gaps are disjoint and ordered: those starting before the end, less those over before the
    # window began
    overlapping = np.searchsorted(starts, ends, side="left") - \
        np.searchsorted(stops, ends - window_s, side="right")
    last = np.searchsorted(t, ends, side="right") - 1
    since = ends - t[np.maximum(last, 0)]
    return (overlapping > 0) | (since > stale_s)
