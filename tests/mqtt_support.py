"""Helpers of the tests that use MQTT: Debian's mosquitto on a free loopback port (``Broker``;
the ``broker`` fixture is in conftest), a recording paho client, and daemons configured for it.
When CI is set, a missing mosquitto fails instead of skipping."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import DaemonProcess, free_port

CENTERS = {"a": (0.0, 0.0), "b": (10.0, 0.0), "c": (0.0, 10.0)}


# -- the broker ---------------------------------------------------------------------------------


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None)
    if found is None:
        message = "mosquitto is not installed (apt-get install mosquitto mosquitto-clients)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


class Broker:
    """A mosquitto process of our own, with persistence on, so a restart keeps sessions."""

    def __init__(self, workdir: Path) -> None:
        self.binary = mosquitto_binary()
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
            f"log_dest file {self.log_path}\n"
            # Started as root (CI), mosquitto drops to its own user, which may not write in a
            # tmp_path (root's, 0700): it ran without persistence or log, silently.
            + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = paho.Client(CallbackAPIVersion.VERSION2)
            try:
                probe.connect("127.0.0.1", self.port)
                probe.disconnect()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# -- a test client ------------------------------------------------------------------------------


class Mqtt:
    """A paho client in its own thread that records what arrives on its subscriptions."""

    def __init__(self, port: int, *topics: str) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if topics:
            self.client.subscribe([(t, 1) for t in topics])
            assert self.subscribed.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def publish(self, topic: str, payload: Any, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes | str) else json.dumps(payload)
        info = self.client.publish(topic, data, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def wait(self, match: Callable[[paho.MQTTMessage], bool], timeout: float = 30.0
             ) -> paho.MQTTMessage:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages:
                    if match(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m.topic, m.payload[:80]) for m in self.messages[-10:]]
                    raise AssertionError(f"no matching MQTT message within {timeout} s; "
                                         f"last seen: {seen}")
                self.cond.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def on(topic: str, **fields: Any) -> Callable[[paho.MQTTMessage], bool]:
    """A matcher: this topic, and a JSON payload with these fields."""

    def match(m: paho.MQTTMessage) -> bool:
        if m.topic != topic:
            return False
        if not fields:
            return True
        try:
            body = json.loads(m.payload)
        except ValueError:
            return False
        return isinstance(body, dict) and all(body.get(k) == v for k, v in fields.items())

    return match


def blobs(n: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """Three well-separated Gaussian blobs in 2-d, n samples each."""
    rng = np.random.default_rng(seed)
    return [{"features": (np.asarray(c) + rng.normal(0, 1.0, 2)).round(4).tolist(), "label": k}
            for k, c in CENTERS.items() for _ in range(n)]


def metric(d: DaemonProcess, name: str, labels: str = "") -> float:
    status, text = d.request("GET", "/metrics")
    assert status == 200
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def mqtt_daemon(factory: Any, broker: Broker, prefix: str, name: str = "box",
                extra: str = "", daemon_extra: str = "") -> DaemonProcess:
    d = factory(name)
    d.write_config(
        extra=f'[training]\nworkers = 1\n[mqtt]\nurl = "{broker.url}"\nprefix = "{prefix}"\n'
              f"{extra}",
        daemon_extra=f'name = "{name}"\nlog_level = "debug"\nlog_format = "json"\n'
                     f"{daemon_extra}")
    return d


def mosquitto_pub(port: int, topic: str, payload: str) -> None:
    """Publish as a user would from a shell (Debian's mosquitto-clients), QoS 1."""
    binary = shutil.which("mosquitto_pub")
    assert binary, "mosquitto_pub is not installed (apt-get install mosquitto-clients)"
    subprocess.run([binary, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic,
                    "-m", payload], check=True, timeout=10)
