"""Entry point: `python -m bench <name> [--quick]`, or `python -m bench all`.

Each benchmark is a module `bench/<name>.py` with `run(quick: bool) -> dict`; the dict is
written to `bench/results/<name>.json` together with the machine it ran on.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import psutil

NAMES = ["ingest", "learn", "serving", "mqtt", "placement", "table4", "lazy", "two_stage",
         "memory", "adaptation", "scale", "automl", "drift", "active", "streams", "restart",
         "soak", "faults"]
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "date": time.strftime("%Y-%m-%d"),
    }


def run_one(name: str, quick: bool, **options: float) -> dict:
    module = importlib.import_module(f"bench.{name}")
    started = time.perf_counter()
    result = module.run(quick=quick, **options)
    result = {"name": name, "quick": quick, "machine": machine(), **options,
              "wall_s": round(time.perf_counter() - started, 2), **result}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", choices=[*NAMES, "all"])
    parser.add_argument("--quick", action="store_true", help="a short run, for smoke tests")
    parser.add_argument("--watchers", type=int, default=0,
                        help="serving only: N dashboard pages open on the measured app (watch "
                             "sockets at the page's rate cap, and the page's API polling)")
    parser.add_argument("--duration", type=float, default=0,
                        help="soak only: SECONDS of load (default 60, --quick 10); a long run "
                             "records the drift of RSS, descriptors, p99 and loop lag every "
                             "10 min")
    args = parser.parse_args(argv)
    if args.watchers and args.name != "serving":
        parser.error("--watchers goes with serving")
    if args.duration and args.name != "soak":
        parser.error("--duration goes with soak")
    names = NAMES if args.name == "all" else [args.name]
    for name in names:
        if importlib.util.find_spec(f"bench.{name}") is None:
            print(f"{name}: not written yet", file=sys.stderr)
            if args.name != "all":
                return 2
            continue
        options: dict[str, float] = {"watchers": args.watchers} if args.watchers else {}
        if args.duration:
            options["duration"] = args.duration
        result = run_one(name, args.quick, **options)
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
