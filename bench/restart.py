"""Restart: from `mliot run` to the first served prediction, after a `kill -9` (issue 20).

Three digits apps each serve a 7-member ensemble (as in ``bench memory``). Each cycle starts
`mliot run` on that data folder, polls ``/readyz`` and then one prediction per app every
10 ms, records when each came, and kills the daemon with SIGKILL. Where the time goes is
measured apart: the imports of a fresh interpreter (``python -X importtime``) and the
interpreter's own start.

The project's bytecode is compiled first, as ``pip install .`` does: a daemon run from a
source tree with ``PYTHONDONTWRITEBYTECODE`` set (as on these machines) would otherwise
compile its ~100 modules at every start (~0.3 s), which no installed daemon does.
"""

from __future__ import annotations

import compileall
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import in_child, request, wait_quiet
from bench.daemon_proc import free_port
from bench.datasets import digits
from bench.memory import APPS, publish_three

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("numpy", "scipy", "sklearn", "xgboost", "aiohttp", "structlog", "prometheus_client",
            "psutil", "orjson", "uvloop", "aiomqtt", "mliot_daemon", "actors")


def import_profile() -> dict[str, Any]:
    """Seconds a fresh interpreter spends importing the daemon, by top-level package (each
    package's own import, cumulative, as ``-X importtime`` first meets it)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mliot_daemon.daemon"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stderr
    first: dict[str, float] = {}
    for line in out.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            top = m.group(3).split(".")[0]
            if top in PACKAGES and m.group(3) == top:
                first[top] = int(m.group(1)) / 1e6  # the package's own line: cumulative
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import mliot_daemon.daemon"], check=True, cwd=ROOT)
    whole = time.perf_counter() - started
    started = time.perf_counter()
    bare = subprocess.run([sys.executable, "-c", "pass"], cwd=ROOT)
    assert bare.returncode == 0
    return {"interpreter_s": round(time.perf_counter() - started, 3),
            "import_daemon_s": round(whole, 3),
            "by_package_s": {k: round(v, 3) for k, v in sorted(first.items(),
                                                               key=lambda kv: -kv[1])}}


def one_start(config: Path, port: int, row: list[float]) -> dict[str, Any]:
    """Start the daemon; seconds to /readyz and to each app's first answered prediction."""
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mliot_daemon", "run", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=ROOT)
    ready, first = None, {}
    try:
        deadline = started + 60
        while len(first) < len(APPS):
            if time.perf_counter() > deadline or proc.poll() is not None:
                raise RuntimeError("the daemon did not serve all its apps within 60 s")
            try:
                if ready is None and request(url, "GET", "/readyz", timeout=1)[0] == 200:
                    ready = time.perf_counter() - started
                for app in APPS:
                    if app not in first and request(url, "POST", f"/v1/apps/{app}/predict",
                                                    {"instances": [row]}, timeout=1)[0] == 200:
                        first[app] = time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    return {"ready_s": round(ready or 0.0, 3), "first_s": round(min(first.values()), 3),
            "all_s": round(max(first.values()), 3)}


def run(quick: bool) -> dict[str, Any]:
    for package in ("mliot_daemon", "actors"):
        compileall.compile_dir(ROOT / package, quiet=1)
    env = wait_quiet(quick)
    cycles = 3 if quick else 10
    _, X_test, _, _ = digits()
    row = X_test[0].tolist()
    with tempfile.TemporaryDirectory(prefix="mliot-restart-") as tmp:
        data = Path(tmp) / "data"
        in_child(publish_three, data)
        port = free_port()
        config = Path(tmp) / "mliot.toml"
        config.write_text(f'[daemon]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{data}"\n'
                          'log_level = "warning"\n' + "".join(
                              f'[[apps]]\nname = "{a}"\ndata_type = "vector"\nshape = [64]\n'
                              for a in APPS))
        starts = [one_start(config, port, row) for _ in range(cycles)]
    first = np.array([s["first_s"] for s in starts])
    return {**env, "cycles": cycles, "starts": starts,
            "first_served_p50_s": round(float(np.median(first)), 3),
            "first_served_max_s": round(float(first.max()), 3),
            "all_served_p50_s": round(float(np.median([s["all_s"] for s in starts])), 3),
            "ready_p50_s": round(float(np.median([s["ready_s"] for s in starts])), 3),
            "imports": import_profile(),
            "met": {"first_served_1s": bool(np.median(first) <= 1.0)}}


if __name__ == "__main__":
    print(run(quick=True))
