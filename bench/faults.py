"""Faults (issue 20): a standing suite of what goes wrong in a home, with real processes.

1. ``kill -9`` of the daemon at random moments under a client ingesting over HTTP, WebSocket,
   feedback and stream readings while it retrains and publishes (`faults_kill.py`);
   acknowledged items lost or duplicated, and the time from restart to the first served
   prediction.
2. mosquitto stopped (SIGTERM, then SIGKILL) and restarted during MQTT ingest
   (`faults_mqtt.py`).
3. A full disk under the data folder, during version saves and ingest (`faults_disk.py`).
4. The peer serving an app stopped with SIGSTOP, then continued (`faults_peer.py`).

Parts 3 and 4 need root (a tmpfs mount, a cgroup); without it they are recorded as skipped.
`tests/integration/test_faults.py` runs each part once, small.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import wait_quiet
from bench.faults_disk import can_mount, disk_full
from bench.faults_env import Mosquitto
from bench.faults_kill import kill_cycles
from bench.faults_mqtt import broker_restarts
from bench.faults_peer import can_quota, stopped_peer


def _part(fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """One part in a folder of its own; a part that fails is recorded, the others still run."""
    tmp = Path(tempfile.mkdtemp(prefix="mliot-faults-"))
    try:
        return fn(tmp)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _mqtt(restarts: int, sig: signal.Signals) -> Callable[[Path], dict[str, Any]]:
    def part(tmp: Path) -> dict[str, Any]:
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            return {"skipped": "mosquitto is not installed"}
        broker = Mosquitto(tmp / "broker").start()
        try:
            return broker_restarts(tmp, broker, restarts, sig=sig)
        finally:
            broker.kill()
    return part


def run(quick: bool) -> dict[str, Any]:
    env = wait_quiet(quick)
    cycles = 6 if quick else 50
    kill = _part(lambda tmp: kill_cycles(tmp, cycles))
    # SIGTERM: the broker keeps all it acknowledged, so any loss is mliot's; SIGKILL: also
    # what mosquitto itself loses (acknowledged, not yet saved)
    mqtt = _part(_mqtt(2 if quick else 5, signal.SIGTERM))
    mqtt_kill = _part(_mqtt(2 if quick else 5, signal.SIGKILL))
    disk = _part(disk_full) if can_mount() else {"skipped": "mounting a tmpfs needs root"}
    peer = _part(stopped_peer) if can_quota() else {"skipped": "a CPU quota needs root"}
    met = {
        "kill_nothing_lost_or_duplicated": "error" not in kill and kill["lost"] == 0
        and kill["duplicated"] == 0,
        "kill_store_intact": kill.get("integrity_check") == "ok",
        "mqtt_nothing_lost_or_duplicated": "error" not in mqtt and "skipped" not in mqtt
        and mqtt["lost"] == 0 and mqtt["duplicated"] == 0,
        "disk_full_503_and_resumes": "error" not in disk and "skipped" not in disk
        and disk["ingest"]["status"] == 503 and disk["integrity_while_full"] == "ok"
        and disk["integrity_after"] == "ok" and disk["restart"]["predict"] == 200
        and disk["resume"]["version"] is not None,
        "stopped_peer_every_prediction_answered": "error" not in peer
        and "skipped" not in peer and peer["while_stopped"]["failed"] == 0
        and peer["before_stop"]["failed"] == 0 and peer["after_cont"]["failed"] == 0,
    }
    return {**env, "kill": kill, "mqtt": mqtt, "mqtt_kill": mqtt_kill, "disk": disk,
            "peer": peer, "met": met}


if __name__ == "__main__":
    print(run(quick=True))
