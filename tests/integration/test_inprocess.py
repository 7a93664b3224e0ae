"""The daemon run in-process on a real port: status shape, metrics, reload on defaults, signals."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

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
                         "mliot_http_requests_total", "mliot_process_rss_bytes"):
                assert name in text
        signal.raise_signal(signal.SIGTERM)
        assert await asyncio.wait_for(task, 30) == 0
    stopped = [e["actor"] for e in logs if e["event"] == "actor_stopped"]
    assert stopped == ["server", "mqtt", "peers", "scheduler", "trainer", "monitor"]
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftover == []
