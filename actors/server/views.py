"""Read-only views of the daemon that the API shows: its status, and an app's model versions.

They read the serving core, the registry and (by asking) the monitor and the trainer; like the
core, they return JSON-ready values and know nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.server.core import ServingCore
from mliot_daemon import __version__
from mliot_daemon.messages import GetLoad, GetTrainerStatus, MachineLoad

ASK_TIMEOUT_S = 5.0


async def status(core: ServingCore, started_at: float) -> dict[str, Any]:
    """``GET /v1/status``: uptime, config, apps (with training and placement), machines,
    this process, mailboxes and loop lag."""
    load: MachineLoad = await core.refs.monitor.ask(lambda f: GetLoad(reply=f), ASK_TIMEOUT_S)
    training = await core.refs.trainer.ask(lambda f: GetTrainerStatus(reply=f), ASK_TIMEOUT_S)
    apps = core.apps_status()
    for name, app in apps.items():
        app["training"] = training.get(name, {})
    machines = core.router.machines or [{  # before the scheduler's first plan
        "name": core.router.me, "local": True, "up": True,
        "cpu_percent": load.daemon_cpu_percent, "memory_percent": load.memory_percent,
        "cores": load.cores, "busy": load.busy, "rtt_ms": 0.0, "speed": round(load.speed, 3),
        "placed": []}]
    config = core.config
    return {
        "uptime_s": round(time.monotonic() - started_at, 3),
        "version": __version__,
        "config_version": config.version,
        "restart_required": bool(config.restart_required),
        "restart_keys": sorted(config.restart_required),
        "apps": apps,
        "machines": machines,
        "process": {"cpu_percent": load.process_cpu_percent,
                    "rss_mib": round(load.process_rss_mib, 1),
                    "host_cpu_percent": load.cpu_percent,
                    "host_memory_mib": round(load.memory_mib)},
        "mailboxes": dict(load.mailboxes),
        "loop_lag_ms": {"p50": round(load.loop_lag_p50_ms, 3),
                        "p99": round(load.loop_lag_p99_ms, 3)},
    }


async def models(core: ServingCore, app: str) -> dict[str, Any]:
    """``GET /v1/apps/{app}/models``: the kept versions, newest first, and the current one."""
    name = core.app(app).name
    registry = core.registry

    def read() -> dict[str, Any]:
        versions = []
        for v in reversed(registry.versions(name)):
            try:
                m = registry.manifest(name, v)
            except ValueError:
                continue
            meta = registry.meta(name, v)
            fitted_on = m.get("extra", {}).get("fitted_on", {})
            versions.append({
                "version": v, "created": m.get("created"),
                "reason": meta.get("reason", m.get("extra", {}).get("reason")),
                "members": [{"family": x["family"], "weight": x["weight"]}
                            for x in m.get("members", [])],
                "candidates": [{"family": c["family"], "accuracy": c.get("val_accuracy"),
                                "latency_ms": c.get("latency_ms"),
                                "fit_seconds": c.get("fit_seconds"),
                                "fitted_on": fitted_on.get(c["family"])}
                               for c in m.get("candidates", [])],
                "metrics": {**m.get("metrics", {}), **m.get("selection", {})},
                "gate": m.get("gate"), "decision": meta.get("decision")})
        return {"current": core.router.version_of(name), "versions": versions}

    return await asyncio.to_thread(read)
