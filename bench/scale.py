"""Scale: training time against data size and against pool workers, loop lag while training.

For each number of local pool workers (``training.workers`` 1 and 2) and each MNIST subset
size (1k, 5k, 20k, 60k images), a fresh real daemon gets an ``image`` app and the subset in
ONE request; from its acknowledgement the client measures the first served prediction and the
time until the trainer is idle (every family fitted, the last lazy version published). The
daemon's own ``mliot_loop_lag_seconds`` histogram, scraped before the post and after training,
gives the event-loop lag p99 during training (as bench/ingest.py does).

The Dask points: a `dask scheduler` and two single-threaded `dask worker` processes on
loopback (bench.daemon_proc.DaskCluster), the daemon with ``backend = "dask"`` and one local
pool worker (which prepares the features and assembles versions; the fits go to Dask).

On 2 cores a 60k run with one worker takes many minutes; it is the ``lazy`` benchmark's run
(one worker, 60k, same request), so here 60k is measured with 2 workers only and the report
shows lazy's figure beside it.

--quick: sizes 1k and 3k.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench import datasets
from bench.common import request, scrape, training, wait_quiet
from bench.daemon_proc import DaskCluster, histogram, quantile_between, running_daemon

NOTE = ("A run's fits go side by side, as many as the pool (or the cluster) has workers, so a "
        'second pool worker shortens training once the data is big enough for the fits to '
        'dominate. The Dask points ran on this same 2-core machine: its two workers share the '
        "cores with the Dask scheduler and with the daemon's own pool worker, which still "
        'prepares the features and assembles every version, and each fit ships its features once '
        'and its model back; Dask is for machines beyond this one, and this bench does not '
        'profile where its extra time goes.')


def one(X: np.ndarray, y: np.ndarray, workers: int, probe: bytes, timeout: float,
        dask: str = "") -> dict[str, Any]:
    body = orjson.dumps({"samples": [{"features": x, "label": str(t)}
                                     for x, t in zip(X.tolist(), y.tolist(), strict=True)]})
    backend = f'backend = "dask"\ndask_scheduler = "{dask}"\n' if dask else ""
    with running_daemon(f"[training]\nworkers = {workers}\nkeep_versions = 50\n{backend}",
                        daemon_toml="max_body_mb = 400.0"
                        ) as (url, _):
        assert request(url, "PUT", "/v1/apps/m", {"data_type": "image", "shape": [28, 28]}
                       )[0] == 201
        before = histogram(scrape(url), "mliot_loop_lag_seconds")
        t_post = time.perf_counter()
        assert request(url, "POST", "/v1/apps/m/samples", body)[0] == 200
        t0 = time.perf_counter()
        first = None
        idle_since = None
        while time.perf_counter() - t0 < timeout:
            if first is None:
                if request(url, "POST", "/v1/apps/m/predict", probe)[0] == 200:
                    first = time.perf_counter() - t0
                time.sleep(0.05)
                continue
            if not training(url, "m"):
                if idle_since is None:
                    idle_since = time.perf_counter()
                elif time.perf_counter() - idle_since > 1.0:
                    break
            else:
                idle_since = None
            time.sleep(0.25)
        done = (idle_since or time.perf_counter()) - t0
        after = histogram(scrape(url), "mliot_loop_lag_seconds")
        models = request(url, "GET", "/v1/apps/m/models")[1]
    current = next((v for v in models["versions"] if v["version"] == models["current"]), {})
    return {"n": len(y), "workers": workers, "backend": "dask" if dask else "process",
            "post_s": round(t0 - t_post, 2),
            "first_serve_s": round(first, 3) if first is not None else None,
            "training_s": round(done, 1), "versions": len(models["versions"]),
            "members": [m["family"] for m in current.get("members", [])],
            "loop_lag_p99_ms": round(quantile_between(before, after, 0.99) * 1000, 3),
            "loop_lag_p50_ms": round(quantile_between(before, after, 0.5) * 1000, 3)}


def run(quick: bool) -> dict[str, Any]:
    env = wait_quiet(quick)
    Xtr, Xte, ytr, _ = datasets.mnist()
    sizes = (1000, 3000) if quick else (1000, 5000, 20000, 60000)
    order = np.random.default_rng(0).permutation(len(ytr))
    probe = orjson.dumps({"instances": [Xte[0].tolist()]})
    points = []
    for workers in (1, 2):
        for n in sizes:
            if workers == 1 and n >= 60000:
                continue  # measured by bench/lazy.py (same daemon set-up, one worker)
            pick = order[:n]
            p = one(Xtr[pick], ytr[pick], workers, probe, 3600)
            print(f"scale workers={workers} n={n}: {p['training_s']} s, lag p99 "
                  f"{p['loop_lag_p99_ms']} ms", flush=True)
            points.append(p)
    dask_points = []
    with tempfile.TemporaryDirectory(prefix="mliot-dask-") as tmp:
        cluster = DaskCluster(Path(tmp), workers=2).start()
        try:
            for n in sizes:
                if n >= 60000:
                    continue  # as long as the 2-worker pool's 60k run; not needed for the ratio
                p = one(Xtr[order[:n]], ytr[order[:n]], 1, probe, 3600, dask=cluster.address)
                print(f"scale dask(2 workers) n={n}: {p['training_s']} s", flush=True)
                dask_points.append(p)
        finally:
            cluster.stop()
    return {**env, "points": points, "sizes": list(sizes),
            "dask": {"measured": True, "workers": 2, "points": dask_points},
            "note": NOTE,
            "max_loop_lag_p99_ms": max(p["loop_lag_p99_ms"] for p in points),
            "targets": {"loop_lag_p99_ms": 10.0}}
