"""The CLI's client commands against a real daemon: import, predict, feedback, watch, demo."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from support import DaemonProcess

pytestmark = pytest.mark.timeout(600)


def mliot(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mliot_daemon", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_import_predict_feedback_watch(daemon: DaemonProcess, tmp_path: Path) -> None:
    X, y = load_digits(return_X_y=True)
    npz, csv = tmp_path / "digits.npz", tmp_path / "more.csv"
    np.savez(npz, X=X[:900], y=y[:900])
    csv.write_text("f" + ",f".join(map(str, range(64))) + ",label\n" + "".join(
        ",".join(map(str, row)) + f",{label}\n" for row, label in zip(X[900:1000], y[900:1000],
                                                                  strict=True)))
    conf = ["--config", str(daemon.config_path), "--json"]
    daemon.request("PUT", "/v1/apps/digits", {"data_type": "vector"})
    out = mliot("import", "digits", str(npz), *conf)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["n_samples"] == 900
    assert json.loads(mliot("import", "digits", str(npz), *conf).stdout)["n_samples"] == 900
    assert json.loads(mliot("import", "digits", str(csv), *conf).stdout)["n_samples"] == 1000

    deadline = time.monotonic() + 120
    while daemon.request("POST", "/v1/apps/digits/predict",
                         {"instances": [X[0].tolist()]})[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    watcher = subprocess.Popen([sys.executable, "-m", "mliot_daemon", "watch", "digits",
                                "--config", str(daemon.config_path)],
                               stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # let it connect
        rows = tmp_path / "rows.npz"
        np.savez(rows, X=X[1000:1010])
        out = mliot("predict", "digits", "--data", str(rows), *conf)
        assert out.returncode == 0, out.stderr
        predictions = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(predictions) == 10 and all(p["id"] for p in predictions)
        out = mliot("feedback", "digits", predictions[0]["id"], str(y[1000]), *conf)
        assert out.returncode == 0 and json.loads(out.stdout)["label"] == str(y[1000])
        assert mliot("feedback", "digits", "no-such-id", "3", *conf).returncode == 4  # rejected
        watcher.send_signal(signal.SIGINT)
        seen, _ = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    assert seen.count("[predict]") >= 10


def test_demo_trains_and_serves_until_stopped(daemon_factory: Any) -> None:
    d = daemon_factory()  # only for its config and folder; the demo starts the daemon itself
    demo = subprocess.Popen([sys.executable, "-m", "mliot_daemon", "demo", "--config",
                             str(d.config_path)], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 180
        while sum("predicted" in line for line in lines) < 3:
            assert time.monotonic() < deadline, lines
            lines.append(demo.stdout.readline())
        demo.send_signal(signal.SIGTERM)
        rest, _ = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert demo.returncode == 0
    assert any("version_published" in line for line in lines)
    assert "stopping the demo" in rest
    with pytest.raises(OSError):
        d.request("GET", "/healthz", timeout=2)  # the daemon it started has stopped


def test_import_reshapes_a_flat_csv_for_a_sensor_app(daemon: DaemonProcess,
                                                     tmp_path: Path) -> None:
    """The daemon reshapes each CSV row to the app's (channels, time) shape; the file goes in
    parts, so one larger than a request may carry still imports, once."""
    assert daemon.request("PUT", "/v1/apps/motion", {"data_type": "sensor", "shape": [2, 3]}
                          )[0] == 201
    path = tmp_path / "motion.csv"
    rng = np.random.default_rng(0)
    path.write_text("a0,a1,a2,b0,b1,b2,label\n" + "".join(
        ",".join(f"{v:.3f}" for v in rng.normal(size=6)) + f",{'up' if i % 3 else 'down'}\n"
        for i in range(1200)))
    conf = ["--config", str(daemon.config_path), "--json"]
    out = mliot("import", "motion", str(path), *conf)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"app": "motion", "rows": 1200, "n_samples": 1200}
    again = json.loads(mliot("import", "motion", str(path), *conf).stdout)
    assert again["n_samples"] == 1200  # stored once
    assert daemon.request("GET", "/v1/apps/motion")[1]["shape"] == [2, 3]
