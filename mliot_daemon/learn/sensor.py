"""The sensor front end: (channels, time) windows -> feature blocks, chosen per app.

- ``stats`` (always): per channel min, max, range, mean, sum, std, spectral centroid and
  ``SENSOR_BANDS`` log FFT band energies: the Mites featurization. It keeps levels and
  spectra but drops the waveform's shape: a kettle's ramp and a toaster's step can share
  every one of those numbers.
- ``shape``: each channel resampled to ``SHAPE_POINTS`` bin means: the downsampled series
  itself, which trees read as "high early, low late".
- ``autocorr``: each channel's normalized autocorrelation at lags 1, 2, 4, ... < T: periodic
  structure (a motor's cycle, a gait) without its phase.

Which blocks an app keeps is measured when it trains (:meth:`SensorFrontEnd.choose`): each
candidate set is scored by the out-of-fold accuracy of a ridge classifier and a small random
forest (the better of the two) on the training rows' own folds (group-aware when the windows
have recordings), and a block is added only when it gains at least ``MIN_GAIN``. Measured on
the watch set (seglearn, 7 exercises, split by recording), stats alone stays; on appliance-like
signals whose classes differ by shape, ``shape`` pays (tests/learn/test_sensor.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mliot_daemon.learn.errors import DataError
from mliot_daemon.learn.frontends import FrontEnd, _Standardizer, as_array

SENSOR_BANDS = 8
SHAPE_POINTS = 32
BLOCKS = ("stats", "shape", "autocorr")
CHOICES = (("stats",), ("stats", "shape"), ("stats", "autocorr"), ("stats", "shape", "autocorr"))
MIN_GAIN = 0.005  # out-of-fold accuracy a block must add to be kept
CHOOSE_MAX_ROWS = 1500  # rows the choice is measured on (a subsample above) ...
CHOOSE_FOLDS = 3  # ... in at most this many of their folds: seconds, not minutes


def sensor_features(W: np.ndarray, bands: int = SENSOR_BANDS) -> np.ndarray:
    """Mites-style features of (n, channels, time) windows -> (n, channels * (7 + bands))."""
    mn, mx = W.min(axis=2), W.max(axis=2)
    mean, std, total = W.mean(axis=2), W.std(axis=2), W.sum(axis=2)
    power = np.abs(np.fft.rfft(W - mean[..., None], axis=2)) ** 2
    freqs = np.arange(power.shape[2], dtype=np.float64)
    psum = power.sum(axis=2)
    centroid = np.where(psum > 0, (power * freqs).sum(axis=2) / np.where(psum > 0, psum, 1.0),
                        0.0)
    centroid = centroid / max(power.shape[2] - 1, 1)
    edges = np.linspace(0, power.shape[2], bands + 1).astype(int)
    energies = [np.log1p(power[..., a:max(b, a + 1)].sum(axis=2))
                for a, b in zip(edges[:-1], edges[1:], strict=True)]
    feats = [mn, mx, mx - mn, mean, total, std, centroid, *energies]
    return np.stack(feats, axis=2).reshape(W.shape[0], -1)


def shape_features(W: np.ndarray, points: int = SHAPE_POINTS) -> np.ndarray:
    """Each channel as ``points`` bin means (linear interpolation for shorter windows)."""
    n, c, t = W.shape
    if t >= points:
        edges = np.linspace(0, t, points + 1).astype(int)
        sums = np.add.reduceat(W, edges[:-1], axis=2)
        out = sums / np.diff(edges)
    else:
        grid = np.linspace(0, t - 1, points)
        out = np.stack([np.interp(grid, np.arange(t), row) for row in W.reshape(-1, t)])
    return out.reshape(n, c * points)


def autocorr_features(W: np.ndarray) -> np.ndarray:
    """Normalized autocorrelation of each channel at lags 1, 2, 4, ... below the window length
    (0 for a flat channel)."""
    n, c, t = W.shape
    lags = [2 ** i for i in range(int(np.log2(max(t - 1, 1))) + 1) if 2 ** i < t]
    x = W - W.mean(axis=2, keepdims=True)
    spec = np.fft.rfft(x, n=2 * t, axis=2)
    ac = np.fft.irfft(spec * np.conj(spec), axis=2)[..., :t]
    zero = ac[..., :1]
    ac = np.where(zero > 0, ac / np.where(zero > 0, zero, 1.0), 0.0)
    return ac[..., lags].reshape(n, c * len(lags))


_BLOCK_FEATURES = {"stats": sensor_features, "shape": shape_features,
                   "autocorr": autocorr_features}


def block_features(W: np.ndarray, blocks: tuple[str, ...]) -> np.ndarray:
    """The named blocks of (n, channels, time) windows, side by side."""
    unknown = set(blocks) - set(BLOCKS)
    if unknown:
        raise ValueError(f"unknown sensor feature blocks {sorted(unknown)}")
    return np.hstack([_BLOCK_FEATURES[b](W) for b in blocks])


class SensorFrontEnd(FrontEnd):
    """(n, channels, time) windows -> the chosen feature blocks, standardized."""

    data_type = "sensor"

    def __init__(self) -> None:
        self.blocks: tuple[str, ...] = ("stats",)
        self.choice: dict[str, float] = {}

    def _windows(self, X: Any) -> np.ndarray:
        arr = as_array(X)
        if arr.ndim != 3:
            raise DataError(
                f"sensor samples must form an (n, channels, time) array, got shape {arr.shape}")
        if arr.shape[2] < 2:
            raise DataError("sensor windows need at least 2 time steps")
        return arr

    def _features(self, X: Any) -> np.ndarray:
        # front ends pickled before the blocks were chosen had the statistics only
        return block_features(self._windows(X), getattr(self, "blocks", ("stats",)))

    def choose(self, X: Any, y: np.ndarray, fold: np.ndarray, seed: int = 0) -> None:
        """Keep the feature blocks that pay on these training windows (module docstring)."""
        W = self._windows(X)
        rows = np.flatnonzero(fold >= 0)
        if len(np.unique(fold[rows])) < 2:
            return
        keep = np.arange(len(y))
        if len(keep) > CHOOSE_MAX_ROWS:
            keep = np.sort(np.random.default_rng(seed).choice(len(y), CHOOSE_MAX_ROWS,
                                                              replace=False))
        scores = {"+".join(b): _oof_score(block_features(W[keep], b), y[keep], fold[keep], seed)
                  for b in CHOICES}
        best = ("stats",)
        for blocks in CHOICES[1:]:
            if scores["+".join(blocks)] >= scores["+".join(best)] + MIN_GAIN:
                best = blocks
        self.blocks = best
        self.choice = {k: round(v, 5) for k, v in scores.items()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "blocks": list(getattr(self, "blocks", ("stats",))),
                "block_scores": getattr(self, "choice", {})}


def _oof_score(F: np.ndarray, y: np.ndarray, fold: np.ndarray, seed: int) -> float:
    """The better out-of-fold accuracy of a ridge classifier and a small forest on ``F``."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import RidgeClassifier

    F = _Standardizer().fit(F)(F)
    best = 0.0
    for make in (lambda: RidgeClassifier(alpha=1.0),
                 lambda: RandomForestClassifier(30, max_depth=8, n_jobs=1, random_state=seed)):
        right = total = 0
        for f in np.unique(fold[fold >= 0])[:CHOOSE_FOLDS]:
            test = fold == f
            if len(np.unique(y[~test])) < 2:
                continue
            pred = make().fit(F[~test], y[~test]).predict(F[test])
            right += int((pred == y[test]).sum())
            total += int(test.sum())
        best = max(best, right / total if total else 0.0)
    return best
