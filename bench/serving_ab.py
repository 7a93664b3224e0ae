"""A/B of ``python -m bench serving`` between two source trees: what a serving-path change
costs, measured before against after on the same machine in the same session.

    python -m bench.serving_ab BEFORE_TREE AFTER_TREE [--runs 3]

Each tree is a checkout of one commit (``git worktree add``), perhaps with local changes (a
baseline with one feature taken out); the JSON records each tree's commit and changed files.
Runs alternate in pairs, every other pair in the other order (before, after, after, before,
...), each one ``python -m bench serving`` in
that tree with this environment's Python. The first run trains and saves the digits models
(``BENCH_SERVING_MODELS``, see ``bench/serving.py``) and every later run serves those same
ones: training picks members by measured latency, so two trainings can serve different models
and the A/B would compare them instead of the code. A tree whose ``bench/serving.py`` predates
``BENCH_SERVING_MODELS`` needs this tree's copy.

These machines are shared and noisy, so the verdict is on the median of the per-pair ratios
(after / before), never on one run: within 5 % for the single-row p50s (HTTP and WebSocket)
of both apps. Writes ``bench/results/serving_ab.json``; ``python -m bench.report`` shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.__main__ import RESULTS, machine

APPS = ("digits7", "digits3")
LATENCIES = ("http_p50", "ws_p50", "http_p99", "ws_p99")  # ms: lower is better
RATES = ("ws_pipelined_per_s", "http_throughput_per_s")  # higher is better
JUDGED = ("http_p50", "ws_p50")  # the per-prediction cost the verdict is on
WITHIN = 1.05


def tree_state(tree: Path) -> dict[str, Any]:
    """The commit a tree is at, and the files it changes on top of it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    return {"tree": str(tree), "commit": git("rev-parse", "--short", "HEAD"),
            "subject": git("log", "-1", "--format=%s"),
            "changed": git("diff", "--name-only", "HEAD").split()}


def figures(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The figures compared, per app, from one ``bench serving`` result."""
    out = {}
    for app in APPS:
        a = result[app]
        out[app] = {"http_p50": a["http_ms"]["p50"], "ws_p50": a["ws_ms"]["p50"],
                    "http_p99": a["http_ms"]["p99"], "ws_p99": a["ws_ms"]["p99"],
                    "ws_pipelined_per_s": a["ws_pipelined_per_s"],
                    "http_throughput_per_s": a["http_throughput_per_s"],
                    "predictor_ms": result["predictor"][app]["idle_0.3ms_ms"]}
    return out


def serve_once(tree: Path, models: Path) -> dict[str, Any]:
    """One ``python -m bench serving`` in ``tree``; its result."""
    env = {**os.environ, "BENCH_SERVING_MODELS": str(models)}
    out = tree / "bench" / "results" / "serving.json"
    out.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "bench", "serving"], cwd=tree, env=env, check=True)
    return json.loads(out.read_text())


def cost(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """after / before per figure, as a cost: for rates, before / after (above 1: slower)."""
    ratios = {k: after[k] / before[k] for k in (*LATENCIES, "predictor_ms")}
    ratios.update({k: before[k] / after[k] for k in RATES})
    return {k: round(v, 4) for k, v in ratios.items()}


def run(before: Path, after: Path, runs: int) -> dict[str, Any]:
    started = time.perf_counter()
    trees = {"before": tree_state(before), "after": tree_state(after)}  # before runs touch them
    pairs = []
    with tempfile.TemporaryDirectory(prefix="mliot-ab-") as tmp:
        models = Path(tmp) / "models"
        for i in range(runs):
            pair = {}
            # ABBA: a run can be slower for being second (the last run's heat, its pages), so
            # every other pair runs the after tree first
            sides = [("before", before), ("after", after)]
            for side, tree in sides if i % 2 == 0 else sides[::-1]:
                print(f"pair {i + 1}/{runs}: {side} ({tree})", flush=True)
                pair[side] = {"load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
                              **figures(serve_once(tree, models))}
            pairs.append(pair)
        members = json.loads((models / "members.json").read_text())
        shutil.rmtree(models)
    costs = [{app: cost(p["before"][app], p["after"][app]) for app in APPS} for p in pairs]
    median = {app: {k: round(statistics.median(c[app][k] for c in costs), 4)
                    for k in costs[0][app]} for app in APPS}
    return {"name": "serving_ab", "machine": machine(), "runs": runs, "members": members,
            **trees, "pairs": pairs,
            "costs": costs, "median_cost": median, "within": WITHIN,
            "met": all(median[app][k] <= WITHIN for app in APPS for k in JUDGED),
            "wall_s": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_ab")
    parser.add_argument("before", type=Path, help="the tree before the change")
    parser.add_argument("after", type=Path, help="the tree after it")
    parser.add_argument("--runs", type=int, default=3, help="alternating pairs (default 3)")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs: at least 3 pairs (one pair says nothing on this machine)")
    result = run(args.before.resolve(), args.after.resolve(), args.runs)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving_ab.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_cost"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
