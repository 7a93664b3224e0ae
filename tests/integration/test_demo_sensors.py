"""`mliot demo --sensors` end to end: it starts a daemon, teaches the stream app ``home`` a
generated kitchen's history, plays the kitchen live (over HTTP, or on MQTT when the config has
an ``[mqtt]`` section) and prints the activity until SIGTERM, which stops the daemon too."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from mqtt_support import Broker, Mqtt, on
from support import DaemonProcess

pytestmark = pytest.mark.timeout(180)
ACTIVITY = re.compile(r"^\d\d:\d\d:\d\d  activity: (\w+) \(since \d\d:\d\d:\d\d\)$")
CLASSES = {"idle", "kettle", "microwave", "fridge"}


def run_until_activity(d: DaemonProcess, timeout: float = 90.0
                       ) -> tuple[subprocess.Popen[str], list[str], float]:
    """Start the demo on ``d``'s config; its output up to the first activity line, and when
    it said it plays live."""
    demo = subprocess.Popen([sys.executable, "-m", "mliot_daemon", "demo", "--sensors",
                             "--config", str(d.config_path)], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    live_at = None
    assert demo.stdout is not None
    deadline = time.monotonic() + timeout
    while not lines or not ACTIVITY.match(lines[-1]):
        assert time.monotonic() < deadline and demo.poll() is None, lines
        lines.append(demo.stdout.readline().rstrip("\n"))
        if lines[-1].startswith("playing the kitchen live"):
            live_at = time.time()
    assert live_at is not None, lines
    return demo, lines, live_at


def stop(demo: subprocess.Popen[str], d: DaemonProcess) -> str:
    demo.send_signal(signal.SIGTERM)
    rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, rest
    assert "stopping the demo" in rest
    with pytest.raises(OSError):
        d.request("GET", "/healthz", timeout=2)  # the daemon it started has stopped
    return rest


def check_history(d: DaemonProcess, live_at: float) -> None:
    """Every class labelled, on ranges of the past that end before the live play began."""
    status, app = d.request("GET", "/v1/apps/home")
    assert status == 200 and app["model_version"] and app["activity"]["label"] in CLASSES
    assert set(app["class_counts"]) == CLASSES
    ranges = d.request("GET", "/v1/apps/home/labels")[1]["labels"]
    assert ranges and all(r["windows"] > 0 for r in ranges)
    assert all(live_at - 14 * 86400 < r["start"] < r["end"] < live_at for r in ranges)


def test_demo_sensors_teaches_over_http_and_shows_the_activity(daemon_factory: Any) -> None:
    d = daemon_factory()  # only for its config and folder; the demo starts the daemon itself
    demo, lines, live_at = run_until_activity(d)
    try:
        check_history(d, live_at)
        assert any("over HTTP" in line for line in lines), lines
        assert not any("mosquitto_pub" in line for line in lines)  # no MQTT, no hints
        assert any(line.startswith("sent ") and "readings" in line for line in lines)
        stop(demo, d)
    finally:
        demo.kill()


def test_demo_sensors_plays_on_mqtt_and_the_activity_is_retained(
        daemon_factory: Any, broker: Broker) -> None:
    d = daemon_factory()
    d.write_config(extra=f'[mqtt]\nurl = "{broker.url}"\nprefix = "demo"\n')
    demo, lines, live_at = run_until_activity(d)
    try:
        check_history(d, live_at)
        hints = [line.strip() for line in lines if "mosquitto_" in line]
        assert f"mosquitto_pub -h 127.0.0.1 -p {broker.port} -t home/kitchen_plug -m " \
               """'{"power": 1830.5, "state": "ON"}'""" in hints, lines
        assert f"mosquitto_sub -h 127.0.0.1 -p {broker.port} -t demo/home/activity" in hints
        # subscribed after the activity changed: the broker kept it (retained), and the
        # sensors publish as Zigbee2MQTT does
        watch = Mqtt(broker.port, "demo/home/activity", "home/kitchen_plug", "home/vibration")
        try:
            kept = watch.wait(on("demo/home/activity"), 10)
            assert kept.retain and json.loads(kept.payload)["label"] in CLASSES
            assert float(watch.wait(on("home/vibration"), 10).payload) >= 0.0
            plug = json.loads(watch.wait(on("home/kitchen_plug"), 15).payload)
            assert plug["state"] == "ON" and plug["power"] >= 0.0
        finally:
            watch.close()
        stop(demo, d)
    finally:
        demo.kill()
