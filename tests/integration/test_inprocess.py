"""The daemon run in-process on a real port: status shape, metrics, reload on defaults, signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from mliot_daemon.config import ConfigStore, parse_settings
from mliot_daemon.daemon import Daemon


async def test_status_metrics_and_sigterm(tmp_path: Path) -> None:
    settings = parse_settings({"daemon": {"data_dir": str(tmp_path), "listen": "127.0.0.1:0"}})
    daemon = Daemon(ConfigStore(None, settings))  # no file: built-in defaults
    with capture_logs() as logs:
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.ready.wait(), 30)
        url = f"http://127.0.0.1:{daemon.server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/reload") as resp:
                assert resp.status == 409  # nothing to reload from
            async with http.get(f"{url}/v1/status") as resp:
                body = await resp.json()
            assert set(body) >= {"uptime_s", "config_version", "restart_required", "apps",
                                 "machines", "loop_lag_ms"}
            assert set(body["machines"][0]) >= {"name", "local", "up", "cpu_percent",
                                                "memory_percent", "rtt_ms", "speed", "placed"}
            async with http.get(f"{url}/metrics") as resp:
                text = await resp.text()
            for name in ("mliot_loop_lag_seconds_bucket", "mliot_mailbox_depth",
                         "mliot_http_requests_total", "process_resident_memory_bytes"):
                assert name in text
        signal.raise_signal(signal.SIGTERM)
        assert await asyncio.wait_for(task, 30) == 0
    stopped = [e["actor"] for e in logs if e["event"] == "actor_stopped"]
    assert stopped == ["server", "mqtt", "peers", "scheduler", "trainer", "monitor"]
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftover == []


async def test_systemd_notify_ready_watchdog_and_stopping(tmp_path: Path, monkeypatch: Any
                                                          ) -> None:
    """A real datagram NOTIFY_SOCKET: READY=1 once /readyz answers 200, WATCHDOG=1 while the
    loop turns and none while it is blocked, STOPPING=1 on SIGTERM."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # pings every 0.5 s
    loop = asyncio.get_running_loop()

    async def datagram(timeout: float) -> str:
        return (await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)).decode()

    def queued() -> list[str]:
        out = []
        with contextlib.suppress(BlockingIOError):
            while True:
                out.append(sock.recv(4096).decode())
        return out

    settings = parse_settings({"daemon": {"data_dir": str(tmp_path), "listen": "127.0.0.1:0"}})
    daemon = Daemon(ConfigStore(None, settings))
    task = asyncio.create_task(daemon.run())
    try:
        first = await datagram(60)
        while "READY=1" not in first:  # pings may come first: the monitor starts first
            first = await datagram(60)
        assert "STATUS=ready on port" in first
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{daemon.server.port}/readyz") as resp:
            assert resp.status == 200
        pings = [await datagram(5) for _ in range(3)]
        assert all(p == "WATCHDOG=1" for p in pings if not p.startswith("STATUS="))
        queued()
        time.sleep(2.5)  # the event loop blocked for longer than the watchdog interval
        assert [q for q in queued() if q == "WATCHDOG=1"] == []
        resumed = [await datagram(5) for _ in range(2)]
        assert "WATCHDOG=1" in resumed
        signal.raise_signal(signal.SIGTERM)
        assert await asyncio.wait_for(task, 30) == 0
        assert any("STOPPING=1" in q for q in queued())
    finally:
        if not task.done():
            task.cancel()
        sock.close()
