"""A real `mliot run` subprocess: signals, crashes, restarts, and what is on disk after them."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from support import DaemonProcess, http

DIM = 64
BATCH = 50


def stream_batches(d: DaemonProcess, app: str, stop: threading.Event, prefix: str,
                   acked: list[str], sent: list[str]) -> None:
    """Post batches until told to stop or the daemon goes away; record what was acknowledged."""
    rng = np.random.default_rng(len(prefix))
    i = 0
    while not stop.is_set():
        batch_id = f"{prefix}-{i}"
        body = {"batch_id": batch_id,
                "samples": [{"features": rng.normal(size=DIM).round(4).tolist(), "label": "x"}
                            for _ in range(BATCH)]}
        sent.append(batch_id)
        try:
            status, _ = http("POST", f"{d.url}/v1/apps/{app}/samples", body, timeout=10)
        except OSError:
            return  # the daemon is gone: this batch was not acknowledged
        if status == 200:
            acked.append(batch_id)
        elif status == 503:
            return
        i += 1


def batches_on_disk(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT batch_id, count(*) FROM samples GROUP BY batch_id"))


def run_stream_then(d: DaemonProcess, sig: signal.Signals) -> tuple[list[str], list[str]]:
    assert d.request("PUT", "/v1/apps/ingest", {"data_type": "vector"})[0] == 201
    stop = threading.Event()
    acked: list[str] = []
    sent: list[str] = []
    threads = [threading.Thread(target=stream_batches, args=(d, "ingest", stop, f"t{k}", acked,
                                                             sent)) for k in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    d.signal(sig)
    for t in threads:
        t.join(30)
    stop.set()
    assert len(acked) >= 20
    return acked, sent


def test_sigterm_during_ingest_exits_0_with_every_acknowledged_sample_on_disk(
        daemon: DaemonProcess) -> None:
    acked, sent = run_stream_then(daemon, signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.log()
    on_disk = batches_on_disk(daemon.data_dir / "mliot.db")
    assert set(acked) <= set(on_disk)
    assert set(on_disk) <= set(sent)
    assert all(n == BATCH for n in on_disk.values())
    stops = [e["actor"] for e in daemon.events("actor_stopped")]
    assert stops == ["server", "mqtt", "peers", "scheduler", "trainer", "monitor"]  # ingress first


def test_kill_9_during_a_stream_loses_nothing_acknowledged(daemon: DaemonProcess) -> None:
    acked, sent = run_stream_then(daemon, signal.SIGKILL)
    assert daemon.wait(30) == -signal.SIGKILL
    on_disk = batches_on_disk(daemon.data_dir / "mliot.db")
    assert set(acked) <= set(on_disk) <= set(sent)
    assert all(n == BATCH for n in on_disk.values()), "a batch was half-stored"
    daemon.start()  # the store opens cleanly after the crash, and counts what is there
    status, app = daemon.request("GET", "/v1/apps/ingest")
    assert status == 200 and app["n_samples"] == BATCH * len(on_disk)


def test_api_apps_survive_restart_and_file_apps_belong_to_the_file(
        daemon_factory: Any) -> None:
    d = daemon_factory(extra='[[apps]]\nname = "fromfile"\ndata_type = "vector"\n').start()
    assert d.request("PUT", "/v1/apps/viaapi", {"data_type": "image"})[0] == 201
    body = {"samples": [{"features": [[1, 2], [3, 4]], "label": "cat"}] * 3}
    assert d.request("POST", "/v1/apps/viaapi/samples", body)[1]["n_samples"] == 3
    assert d.stop() == 0
    d.start()
    assert sorted(d.request("GET", "/v1/apps")[1]) == ["fromfile", "viaapi"]
    status, app = d.request("GET", "/v1/apps/viaapi")
    assert (status, app["n_samples"], app["shape"], app["owner"]) == (200, 3, [2, 2], "api")
    status, err = d.request("DELETE", "/v1/apps/fromfile")
    assert status == 409 and "config file" in err["error"]
    assert d.request("PUT", "/v1/apps/fromfile", {"data_type": "vector"})[0] == 409
    assert d.request("DELETE", "/v1/apps/viaapi")[0] == 204
    assert d.request("GET", "/v1/apps/viaapi")[0] == 404


def test_invalid_config_at_boot_exits_78(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.config_path.write_text('[daemon]\nlisten = "0.0.0.0:1"\nmystery = 1\n')
    d.start(wait=False)
    assert d.wait(30) == 78
    errors = d.events("config_invalid")[0]["errors"]
    assert "daemon.mystery: unknown key" in errors
    assert "daemon.token: required when daemon.listen is not a loopback address" in errors


def test_port_taken_exits_1_with_a_reason(daemon: DaemonProcess, daemon_factory: Any) -> None:
    other = daemon_factory("other", port=daemon.port)
    other.start(wait=False)
    assert other.wait(30) == 1
    assert other.events("daemon_start_failed")
    assert daemon.request("GET", "/healthz")[0] == 200


def test_cli_status_and_version(daemon: DaemonProcess) -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mliot_daemon", "status", "--json", "--config",
                          str(daemon.config_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["config_version"] == 1
    daemon.stop()
    out = subprocess.run([sys.executable, "-m", "mliot_daemon", "status", "--config",
                          str(daemon.config_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and "cannot reach the daemon" in out.stderr  # unreachable
    out = subprocess.run([sys.executable, "-m", "mliot_daemon", "--version"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("mliot ")
