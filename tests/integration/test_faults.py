"""Faults (issue 20), one short run of each part of `python -m bench faults` with real
processes: kill -9 under ingest, a broker killed during MQTT ingest, a full disk, a stopped
peer. The scenarios live in ``bench/faults_*.py`` so that the bench and these tests run the
same code; here each runs small and its counts are checked, never its speed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from mqtt_support import mosquitto_binary

from bench.faults_disk import can_mount, disk_full
from bench.faults_env import Mosquitto
from bench.faults_kill import kill_cycles
from bench.faults_mqtt import broker_restarts
from bench.faults_peer import can_quota, stopped_peer

pytestmark = pytest.mark.timeout(300)


def _root(needed: bool, what: str) -> None:
    if not needed:
        message = f"{what} needs root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_kill9_loses_and_duplicates_no_acknowledged_item(tmp_path: Path) -> None:
    """Three SIGKILLs (one during a start) under HTTP, WebSocket, feedback and readings."""
    r = kill_cycles(tmp_path, cycles=3, max_up_s=1.5, start_every=3)
    for kind, c in r["counts"].items():
        assert c["lost"] == 0, (kind, c)
        assert c["duplicated"] == 0, (kind, c)
        assert c["rejected"] == 0, (kind, c)
    # Every channel got something acknowledged, or the check above proved nothing.
    assert all(c["acknowledged"] > 0 for c in r["counts"].values()), r["counts"]
    assert r["integrity_check"] == "ok"
    assert r["kills_during_start"] == 1 and r["log"][-1].get("during_start")
    assert len(r["first_served_s"]) == 2  # each start it waited for served a prediction


def test_broker_restarted_during_mqtt_ingest(tmp_path: Path) -> None:
    mosquitto_binary()  # skips (or, under CI, fails) without mosquitto
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        # SIGTERM: mosquitto saves what it acknowledged before it exits, so a loss here is
        # mliot's (a SIGKILLed broker may lose what it acknowledged since its last save)
        r = broker_restarts(tmp_path, broker, restarts=1, rate_hz=50.0, sig=signal.SIGTERM)
    finally:
        broker.kill()
    assert r["daemon_reconnects"] >= 1, r
    assert r["broker_acknowledged"] == r["published"], r
    assert r["lost"] == 0 and r["duplicated"] == 0, r
    assert r["stored"] == r["published"], r


def test_full_disk_answers_503_corrupts_nothing_and_recovers(tmp_path: Path) -> None:
    _root(can_mount(), "mounting a tmpfs")
    r = disk_full(tmp_path)
    save, ingest = r["save"], r["ingest"]
    assert save["daemon_up"] and save["predict"] == 200, r
    assert save["version_after"] is not None, r
    assert ingest["status"] == 503 and "disk full" in ingest["answer"]["error"], r
    assert ingest["daemon_up"] and ingest["predict"] == 200 and ingest["readyz"] == 200, r
    assert r["integrity_while_full"] == "ok" and r["integrity_after"] == "ok", r
    assert r["resume"]["version"] > save["version_after"], r
    assert r["restart"]["predict"] == 200 and r["restart"]["version"] == r["resume"]["version"]
    assert r["leftovers"] == [], r


def test_stopped_peer_every_prediction_is_answered(tmp_path: Path) -> None:
    _root(can_quota(), "a CPU quota")
    r = stopped_peer(tmp_path, hold_s=4.0)
    # DESIGN: a hung peer is marked down within 10 s (3 s without an answered poll).
    assert r["marked_down_after_s"] < 10, r
    for phase in ("before_stop", "while_stopped", "after_cont"):
        assert r[phase]["requests"] > 0 and r[phase]["failed"] == 0, (phase, r)
    assert r["up_again_after_s"] < 15, r
