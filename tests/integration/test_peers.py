"""Peers and placement with real daemon processes on loopback: profiles and peer secrets,
placement by budget, speed and load, fail-over when a peer dies, and signed model transfer.

Each daemon here has a device token ``t<name>`` and a peer secret ``t<name>-peer``: peers call
each other with the secret, and the device token opens no peer endpoint."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import signal
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.datasets import load_digits
from support import CpuQuota, DaemonProcess, http, wait_for

from actors.scheduler import RATE_HALF_LIFE_S

pytestmark = pytest.mark.timeout(600)
MODEL = "0123456789abcdef:fedcba9876543210"


def peer_block(name: str, d: DaemonProcess, secret: str) -> str:
    return f'[[peers]]\nname = "{name}"\nurl = "{d.url}"\nsecret = "{secret}"\n'


def configure(d: DaemonProcess, name: str, token: str, peers: str = "", extra: str = "") -> None:
    d.write_config(extra + "\n" + peers,
                   daemon_extra=f'name = "{name}"\ntoken = "{token}"\npeer_secret = '
                                f'"{token}-peer"\nmax_body_mb = 64\n')


def machines(d: DaemonProcess, token: str) -> dict[str, dict[str, Any]]:
    status, body = d.request("GET", "/v1/status", token=token)
    assert status == 200, body
    return {m["name"]: m for m in body["machines"]}


def placement(d: DaemonProcess, app: str, token: str) -> dict[str, Any]:
    return d.request("GET", "/v1/status", token=token)[1]["apps"][app]["placement"]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    made: list[DaemonProcess] = []

    def make(n: int) -> list[DaemonProcess]:
        for i in range(n):
            (tmp_path / f"d{i}").mkdir()
            made.append(DaemonProcess(tmp_path / f"d{i}"))
        return made

    yield make  # type: ignore[misc]
    for d in made:
        d.stop()


def test_peers_see_each_other_and_refuse_wrong_tokens(fleet: Any) -> None:
    a, b, c = fleet(3)
    configure(a, "a", "ta", peer_block("b", b, "tb-peer") + peer_block("c", c, "wrong-for-c"))
    configure(b, "b", "tb", peer_block("a", a, "ta-peer"))
    configure(c, "c", "tc", peer_block("a", a, "wrong-for-a"))
    for d in (a, b, c):
        d.start(wait=False)
    for d in (a, b, c):
        d.wait_ready()

    def a_sees() -> dict[str, dict[str, Any]] | None:
        m = machines(a, "ta")  # before the scheduler's first plan: this machine alone
        seen = "b" in m and "c" in m
        # a speed is 0.0 until its daemon has measured it, just after /readyz
        measured = seen and m["a"]["speed"] > 0 and m["b"]["speed"] > 0
        return m if measured and m["b"]["up"] and "401" in (m["c"]["error"] or "") else None

    seen = wait_for(a_sees, 60)
    assert seen["a"]["local"] and seen["a"]["speed"] > 0
    assert seen["b"]["rtt_ms"] > 0 and seen["b"]["speed"] > 0 and seen["b"]["cores"] > 0
    assert not seen["c"]["up"] and "401" in seen["c"]["error"]  # a's token is wrong at c
    b_sees = wait_for(lambda: (a_ := (m := machines(b, "tb")).get("a", {})).get("up")
                      and a_["speed"] > 0 and m, 60)
    assert b_sees["a"]["rtt_ms"] > 0 and b_sees["a"]["speed"] > 0
    c_sees = wait_for(
        lambda: "401" in ((m := machines(c, "tc")).get("a", {}).get("error") or "") and m, 15)
    assert not c_sees["a"]["up"] and "401" in c_sees["a"]["error"]  # c's token is wrong at a
    # The peer API refuses a missing or wrong secret outright, and a's own device token too.
    assert http("GET", f"{a.url}/v1/peer/profile")[0] == 401
    assert http("GET", f"{a.url}/v1/peer/profile", token="tb-peer")[0] == 401
    assert http("GET", f"{a.url}/v1/peer/profile", token="ta")[0] == 401
    status, profile = http("GET", f"{a.url}/v1/peer/profile", token="ta-peer")
    assert status == 200 and profile["name"] == "a" and profile["speed"] > 0


def test_reload_adds_and_removes_peers(fleet: Any) -> None:
    a, b = fleet(2)
    configure(a, "a", "ta")
    configure(b, "b", "tb")
    for d in (a, b):
        d.start()
    assert set(machines(a, "ta")) == {"a"}
    configure(a, "a", "ta", peer_block("b", b, "tb-peer"))
    assert a.request("POST", "/v1/reload", token="ta")[0] == 200
    wait_for(lambda: machines(a, "ta").get("b", {}).get("up"), 15)
    configure(a, "a", "ta")
    assert a.request("POST", "/v1/reload", token="ta")[0] == 200
    wait_for(lambda: set(machines(a, "ta")) == {"a"}, 15)
    # A peer entry that is not a URL is rejected, and the old config stays.
    configure(a, "a", "ta", '[[peers]]\nname = "x"\nurl = "ftp://x"\n')
    status, answer = a.request("POST", "/v1/reload", token="ta")
    assert status == 422 and any("peers[0].url" in e for e in answer["details"])


def test_a_hung_peer_is_marked_down_and_back_up(fleet: Any) -> None:
    """A peer that accepts connections but never answers (SIGSTOP) is down within the
    promised 10 s, like a dead one, and up again once it answers."""
    a, b = fleet(2)
    configure(a, "a", "ta", peer_block("b", b, "tb-peer"))
    configure(b, "b", "tb")
    for d in (a, b):
        d.start()
    wait_for(lambda: machines(a, "ta").get("b", {}).get("up"), 15)  # b is listed once planned
    b.proc.send_signal(signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        wait_for(lambda: not machines(a, "ta")["b"]["up"], 10, 0.2)
        assert time.monotonic() - stopped < 10
        assert a.request("GET", "/readyz")[0] == 200  # this daemon carries on
    finally:
        b.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: machines(a, "ta")["b"]["up"], 15)


def _archive(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _signature(key: str, origin: str, app: str, version: int, body: bytes,
               model: str = MODEL) -> str:
    mac = hmac.new(key.encode(), f"mliot-model\n{origin}\n{app}\n{version}\n{model}\n".encode(),
                   hashlib.sha256)
    mac.update(body)
    return "hmac-sha256=" + mac.hexdigest()


def _put_model(d: DaemonProcess, token: str, path: str, body: bytes, signature: str | None,
               model: str = MODEL) -> tuple[int, Any]:
    req = urllib.request.Request(f"{d.url}{path}", data=body, method="PUT")
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("X-Mliot-Model", model)
    if signature is not None:
        req.add_header("X-Mliot-Signature", signature)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_model_with_a_bad_signature_is_rejected_and_nothing_loaded(fleet: Any) -> None:
    (b,) = fleet(1)
    configure(b, "b", "tb")
    b.start()
    # A pickle that would run code if it were ever loaded.
    trap = b.workdir / "unpickled"
    evil = (b"cos\nsystem\n(S'touch " + str(trap).encode() + b"'\ntR.")
    body = _archive({"manifest.json": b"{}", "model.pkl": evil})
    path = "/v1/peer/models/a/kitchen/3"
    cases = {
        "missing": None,
        "wrong key": _signature("not-the-secret", "a", "kitchen", 3, body),
        "the device token": _signature("tb", "a", "kitchen", 3, body),
        "other app": _signature("tb-peer", "a", "garage", 3, body),
        "other version": _signature("tb-peer", "a", "kitchen", 4, body),
        "other model": _signature("tb-peer", "a", "kitchen", 3, body, model="other:1"),
        "tampered": _signature("tb-peer", "a", "kitchen", 3, body[:-1] + b"\x01"),
        "not ascii": "hmac-sha256=\u00e9",
    }
    for case, signature in cases.items():
        status, answer = _put_model(b, "tb-peer", path, body, signature)
        assert status == 422, (case, answer)
        assert "signature" in answer["error"] or "signed" in answer["error"], case
    # The device token opens no peer endpoint, even with a signature made with it.
    status, answer = _put_model(b, "tb", path, body, _signature("tb", "a", "kitchen", 3, body))
    assert status == 401 and "peer secret" in answer["error"]
    assert not trap.exists()
    assert http("GET", f"{b.url}/v1/peer/profile", token="tb-peer")[1]["hosted"] == {}
    hosted = b.data_dir / "hosted"
    assert not any(hosted.rglob("*.pkl"))
    # Correctly signed but a pickle: refused (422) before it is even extracted, nothing loaded.
    status, answer = _put_model(b, "tb-peer", path, body,
                                _signature("tb-peer", "a", "kitchen", 3, body))
    assert status == 422 and "not loadable" in answer["error"], answer
    assert "refused" in answer["error"] and "never pickles" in answer["error"]
    # Correctly signed, the portable files, but an npz holding an object array (which only a
    # pickle can load): refused when read, nothing loaded.
    objects = io.BytesIO()
    np.savez(objects, **{"front_end.mean": np.array([object()], dtype=object)})
    portable = _archive({"portable.json": b'{"format": "mliot-portable/1"}',
                         "arrays.npz": objects.getvalue()})
    status, answer = _put_model(b, "tb-peer", path, portable,
                                _signature("tb-peer", "a", "kitchen", 3, portable))
    assert status == 422 and "allow_pickle=False" in answer["error"], answer
    assert not trap.exists() and not any(hosted.rglob("*.npz"))
    rejected = [e["error"] for e in b.events("peer_model_rejected")]  # and the log says why
    assert any("never pickles" in e for e in rejected), rejected
    assert any("allow_pickle=False" in e for e in rejected), rejected
    assert http("GET", f"{b.url}/v1/peer/profile", token="tb-peer")[1]["hosted"] == {}
    assert b.request("POST", "/v1/peer/models/a/kitchen/predict", {"instances": [[1.0]]},
                     token="tb-peer")[0] == 404
    # Names that would leave the hosted folder are refused even when correctly signed.
    outside = b.workdir / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    for origin, app in (("..", "kitchen"), ("a", ".."), (str(outside), "x")):
        quoted = "/".join(urllib.parse.quote(p, safe="") for p in (origin, app))
        status, answer = _put_model(b, "tb-peer", f"/v1/peer/models/{quoted}/3", body,
                                    _signature("tb-peer", origin, app, 3, body))
        assert status in (404, 422), (origin, app, answer)
    assert (outside / "keep").read_text() == "mine"
    assert sorted(p.name for p in b.workdir.iterdir()) == sorted(
        ["daemon.log", "data", "mliot.toml", "outside"])


BUDGET_MS = 12.0  # 2 s clips: the audio front end takes a few ms, well above a round trip
RATE, SECONDS = 16000, 2


def clips(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Two-second clips: a low hum, a high beep or plain noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(RATE * SECONDS) / RATE
    kinds = [("hum", "beep", "noise")[i % 3] for i in range(n)]
    out = []
    for kind in kinds:
        tone = {"hum": 200.0, "beep": 1500.0, "noise": 0.0}[kind]
        wave = np.sin(2 * np.pi * tone * t + rng.uniform(0, 6)) if tone else 0.0
        out.append(rng.uniform(0.3, 1.0) * wave + rng.normal(scale=0.2, size=t.size))
    return np.asarray(out, dtype=np.float32), kinds


class Streamer(threading.Thread):
    """One client predicting one clip at a time through the origin, counting failures."""

    def __init__(self, d: DaemonProcess, rows: np.ndarray, token: str) -> None:
        super().__init__(daemon=True)
        self.d, self.token = d, token
        self.bodies = [orjson.dumps({"instances": [r.tolist()]}) for r in rows]
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[tuple[int, Any]] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            status, body = http("POST", f"{self.d.url}/v1/apps/sounds/predict",
                                raw=self.bodies[i % len(self.bodies)], token=self.token)
            if status == 200:
                self.ok += 1
            else:
                self.errors.append((status, body))
            i += 1


class Load(threading.Thread):
    """Keeps a peer busy with big batches of predictions (real serving work)."""

    def __init__(self, d: DaemonProcess, token: str, rows: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.d, self.token = d, token
        self.body = orjson.dumps({"instances": rows.tolist()})
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:  # a peer this loaded may time out or reset a connection: keep loading it
                http("POST", f"{self.d.url}/v1/peer/models/a/sounds/predict", raw=self.body,
                     token=self.token)
            except OSError:
                time.sleep(0.1)


def _feed(d: DaemonProcess, app: str, spec: dict[str, Any], X: np.ndarray, y: list[Any]
          ) -> None:
    assert d.request("PUT", f"/v1/apps/{app}", spec, token="ta")[0] == 201
    body = {"samples": [{"features": x.round(4).tolist(), "label": t}
                        for x, t in zip(X, y, strict=True)]}
    assert d.request("POST", f"/v1/apps/{app}/samples", body, token="ta")[0] == 200


def test_placement_follows_budget_speed_load_and_survives_a_dead_peer(fleet: Any) -> None:
    a, b, c = fleet(3)
    configure(a, "a", "ta", peer_block("b", b, "tb-peer") + peer_block("c", c, "tc-peer"),
              extra="[training]\nworkers = 1\n")
    configure(b, "b", "tb")
    configure(c, "c", "tc")
    for d in (a, b, c):
        d.start(wait=False)
    for d in (a, b, c):
        d.wait_ready()
    # An impossible budget: trained, but refused everywhere, with the numbers that say why.
    X, y = load_digits(return_X_y=True)
    _feed(a, "hopeless", {"data_type": "vector", "policy": {"latency_ms": 0.001}},
          X[y < 2][:120], [int(t) for t in y[y < 2][:120]])
    audio, kinds = clips(90, seed=0)
    _feed(a, "sounds", {"data_type": "audio", "sample_rate": RATE,
                        "policy": {"latency_ms": BUDGET_MS}}, audio, kinds)
    wait_for(lambda: len(a.events("training_run_finished")) >= 2, 300, 0.5)
    refused = wait_for(lambda: (p := placement(a, "hopeless", "ta"))["reason"].startswith(
        "no machine meets") and p, 20)
    assert refused["serving"] is None and "0.001 ms budget" in refused["reason"]
    status, answer = a.request("POST", "/v1/apps/hopeless/predict",
                               {"instances": [X[0].tolist()]}, token="ta")
    assert status == 503 and "no machine meets" in answer["error"]
    # Every machine meets the audio budget: it stays here.
    wait_for(lambda: machines(a, "ta")["a"]["busy"] < 0.1, 60, 0.5)  # training is over
    here = wait_for(lambda: (p := placement(a, "sounds", "ta"))["serving"] == "a" and p, 30)
    local_ms = here["predicted_ms"]["a"]
    assert local_ms < BUDGET_MS / 1.5, f"the ensemble is too slow for this test: {here}"
    test_clips, _ = clips(12, seed=1)
    status, answer = a.request("POST", "/v1/apps/sounds/predict",
                               {"instances": test_clips.tolist()}, token="ta")
    assert status == 200
    labels_here = [p["label"] for p in answer["predictions"]]
    # Make this machine slower (a CPU quota) until the budget holds only on the faster peers.
    quota = CpuQuota(f"mliot-test-{a.port}", cores=local_ms / (2.5 * BUDGET_MS))
    try:
        speed_before = machines(a, "ta")["a"]["speed"]
        quota.add_tree(a.proc.pid)
        wait_for(lambda: machines(a, "ta")["a"]["speed"] < speed_before / 2, 60, 0.5)
        moved = wait_for(lambda: (p := placement(a, "sounds", "ta"))["serving"] in ("b", "c")
                         and p, 30, 0.5)
        first = moved["serving"]
        other = "c" if first == "b" else "b"
        predicted = moved["predicted_ms"]
        # (null: infinite, the machine is past 90 % busy)
        assert (predicted["a"] or float("inf")) > BUDGET_MS >= predicted[first], moved
        peer = {"b": b, "c": c}
        token = {"b": "tb-peer", "c": "tc-peer"}  # the peer API's secrets
        hosted = http("GET", f"{peer[first].url}/v1/peer/profile", token=token[first])[1]
        assert "a/sounds" in hosted["hosted"]
        # The model crossed as arrays and JSON (no pickle), and the peer's answers are the
        # labels this daemon gave (the same members: the peer serves as many as it is asked).
        files = {f.name for f in (peer[first].data_dir / "hosted").rglob("*") if f.is_file()}
        assert files == {"portable.json", "arrays.npz"}, files
        status, there = http("POST", f"{peer[first].url}/v1/peer/models/a/sounds/predict",
                             {"instances": test_clips.tolist(), "members": here["members"]},
                             token=token[first])
        assert status == 200 and [p["label"] for p in there["predictions"]] == labels_here
        status, answer = a.request("POST", "/v1/apps/sounds/predict",
                                   {"instances": test_clips[:5].tolist()}, token="ta")
        assert status == 200 and len(answer["predictions"]) == 5
        assert "/v1/peer/models/{origin}/{app}/predict" in \
            http("GET", f"{peer[first].url}/metrics")[1]
        # Load the peer it went to: placement moves to the other one.
        loads = [Load(peer[first], token[first], test_clips) for _ in range(2)]
        for t in loads:
            t.start()
        try:
            wait_for(lambda: placement(a, "sounds", "ta")["serving"] == other, 60, 0.5)
        finally:
            for t in loads:
                t.stop.set()
            for t in loads:
                t.join(60)
        wait_for(lambda: (machines(a, "ta")[first]["busy"] or 1) < 0.3, 30, 0.5)
        # Kill the peer serving it while a client streams predictions through this daemon.
        streamer = Streamer(a, test_clips, "ta")
        streamer.start()
        wait_for(lambda: streamer.ok >= 20, 30)
        peer[other].proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not machines(a, "ta")[other]["up"], 10, 0.2)
        down_after = time.monotonic() - killed
        # The survivor takes the app once the load it would add fits its budget: that load
        # is the app's request rate, smoothed over RATE_HALF_LIFE_S, and the rate the
        # streamer reached through the dead peer falls to what this slowed machine serves.
        last: list[Any] = [None]

        def back_on_first() -> bool:
            last[0] = placement(a, "sounds", "ta")
            return last[0]["serving"] == first

        try:
            wait_for(back_on_first, 6 * RATE_HALF_LIFE_S, 0.2)
        except AssertionError as exc:
            raise AssertionError(f"still {last[0]}") from exc
        served = streamer.ok
        wait_for(lambda: streamer.ok >= served + 20, 30)
        streamer.stop.set()
        streamer.join(30)
        assert streamer.errors == [], streamer.errors[:3]
        assert down_after < 10
    finally:
        quota.remove()
