"""Start a real `mliot run` subprocess for a benchmark, on a free port in a temp folder."""

from __future__ import annotations

import contextlib
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_daemon(extra_toml: str = "", data_dir: Path | None = None, daemon_toml: str = ""
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield (base URL, process) of a daemon that is ready; stop it with SIGTERM afterwards.
    ``daemon_toml``: more keys of the ``[daemon]`` table (e.g. ``max_body_mb = 400``)."""
    with tempfile.TemporaryDirectory(prefix="mliot-bench-") as tmp:
        port = free_port()
        cfg = Path(tmp) / "mliot.toml"
        data = data_dir or Path(tmp) / "data"
        cfg.write_text(f'[daemon]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{data}"\n'
                       f'log_level = "warning"\n{daemon_toml}\n{extra_toml}\n')
        proc = subprocess.Popen([sys.executable, "-m", "mliot_daemon", "run", "--config",
                                 str(cfg)], stdout=subprocess.DEVNULL)
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
            yield url, proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


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
