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
                                  "adaptation", "scale", "placement", "automl", "active"])
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
