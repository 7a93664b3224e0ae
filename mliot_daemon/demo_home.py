"""`mliot demo --sensors`: a generated kitchen teaches a stream app, then plays live.

The kitchen has one smart plug's power (a kettle, a microwave and a fridge compressor behind it;
the plug reports on change and every PLUG_EVERY_S, as Zigbee plugs do) and two vibration
sensors: one on the counter at 10 Hz (the kettle's boil rumbles ever harder, the microwave hums
with its turntable) and one on the fridge at 1 Hz. One thing happens at a time.

To have a model within a minute, the demo first sends the last HISTORY_S of the kitchen at
once: readings at their real rates with past timestamps, always over HTTP (the past cannot be
published live), and labels a few of its ranges through the labels API. Once a model serves,
the kitchen plays in real time, published on the sensors' topics when the daemon's config has
an ``[mqtt]`` section (as Zigbee2MQTT would: JSON on the plug's topic, bare numbers on the
vibration sensors') and POSTed otherwise, and the demo prints the activity the daemon finds.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from mliot_daemon.client import ApiError, Client
from mliot_daemon.commands import run_demo
from mliot_daemon.settings import MqttSettings, Settings

APP = "home"
PLUG, COUNTER, FRIDGE = "home/kitchen_plug", "home/vibration", "home/fridge_vibration"
# stale_s: a sensor silent for several of its reporting periods is offline, and windows
# without it should not be guessed from its last value
SPEC = {"data_type": "sensor", "window_s": 4.0, "hop_s": 1.0, "sample_hz": 10.0,
        "min_dwell_s": 3.0, "channels": [
            # hold: the plug reports only on change (and every PLUG_EVERY_S)
            {"name": "power", "topic": PLUG, "field": "power", "resample": "hold",
             "stale_s": 60.0},
            {"name": "vibration", "topic": COUNTER, "resample": "mean", "stale_s": 5.0},
            {"name": "fridge_vibration", "topic": FRIDGE, "resample": "mean", "stale_s": 10.0}]}
RATES = {"vibration": 10.0, "fridge_vibration": 1.0}  # readings a second
PLUG_EVERY_S = 10.0
HISTORY_S = 50 * 60.0
MIN_HISTORY_S = 20 * 60.0  # less leaves too few ranges of each class to label
LABELS_PER_CLASS = 3
MARGIN_S = 2.0  # a labelled range keeps this far from its segment's switches
BATCH = 5000  # readings per request
TICK_S = 0.1
POLL_S = 0.5
# seconds each thing lasts (a fridge compressor really runs 10-30 min: shortened for the demo)
DURATIONS = {"idle": (20.0, 60.0), "kettle": (60.0, 120.0), "microwave": (45.0, 120.0),
             "fridge": (90.0, 180.0)}
EVENTS = ("kettle", "microwave", "fridge")


@dataclass(frozen=True, slots=True)
class Segment:
    start: float
    end: float
    label: str


class Home:
    """The generated kitchen: a schedule of segments (idle between events, events in shuffled
    rounds so each class comes back soon), and the readings its sensors send."""

    def __init__(self, start: float, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.segments: list[Segment] = []
        self._starts: list[float] = []
        self._bag: list[str] = []
        self._extend(start)
        # each channel's next reading; the plug samples once a second and reports what changed
        self.next = {"vibration": start, "fridge_vibration": start, "plug": start}
        self.reported: tuple[float, float] | None = None  # the plug's last report (t, watts)

    def _extend(self, until: float) -> None:
        t = self.segments[-1].end if self.segments else until
        while t <= until:
            if not self.segments or self.segments[-1].label != "idle":
                label = "idle"
            else:
                if not self._bag:
                    self._bag = list(self.rng.permutation(EVENTS))
                label = str(self._bag.pop())
            end = t + float(self.rng.uniform(*DURATIONS[label]))
            self.segments.append(Segment(t, end, label))
            self._starts.append(t)
            t = end

    def segment_at(self, t: float) -> Segment:
        self._extend(t)
        return self.segments[bisect.bisect_right(self._starts, t) - 1]

    def advance(self, until: float) -> list[tuple[float, str, float]]:
        """The readings of ``[the last call, until)``: (t, channel, value), in time order."""
        out: list[tuple[float, str, float]] = []
        for channel, hz in RATES.items():
            t = self.next[channel]
            while t < until:
                out.append((round(t, 3), channel, self._vibration(channel, t)))
                t += 1.0 / hz
            self.next[channel] = t
        t = self.next["plug"]
        while t < until:
            watts = self._power(t)
            last = self.reported
            if last is None or t - last[0] >= PLUG_EVERY_S - 1e-6 or \
                    abs(watts - last[1]) > max(3.0, 0.05 * last[1]):
                out.append((round(t, 3), "power", watts))
                self.reported = (t, watts)
            t += 1.0
        self.next["plug"] = t
        out.sort(key=lambda r: r[0])
        return out

    def _power(self, t: float) -> float:
        s = self.segment_at(t)
        into, noise = t - s.start, float(self.rng.normal())
        match s.label:
            case "kettle":  # the element's resistance rises as it heats
                watts = 1830.0 - 30.0 * min(1.0, into / 120.0) + 8.0 * noise
            case "microwave":
                watts = 1100.0 + 15.0 * noise
            case "fridge":  # the compressor's inrush, then a slow decline
                watts = 350.0 if into < 2.0 else 95.0 - 10.0 * min(1.0, into / 180.0) + noise
            case _:
                watts = 1.8 + 0.1 * noise  # standby
        return round(max(0.0, watts), 1)

    def _vibration(self, channel: str, t: float) -> float:
        s = self.segment_at(t)
        into, noise = t - s.start, float(self.rng.normal())
        if channel == "fridge_vibration":
            level = {"fridge": 0.45, "kettle": 0.03, "microwave": 0.06}.get(s.label, 0.02)
            return round(max(0.0, level * (1.0 + 0.1 * noise)), 4)
        match s.label:
            case "kettle":  # the boil builds up over a minute
                level = 0.05 + 0.5 * min(1.0, into / 60.0) ** 2
                value = level * (1.0 + 0.2 * noise)
            case "microwave":  # a steady hum, swelling with the turntable's turn
                value = 0.3 + 0.08 * math.sin(2 * math.pi * into / 12.0) + 0.03 * noise
            case "fridge":
                value = 0.04 + 0.02 * noise
            case _:
                value = 0.02 + 0.01 * noise
        return round(max(0.0, value), 4)


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def demo(client: Client, config: Path | None, minutes: float | None) -> int:
    """Start a daemon (unless one answers), teach the app ``home`` the kitchen's history, then
    play the kitchen live and print the activity until Ctrl-C, SIGTERM or ``minutes``."""
    from mliot_daemon.config import load_file, parse_settings

    settings = load_file(config) if config is not None else parse_settings({})
    def play() -> int:
        home = _teach(client, settings)
        if settings.mqtt is not None:
            _print_by_hand(settings.mqtt)
        return asyncio.run(_live(client, home, settings.mqtt, minutes))

    return run_demo(client, config, play)


def _teach(client: Client, settings: Settings) -> Home:
    """Create the app (or find the demo's), send and label the history unless a model serves
    already, and wait for one."""
    now = time.time()
    # the daemon refuses readings older than keep_readings_days
    start = now - min(HISTORY_S, settings.daemon.keep_readings_days * 86400.0 - 600.0)
    if APP in client.request("GET", "/v1/apps"):
        info = client.request("GET", f"/v1/apps/{APP}")
        names = [c["name"] for c in info.get("channels") or ()]
        if names != [c["name"] for c in SPEC["channels"]]:
            raise ApiError(f"an app {APP!r} exists that is not the demo's (channels {names}); "
                           f"delete it or use another daemon")
        if info.get("model_version") or info.get("n_samples"):
            # an earlier run taught it (or was stopped while it trained)
            print(f"app {APP!r} has {info['n_samples']} labelled windows already", flush=True)
            _wait_for_model(client, set(info.get("class_counts") or ()))
            return Home(now, seed=int(now))
        start = max(start, _after_earlier_run(client, start, now))
        if now - start < MIN_HISTORY_S:
            raise ApiError(f"app {APP!r} has readings of the last minutes but no labels; run "
                           f"the demo again later, or delete the app: curl -X DELETE "
                           f"{client.url}/v1/apps/{APP}")
    else:
        client.request("PUT", f"/v1/apps/{APP}", SPEC)
    print(f"demo app {APP!r}: a kitchen's smart plug (power) and two vibration sensors",
          flush=True)
    print(f"see it at {client.url}/#/app/{APP}", flush=True)
    home = Home(start, seed=int(start))
    readings = home.advance(now)
    _post(client, readings)
    print(f"sent {len(readings)} readings: the kitchen's last {(now - start) / 60:.0f} minutes",
          flush=True)
    _wait_for_model(client, _label(client, home, now))
    return home


def _after_earlier_run(client: Client, start: float, now: float) -> float:
    """Where a new history may begin: after the readings an earlier, stopped run sent (and
    their windows), so that no two histories mix."""
    got = client.request("GET", f"/v1/apps/{APP}/readings?start={start}&end={now}")
    newest = [c["t"][-1] for c in got["channels"] if c["t"]]
    # a read-back is thinned: its last point may be a few readings before the last one
    return max(newest) + SPEC["window_s"] + 10.0 if newest else start


def _post(client: Client, readings: list[tuple[float, str, float]]) -> None:
    for i in range(0, len(readings), BATCH):
        part = readings[i:i + BATCH]
        # named by content, so a retried batch is stored once
        body = {"batch_id": f"demo-{part[0][0]:.3f}-{len(part)}",
                "readings": [{"t": t, "channel": c, "value": v} for t, c, v in part]}
        client.request("POST", f"/v1/apps/{APP}/readings", body)


def _label(client: Client, home: Home, now: float) -> set[str]:
    """Label LABELS_PER_CLASS ranges of each class, spread over the history (the rest stays
    unlabelled, as in a real home). One of each class goes first: the trainer starts on the
    first labels, and its quick first model should know every class."""
    done = [s for s in home.segments if s.end < now]
    picks: dict[str, list[Segment]] = {}
    for label in ("idle", *EVENTS):
        mine = [s for s in done if s.label == label]
        spread = np.linspace(0, len(mine) - 1, min(len(mine), LABELS_PER_CLASS))
        picks[label] = list(dict.fromkeys(mine[round(k)] for k in spread))
    for k in range(LABELS_PER_CLASS):
        for label, segments in picks.items():
            if k < len(segments):
                s = segments[k]
                body = {"label": label, "start": s.start + MARGIN_S, "end": s.end - MARGIN_S}
                answer = client.request("POST", f"/v1/apps/{APP}/labels", body)
                print(f"labelled {clock(s.start)}-{clock(s.end)} {label!r}: "
                      f"{answer['windows']} windows", flush=True)
    missing = [label for label, segments in picks.items() if not segments]
    if missing:
        print(f"(the history had no {', '.join(missing)}: the model will not know it)",
              flush=True)
    return {label for label, segments in picks.items() if segments}


def _wait_for_model(client: Client, classes: set[str]) -> None:
    """Until a model serves that knows every labelled class: the trainer starts on the first
    ranges labelled, and its first quick model may have seen only some of them."""
    began, last_note = time.monotonic(), -math.inf
    info = client.request("GET", f"/v1/apps/{APP}")
    while not info.get("model_version") or not classes <= set(
            client.request("GET", f"/v1/apps/{APP}/quality")["classes"]):
        if last_note == -math.inf:
            print(f"training on {info['n_samples']} labelled windows ...", flush=True)
            last_note = time.monotonic()
        elif time.monotonic() - last_note >= 30.0:
            print(f"still training ({time.monotonic() - began:.0f} s)", flush=True)
            last_note = time.monotonic()
        time.sleep(POLL_S)
        info = client.request("GET", f"/v1/apps/{APP}")
    print(f"model v{info['model_version']} serves after {time.monotonic() - began:.0f} s",
          flush=True)


def _mqtt_address(m: MqttSettings) -> tuple[str, int, bool]:
    url = urlsplit(m.url)
    tls = url.scheme == "mqtts"
    return url.hostname or "127.0.0.1", url.port or (8883 if tls else 1883), tls


def _print_by_hand(m: MqttSettings) -> None:
    """The mosquitto_pub lines that feed the app as the demo does, and the one that shows its
    activity (the daemon publishes it retained)."""
    host, port, tls = _mqtt_address(m)
    opts = f"-h {shlex.quote(host)} -p {port}"
    if tls:
        opts += f" --cafile {shlex.quote(m.ca_file)}" if m.ca_file else " --capath /etc/ssl/certs"
    if m.username:
        opts += f" -u {shlex.quote(m.username)} -P PASSWORD"
    plug = json.dumps({"power": 1830.5, "state": "ON"})
    print("feed the app by hand, as the sensors do (the daemon follows these topics):\n"
          f"  mosquitto_pub {opts} -t {PLUG} -m {shlex.quote(plug)}\n"
          f"  mosquitto_pub {opts} -t {COUNTER} -m 0.42\n"
          f"  mosquitto_pub {opts} -t {FRIDGE} -m 0.45\n"
          "and watch the activity:\n"
          f"  mosquitto_sub {opts} -t {shlex.quote(f'{m.prefix}/{APP}/activity')}", flush=True)


async def _live(client: Client, home: Home, mqtt: MqttSettings | None,
                minutes: float | None) -> int:
    # what happened since the history was sent (while training) is history too
    await asyncio.to_thread(_post, client, home.advance(time.time()))
    stop_at = math.inf if minutes is None else time.monotonic() + minutes * 60.0
    async with contextlib.AsyncExitStack() as stack:
        publish = await _publisher(stack, mqtt)
        print(f"playing the kitchen live {'on MQTT' if publish else 'over HTTP'}; "
              "Ctrl-C stops", flush=True)
        watcher = asyncio.create_task(_watch(client))
        stack.push_async_callback(_cancel, watcher)
        playing = None
        while time.monotonic() < stop_at:
            if watcher.done():
                watcher.result()  # it failed: raises why
            now = time.time()
            readings = home.advance(now)
            if (label := home.segment_at(now).label) != playing:
                print(f"{clock(now)}  playing: {label}", flush=True)
                playing = label
            if publish is not None:
                for _t, channel, value in readings:
                    await publish(channel, value)
            elif readings:
                await asyncio.to_thread(_post, client, readings)
            await asyncio.sleep(TICK_S)
    print(f"played {minutes:g} minutes; stopping the demo", flush=True)
    return 0


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _publisher(stack: contextlib.AsyncExitStack, mqtt: MqttSettings | None) -> Any:
    """A function publishing a reading as the sensor would; None without MQTT."""
    if mqtt is None:
        return None
    import aiomqtt  # the daemon's own MQTT client

    host, port, tls = _mqtt_address(mqtt)
    client = aiomqtt.Client(host, port, username=mqtt.username or None,
                            password=mqtt.password or None, identifier=f"mliot-demo-{os.getpid()}",
                            tls_params=aiomqtt.TLSParameters(ca_certs=mqtt.ca_file or None)
                            if tls else None)
    try:
        await stack.enter_async_context(client)
    except aiomqtt.MqttError as exc:
        print(f"cannot reach the broker at {mqtt.url} ({exc}): playing over HTTP", flush=True)
        return None
    topics = {"power": PLUG, "vibration": COUNTER, "fridge_vibration": FRIDGE}

    async def publish(channel: str, value: float) -> None:
        payload = json.dumps({"power": value, "state": "ON"}) if channel == "power" \
            else str(value)
        try:  # QoS 0, as Zigbee2MQTT publishes: a lost reading is only a gap in a window
            await client.publish(topics[channel], payload, qos=0)
        except aiomqtt.MqttError as exc:
            raise ApiError(f"the broker at {mqtt.url}: {exc}") from exc

    return publish


async def _watch(client: Client) -> None:
    """Print the app's activity as it changes, polling its status."""
    shown = None
    while True:
        info = await asyncio.to_thread(client.request, "GET", f"/v1/apps/{APP}")
        activity = info.get("activity")
        if activity and (activity["label"], activity["since"]) != shown:
            shown = (activity["label"], activity["since"])
            print(f"{clock(time.time())}  activity: {activity['label']} "
                  f"(since {clock(activity['since'])})", flush=True)
        await asyncio.sleep(POLL_S)
