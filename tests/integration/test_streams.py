"""Stream apps end to end: readings from real mosquitto (Zigbee2MQTT-style payloads sent with
``mosquitto_pub``) and over HTTP, windows cut by the daemon, labels by time range, the live
activity on the broker, durability across ``kill -9``, and bad input."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from typing import Any

import numpy as np
import pytest
from mqtt_support import Broker, Mqtt, metric, mqtt_daemon, on
from support import wait_for

pytestmark = pytest.mark.timeout(300)
WINDOW_S, HOP_S, HZ, DWELL_S = 2.0, 0.5, 10.0, 1.0
KITCHEN = f"""
[[apps]]
name = "kitchen"
data_type = "sensor"
window_s = {WINDOW_S}
hop_s = {HOP_S}
sample_hz = {HZ}
min_dwell_s = {DWELL_S}
max_lateness_s = 2.0
[[apps.channels]]
name = "power"
topic = "zigbee2mqtt/kettle_plug"
field = "power"
resample = "hold"
[[apps.channels]]
name = "vibration"
topic = "home/vibration"
resample = "mean"
stale_s = 3.0
"""


def expected_windows(start: float, end: float) -> int:
    """Windows (ends on the hop grid) lying wholly inside ``[start, end]``."""
    return math.floor(end / HOP_S) - math.ceil((start + WINDOW_S) / HOP_S) + 1


class Publisher:
    """``mosquitto_pub -l``: one line of stdin is one message, as a user's shell would send."""

    def __init__(self, port: int, topic: str) -> None:
        binary = shutil.which("mosquitto_pub")
        assert binary, "mosquitto_pub is not installed (apt-get install mosquitto-clients)"
        self.proc = subprocess.Popen([binary, "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                                      "-t", topic, "-l"], stdin=subprocess.PIPE)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


class Kitchen:
    """A kettle on a smart plug (power once a second, and on change) and a vibration sensor
    (ten times a second), published as the devices would."""

    def __init__(self, port: int) -> None:
        self.plug = Publisher(port, "zigbee2mqtt/kettle_plug")
        self.vibration = Publisher(port, "home/vibration")
        self.rng = np.random.default_rng(0)
        self.on = False

    def play(self, seconds: float, on: bool) -> float:
        """Play ``seconds`` with the kettle on or off; returns when the state began."""
        began = time.time()
        if on != self.on:
            self.on = on
            self._power()
        tick = 0
        while time.time() - began < seconds:
            level = 3.0 if on else 0.2
            self.vibration.send(f"{level + self.rng.normal(0, 0.05):.4f}")
            if tick % 10 == 0:
                self._power()
            tick += 1
            time.sleep(max(0.0, began + tick / HZ - time.time()))
        return began

    def _power(self) -> None:
        watts = 1830.5 + self.rng.normal(0, 5) if self.on else 0.4
        self.plug.send(json.dumps({"power": round(watts, 1), "state": "ON", "linkquality": 96}))

    def close(self) -> None:
        self.plug.close()
        self.vibration.close()


def test_readings_from_mqtt_train_and_the_activity_follows_the_kettle(
        daemon_factory: Any, broker: Broker) -> None:
    d = mqtt_daemon(daemon_factory, broker, "home", extra=KITCHEN).start()
    watch = Mqtt(broker.port, "home/kitchen/activity", "homeassistant/#")
    kitchen = Kitchen(broker.port)
    try:
        wait_for(lambda: "mqtt_channels_followed" in d.log(), 15)  # the bridge subscribed
        idle1 = (kitchen.play(10, False), time.time())
        kettle = (kitchen.play(10, True), time.time())
        idle2 = (kitchen.play(10, False), time.time())
        kitchen.play(1, False)  # the last range's windows close
        windows = {}
        for label, (start, end) in (("idle", idle1), ("kettle", kettle), ("idle", idle2)):
            start, end = start + 0.5, end - 0.5  # away from the switch
            status, body = d.request("POST", "/v1/apps/kitchen/labels",
                                     {"label": label, "start": start, "end": end})
            assert status == 200, body
            assert body["windows"] == expected_windows(start, end), (label, body)
            windows[body["label_id"]] = body["windows"]
        counts = d.request("GET", "/v1/apps/kitchen")[1]["class_counts"]
        assert sum(counts.values()) == sum(windows.values()) and counts["kettle"] == \
            expected_windows(kettle[0] + 0.5, kettle[1] - 0.5)
        wait_for(lambda: d.request("GET", "/v1/apps/kitchen")[1]["model_version"], 120, 0.5)
        # Home Assistant: the sensor shows the activity; "what is happening" labels ranges
        happening = watch.wait(lambda m: m.topic.endswith("_happening/config") and m.payload)
        config = json.loads(happening.payload)
        assert config["command_topic"] == "home/kitchen/happening"
        assert config["options"] == ["idle", "kettle", "none"]
        sensor = json.loads(watch.wait(on(
            "homeassistant/sensor/mliot_box_kitchen/config")).payload)
        assert sensor["state_topic"] == "home/kitchen/activity"
        # Live: the activity changes on the broker within window_s / 2 + min_dwell_s + hop_s
        # + 1 s of the switch (the product's promise), both ways.
        bound = WINDOW_S / 2 + DWELL_S + HOP_S + 1.0
        kitchen.play(4, False)
        watch.wait(on("home/kitchen/activity", label="idle"), 10)
        for label, on_ in (("kettle", True), ("idle", False)):
            n = len(watch.messages)
            watch.publish("home/kitchen/happening", "kettle" if on_ else "none")
            began = kitchen.play(bound + 1.5, on_)
            seen = [m for m in watch.messages[n:] if on("home/kitchen/activity", label=label)(m)]
            assert seen, f"no {label} activity within {bound + 1.5:.1f} s"
            assert seen[0].timestamp - time.monotonic() + time.time() - began <= bound
        ranges = wait_for(lambda: [r for r in d.request("GET", "/v1/apps/kitchen/labels")[1][
            "labels"] if r["end"] is not None and r["start"] > idle2[1]], 10)
        assert ranges[0]["label"] == "kettle" and ranges[0]["windows"] > 0
    finally:
        kitchen.close()
        watch.close()


def _readings(t0: float, seconds: float, on: bool) -> list[dict[str, Any]]:
    """The kitchen over HTTP: power once a second, vibration ten times a second."""
    out = []
    for i in range(int(seconds * HZ)):
        t = t0 + i / HZ
        out.append({"t": t, "channel": "vibration", "value": 3.0 if on else 0.2})
        if i % 10 == 0:
            out.append({"t": t, "channel": "power", "value": 1830.5 if on else 0.4})
    return out


def test_acknowledged_readings_survive_kill_9_and_are_labelled_after_a_restart(
        daemon_factory: Any) -> None:
    d = daemon_factory(extra=KITCHEN)
    d.start()
    t0 = time.time() - 60
    batches = [_readings(t0 + 10 * k, 10, k % 2 == 1) for k in range(4)]
    for k, batch in enumerate(batches):
        status, body = d.request("POST", "/v1/apps/kitchen/readings",
                                 {"readings": batch, "batch_id": f"b{k}"})
        assert status == 200 and body == {"accepted": len(batch)}, body
    d.proc.kill()  # SIGKILL, right after the last acknowledgement
    d.wait()
    d.start()
    # a retried batch stores nothing twice
    assert d.request("POST", "/v1/apps/kitchen/readings",
                     {"readings": batches[0], "batch_id": "b0"})[1] == {"accepted": 0}
    got = d.request("GET", f"/v1/apps/kitchen/readings?start={t0 - 1}&end={t0 + 41}")[1]
    n = {c["name"]: c["n"] for c in got["channels"]}
    assert n == {"vibration": 400, "power": 40}
    # A range labelled now finds the windows of the readings stored before the kill; the same
    # label_id again stores nothing more.
    body = {"label": "kettle", "start": t0 + 10, "end": t0 + 20, "label_id": "k1"}
    first = d.request("POST", "/v1/apps/kitchen/labels", body)
    assert first == (200, {"label_id": "k1", "windows": expected_windows(t0 + 10, t0 + 20)})
    assert d.request("POST", "/v1/apps/kitchen/labels", body) == first
    assert d.request("GET", "/v1/apps/kitchen")[1]["n_samples"] == first[1]["windows"]
    # An open range, ended later; an overlapping range of another label names both.
    status, opened = d.request("POST", "/v1/apps/kitchen/labels",
                               {"label": "idle", "start": t0 + 20.5})
    assert status == 200 and opened["windows"] == 0
    status, clash = d.request("POST", "/v1/apps/kitchen/labels",
                              {"label": "kettle", "start": t0 + 25, "end": t0 + 28})
    assert status == 409 and opened["label_id"] in clash["error"] and "kettle" in clash["error"]
    status, ended = d.request("POST", f"/v1/apps/kitchen/labels/{opened['label_id']}/end",
                              {"end": t0 + 30})
    assert status == 200 and ended["windows"] == expected_windows(t0 + 20.5, t0 + 30)


def test_bad_readings_are_refused_counted_and_a_stale_channel_marks_its_windows(
        daemon_factory: Any, broker: Broker) -> None:
    d = mqtt_daemon(daemon_factory, broker, "home", extra=KITCHEN).start()
    now = time.time()
    bad = [{"t": now, "channel": "oven", "value": 1.0},  # unknown channel
           {"t": now, "channel": "power", "value": "hot"},  # not numeric
           {"t": now + 3600, "channel": "power", "value": 1.0},  # far in the future
           {"channel": "power", "value": 1.0}]  # a missing field
    for item in bad:
        status, body = d.request("POST", "/v1/apps/kitchen/readings", {"readings": [item]})
        assert status == 422 and body["details"], body
    for reason in ("unknown_channel", "not_numeric", "future", "missing_field"):
        assert metric(d, "mliot_readings_rejected_total",
                      f'{{app="kitchen",reason="{reason}"}}') == 1, reason
    # Out of order is fine: stored, counted as late.
    late = [{"t": now - 0.5, "channel": "vibration", "value": 0.2},
            {"t": now - 5.0, "channel": "vibration", "value": 0.2}]
    assert d.request("POST", "/v1/apps/kitchen/readings", {"readings": late})[0] == 200
    # Over MQTT: a payload without the field, and one that is no number
    wait_for(lambda: "mqtt_channels_followed" in d.log(), 15)
    pub = Mqtt(broker.port)
    pub.publish("zigbee2mqtt/kettle_plug", {"state": "ON"})
    pub.publish("home/vibration", "shaking")
    wait_for(lambda: metric(d, "mliot_readings_rejected_total",
                            '{app="kitchen",reason="not_numeric"}') == 2 and metric(
        d, "mliot_readings_rejected_total", '{app="kitchen",reason="missing_field"}') == 2, 10)
    # The vibration channel goes quiet past its stale_s: its windows are invalid, and the
    # status names it.
    for _ in range(int(3 / 0.1)):
        pub.publish("zigbee2mqtt/kettle_plug", {"power": 0.4})
        time.sleep(0.1)
    status = wait_for(lambda: (a := d.request("GET", "/v1/apps/kitchen")[1])["window"]
                      and a["window"]["missing"] == ["vibration"] and a, 10)
    assert not status["window"]["valid"]
    assert [c["stale"] for c in status["channels"]] == [False, True]
    pub.close()
    assert d.proc.poll() is None


def test_channels_change_live_through_the_api_and_the_file(daemon_factory: Any) -> None:
    d = daemon_factory(extra=KITCHEN)
    d.start()
    spec: dict[str, Any] = {"data_type": "sensor", "window_s": 2.0, "hop_s": 0.5,
                            "channels": [{"name": "a"}]}
    assert d.request("PUT", "/v1/apps/plug", spec)[0] == 201
    reading = {"readings": [{"t": time.time(), "channel": "b", "value": 1.0}]}
    assert d.request("POST", "/v1/apps/plug/readings", reading)[0] == 422
    spec["channels"].append({"name": "b", "resample": "mean"})
    assert d.request("PUT", "/v1/apps/plug", spec)[0] == 200
    assert d.request("POST", "/v1/apps/plug/readings", reading) == (200, {"accepted": 1})
    app = d.request("GET", "/v1/apps/plug")[1]
    assert [c["name"] for c in app["channels"]] == ["a", "b"] and app["shape"] == [2, 20]
    # The file: a third channel applies on reload (saving is enough: the file is polled).
    d.write_config(KITCHEN + '[[apps.channels]]\nname = "door"\n')
    d.request("POST", "/v1/reload")
    app = wait_for(lambda: (a := d.request("GET", "/v1/apps/kitchen")[1])["shape"] == [3, 20]
                   and a, 10)
    assert [c["name"] for c in app["channels"]] == ["power", "vibration", "door"]
    # A bad one is rejected with every error, and the channels stay.
    d.write_config(KITCHEN + '[[apps.channels]]\nname = "power"\nresample = "max"\n')
    status, body = d.request("POST", "/v1/reload")
    assert status == 422 and any("duplicate name 'power'" in e for e in body["details"])
    assert any("resample: must be one of hold, mean" in e for e in body["details"])
    assert d.request("GET", "/v1/apps/kitchen")[1]["shape"] == [3, 20]
