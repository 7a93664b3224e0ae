"""Every bad input to the foundation's endpoints gets its status code; the daemon carries on."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import DaemonProcess, wait_for, ws_frame, ws_open, ws_read

SAMPLE = {"samples": [{"features": [1.0, 2.0, 3.0], "label": "a"}]}


def _with_app(daemon: DaemonProcess) -> DaemonProcess:
    assert daemon.request("PUT", "/v1/apps/v", {"data_type": "vector", "classes": ["a", "b"]}
                          )[0] == 201
    assert daemon.request("POST", "/v1/apps/v/samples", SAMPLE)[0] == 200
    return daemon


@pytest.fixture
def app(daemon: DaemonProcess) -> DaemonProcess:
    return _with_app(daemon)


@pytest.fixture(scope="module")
def rejecting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for the bad requests: each test checks that it stored nothing."""
    d = DaemonProcess(tmp_path_factory.mktemp("rejecting"))
    yield _with_app(d.start())
    d.stop()


@pytest.mark.parametrize("method, path, body, raw, status, says", [
    ("POST", "/v1/apps/v/samples", None, b"{not json", 400, "malformed JSON"),
    ("PUT", "/v1/apps/w", None, b"[1,", 400, "malformed JSON"),
    ("GET", "/v1/apps/nope", None, None, 404, "unknown app"),
    ("POST", "/v1/apps/nope/samples", SAMPLE, None, 404, "unknown app"),
    ("GET", "/v2/nothing/here", None, None, 404, "Not Found"),
    ("POST", "/v1/apps/v/samples", {"samples": [{"features": [1, 2], "label": "a"}]}, None,
     422, "invalid sample"),
    ("POST", "/v1/apps/v/samples", {"samples": [{"features": [1, 2, 3], "label": "z"}]}, None,
     422, "invalid sample"),
    ("POST", "/v1/apps/v/samples", {"samples": [{"features": [1, 2, 3]}]}, None, 422,
     "invalid sample"),
    ("PUT", "/v1/apps/BAD!", {"data_type": "vector"}, None, 422, "invalid app spec"),
    ("PUT", "/v1/apps/w", {"data_type": "smell", "policy": {"max_models": 9}}, None, 422,
     "invalid app spec"),
    ("PUT", "/v1/apps/v", {"data_type": "image"}, None, 409, "another type or shape"),
    ("DELETE", "/v1/apps/nope", None, None, 404, "unknown app"),
])
def test_bad_requests_get_their_code(rejecting: DaemonProcess, method: str, path: str,
                                     body: Any, raw: bytes | None, status: int, says: str
                                     ) -> None:
    got, err = rejecting.request(method, path, body, raw=raw)
    assert got == status, err
    assert says in (err["error"] if isinstance(err, dict) else err)
    assert rejecting.request("GET", "/v1/apps/v")[1]["n_samples"] == 1  # nothing was stored
    assert rejecting.request("GET", "/v1/apps")[1] == ["v"]


def test_invalid_spec_lists_each_error_with_its_path(rejecting: DaemonProcess) -> None:
    status, err = rejecting.request("PUT", "/v1/apps/w", {"data_type": "smell",
                                                    "policy": {"max_models": 9}})
    assert status == 422
    assert any(d.startswith("data_type: must be one of") for d in err["details"])
    assert "policy.max_models: must be from 1 to 7" in err["details"]


