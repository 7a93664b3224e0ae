"""Memory: RSS of the daemon's main process (pool workers reported separately) and install size.

1. ``idle``: a daemon on an empty data directory, 3 s after it is ready.
2. ``daemon_rss_mib``: a daemon serving 3 digits-sized apps, each a 7-member ensemble (all
   seven families, trained once in a child process and written into the registry as version
   1 of each app), after 300 single-row predictions per app.
3. ``training``: the same daemon while a 4th app trains lazily on a data set posted to it
   (digits, 1,257 rows; and MNIST 10,000 images with --full); RSS sampled every 0.2 s, max kept.
4. install footprint: the size of a fresh virtualenv with only ``pip install .`` (mliot and
   its runtime dependencies; ``bench/.venv-mliot``) against MLServer 1.7 + mlserver-sklearn
   (``bench/.venv-mlserver``), both git-ignored.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench import competitors
from bench.common import (
    dir_size_mib,
    in_child,
    request,
    rss_mib,
    smaps_breakdown,
    training,
    wait_quiet,
)
from bench.daemon_proc import running_daemon
from bench.datasets import digits, mnist
from bench.serving import build_models

APPS = ("home1", "home2", "home3")
MLIOT_VENV = Path(__file__).resolve().parent / ".venv-mliot"


def publish_three(data: Path) -> None:
    """Child process: build the 7-member digits model, publish a copy for each app."""
    from mliot_daemon.registry import Registry

    build_models(data)
    reg = Registry(data / "models")
    src = reg.version_path("digits7", reg.current("digits7"))
    for app in APPS:
        staging = reg.staging_path(app)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(src, staging)
        reg.publish(app, staging, keep=5, meta={"reason": "initial"})
    for app in ("digits7", "digits3"):
        reg.delete_app(app)


def sample_while_training(url: str, pid: int, app: str, body: bytes, timeout: float
                          ) -> dict[str, Any]:
    status, ack = request(url, "POST", f"/v1/apps/{app}/samples", body)
    assert status == 200, ack
    start = time.monotonic()
    peak = {"main_mib": 0.0, "children_mib": 0.0, "children": 0}
    seen_training = False
    while time.monotonic() - start < timeout:
        r = rss_mib(pid)
        peak = {k: max(peak[k], r[k]) for k in peak}
        busy = training(url, app)
        seen_training |= busy
        spec = request(url, "GET", f"/v1/apps/{app}")[1]
        if seen_training and not busy and spec.get("model_version") is not None:
            break
        time.sleep(0.2)
    return {"peak_main_mib": peak["main_mib"], "peak_children_mib": peak["children_mib"],
            "pool_processes": peak["children"], "seconds": round(time.monotonic() - start, 1),
            "after": rss_mib(pid)}


IMPORTS = ["numpy", "scipy.signal", "sklearn.ensemble", "xgboost", "aiohttp.web", "structlog",
           "mliot_daemon.daemon"]


def import_costs() -> list[dict[str, Any]]:
    """RSS of a fresh interpreter after importing, cumulatively, what the daemon imports."""
    code = ("import json, os, importlib, psutil; p = psutil.Process(); out = [{'after': 'python', "
            "'rss_mib': p.memory_info().rss / 2**20}]\n"
            f"for m in {IMPORTS!r}:\n"
            "    importlib.import_module(m); out.append({'after': m, 'rss_mib': "
            "round(p.memory_info().rss / 2**20, 1)})\n"
            "print(json.dumps(out))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    rows = __import__("json").loads(out.stdout)
    for prev, row in zip(rows, rows[1:]):
        row["delta_mib"] = round(row["rss_mib"] - prev["rss_mib"], 1)
    rows[0]["rss_mib"] = round(rows[0]["rss_mib"], 1)
    return rows


def ensure_mliot_venv() -> Path:
    if not (MLIOT_VENV / "bin" / "mliot").exists():
        subprocess.run([sys.executable, "-m", "venv", str(MLIOT_VENV)], check=True)
        subprocess.run([str(MLIOT_VENV / "bin" / "pip"), "install", "-q",
                        str(Path(__file__).resolve().parent.parent)], check=True)
    return MLIOT_VENV


def run(quick: bool) -> dict[str, Any]:
    env = wait_quiet(quick)
    result: dict[str, Any] = {**env}
    with running_daemon() as (url, proc):
        time.sleep(3)
        result["idle"] = rss_mib(proc.pid)
        result["idle_profile"] = smaps_breakdown(proc.pid)
    _, X_test, _, _ = digits()
    with tempfile.TemporaryDirectory(prefix="mliot-mem-") as tmp:
        data = Path(tmp) / "data"
        in_child(publish_three, data)
        apps = "".join(f'[[apps]]\nname = "{a}"\ndata_type = "vector"\nshape = [64]\n'
                       for a in APPS)
        with running_daemon(apps, data_dir=data, daemon_toml="max_body_mb = 400.0"
                            ) as (url, proc):
            for app in APPS:
                for i in range(300):
                    status, _ = request(url, "POST", f"/v1/apps/{app}/predict",
                                        {"instances": [X_test[i % len(X_test)].tolist()]})
                    assert status == 200
            time.sleep(1)
            served = rss_mib(proc.pid)
            result["three_apps"] = served
            result["three_apps_profile"] = smaps_breakdown(proc.pid)
            result["daemon_rss_mib"] = served["main_mib"]
            Xtr, _, ytr, _ = digits()
            request(url, "PUT", "/v1/apps/learner", {"data_type": "vector", "shape": [64]})
            body = orjson.dumps({"samples": [{"features": x.tolist(), "label": str(t)}
                                             for x, t in zip(Xtr, ytr, strict=True)]})
            result["training_digits"] = sample_while_training(url, proc.pid, "learner", body,
                                                              600)
            if not quick:
                Xm, _, ym, _ = mnist()
                pick = np.random.default_rng(0).choice(len(ym), 10_000, replace=False)
                request(url, "PUT", "/v1/apps/mnist", {"data_type": "image", "shape": [28, 28]})
                body = orjson.dumps({"samples": [{"features": x, "label": str(t)} for x, t in
                                                 zip(Xm[pick].tolist(), ym[pick].tolist(),
                                                     strict=True)]})
                result["training_mnist_10k"] = sample_while_training(url, proc.pid, "mnist",
                                                                     body, 1800)
    result["install_mib"] = {"mliot": dir_size_mib(ensure_mliot_venv()),
                             "mlserver": dir_size_mib(competitors.MLSERVER_VENV
                                                      if competitors.ensure_mlserver() else None)}
    result["imports_mib"] = import_costs()
    result["targets"] = {"daemon_rss_mib": 200}
    result["met"] = {"daemon_rss_mib": result["daemon_rss_mib"] <= 200}
    return result
