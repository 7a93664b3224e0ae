"""What the fault scenarios (`bench faults`, tests/integration/test_faults.py) share: a real
`mliot run` that can be killed and restarted on the same data folder, a mosquitto of their
own, and polling with a deadline."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

from bench.common import request
from bench.daemon_proc import free_port

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def until(predicate: Callable[[], T], timeout: float, every: float = 0.05,
          what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if value := predicate():
                return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not met within {timeout} s")
        time.sleep(every)


class Daemon:
    """`mliot run` on a fixed port and data folder; SIGKILL and start again as often as
    needed. The log (JSON lines) is appended across restarts."""

    LINGER_S = 15.0

    def __init__(self, workdir: Path, toml: str = "", daemon_toml: str = "",
                 data_dir: Path | None = None, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.data_dir = data_dir or workdir / "data"
        self.config = workdir / "mliot.toml"
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.late = 0  # pool workers or forkservers alive 3 s after a SIGKILL
        self.orphans = 0  # ... and LINGER_S after it
        self._lingering: list[tuple[float, psutil.Process]] = []
        self.write_config(toml, daemon_toml)

    def write_config(self, toml: str = "", daemon_toml: str = "") -> None:
        self.config.write_text(
            f'[daemon]\nlisten = "127.0.0.1:{self.port}"\ndata_dir = "{self.data_dir}"\n'
            f'log_format = "json"\nlog_level = "info"\n{daemon_toml}\n{toml}\n')

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 90.0) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mliot_daemon", "run", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if wait:
            self.wait_ready(timeout)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 90.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"daemon exited: {self.tail()}")
            return request(self.url, "GET", "/readyz", timeout=2)[0] == 200
        until(ready, timeout, what="daemon ready")

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30
                ) -> tuple[int, Any]:
        return request(self.url, method, path, body, timeout=timeout)

    def kill9(self) -> None:
        """SIGKILL the daemon alone, as the OOM killer or a power cut would (systemd kills the
        unit's whole cgroup, a shell does not). What it leaves behind (pool workers, the
        forkserver) should end by itself: alive 3 s later it counts in ``late``, alive
        ``LINGER_S`` later in ``orphans`` (and is killed then, by ``reap``)."""
        assert self.proc is not None
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:  # it died by itself already
            kids = []
        self.reap(wait=False)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        _, alive = psutil.wait_procs(kids, timeout=3)  # workers watch the daemon each 1 s
        self.late += len(alive)
        self._lingering += [(time.monotonic(), p) for p in alive]

    def reap(self, wait: bool = True) -> None:
        """Kill (and count as orphans) what outlived a kill by ``LINGER_S``; with ``wait``,
        wait for the rest until then."""
        keep = []
        for killed_at, p in self._lingering:
            left = killed_at + self.LINGER_S - time.monotonic()
            if left > 0 and not wait:
                keep.append((killed_at, p))
                continue
            if psutil.wait_procs([p], timeout=max(left, 0.0))[1]:
                self.orphans += 1
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
                psutil.wait_procs([p], timeout=5)
        self._lingering = keep

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill9()

    def tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


class Mosquitto:
    """A private mosquitto with persistence on, saved on every change, so that a SIGKILL
    loses no more than the one change in flight (the suite measures mliot, not the broker's
    autosave interval)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir}/\nautosave_interval 1\nautosave_on_changes true\n"
            f"max_queued_messages 100000\nlog_dest file {workdir}/mosquitto.log\n"
            # Started as root, mosquitto drops to its own user, which may not write here (a
            # pytest tmp_path is root's, 0700): it would run without persistence, silently.
            + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        until(listening, 10, what="mosquitto listening")
        return self

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
