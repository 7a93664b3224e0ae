"""Windows cut from readings, the activity's debounce, readings' checks and their storage
blocks: pure functions, against plain-Python references."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from actors.server.readings import Debounce, Live, Readings, check_readings
from mliot_daemon.config import ConfigError, parse_app
from mliot_daemon.store import Store
from mliot_daemon.store.readings import decode_block, encode_block, split_block
from mliot_daemon.windows import Series, cut, ends_within, numeric, window_ends

SPEC = parse_app({"name": "k", "data_type": "sensor", "window_s": 2.0, "hop_s": 0.5,
                  "sample_hz": 4.0, "channels": [
                      {"name": "power"}, {"name": "vib", "resample": "mean", "stale_s": 1.0}]})


def reference(t: list[float], v: list[float], grid: float, step: float, mean: bool
              ) -> float | None:
    """One grid point, by the definitions in ``mliot_daemon.windows``."""
    before = [x for x, _ in zip(t, v, strict=True) if x <= grid]
    if not before:
        return None
    if mean:
        inside = [y for x, y in zip(t, v, strict=True) if grid - step < x <= grid]
        if inside:
            return sum(inside) / len(inside)
    return v[len(before) - 1]


def test_windows_resample_each_channel_onto_the_grid() -> None:
    rng = np.random.default_rng(0)
    power_t = np.sort(rng.uniform(0, 20, 15))
    vib_t = np.sort(rng.uniform(0, 20, 300))
    series = [Series(power_t, rng.normal(size=15)), Series(vib_t, rng.normal(size=300))]
    ends = window_ends(0.0, 20.0, SPEC.hop_s)
    assert ends[0] == 0.5 and ends[-1] == 20.0 and np.allclose(np.diff(ends), 0.5)
    w = cut(series, ends, SPEC)
    assert w.X.shape == (len(ends), 2, 8)
    for i, end in enumerate(ends):
        for c, (s, mean) in enumerate(zip(series, (False, True), strict=True)):
            for k in range(8):
                grid = end - 2.0 + (k + 1) * 0.25
                want = reference(list(s.t), list(s.v), grid, 0.25, mean)
                if want is not None:
                    assert w.X[i, c, k] == pytest.approx(want, abs=1e-5)
        # invalid without a reading at or before the first point, or with a gap over stale_s
        first = end - 2.0 + 0.25
        assert w.bad[i, 0] == (power_t[0] > first)
        inside = np.concatenate((vib_t[vib_t <= end - 2.0][-1:], vib_t[(vib_t > end - 2.0)
                                                                      & (vib_t <= end)], [end]))
        stale = vib_t[0] > first or bool(np.any(np.diff(inside) > 1.0))
        assert w.bad[i, 1] == stale, (end, inside)


def test_ranges_hold_the_windows_wholly_inside() -> None:
    ends = ends_within(10.2, 14.0, SPEC)
    assert ends.tolist() == [12.5, 13.0, 13.5, 14.0]
    assert len(ends_within(10.0, 11.9, SPEC)) == 0


def test_debounce_takes_a_new_label_once_it_held_for_the_dwell() -> None:
    d = Debounce(min_dwell_s=1.0, window_s=2.0)
    assert not d.observe(10.0, "idle") and d.as_json() is None  # the first one waits too
    assert d.observe(11.0, "idle") and d.as_json() == {"label": "idle", "since": 9.0}
    assert not d.observe(11.5, "kettle") and not d.observe(12.0, "idle")  # a blip
    assert not d.observe(12.5, "kettle") and not d.observe(13.0, "kettle")
    assert d.observe(13.5, "kettle") and d.as_json() == {"label": "kettle", "since": 11.5}
    assert not d.observe(14.0, "kettle")


def test_readings_are_checked_one_by_one() -> None:
    now = 1_000_000.0
    items = [{"t": now, "channel": "power", "value": 5}, {"t": now, "channel": "x", "value": 1},
             {"t": now, "channel": "vib", "value": "ON"}, {"t": now, "channel": "vib",
                                                          "value": "warm"},
             {"t": now + 1e4, "channel": "vib", "value": 1}, {"channel": "vib", "value": 1},
             {"t": now - 1e6, "channel": "vib", "value": 1}, {"t": True, "channel": "vib",
                                                             "value": 1}]
    r, reasons, errors = check_readings(items, SPEC, now, keep_s=86400.0)
    assert r.channel.tolist() == [0, 1] and r.v.tolist() == [5.0, 1.0]
    assert reasons == {"unknown_channel": 1, "not_numeric": 1, "future": 1,
                       "missing_field": 2, "too_old": 1}
    assert len(errors) == 6 and errors[0].startswith("readings[1]: unknown channel")
    assert [numeric(x) for x in (2, "3.5", "off", True, math.nan, None, [1])] == \
        [2.0, 3.5, 0.0, 1.0, None, None, None]


def test_storage_blocks_round_trip_at_millisecond_precision() -> None:
    rng = np.random.default_rng(1)
    t = 1.7e9 + np.sort(rng.uniform(0, 3600, 1000))
    v = rng.normal(size=1000) * 1000
    t0, t1, data = encode_block(t, v)
    back_t, back_v = decode_block(t0, len(t), data)
    assert np.abs(back_t - t).max() <= 0.0005 and t1 == pytest.approx(t[-1], abs=0.0005)
    assert np.allclose(back_v, v.astype(np.float32))
    assert len(data) < 8 * len(t)
    gap = np.array([0.0, 1.0, 1.0 + 60 * 86400])  # a block's steps are uint32 milliseconds
    assert [len(p[0]) for p in split_block(gap, np.zeros(3))] == [2, 1]


def test_a_stream_app_is_a_sensor_app_with_a_whole_grid() -> None:
    with pytest.raises(ConfigError) as bad:
        parse_app({"name": "k", "data_type": "image", "window_s": 1.0, "sample_hz": 2.5,
                   "channels": [{"name": "a"}, {"name": "a", "resample": "max"}]})
    text = str(bad.value)
    assert "only sensor apps" in text and "duplicate name 'a'" in text
    assert "whole number of grid points" in text and "resample: must be one of" in text
    assert SPEC.shape == (2, 8)


def test_a_late_reading_is_predicted_again_only_within_max_lateness() -> None:
    spec = parse_app({"name": "k", "data_type": "sensor", "window_s": 2.0, "hop_s": 0.5,
                      "sample_hz": 4.0, "max_lateness_s": 5.0, "channels": [{"name": "p"}]})
    live = Live.new(spec)
    live.add(Readings(np.array([100.0]), np.array([0]), np.array([1.0])))
    assert live.closed == 100.0
    now = time.monotonic()
    live.closed = 110.0
    live.closed_at = {108.0: now - 1.0, 108.5: now - 1.0, 109.0: now - 9.0, 110.0: now}
    late = Readings(np.array([107.2, 111.0]), np.array([0, 0]), np.array([2.0, 3.0]))
    assert live.late(late) == 1  # 111.0 is ahead of every closed window
    # 107.2 falls in the windows ending 107.5 to 109.0: those that closed within 5 s
    assert live.dirty == {108.0, 108.5}


async def test_readings_blocks_are_merged_and_pruned(tmp_path: Path) -> None:
    store = Store(tmp_path / "mliot.db")
    await store.open()
    try:
        t0 = time.time() - 3 * 3600
        rng = np.random.default_rng(2)
        for second in range(600):  # a block per second, as MQTT and small batches leave them
            t = t0 + second + np.arange(10) / 10
            await store.add_readings("a", [("p", t, rng.normal(size=10))], None)
        # the newest reading, 70 minutes on: the first ten minutes are COMPACT_AFTER_S behind
        # it, and it stays inside a 2 h retention however long this test takes (< 10 min)
        await store.add_readings("a", [("p", np.array([t0 + 4200.5]), np.zeros(1))], None)
        before = await store.read_series("a", ["p"], t0, t0 + 600)
        assert await store.compact_readings() == 600
        after = await store.read_series("a", ["p"], t0, t0 + 600)
        assert np.array_equal(before[0].t, after[0].t) and np.array_equal(before[0].v,
                                                                          after[0].v)
        n, size = await store.readings_bytes("a")
        assert n == 6001 and size < 6000 * 6
        assert await store.prune_readings(2 * 3600) == 1  # older than the retention: gone
        assert (await store.read_series("a", ["p"], t0, time.time()))[0].t.tolist() == \
            [pytest.approx(t0 + 4200.5, abs=1e-3)]
    finally:
        await store.close()
