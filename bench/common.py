"""Helpers shared by the benchmarks: a quiet machine, child-process training, HTTP, RSS."""

from __future__ import annotations

import multiprocessing
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

RESULTS = Path(__file__).resolve().parent / "results"


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def wait_quiet(quick: bool, threshold: float = 0.8, max_wait_s: float | None = None,
               poll_s: float = 30.0) -> dict[str, Any]:
    """Before a full run, wait (up to ``max_wait_s``, default $BENCH_MAX_WAIT_S or 600 s) for
    the 1-minute load average to drop below ``threshold``; return what the machine looked like
    when the run started (recorded in every result)."""
    if max_wait_s is None:
        max_wait_s = float(os.environ.get("BENCH_MAX_WAIT_S", "600"))
    waited = 0.0
    if not quick:
        while os.getloadavg()[0] >= threshold and waited < max_wait_s:
            time.sleep(poll_s)
            waited += poll_s
    la = load_avg()
    return {"load_avg_at_start": la, "waited_for_quiet_s": waited,
            "quiet": la[0] < threshold}


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a fresh forkserver process: BLAS/OpenMP threads spun up by
    training must never live in the process that measures latencies."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        return pool.submit(fn, *args).result()


def pct(seconds: list[float] | np.ndarray, scale: float = 1000.0, nd: int = 4
        ) -> dict[str, float]:
    ms = np.asarray(seconds) * scale
    return {"p50": round(float(np.percentile(ms, 50)), nd),
            "p99": round(float(np.percentile(ms, 99)), nd),
            "mean": round(float(ms.mean()), nd)}


def request(url: str, method: str, path: str, body: Any = None, timeout: float = 600
            ) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
    req = urllib.request.Request(url + path, method=method, data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, orjson.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, orjson.loads(exc.read() or b"null")
        except orjson.JSONDecodeError:
            return exc.code, None


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics") as r:
        return r.read().decode()


def training(url: str, app: str) -> bool:
    status = request(url, "GET", "/v1/status")[1]
    return bool(status["apps"].get(app, {}).get("training", {}).get("training"))


def wait_trained(url: str, app: str, timeout: float, settle_s: float = 1.0) -> float:
    """Wait until the app has a model and its trainer is idle (twice, ``settle_s`` apart);
    return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        spec = request(url, "GET", f"/v1/apps/{app}")[1] or {}
        if spec.get("model_version") is not None and not training(url, app):
            time.sleep(settle_s)
            if not training(url, app):
                return time.monotonic() - start
        time.sleep(0.25)
    raise TimeoutError(f"{app}: training did not finish in {timeout} s")


def rss_mib(pid: int) -> dict[str, Any]:
    """RSS of a process and, separately, of its children (pool workers, forkserver)."""
    p = psutil.Process(pid)
    kids = []
    for c in p.children(recursive=True):
        try:
            kids.append(c.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    return {"main_mib": round(p.memory_info().rss / 2**20, 1),
            "children_mib": round(sum(kids) / 2**20, 1), "children": len(kids)}


def dir_size_mib(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            fp = os.path.join(root, f)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return round(total / 2**20, 1)


def smaps_breakdown(pid: int, top: int = 12) -> dict[str, Any]:
    """Where a process's RSS is: summed per mapping (shared library or [anon]/[heap]), from
    /proc/<pid>/smaps — a memory profile of the running process."""
    per: dict[str, int] = {}
    name = "[anon]"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                name = parts[5] if len(parts) >= 6 else "[anon]"
                if "/site-packages/" in name:
                    name = "site-packages/" + name.split("/site-packages/", 1)[1].split("/")[0]
                elif name.startswith("/"):
                    name = name.rsplit("/", 1)[-1]
            elif parts[0] == "Rss:":
                per[name] = per.get(name, 0) + int(parts[1])
    ranked = sorted(per.items(), key=lambda kv: -kv[1])
    return {"total_mib": round(sum(per.values()) / 1024, 1),
            "top": [{"mapping": k, "mib": round(v / 1024, 1)} for k, v in ranked[:top]]}
