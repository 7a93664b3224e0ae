"""Smoke test of the benchmark entry point: CI does not run the benchmarks themselves."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_entry_point_lists_every_name() -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in ("table4", "lazy", "two_stage", "serving", "memory", "adaptation", "scale",
                 "placement", "all"):
        assert name in out.stdout


def test_unknown_name_is_refused() -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "nope"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0


@pytest.mark.parametrize("name", ["table4", "lazy", "two_stage", "serving", "memory",
                                  "adaptation", "scale", "placement", "automl", "active",
                                  "soak"])
def test_benchmark_module_has_run(name: str) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        module = importlib.import_module(f"bench.{name}")
    finally:
        sys.path.remove(str(ROOT))
    assert callable(module.run)


def test_placement_quick_runs() -> None:
    """The placement bench is a simulation of seconds: run it (``--quick``), without writing
    its result file, and check its shape, not its numbers."""
    sys.path.insert(0, str(ROOT))
    try:
        module = importlib.import_module("bench.placement")
    finally:
        sys.path.remove(str(ROOT))
    result = module.run(quick=True)
    fleet = {m["name"] for m in result["fleet"]}
    assert len(fleet) == 5 and sum(m["local"] for m in result["fleet"]) == 1
    assert {a["mode"] for a in result["apps"]} == {"best_effort", "low_latency"}
    for scenario in result["scenarios"]:
        for d in scenario["decisions"]:
            assert d["serving"] is None or d["serving"] in fleet
            if d["serving"] is None or d["members"] < d["n_members"]:
                assert d["reason"]  # a refusal or a trim always says why


def test_soak_histograms_give_percentiles_and_frames_parse() -> None:
    """The soak's clients keep latencies as histograms (fixed memory over hours) and parse
    server frames themselves: both checked on known input, not against a daemon."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    try:
        from bench import soak_clients
    finally:
        sys.path.remove(str(ROOT))
    recorder = soak_clients.Recorder(t0=0.0, window_s=10.0)
    for i in range(1, 1001):  # 1..1000 µs, answered in the first window
        recorder.add(1.0, i * 1e-6)
    recorder.add(15.0, 0.5)  # the second window
    recorder.flush()
    first = recorder.windows[0]
    assert abs(soak_clients.percentile(first, 0.5) - 500e-6) / 500e-6 < 0.03
    assert abs(soak_clients.percentile(first, 0.99) - 990e-6) / 990e-6 < 0.03
    assert recorder.windows[1].sum() == 1 and recorder.max_s == 0.5
    assert soak_clients.percentile(np.zeros_like(first), 0.99) == 0.0
    buf = bytearray(bytes([0x81, 3]) + b"abc" + bytes([0x89, 126]) + (300).to_bytes(2, "big")
                    + b"p" * 300 + bytes([0x81, 5]) + b"ab")  # the last frame is incomplete
    assert soak_clients.server_frames(buf) == [(1, b"abc"), (9, b"p" * 300)]
    assert bytes(buf) == bytes([0x81, 5]) + b"ab"


def test_serving_ab_cost_is_slower_above_one_and_refuses_fewer_than_three_runs() -> None:
    """The A/B's cost reads the same way for latencies and rates (above 1: the change made it
    slower), and one or two runs are refused: on a shared machine they say nothing."""
    sys.path.insert(0, str(ROOT))
    try:
        ab = importlib.import_module("bench.serving_ab")
    finally:
        sys.path.remove(str(ROOT))
    before = {"http_p50": 0.2, "ws_p50": 0.1, "http_p99": 1.0, "ws_p99": 1.0,
              "ws_pipelined_per_s": 10000, "http_throughput_per_s": 2000}
    after = {**before, "http_p50": 0.21, "ws_pipelined_per_s": 8000}
    c = ab.cost(before, after)
    assert c["http_p50"] == 1.05 and c["ws_pipelined_per_s"] == 1.25 and c["ws_p50"] == 1.0
    out = subprocess.run([sys.executable, "-m", "bench.serving_ab", ".", ".", "--runs", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "at least 3" in out.stderr


def test_serving_ab_pools_the_runs_of_one_comparison() -> None:
    """Two A/Bs of the same trees become one: every run kept, the verdict on the median over
    all of them; results of different trees are refused."""
    sys.path.insert(0, str(ROOT))
    try:
        from bench import serving_ab
    finally:
        sys.path.remove(str(ROOT))

    def result(costs: list[float], commit: str = "abc") -> dict[str, object]:
        side = {"tree": "/t", "commit": commit, "subject": "s", "changed": []}
        runs = [{app: {k: c for k in ("http_p50", "ws_p50")} for app in serving_ab.APPS}
                for c in costs]
        return {"name": "serving_ab", "runs": len(costs), "members": {}, "before": side,
                "after": side, "pairs": [{}] * len(costs), "costs": runs, "wall_s": 1.0}

    pooled = serving_ab.pool([result([1.2, 1.1, 1.0]), result([1.0, 1.0, 1.0, 0.9])])
    assert pooled["runs"] == 7 and pooled["pooled"] == [3, 4] and pooled["wall_s"] == 2.0
    assert pooled["median_cost"]["digits7"]["ws_p50"] == 1.0 and pooled["met"]
    assert not serving_ab.pool([result([1.2, 1.1, 1.0])])["met"]  # alone: median 1.1
    with pytest.raises(SystemExit, match="different trees"):
        serving_ab.pool([result([1.0] * 3), result([1.0] * 3, commit="def")])
