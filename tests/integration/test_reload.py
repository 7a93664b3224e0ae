"""Live reload of a real daemon: bad files are refused, good ones apply without a restart."""

from __future__ import annotations

import signal
import socket
import time
from typing import Any

from support import DaemonProcess, wait_for

APP = '[[apps]]\nname = "{name}"\ndata_type = "vector"\n'


def raw_get(sock: socket.socket, path: str) -> bytes:
    """One HTTP/1.1 keep-alive request on an open socket."""
    address, port = sock.getpeername()[:2]
    host = f"{address}:{port}"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n"
                 .encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0]
                 .split(b":")[1])
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b"\r\n")[0] + b" " + body


def test_bad_reloads_are_rejected_with_paths_and_the_old_config_stays(
        daemon: DaemonProcess) -> None:
    # unknown key and an out-of-range value through POST /v1/reload
    daemon.write_config(APP.format(name="one") +
                        '[[apps]]\nname = "two"\ndata_type = "vector"\n'
                        '[apps.policy]\nlatency_ms = -5.0\n', daemon_extra="colour = 1")
    status, err = daemon.request("POST", "/v1/reload")
    assert status == 422
    assert "daemon.colour: unknown key" in err["details"]
    assert "apps[1].policy.latency_ms: must be > 0" in err["details"]
    # not TOML at all, through SIGHUP
    daemon.config_path.write_text("[daemon\nlisten=")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: any(e.get("source") == "sighup"
                         for e in daemon.events("config_reload_rejected")))
    status, body = daemon.request("GET", "/v1/status")
    assert status == 200 and body["config_version"] == 1
    assert daemon.request("GET", "/v1/apps")[1] == []


def test_good_change_applies_live_without_dropping_a_connection(daemon: DaemonProcess) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        assert raw_get(sock, "/v1/apps").endswith(b"[]")
        # an edit of the file is picked up by the poll, with no signal or request
        daemon.write_config(APP.format(name="added"),
                            daemon_extra='log_level = "debug"\nmax_body_mb = 1.0')
        wait_for(lambda: daemon.request("GET", "/v1/apps")[1] == ["added"])
        assert raw_get(sock, "/v1/apps").endswith(b'["added"]')  # same connection, still open
    status, body = daemon.request("GET", "/v1/status")
    assert body["config_version"] == 2 and body["restart_required"] is False
    # a restart-only key is accepted and flagged, not applied
    daemon.write_config(APP.format(name="added"), daemon_extra='name = "renamed"')
    assert daemon.request("POST", "/v1/reload")[0] == 200
    daemon.config_path.write_text(daemon.config_path.read_text().replace(
        f'data_dir = "{daemon.data_dir}"', f'data_dir = "{daemon.data_dir}-new"'))
    status, body = daemon.request("POST", "/v1/reload")
    assert status == 200 and body["restart_required"] == ["daemon.data_dir"]
    status, st = daemon.request("GET", "/v1/status")
    assert st["restart_required"] is True and st["machines"][0]["name"] == "renamed"
    assert daemon.request("GET", "/healthz")[0] == 200


def test_undecodable_and_hostile_files_never_kill_the_daemon(daemon_factory: Any) -> None:
    """A config or token file that is not UTF-8, or TOML nested thousands deep, is rejected
    through every reload path (API, SIGHUP, file poll); the old config stays in force, and
    the token in force does not depend on its file staying readable."""
    d = daemon_factory()
    token_file = d.workdir / "token"
    token_file.write_text("s3cret\n")
    d.write_config(APP.format(name="one"), daemon_extra=f'token_file = "{token_file}"')
    d.start()
    good = d.config_path.read_bytes()
    for bad, why in ((good + b"\n# caf\xe9\n", "not UTF-8"),
                     (good + b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply")):
        d.config_path.write_bytes(bad)
        status, err = d.request("POST", "/v1/reload", token="s3cret")
        assert status == 422 and why in err["details"][0], err
        rejected = len(d.events("config_reload_rejected"))
        d.signal(signal.SIGHUP)
        wait_for(lambda n=rejected: len(d.events("config_reload_rejected")) > n)
        wait_for(lambda n=rejected: any(e.get("source") == "file"
                                        for e in d.events("config_reload_rejected")[n:]))
    d.config_path.write_bytes(good)
    token_file.write_bytes(b"\xff\xfe\n")
    status, err = d.request("POST", "/v1/reload", token="s3cret")
    assert status == 422 and err["details"][0].startswith("daemon.token_file:"), err
    assert "not UTF-8" in err["details"][0]
    token_file.unlink()  # read once per load: requests never touch the file
    assert d.request("PUT", "/v1/apps/two", {"data_type": "vector"}, token="s3cret")[0] == 201
    assert d.request("PUT", "/v1/apps/three", {"data_type": "vector"})[0] == 401
    status, body = d.request("GET", "/v1/status")
    assert status == 200 and body["config_version"] == 1
    assert d.request("GET", "/v1/apps")[1] == ["one", "two"]
    assert d.proc is not None and d.proc.poll() is None


def test_a_sighup_during_start_up_is_a_queued_reload(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.write_config(APP.format(name="one"))
    d.start(wait=False)
    time.sleep(0.2)  # the process is still importing its libraries
    d.signal(signal.SIGHUP)
    d.wait_ready()
    wait_for(lambda: any(e.get("source") == "sighup"
                         for e in d.events("config_unchanged", "config_reloaded")))
    assert d.request("GET", "/v1/apps")[1] == ["one"]
    assert d.stop() == 0
