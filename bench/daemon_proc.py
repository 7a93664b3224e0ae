"""Start a real `mliot run` subprocess for a benchmark, on a free port in a temp folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DAEMON_CPU = 1  # a daemon under measurement runs here, its load generators on the other CPUs


def client_cpus() -> set[int]:
    """The CPUs left to a pinned daemon's clients (all but ``DAEMON_CPU``; CPU 0 if none)."""
    return set(range(os.cpu_count() or 1)) - {DAEMON_CPU} or {0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_daemon(extra_toml: str = "", data_dir: Path | None = None, daemon_toml: str = "",
                   tree: Path | None = None, cpus: set[int] | None = None
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield (base URL, process) of a daemon that is ready; stop it with SIGTERM afterwards.
    ``daemon_toml``: more keys of the ``[daemon]`` table (e.g. ``max_body_mb = 400``).
    ``tree``: run the daemon code of that checkout (its cwd; ``-m`` imports from there);
    ``cpus``: pin the daemon to those CPUs (``bench.serving_ab`` does both)."""
    with tempfile.TemporaryDirectory(prefix="mliot-bench-") as tmp:
        port = free_port()
        cfg = Path(tmp) / "mliot.toml"
        data = data_dir or Path(tmp) / "data"
        cfg.write_text(f'[daemon]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{data}"\n'
                       f'log_level = "warning"\n{daemon_toml}\n{extra_toml}\n')
        proc = subprocess.Popen([sys.executable, "-m", "mliot_daemon", "run", "--config",
                                 str(cfg)], stdout=subprocess.DEVNULL, cwd=tree,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus
                                else None)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("daemon did not start") from None
                    time.sleep(0.05)
            while not _settled(url):  # measure the daemon as it runs, not as it starts
                if time.monotonic() > deadline + 120 or proc.poll() is not None:
                    raise RuntimeError("daemon did not finish its start")
                time.sleep(0.1)
            yield url, proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _settled(url: str) -> bool:
    """The work a start does after ``/readyz`` is done: the monitor has measured the speed
    (0.0 until then) and the trainer lists the apps (none until its learning code is in).
    Until then serving shares the CPU with those imports (DESIGN.md, "Restart")."""
    with urllib.request.urlopen(f"{url}/v1/status", timeout=10) as r:
        status = json.load(r)
    return status["machines"][0]["speed"] > 0 and all(
        app["training"] for app in status["apps"].values())


def histogram(metrics_text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) pairs of a Prometheus histogram without labels."""
    out = []
    for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', metrics_text, re.M):
        out.append((float(m.group(1)), float(m.group(2))))
    return out


def quantile_between(before: list[tuple[float, float]], after: list[tuple[float, float]],
                     q: float) -> float:
    """The q-quantile of what a histogram observed between two scrapes (Prometheus-style
    linear interpolation inside the bucket)."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1]
    if total <= 0:
        return 0.0
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in counts:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return prev_le


DASK = Path(sys.executable).with_name("dask")  # this venv's: its workers import this mliot


class DaskCluster:
    """`dask scheduler` and ``workers`` single-threaded `dask worker` processes on 127.0.0.1,
    each command in its own process group (a nanny starts the worker processes), logs in files.
    The Dask-backend tests and `bench scale` use it."""

    def __init__(self, workdir: Path, workers: int = 1) -> None:
        self.workdir = workdir
        self.workers = workers
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, *args: str) -> None:
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.procs.append(subprocess.Popen(
                [str(DASK), *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                start_new_session=True))

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _until(self, done: Any, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"dask exited: {self.log('scheduler')}{self.log('worker')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dask {what} not ready after {timeout} s")
            time.sleep(0.1)

    def start(self) -> DaskCluster:
        self._spawn("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                    "--no-dashboard")
        self._until(self._listening, "scheduler")
        self._spawn("worker", "worker", self.address, "--nthreads", "1",
                    "--nworkers", str(self.workers), "--no-dashboard", "--host", "127.0.0.1",
                    "--local-directory", str(self.workdir / "worker"))
        self._until(lambda: self.log("worker").count("Registered to:") >= self.workers,
                    "workers")
        return self

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        for p in reversed(self.procs):  # the workers first: a scheduler gone makes them linger
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        for p in self.procs:  # a nanny's worker process, should it have outlived the nanny
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
