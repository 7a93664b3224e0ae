"""The REST surface of stream apps: readings in and back out (thinned for a timeline), and
labels by time range."""

from __future__ import annotations

import math
import time

import numpy as np
from aiohttp import web

from actors.server.core import ServingCore
from actors.server.http import json_response, read_body, read_json
from actors.server.payloads import parse_json
from mliot_daemon.errors import Invalid

MAX_POINTS = 2000  # per channel in a read-back: a timeline a browser draws at once
MAX_SPAN_S = 2 * 86400.0
DEFAULT_SPAN_S = 600.0


class StreamApi:
    """``/v1/apps/{app}/readings`` and ``/v1/apps/{app}/labels``."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/apps/{app}/readings", self.add_readings),
            web.get("/v1/apps/{app}/readings", self.get_readings),
            web.get("/v1/apps/{app}/labels", self.ranges),
            web.post("/v1/apps/{app}/labels", self.label),
            web.post("/v1/apps/{app}/labels/{label_id}/end", self.end),
        ]

    async def add_readings(self, request: web.Request) -> web.Response:
        core = self._core
        app = core.app(request.match_info["app"]).name
        body = await read_body(core, request)
        payload = await core.offload(len(body), lambda: parse_json(body))
        if not isinstance(payload, dict) or "readings" not in payload:
            raise Invalid('expected {"readings": [{"t", "channel", "value"}], "batch_id"?}')
        return json_response(await core.streams.ingest(
            app, payload["readings"], "http", payload.get("batch_id"), len(body)))

    async def get_readings(self, request: web.Request) -> web.Response:
        """Readings of ``[start, end]`` (default: the last ten minutes), per channel thinned to
        MAX_POINTS: each of MAX_POINTS / 2 buckets keeps its lowest and highest reading, so a
        spike survives."""
        core = self._core
        entry = core.app(request.match_info["app"])
        q = request.query
        end = _number(q.get("end"), "end", time.time())
        start = _number(q.get("start"), "start", end - DEFAULT_SPAN_S)
        if not 0 < end - start <= MAX_SPAN_S:
            raise Invalid(f"start, end: start must be before end, at most {MAX_SPAN_S:g} s")
        names = [c.name for c in entry.spec.channels]
        if q.get("channel"):
            if q["channel"] not in names:
                raise Invalid(f"channel: unknown channel {q['channel'][:64]!r}")
            names = [q["channel"]]
        series = await core.store.read_series(entry.name, names, start, end)
        out = []
        for name, s in zip(names, series, strict=True):
            t, v = _thin(s.t, s.v)
            out.append({"name": name, "n": len(s.t), "t": np.round(t, 3).tolist(),
                        "value": v.tolist()})
        return json_response({"start": start, "end": end, "channels": out})

    async def ranges(self, request: web.Request) -> web.Response:
        app = self._core.app(request.match_info["app"]).name
        return json_response({"labels": await self._core.store.ranges(app)})

    async def label(self, request: web.Request) -> web.Response:
        app = request.match_info["app"]
        return json_response(await self._core.ranges.label(
            app, await read_json(self._core, request)))

    async def end(self, request: web.Request) -> web.Response:
        app = request.match_info["app"]
        body = await read_body(self._core, request)
        return json_response(await self._core.ranges.end(
            app, request.match_info["label_id"], parse_json(body) if body else {}))


def _number(text: str | None, name: str, default: float) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise Invalid(f"{name}: a unix time in seconds is expected")
    return value


def _thin(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(t) <= MAX_POINTS:
        return t, v
    buckets = np.array_split(np.arange(len(t)), MAX_POINTS // 2)
    keep = np.unique(np.concatenate([[b[np.argmin(v[b])], b[np.argmax(v[b])]]
                                     for b in buckets]))
    return t[keep], v[keep]
