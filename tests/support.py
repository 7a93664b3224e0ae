"""Test support: free ports, blocking JSON requests, and a real `mliot run` subprocess."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: Any = None, token: str = "", raw: bytes | None = None,
         timeout: float = 30.0, content_type: str = "application/json") -> tuple[int, Any]:
    """One blocking request (JSON unless told otherwise); returns (status, decoded body or
    None)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read(), exc.code
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload.decode(errors="replace")


class DaemonProcess:
    """`mliot run --config FILE` as a real subprocess, with its log in a file."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "") -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.data_dir = workdir / "data"
        self.config_path = workdir / "mliot.toml"
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(extra)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, extra: str = "", daemon_extra: str = "") -> None:
        self.config_path.write_text(
            f'[daemon]\nlisten = "127.0.0.1:{self.port}"\ndata_dir = "{self.data_dir}"\n'
            f'{daemon_extra}\n{extra}\n')

    def start(self, wait: bool = True) -> DaemonProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mliot_daemon", "run", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            try:
                status, _ = http("GET", f"{self.url}/readyz", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log()}")

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return http(method, self.url + path, body, **kw)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def teach(self, app: str, X: Any, y: Any, timeout: float = 300.0) -> None:
        """Post labelled rows to an app and wait until its first training run has finished."""
        body = {"samples": [{"features": x.tolist(), "label": t}
                            for x, t in zip(X, y, strict=True)]}
        assert self.request("POST", f"/v1/apps/{app}/samples", body)[0] == 200
        wait_for(lambda: self.events("training_run_finished"), timeout, 0.5)

    def events(self, *names: str) -> list[dict[str, Any]]:
        """Log lines (JSON) whose event is one of ``names``, in the order they were written."""
        out = []
        for line in self.log().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") in names:
                out.append(rec)
        return out


def wait_for(predicate: Any, timeout: float = 15.0, every: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy (and return it); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError(f"not met within {timeout} s")


class CpuQuota:
    """A cgroup with a CPU quota, to make a daemon a slower machine on this box.

    Pinning to a core does not slow a single-threaded daemon; a quota does (cgroup v2
    ``cpu.max``, else v1 ``cpu.cfs_quota_us``; needs root, as CI has). The period is shorter than
    the default 100 ms, so that throttling shows evenly within a fraction of a second.
    """

    PERIOD_US = 50_000  # the kernel's smallest quota is 1 ms: this allows down to 0.02 cores

    def __init__(self, name: str, cores: float) -> None:
        import pytest

        if not os.access("/sys/fs/cgroup", os.W_OK) and not os.access("/sys/fs/cgroup/cpu",
                                                                        os.W_OK):
            pytest.skip("making a daemon slower needs a writable cgroup (root), as CI has")
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        if v2.exists() and "cpu" in v2.read_text().split():
            self.path = Path("/sys/fs/cgroup") / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.max").write_text(f"{int(cores * self.PERIOD_US)} {self.PERIOD_US}")
        else:
            self.path = Path("/sys/fs/cgroup/cpu") / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(int(cores * self.PERIOD_US)))

    def add_tree(self, pid: int) -> None:
        """Move a process and all its descendants (a daemon and its pool) into the group."""
        import psutil

        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            (self.path / "cgroup.procs").write_text(str(p.pid))

    def remove(self) -> None:
        """Move every process back to the root group and delete the group."""
        parent = self.path.parent / "cgroup.procs"
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # it exited meanwhile
                parent.write_text(pid)
        self.path.rmdir()


# -- an app worth label queries -------------------------------------------------------------

ROOM = {"data_type": "vector", "classes": ["calm", "busy"],
        "policy": {"queries_per_hour": 3600}}  # one a second: tests cannot wait 15 minutes


def teach_doubtful_room(d: DaemonProcess) -> None:
    """Two overlapping clusters: a wide band between them where the model is unsure."""
    assert d.request("PUT", "/v1/apps/room", ROOM)[0] == 201
    rng = np.random.default_rng(0)
    X = np.array([rng.normal(0.0 if i % 2 else 3.0, 1.0, size=2).round(3) for i in range(80)])
    d.teach("room", X, ["calm" if i % 2 else "busy" for i in range(80)])


def borderline(k: int) -> list[list[float]]:
    """Points along the line between the two clusters."""
    rng = np.random.default_rng(1)
    u = rng.uniform(-2.0, 2.0, k)
    return np.round(np.stack([1.5 + u, 1.5 - u + rng.normal(0, 0.2, k)], axis=1), 3).tolist()


def ws_open(port: int, rcvbuf: int | None = None, query: str = "", app: str = "v"
            ) -> socket.socket:
    """A raw WebSocket connection to an app's stream (the test controls every byte)."""
    sock = socket.socket()
    if rcvbuf is not None:  # before connect, so the TCP window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /v1/apps/{app}/stream{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 "Upgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def ws_frame(payload: bytes, mask: bool = True, length: int | None = None) -> bytes:
    """A client text frame (masked, as RFC 6455 requires, unless told otherwise); ``length``
    overrides the length its header declares."""
    n = len(payload) if length is None else length
    if n < 126:
        head = bytes([0x81, n])
    elif n < 2**16:
        head = bytes([0x81, 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x81, 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = (np.frombuffer(payload, np.uint8)
              ^ np.resize(np.frombuffer(key, np.uint8), len(payload))).tobytes()
    return bytes([head[0], head[1] | 0x80]) + head[2:] + key + masked


def ws_read(sock: socket.socket) -> tuple[int, bytes]:
    """(opcode, payload) of the next server frame."""
    def exact(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out
    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exact(8))[0]
    return b0 & 0x0F, exact(n)
