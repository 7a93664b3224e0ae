"""Part 4 of `bench faults`: the peer serving an app is stopped (SIGSTOP) while a client
streams predictions through the app's own daemon, then continued (SIGCONT).

Daemon ``a`` owns a ``low_latency`` app; a CPU quota (a cgroup, root only) makes ``a`` the slow
machine, so the scheduler places the app on peer ``b``, which ``a`` then forwards to. With ``b``
stopped, a forwarded batch times out (2 s) and is answered by ``a`` itself; ``b`` is marked
down and the app routed here; after SIGCONT ``b`` is up again at its next poll. A client thread
predicts one row at a time the whole while; every answer is counted by status, with the
slowest, and the times of each step are recorded.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import request
from bench.faults_env import Daemon, until

TOKENS = {"a": "ta", "b": "tb"}
MIN_QUOTA_CORES = 0.012  # below this a's own loop is too slow to forward the stream
DIGITS: Any = None
ROW = [0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0] * 8  # a digit's 64 pixels


class Quota:
    """A cgroup CPU quota (v2 ``cpu.max`` or v1 CFS) for a process tree; needs root."""

    PERIOD_US = 50_000
    MIN_QUOTA_US = 1_000  # the kernel refuses (EINVAL) a quota under 1 ms

    def __init__(self, name: str, cores: float) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        self.v2 = v2.exists() and "cpu" in v2.read_text().split()
        self.path = Path("/sys/fs/cgroup" if self.v2 else "/sys/fs/cgroup/cpu") / name
        self.path.mkdir(exist_ok=True)
        self.set(cores)

    def set(self, cores: float) -> None:
        # A small share stretches the period rather than the quota going under the minimum.
        period = max(self.PERIOD_US, math.ceil(self.MIN_QUOTA_US / cores))
        quota = max(self.MIN_QUOTA_US, int(cores * period))
        if self.v2:
            (self.path / "cpu.max").write_text(f"{quota} {period}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(period))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def add(self, pid: int) -> None:
        import psutil

        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(OSError):
                (self.path / "cgroup.procs").write_text(str(p.pid))

    def remove(self) -> None:
        parent = self.path.parent / "cgroup.procs"
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                parent.write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()


def can_quota() -> bool:
    return os.access("/sys/fs/cgroup", os.W_OK) or os.access("/sys/fs/cgroup/cpu", os.W_OK)


class Stream(threading.Thread):
    """Predicts one row at a time through ``a`` until stopped; every answer recorded."""

    def __init__(self, d: Daemon) -> None:
        super().__init__(daemon=True)
        self.d = d
        self.stop = threading.Event()
        self.answers: list[tuple[float, int, float]] = []  # (at, status, seconds)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status = request(self.d.url, "POST", "/v1/apps/v/predict",
                                 {"instances": [ROW]}, timeout=30)[0]
            except OSError:
                status = 0
            self.answers.append((started, status, time.monotonic() - started))
            time.sleep(0.02)

    def between(self, t0: float, t1: float) -> dict[str, Any]:
        got = [a for a in self.answers if t0 <= a[0] < t1]
        return {"requests": len(got), "ok": sum(1 for a in got if a[1] == 200),
                "failed": sum(1 for a in got if a[1] != 200),
                "slowest_s": round(max((a[2] for a in got), default=0.0), 3)}


def _get(d: Daemon, path: str, name: str) -> Any:
    import urllib.request

    import orjson

    req = urllib.request.Request(d.url + path, headers={"Authorization":
                                                        f"Bearer {TOKENS[name]}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return orjson.loads(r.read())


def machines(d: Daemon) -> dict[str, Any]:
    return {m["name"]: m for m in _get(d, "/v1/status", "a")["machines"]}


def serving(d: Daemon) -> str | None:
    return _get(d, "/v1/status", "a")["apps"]["v"]["placement"]["serving"]


def stopped_peer(workdir: Path, quota_cores: float = 0.035, budget_ms: float = 2.0,
                 hold_s: float = 8.0) -> dict[str, Any]:
    """The scenario; returns the steps' times and the client's answers in each phase.

    The numbers are this machine's: a digits model answers in ~0.1 ms, ~3 ms under a
    0.035-core quota, and a loopback peer in ~1.3 ms (the round trip), so a 2 ms budget holds
    on ``b`` alone (at 0.05 cores a busy machine predicted 1.8 ms on ``a``). A faster machine
    keeps the app on ``a``: the quota is then lowered by 30 % every 15 s, down to
    ``MIN_QUOTA_CORES`` (much smaller and ``a`` measures its round trips to ``b`` slow too, its
    own loop waiting for CPU, and the app goes back and forth)."""
    global DIGITS
    if DIGITS is None:
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        DIGITS = (X[:300], y[:300])
    (workdir / "a").mkdir(parents=True, exist_ok=True)
    (workdir / "b").mkdir(parents=True, exist_ok=True)
    b = Daemon(workdir / "b", daemon_toml='name = "b"\ntoken = "tb"\npeer_secret = "tb-peer"')
    a = Daemon(workdir / "a", "[training]\nworkers = 1\n"
               f'[[peers]]\nname = "b"\nurl = "{b.url}"\nsecret = "tb-peer"\n',
               daemon_toml='name = "a"\ntoken = "ta"\npeer_secret = "ta-peer"')
    quota: Quota | None = None
    stream: Stream | None = None
    out: dict[str, Any] = {"quota_cores": quota_cores, "budget_ms": budget_ms}
    try:
        a.start(wait=False)
        b.start(wait=False)
        a.wait_ready()
        b.wait_ready()
        _write(a, "PUT", "/v1/apps/v", {"data_type": "vector", "shape": [64],
                                         "policy": {"latency_ms": budget_ms}})
        X, y = DIGITS
        _write(a, "POST", "/v1/apps/v/samples", {"samples": [
            {"features": x.tolist(), "label": str(t)} for x, t in zip(X, y, strict=True)]})
        until(lambda: _get(a, "/v1/apps/v", "a").get("model_version") is not None
              and not _get(a, "/v1/status", "a")["apps"]["v"]["training"]["training"],
              300, 0.25, "a model")
        # The slow machine is a: its quota holds the loop to a few percent of a core.
        quota = Quota(f"mliot-faults-{a.port}", quota_cores)
        quota.add(a.proc.pid)  # type: ignore[union-attr]
        started = time.monotonic()
        cores = quota_cores
        while True:  # a faster machine needs a smaller quota before a misses the budget
            try:
                until(lambda: serving(a) == "b", 15, 0.5, "the app placed on b")
                break
            except TimeoutError as exc:  # say why: the numbers are this machine's
                if cores <= MIN_QUOTA_CORES:
                    last = _get(a, "/v1/status", "a")["apps"]["v"]["placement"]
                    raise TimeoutError(f"{exc}; last placement {last}") from None
                cores = max(MIN_QUOTA_CORES, round(cores * 0.7, 4))
                quota.set(cores)
        out["quota_cores"] = cores
        out["placed_on_b_after_s"] = round(time.monotonic() - started, 1)
        stream = Stream(a)
        stream.start()
        time.sleep(2.0)
        t_stop = time.monotonic()
        os.kill(b.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        until(lambda: not machines(a)["b"]["up"], 30, 0.1, "b marked down")
        out["marked_down_after_s"] = round(time.monotonic() - t_stop, 2)
        until(lambda: serving(a) == "a", 30, 0.1, "the app routed to a")
        out["routed_here_after_s"] = round(time.monotonic() - t_stop, 2)
        time.sleep(max(0.0, hold_s - (time.monotonic() - t_stop)))
        t_cont = time.monotonic()
        os.kill(b.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        until(lambda: machines(a)["b"]["up"], 30, 0.1, "b up again")
        out["up_again_after_s"] = round(time.monotonic() - t_cont, 2)
        try:
            until(lambda: serving(a) == "b", 60, 0.5, "the app back on b")
            out["back_on_b_after_s"] = round(time.monotonic() - t_cont, 1)
        except TimeoutError:
            out["back_on_b_after_s"] = None
        time.sleep(1.0)
        t_end = time.monotonic()
        stream.stop.set()
        stream.join(60)
        out["before_stop"] = stream.between(0.0, t_stop)
        out["while_stopped"] = stream.between(t_stop, t_cont)
        out["after_cont"] = stream.between(t_cont, t_end)
    finally:
        if stream is not None:
            stream.stop.set()
        if b.proc is not None and b.alive():
            os.kill(b.proc.pid, signal.SIGCONT)
        if quota is not None:
            quota.remove()
        a.stop()
        b.stop()
    return out


def _write(d: Daemon, method: str, path: str, body: Any) -> None:
    import urllib.request

    import orjson

    req = urllib.request.Request(d.url + path, data=orjson.dumps(body), method=method,
                                 headers={"Authorization": "Bearer ta",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status in (200, 201), r.status
