"""The sensor front end's feature blocks: their shapes, bad input, and the per-app choice."""

from __future__ import annotations

import numpy as np
import pytest

from mliot_daemon.learn.errors import DataError
from mliot_daemon.learn.features import make_folds
from mliot_daemon.learn.frontends import make_front_end
from mliot_daemon.learn.sensor import (
    SENSOR_BANDS,
    SHAPE_POINTS,
    autocorr_features,
    block_features,
    shape_features,
)


def test_block_shapes_long_and_short_windows():
    rng = np.random.default_rng(0)
    long, short = rng.normal(size=(5, 3, 500)), rng.normal(size=(4, 2, 10))
    assert shape_features(long).shape == (5, 3 * SHAPE_POINTS)
    assert shape_features(short).shape == (4, 2 * SHAPE_POINTS)  # interpolated up
    assert autocorr_features(long).shape == (5, 3 * 9)  # lags 1, 2, ..., 256
    assert autocorr_features(short).shape == (4, 2 * 4)  # lags 1, 2, 4, 8
    both = block_features(long, ("stats", "shape", "autocorr"))
    assert both.shape == (5, 3 * (7 + SENSOR_BANDS) + 3 * SHAPE_POINTS + 3 * 9)
    # the bin means of a ramp rise; a flat channel has no autocorrelation, and no NaN
    ramp = np.linspace(0, 1, 320)[None, None, :]
    assert np.all(np.diff(shape_features(ramp)[0]) > 0)
    flat = np.ones((1, 1, 64))
    assert np.all(autocorr_features(flat) == 0)
    assert np.isfinite(block_features(flat, ("stats", "shape", "autocorr"))).all()
    with pytest.raises(ValueError, match="unknown sensor feature blocks"):
        block_features(long, ("stats", "wavelets"))


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 100)), r"\(n, channels, time\)"),
    (np.zeros((4, 2, 1)), "at least 2 time steps"),
    (np.full((4, 2, 50), np.nan), "finite|NaN"),
    ([[[1.0, 2.0]], [[1.0]]], "one shape"),
])
def test_bad_windows_are_refused(bad, message):
    fe = make_front_end("sensor")
    with pytest.raises(DataError, match=message):
        fe.fit_transform(bad)


def _appliances(n: int, seed: int, by: str) -> tuple[np.ndarray, np.ndarray]:
    """500-point single-channel load signals. ``by="shape"``: a ramp up or the same ramp
    reversed (time reversal keeps every Mites statistic, spectrum magnitudes included);
    ``by="level"``: the same wiggle at two power levels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = np.linspace(0, 1, 500)
    if by == "shape":
        base = np.where(y[:, None] == 0, t, t[::-1])
    else:
        base = np.sin(2 * np.pi * 5 * t)[None, :] + 3.0 * y[:, None]
    X = base + rng.normal(scale=0.3, size=(n, 500))
    return X[:, None, :], y


def test_shape_is_kept_only_where_it_pays():
    X, y = _appliances(300, 1, "shape")
    fe = make_front_end("sensor")
    fe.choose(X, y, make_folds(y, 0))
    assert "shape" in fe.blocks
    assert fe.choice["stats"] < 0.7 and max(fe.choice.values()) > 0.95
    Z = fe.fit_transform(X)
    assert Z.shape[1] == block_features(X[:1], fe.blocks).shape[1]
    assert fe.describe()["blocks"] == list(fe.blocks)

    X, y = _appliances(300, 2, "level")
    fe = make_front_end("sensor")
    fe.choose(X, y, make_folds(y, 0))
    assert fe.blocks == ("stats",)  # nothing to gain over the statistics: nothing added
