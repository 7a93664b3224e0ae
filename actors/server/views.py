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
DRIFT_ALERT_S = 24 * 3600  # a drift detection is news for a day
QUALITY_FEEDBACK = 500  # the feedback confusion counts the newest this many records


async def app_info(core: ServingCore, name: str) -> dict[str, Any]:
    """The spec plus what the app has: samples, feedback, the served version."""
    entry = core.app(name)
    counts = core.store.label_counts(entry.name)
    served = core.router.served.get(entry.name)
    known = served.current.classes if served else list(entry.spec.classes or ())
    return {**entry.spec.to_json(), "owner": entry.owner,
            "shape": list(entry.shape) if entry.shape else entry.spec.to_json()["shape"],
            "n_samples": core.store.count_samples(entry.name),
            "n_feedback": await core.store.count_feedback(entry.name),
            "model_version": core.router.version_of(entry.name),
            "ready": core.is_ready(entry), "class_counts": counts,
            "labels": sorted(set(known) | set(counts)),
            "feedback_accuracy": core.feedback_accuracy(entry.name),
            **core.streams.status(entry.name)}


def placement(core: ServingCore, app: str) -> dict[str, Any]:
    """Where an app is served and trained, and why."""
    t = core.settings.training
    training = f"dask:{t.dask_scheduler}" if t.backend == "dask" else core.router.me
    return core.router.placement(app, training)


def apps_status(core: ServingCore) -> dict[str, Any]:
    """Every app as ``/v1/status`` (and the MQTT status topics) show it."""
    out: dict[str, Any] = {}
    for name in core.catalog.names():
        entry = core.app(name)
        served = core.router.served.get(name)
        policy = entry.spec.policy
        counts = core.store.label_counts(name)
        known = served.current.classes if served else list(entry.spec.classes or ())
        out[name] = {
            "data_type": entry.spec.data_type, "owner": entry.owner,
            "n_samples": core.store.count_samples(name),
            "model_version": core.router.version_of(name), "ready": core.is_ready(entry),
            "accuracy": core.router.accuracy(name), "placement": placement(core, name),
            "members": [m.family for m in served.current.model.members] if served else [],
            "policy": {"mode": policy.mode, "latency_ms": policy.latency_ms,
                       "max_models": policy.max_models},
            "class_counts": counts, "labels": sorted(set(known) | set(counts)),
            "feedback_accuracy": core.feedback_accuracy(name),
            "n_feedback_recent": len(core.recent_feedback.get(name, ())),
            "training_state": core.training.get(name, "idle"),
            "announce_as": entry.spec.announce_as,
            # a stream app's MQTT sources: what the bridge subscribes to
            "stream": bool(entry.spec.channels),
            "sources": [[c.topic, c.field, c.name] for c in entry.spec.channels if c.topic]}
    return out


async def status(core: ServingCore, started_at: float) -> dict[str, Any]:
    """``GET /v1/status``: uptime, config, apps (with training and placement), machines,
    this process, mailboxes and loop lag."""
    load: MachineLoad = await core.refs.monitor.ask(
        lambda f: GetLoad(reply=f, wait_for_speed=False), ASK_TIMEOUT_S)  # speed 0.0 until measured
    training = await core.refs.trainer.ask(lambda f: GetTrainerStatus(reply=f), ASK_TIMEOUT_S)
    apps = apps_status(core)
    for name, app in apps.items():
        app["training"] = training.get(name, {})
        app["alerts"] = alerts(app)
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
        pins, ends = registry.pinned(name), set(registry.run_ends(name))
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
                "gate": m.get("gate"), "decision": meta.get("decision"),
                # what retention spares besides the newest keep_versions (registry.prune)
                "pinned": v in pins, "ends_run": v in ends})
        return {"current": core.router.version_of(name), "versions": versions}

    return await asyncio.to_thread(read)


def alerts(app: dict[str, Any]) -> list[dict[str, Any]]:
    """What on an app needs a person's look: a failed run, a refused placement, drift."""
    out = []
    training, placed = app.get("training", {}), app.get("placement", {})
    if training.get("last_error"):
        out.append({"kind": "run_failed",
                    "message": f"the last training run failed: {training['last_error']}"})
    if placed.get("serving") is None and placed.get("reason") != "no model yet":
        out.append({"kind": "placement_refused", "message": f"not served: {placed['reason']}"})
    drift_at = training.get("drift_at")
    if drift_at is not None and time.time() - drift_at < DRIFT_ALERT_S:
        out.append({"kind": "drift", "at": drift_at,
                    "message": "drift detected in the corrections: older samples of the "
                               "corrected classes are left out, the members refitted"})
    return out


async def history(core: ServingCore, app: str) -> list[dict[str, Any]]:
    """``GET /v1/apps/{app}/history``: every version ever published or activated."""
    return await core.store.history(core.app(app).name)


async def quality(core: ServingCore, app: str) -> dict[str, Any]:
    """``GET /v1/apps/{app}/quality``: confusion counts and recall per class, of the served
    version on its validation rows and of the newest feedback on what was predicted."""
    name = core.app(app).name
    served = core.router.served.get(name)
    classes = list(served.current.classes) if served else []
    validation = served.current.model.metrics.get("confusion") if served else None
    pairs = await core.store.feedback_pairs(name, QUALITY_FEEDBACK)
    classes += sorted({c for pair in pairs for c in pair} - set(classes))
    if validation is not None:  # labels only feedback knows get empty rows and columns
        grow = len(classes) - len(validation)
        validation = [row + [0] * grow for row in validation] + [[0] * len(classes)] * grow
    feedback = None
    if pairs:
        index = {c: i for i, c in enumerate(classes)}
        feedback = [[0] * len(classes) for _ in classes]
        for label, predicted in pairs:
            feedback[index[label]][index[predicted]] += 1
    return {"classes": classes,
            "validation": {"confusion": validation, "recall": _recall(validation)},
            "feedback": {"confusion": feedback, "recall": _recall(feedback), "n": len(pairs)}}


def _recall(matrix: list[list[int]] | None) -> list[float | None] | None:
    if matrix is None:
        return None
    return [round(row[i] / sum(row), 5) if sum(row) else None for i, row in enumerate(matrix)]
