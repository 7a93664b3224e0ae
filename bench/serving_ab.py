"""A/B of the serving path between two source trees: what a change costs a prediction,
measured before against after on the same machine at the same time.

    python -m bench.serving_ab BEFORE_TREE AFTER_TREE [--runs 5]

Each tree is a checkout of one commit (``git worktree add``), perhaps with local changes (a
baseline with one feature taken out); the JSON records each tree's commit and changed files.
Give the same tree twice for an A/A run, the tool's own noise (``serving_aa.json``).
``--pool R1.json R2.json ...`` runs nothing: it pools earlier results of the same comparison
(copies of ``serving_ab.json``), the verdict on the median over all their runs.

The digits models of ``bench serving`` (a 7-member ensemble, ``digits7``, and the low-latency
choice, ``digits3``) are trained once by this tree's learning code. Each run starts one daemon
from each tree on copies of them (``python -m mliot_daemon`` with the tree as its working
directory), both pinned to one CPU and this client to the others. Then, per app, after a
block on each that is not recorded, this client's single-row round trips (the lean client,
HTTP keep-alive and WebSocket) alternate between the two daemons in blocks, in ABBA order; so
do the throughputs. Every other run starts and measures the after tree's daemon first. Whole
runs one after the other, one tree each, moved single-row p50s by ±15 to 30 % on this shared
machine (other jobs, and which cores the processes shared); blocks a few seconds long put both
daemons under the same conditions.

A run's cost is after / before (for rates before / after: above 1 is always slower); the
verdict is on the median over the runs: within 5 % for the single-row p50s (HTTP and
WebSocket) of both apps. Writes ``bench/results/serving_ab.json``; ``python -m bench.report``
shows it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

import numpy as np
import orjson

from bench import lean_client
from bench.__main__ import RESULTS, machine
from bench.common import in_child, wait_quiet
from bench.daemon_proc import DAEMON_CPU, client_cpus, running_daemon
from bench.datasets import digits
from bench.serving import CONCURRENCY, build_models, http_throughput, ws_pipelined

APPS = ("digits7", "digits3")
LATENCIES = ("http_p50", "ws_p50", "http_p99", "ws_p99")  # ms: lower is better
RATES = ("ws_pipelined_per_s", "http_throughput_per_s")  # higher is better
JUDGED = ("http_p50", "ws_p50")  # the per-prediction cost the verdict is on
WITHIN = 1.05
BLOCKS, BLOCK = 10, 330  # round trips per block (the first tenth of each warms up)
PIPELINED = 10000  # WebSocket messages sent without waiting, per daemon and round


def tree_state(tree: Path) -> dict[str, Any]:
    """The commit a tree is at, and the files it changes on top of it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    return {"tree": str(tree), "commit": git("rev-parse", "--short", "HEAD"),
            "subject": git("log", "-1", "--format=%s"),
            "changed": git("diff", "--name-only", "HEAD").split()}


def _ms(seconds: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(seconds) * 1000, q)), 4)


def one_run(trees: dict[str, Path], models: Path, apps: list[str], flip: bool
            ) -> dict[str, Any]:
    """Both daemons up at once; every figure measured on each in alternating blocks.
    ``flip``: the after tree's daemon starts first and is measured first."""
    _, X_test, _, _ = digits()
    bodies = [orjson.dumps({"instances": [r.tolist()]}) for r in X_test]
    messages = [orjson.dumps({"type": "predict", "ref": i, "features": r.tolist()})
                for i, r in enumerate(X_test)]
    refs = [b'"ref":%d,' % i for i in range(len(X_test))]
    config = "".join(f'[[apps]]\nname = "{a}"\ndata_type = "vector"\nshape = [64]\n'
                     for a in apps) + "[training]\nworkers = 1\n"
    with tempfile.TemporaryDirectory(prefix="mliot-ab-") as tmp, \
            contextlib.ExitStack() as stack:
        urls = {}
        sides = list(trees)[::-1] if flip else list(trees)
        for side in sides:
            tree = trees[side]
            data = Path(tmp) / side
            shutil.copytree(models, data / "models")
            urls[side], _ = stack.enter_context(running_daemon(
                config, data_dir=data, tree=tree, cpus={DAEMON_CPU}))
        out: dict[str, Any] = {side: {} for side in sides}
        for app in apps:
            t: dict[str, dict[str, list[float]]] = {s: {"http": [], "ws": []} for s in sides}
            rates: dict[str, dict[str, list[float]]] = {s: {k: [] for k in RATES}
                                                         for s in sides}
            for side in sides:  # a warm-up block each, not recorded. Even so, the daemon
                # started first had digits7's WebSocket p99 at 5 ms against 2.7 ms in every
                # run of an A/A (cause unknown): hence the flip between runs
                lean_client.http_latency(f"{urls[side]}/v1/apps/{app}/predict", bodies, BLOCK)
                lean_client.ws_latency(f"{urls[side]}/v1/apps/{app}/stream", messages, refs,
                                       BLOCK)
            for block in range(BLOCKS):
                for side in sides if block % 2 == 0 else sides[::-1]:
                    url = urls[side]
                    t[side]["http"] += lean_client.http_latency(
                        f"{url}/v1/apps/{app}/predict", bodies, BLOCK)
                    t[side]["ws"] += lean_client.ws_latency(
                        f"{url}/v1/apps/{app}/stream", messages, refs, BLOCK)
                    if block < 2:  # the rates: one round each way
                        rates[side]["ws_pipelined_per_s"].append(asyncio.run(
                            ws_pipelined(url, app, X_test, PIPELINED)))
                        rates[side]["http_throughput_per_s"].append(asyncio.run(
                            http_throughput(f"{url}/v1/apps/{app}/predict", bodies,
                                            BLOCK * 3, CONCURRENCY)))
            for side in sides:
                out[side][app] = {
                    "http_p50": _ms(t[side]["http"], 50), "ws_p50": _ms(t[side]["ws"], 50),
                    "http_p99": _ms(t[side]["http"], 99), "ws_p99": _ms(t[side]["ws"], 99),
                    **{k: round(statistics.mean(v)) for k, v in rates[side].items()}}
        return out


