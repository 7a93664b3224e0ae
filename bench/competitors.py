"""The competitors of the serving and memory benchmarks, one RandomForest(100) on digits each:

- MLServer 1.7 with mlserver-sklearn, installed by ``ensure_mlserver()`` into its own virtualenv
  ``bench/.venv-mlserver`` (git-ignored) with pip from PyPI. It is started with
  ``"parallel_workers": 0`` (inference in the main process), without which MLServer 1.7 does
  not start with uvloop >= 0.22 here;
- a minimal hand-written aiohttp server (``bench/handmade_server.py``), run with this
  virtualenv's Python.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from bench.daemon_proc import free_port

BENCH = Path(__file__).resolve().parent
MLSERVER_VENV = BENCH / ".venv-mlserver"
MLSERVER_PKGS = ["mlserver==1.7.*", "mlserver-sklearn==1.7.*"]


def ensure_mlserver() -> Path:
    """The MLServer virtualenv (created and installed on first use)."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if not exe.exists():
        import sklearn  # the forest is pickled by this environment: match its version

        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run([str(MLSERVER_VENV / "bin" / "pip"), "install", "-q", *MLSERVER_PKGS,
                        f"scikit-learn=={sklearn.__version__}"], check=True)
    return exe


def train_forest(path: Path) -> Path:
    """Child process: RandomForest(100) on the digits training split, joblib-dumped."""
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    from bench.datasets import digits

    X_train, _, y_train, _ = digits()
    clf = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1).fit(X_train, y_train)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(clf, path)
    return path


def forest_inprocess_ms(path: Path, repeats: int = 300) -> dict[str, float]:
    """Child process: the forest's own single-row ``predict`` latency, without any server —
    the floor under both competitors."""
    import time

    import joblib
    import numpy as np

    from bench.datasets import digits

    clf = joblib.load(path)
    X = digits()[1]
    for i in range(20):
        clf.predict(X[i:i + 1])
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        clf.predict(X[i % len(X):i % len(X) + 1])
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 4),
            "p99": round(float(np.percentile(ms, 99)), 4)}


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start ({url})")
        time.sleep(0.1)


@contextlib.contextmanager
def mlserver(model_file: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield (inference URL for one row, process) of MLServer serving the forest."""
    exe = ensure_mlserver()
    with tempfile.TemporaryDirectory(prefix="mlserver-") as tmp:
        d = Path(tmp)
        (d / "model").mkdir()
        (d / "model" / "model.joblib").write_bytes(model_file.read_bytes())
        port = free_port()
        (d / "settings.json").write_text(json.dumps({
            "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
            "parallel_workers": 0, "debug": False, "host": "127.0.0.1"}))
        (d / "model" / "model-settings.json").write_text(json.dumps({
            "name": "digits-rf", "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib"}}))
        with open(d / "mlserver.log", "wb") as log:
            yield from _serve([str(exe), "start", str(d)], d, port, "v2/models/digits-rf/ready",
                              "v2/models/digits-rf/infer", log)


@contextlib.contextmanager
def handmade(model_file: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield (prediction URL, process) of the hand-written aiohttp server."""
    port = free_port()
    yield from _serve([sys.executable, "-m", "bench.handmade_server", str(model_file),
                       str(port)], BENCH.parent, port, "health", "predict")


def _serve(command: list[str], cwd: Path, port: int, health: str, predict: str,
           log: IO[bytes] | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start a competitor, yield (prediction URL, process) once it answers, stop it after."""
    proc = subprocess.Popen(command, stdout=log, stderr=log, cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{base}/{health}", proc)
        yield f"{base}/{predict}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def mlserver_body(row: list[float]) -> dict:
    return {"inputs": [{"name": "x", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}