def test_body_too_large_is_413(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.write_config('[[apps]]\nname = "v"\ndata_type = "vector"\n',
                   daemon_extra="max_body_mb = 0.01")
    d.start()
    big = {"samples": [{"features": [0.5] * 64, "label": "a"}] * 200}
    status, err = d.request("POST", "/v1/apps/v/samples", big)
    assert status == 413 and "max_body_mb" in err["error"]
    assert d.request("POST", "/v1/apps/v/samples", SAMPLE)[0] == 200


def test_token_guards_writes_and_optionally_reads(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.write_config(daemon_extra='token = "s3cret"')
    d.start()
    assert d.request("PUT", "/v1/apps/v", {"data_type": "vector"})[0] == 401
    assert d.request("PUT", "/v1/apps/v", {"data_type": "vector"}, token="wrong")[0] == 401
    assert d.request("PUT", "/v1/apps/v", {"data_type": "vector"}, token="s3cret")[0] == 201
    assert d.request("POST", "/v1/reload")[0] == 401
    assert d.request("GET", "/v1/apps")[0] == 200  # reads are open unless protect_reads
    d.write_config(daemon_extra='token = "s3cret"\nprotect_reads = true')
    assert d.request("POST", "/v1/reload", token="s3cret")[0] == 200
    assert d.request("GET", "/v1/apps")[0] == 401
    assert d.request("GET", "/metrics")[0] == 401
    assert d.request("GET", "/v1/apps", token="s3cret")[0] == 200
    assert d.request("GET", "/healthz")[0] == 200  # probes stay open


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A real 1 MiB filesystem (tmpfs) to fill up."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the full-disk test: {result.stderr}")
        pytest.skip(f"needs root to mount a tmpfs: {result.stderr}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_answers_503_and_keeps_serving(daemon_factory: Any, tiny_disk: Path) -> None:
    d = daemon_factory()
    d.data_dir = tiny_disk / "data"
    d.write_config()
    d.start()
    assert d.request("PUT", "/v1/apps/v", {"data_type": "vector"})[0] == 201
    batch = {"samples": [{"features": [0.25] * 256, "label": "a"}] * 100}
    acknowledged = 0
    for i in range(100):
        status, body = d.request("POST", "/v1/apps/v/samples", {**batch, "batch_id": f"b{i}"})
        if status != 200:
            break
        acknowledged = body["n_samples"]
    assert status == 503, body
    assert "disk full" in body["error"]
    assert acknowledged > 0
    assert d.request("GET", "/healthz")[0] == 200
    assert d.request("GET", "/v1/apps/v")[1]["n_samples"] == acknowledged
    assert d.stop() == 0
    # nothing was corrupted: the acknowledged samples are all there after a restart
    (tiny_disk / "filler").unlink(missing_ok=True)
    d.start()
    assert d.request("GET", "/v1/apps/v")[1]["n_samples"] == acknowledged


def test_an_app_named_like_a_query_route_is_still_guarded(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.write_config(daemon_extra='token = "s3cret"')
    d.start()
    for name in ("predict", "infer", "stream"):
        assert d.request("PUT", f"/v1/apps/{name}", {"data_type": "vector"})[0] == 401
    assert d.request("PUT", "/v1/apps/predict", {"data_type": "vector"}, token="s3cret")[0] == 201
    assert d.request("DELETE", "/v1/apps/predict")[0] == 401
    # queries stay open without protect_reads; the stream carries writes, so it is guarded
    assert d.request("POST", "/v1/apps/predict/predict", {"instances": [[1.0]]})[0] == 503


def _answered(d: DaemonProcess) -> float:
    """Predictions of app ``v`` answered over WebSocket streams so far."""
    text = d.request("GET", "/metrics")[1]
    return sum(float(v) for v in re.findall(
        r'^mliot_predictions_total\{app="v",channel="ws",stage="\d"\} (\S+)$', text, re.M))


def _settled(read: Any, timeout: float = 30.0) -> float:
    """A positive count once two readings 0.5 s apart agree."""
    deadline, last = time.monotonic() + timeout, -1.0
    while time.monotonic() < deadline:
        now = read()
        if now == last > 0:
            return float(now)
        last = now
        time.sleep(0.5)
    raise AssertionError(f"still changing after {timeout} s")


def test_a_websocket_client_that_never_reads_is_paused_then_cut_off(daemon_factory: Any
                                                                     ) -> None:
    """A client that sends predictions and reads none: once its replies back up the daemon
    reads nothing more from it (its flood costs no more predictions, TCP holds it back), and
    after idle_timeout_s it is cut; another client is answered throughout."""
    d = daemon_factory()
    d.write_config(daemon_extra="idle_timeout_s = 3.0")
    app = _with_app(d.start())
    samples = [{"features": [float(i % 2), float(i % 3), 1.0 - i % 2], "label": "ab"[i % 2]}
               for i in range(20)]
    assert app.request("POST", "/v1/apps/v/samples", {"samples": samples})[0] == 200
    wait_for(lambda: app.request("GET", "/v1/apps/v")[1]["ready"], 120)
    frames = 30_000  # ~5 MB of answers: more than the daemon's side held before pausing
    with ws_open(app.port, rcvbuf=4096) as stuck, ws_open(app.port) as other:
        frame = ws_frame(b'{"type": "predict", "ref": 1, "features": [1, 2, 3]}')
        stuck.settimeout(2.0)
        sent = 0
        with contextlib.suppress(TimeoutError):  # the daemon stopped reading: TCP holds us
            for sent in range(1, frames + 1):  # noqa: B007 (counted)
                stuck.sendall(frame)
        paused = _settled(lambda: _answered(app))
        assert paused < frames / 3 and sent > paused  # the rest were never read
        other.sendall(ws_frame(b'{"type": "predict", "ref": "x", "features": [1, 2, 3]}'))
        other.settimeout(30)
        while b'"ref":"x"' not in (payload := ws_read(other)[1]):  # training events come too
            assert b'"type":"event"' in payload, payload
        wait_for(lambda: app.events("ws_client_too_slow"), 60)  # after idle_timeout_s
        assert _answered(app) == paused + 1  # the stuck client's frames were never read
        stuck.settimeout(30)
        with pytest.raises(ConnectionError):
            while ws_read(stuck)[0] != 0x8:
                pass
            raise ConnectionResetError("closed by the daemon")
    assert app.request("GET", "/v1/apps/v")[0] == 200


def _gauge(d: DaemonProcess, name: str) -> float:
    text = d.request("GET", "/metrics")[1]
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def test_watchers_that_never_read_are_dropped_at_once(app: DaemonProcess) -> None:
    """Watch clients (a locked phone, a frozen tab) that never read are cut as soon as their
    queue fills: seen on the daemon's side, before they read a byte; others are answered."""
    samples = [{"features": [float(i % 2), float(i % 3), 1.0 - i % 2], "label": "ab"[i % 2]}
               for i in range(20)]
    assert app.request("POST", "/v1/apps/v/samples", {"samples": samples})[0] == 200
    wait_for(lambda: app.request("GET", "/v1/apps/v")[1]["ready"], 120)
    watchers = [ws_open(app.port, rcvbuf=4096, query="?watch=true") for _ in range(3)]
    other = ws_open(app.port)
    try:
        wait_for(lambda: _gauge(app, "mliot_ws_connections") == 4)
        batch = {"instances": [[0.0, 1.0, 1.0]] * 10_000}  # 10,000 watch messages each
        for _ in range(40):  # far more than kernel buffers and queues hold
            assert app.request("POST", "/v1/apps/v/predict", batch)[0] == 200
            if _gauge(app, "mliot_ws_clients_dropped_total") >= 3:
                break
        assert _gauge(app, "mliot_ws_clients_dropped_total") == 3
        wait_for(lambda: _gauge(app, "mliot_ws_connections") == 1, 5)  # only `other` is left
        other.sendall(ws_frame(b'{"type": "predict", "ref": "x", "features": [1, 0, 0]}'))
        other.settimeout(30)
        while b'"ref":"x"' not in (payload := ws_read(other)[1]):  # training events come too
            assert b'"type":"event"' in payload, payload
        assert b'"type":"prediction"' in payload
    finally:
        for sock in (*watchers, other):
            sock.close()