def cost(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """after / before per figure, as a cost: for rates, before / after (above 1: slower)."""
    ratios = {k: after[k] / before[k] for k in LATENCIES}
    ratios.update({k: before[k] / after[k] for k in RATES})
    return {k: round(v, 4) for k, v in ratios.items()}


def run(before: Path, after: Path, runs: int) -> dict[str, Any]:
    started = time.perf_counter()
    quiet = wait_quiet(False)
    trees = {"before": before, "after": after}
    pairs = []
    with tempfile.TemporaryDirectory(prefix="mliot-ab-models-") as tmp:
        models = Path(tmp) / "data"
        members = in_child(build_models, models)  # this tree's learner; both trees load it
        os.sched_setaffinity(0, client_cpus())
        for i in range(runs):
            print(f"run {i + 1}/{runs}", flush=True)
            load = [round(x, 2) for x in os.getloadavg()]
            result = one_run(trees, models / "models", list(members), flip=i % 2 == 1)
            pairs.append({side: {"load_avg_at_start": load, **result[side]} for side in trees})
    costs = [{app: cost(p["before"][app], p["after"][app]) for app in APPS} for p in pairs]
    return {"name": "serving_ab" if before != after else "serving_aa", "machine": machine(),
            **quiet, "daemon_cpu": DAEMON_CPU,
            "blocks": BLOCKS, "block": BLOCK, "runs": runs, "members": members,
            "before": tree_state(before), "after": tree_state(after), "pairs": pairs,
            "costs": costs, **verdict(costs), "wall_s": round(time.perf_counter() - started, 2)}


def verdict(costs: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """The median cost of each figure over the runs, and whether the p50s are within."""
    median = {app: {k: round(statistics.median(c[app][k] for c in costs), 4)
                    for k in costs[0][app]} for app in APPS}
    return {"median_cost": median, "within": WITHIN,
            "met": all(median[app][k] <= WITHIN for app in APPS for k in JUDGED)}


def pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Earlier results of one comparison (the same commits with the same changed files on
    each side, the same models) as one: every run's figures, the verdict on the median over
    all of them. More runs narrow a median that moved ±5 % between A/Bs of the same code."""
    def same(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["before"]["commit"], r["before"]["changed"], r["after"]["commit"],
                r["after"]["changed"], r["members"])

    if any(same(r) != same(results[0]) for r in results):
        raise SystemExit("--pool: these results compare different trees")
    pairs = [p for r in results for p in r["pairs"]]
    costs = [c for r in results for c in r["costs"]]
    return {**results[0], "runs": len(pairs), "pooled": [r["runs"] for r in results],
            "pairs": pairs, "costs": costs, **verdict(costs),
            "wall_s": round(sum(r["wall_s"] for r in results), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_ab")
    parser.add_argument("before", type=Path, nargs="?", help="the tree before the change")
    parser.add_argument("after", type=Path, nargs="?", help="the tree after it")
    parser.add_argument("--runs", type=int, default=5, help="runs, each with both daemons "
                        "(default 5)")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="RESULT",
                        help="instead of running: pool these result files of one comparison")
    args = parser.parse_args(argv)
    if args.pool:
        result = pool([json.loads(f.read_text()) for f in args.pool])
    elif args.before is None or args.after is None:
        parser.error("give BEFORE and AFTER trees, or --pool")
    elif args.runs < 3:
        parser.error("--runs: at least 3 (one run says nothing on this machine)")
    else:
        result = run(args.before.resolve(), args.after.resolve(), args.runs)
    RESULTS.mkdir(exist_ok=True)
    name = result["name"]
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_cost"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
