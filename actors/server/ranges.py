"""Labels by time range on a stream app: "the kettle was on from 7:02 to 7:05".

Every valid window wholly inside a closed range becomes a labelled sample, cut from the stored
readings (so a range labelled later, or after a restart, finds the windows of readings stored
before it), in the transaction that records the range. A range may be open ("it is happening
now", Home Assistant's "what is happening" select); its windows are stored when it ends.

Rules: a range overlapping one of another label is refused, naming both; one overlapping a
range of the same label adds only the windows that range has not. The same ``label_id`` twice
stores the range once (without one, the id is derived from the app, label and start, so a
retried request is recognised too). A range of more than MAX_RANGE_WINDOWS windows keeps that
many, evenly spread.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from actors.server.readings import MAX_FUTURE_S
from mliot_daemon.errors import Conflict, Invalid, NotFound
from mliot_daemon.messages import SamplesAdded
from mliot_daemon.settings import AppSpec
from mliot_daemon.windows import cut, ends_within

if TYPE_CHECKING:
    from actors.server.core import ServingCore

log = structlog.get_logger("mliot.ranges")

MAX_RANGE_WINDOWS = 5000
LABEL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
NONE = "none"  # Home Assistant's "what is happening" option that closes the open range


def _time(value: Any, name: str) -> float:
    """A range's start or end: a unix time no further ahead than readings may be."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise Invalid(f"{name}: a unix time in seconds is expected")
    if not 0 <= value <= time.time() + MAX_FUTURE_S:
        raise Invalid(f"{name}: {value} is not a unix time up to {MAX_FUTURE_S:g} s from now")
    return float(value)


def _span(r: dict[str, Any]) -> str:
    end = "open" if r["end"] is None else time.strftime("%H:%M:%S", time.localtime(r["end"]))
    return (f"{r['label_id']} ({r['label']!r}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['start']))}-{end})")


class RangeDesk:
    """The core's ``ranges``: one lock per daemon, so overlap checks see every range."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core
        self._lock = asyncio.Lock()

    def _spec(self, app: str) -> AppSpec:
        spec = self._core.app(app).spec
        if not spec.channels:
            raise Invalid(f"app {app!r} has no channels: time-range labels are for stream apps")
        return spec

    def _label(self, spec: AppSpec, label: Any) -> str:
        if isinstance(label, int | float) and not isinstance(label, bool):
            label = str(label)
        if not isinstance(label, str) or not label or len(label) > 128:
            raise Invalid("label: a non-empty string is expected")
        if spec.classes is not None and label not in spec.classes:
            raise Invalid(f"label: {label!r} is not one of the app's classes "
                          f"({', '.join(spec.classes)})")
        return label

    async def label(self, app: str, body: Any) -> dict[str, Any]:
        """``POST /v1/apps/{app}/labels``: a closed range (with ``end``) or an open one."""
        spec = self._spec(app)
        if not isinstance(body, dict):
            raise Invalid('expected {"label", "start", "end"?, "label_id"?}')
        label = self._label(spec, body.get("label"))
        start = _time(body.get("start"), "start")
        end = None if body.get("end") is None else _time(body["end"], "end")
        label_id = body.get("label_id")
        if label_id is None:
            label_id = "r-" + hashlib.sha256(f"{spec.name}|{label}|{start!r}".encode()
                                             ).hexdigest()[:16]
        if not isinstance(label_id, str) or not LABEL_ID.fullmatch(label_id):
            raise Invalid("label_id: 1 to 128 of A-Z a-z 0-9 _ . : -")
        async with self._lock:
            return await self._add(spec, label_id, label, start, end)

    async def end(self, app: str, label_id: str, body: Any) -> dict[str, Any]:
        """``POST /v1/apps/{app}/labels/{label_id}/end``: close an open range (now, or at
        ``end``) and store its windows."""
        spec = self._spec(app)
        when = body.get("end") if isinstance(body, dict) else None
        end = time.time() if when is None else _time(when, "end")
        async with self._lock:
            found = [r for r in await self._core.store.ranges(spec.name)
                     if r["label_id"] == label_id]
            if not found:
                raise NotFound(f"no range {label_id[:128]!r}")
            r = found[0]
            return await self._add(spec, label_id, r["label"], r["start"], end)

    async def happening(self, app: str, label: str) -> dict[str, Any]:
        """Home Assistant's "what is happening": a class opens a range now, closing the open
        one; ``none`` closes it."""
        spec = self._spec(app)
        now = time.time()
        if label != NONE:
            label = self._label(spec, label)
        async with self._lock:
            for r in await self._core.store.ranges(spec.name):
                if r["end"] is None and r["label"] != label:
                    await self._add(spec, r["label_id"], r["label"], r["start"], now)
                elif r["end"] is None:
                    return {"label_id": r["label_id"], "windows": 0}  # it is happening already
            if label == NONE:
                return {"label_id": None, "windows": 0}
            label_id = "r-" + hashlib.sha256(f"{spec.name}|{label}|{now!r}".encode()
                                             ).hexdigest()[:16]
            return await self._add(spec, label_id, label, now, None)

    async def _add(self, spec: AppSpec, label_id: str, label: str, start: float,
                   end: float | None) -> dict[str, Any]:
        store, app = self._core.store, spec.name
        now = time.time()
        if end is not None and end <= start:
            raise Invalid(f"end ({end}) must be after start ({start})")
        if end is not None and end > now + 60.0:
            raise Invalid(f"end ({end}) is in the future: end the range when it is over")
        ranges = await store.ranges(app)
        same = [r for r in ranges if r["label_id"] == label_id]
        if same and (same[0]["label"] != label or same[0]["start"] != start):
            raise Conflict(f"label_id {label_id!r} names another range: {_span(same[0])}")
        if same and same[0]["end"] is not None:  # stored already: a retry
            return {"label_id": label_id, "windows": same[0]["windows"]}
        covered = []
        for r in ranges:
            if r["label_id"] == label_id or not _overlap(r, start, end):
                continue
            if r["label"] != label:
                mine = {"label_id": label_id, "label": label, "start": start, "end": end}
                raise Conflict(f"range {_span(mine)} overlaps range {_span(r)}")
            covered.append(r)
        if end is None:
            if not same:
                await store.open_range(app, label_id, label, start)
            log.info("range_opened", app=app, label_id=label_id, label=label, start=start)
            return {"label_id": label_id, "windows": 0}
        X = await self._windows(spec, start, min(end, now), covered)
        stored = await store.close_range(app, label_id, label, start, end, X)
        if stored:
            self._core.metrics.samples_ingested.labels(app, "range").inc(stored)
            self._core.refs.trainer.offer(SamplesAdded(app=app,
                                                       n_samples=store.count_samples(app)))
        log.info("range_labelled", app=app, label_id=label_id, label=label, start=start,
                 end=end, windows=stored)
        return {"label_id": label_id, "windows": stored}

    async def _windows(self, spec: AppSpec, start: float, end: float,
                       covered: list[dict[str, Any]]) -> np.ndarray:
        """The valid windows inside ``[start, end]`` that no range in ``covered`` holds."""
        ends = ends_within(start, end, spec, limit=4 * MAX_RANGE_WINDOWS)
        for r in covered:
            if r["end"] is not None:
                ends = ends[(ends - spec.window_s < r["start"]) | (ends > r["end"])]
        if len(ends) > MAX_RANGE_WINDOWS:
            ends = ends[np.linspace(0, len(ends) - 1, MAX_RANGE_WINDOWS).round().astype(int)]
        if not len(ends):
            return np.zeros((0, *(spec.shape or ())), np.float32)
        series = await self._core.store.read_series(
            spec.name, [c.name for c in spec.channels], float(ends[0]) - spec.window_s,
            float(ends[-1]))
        windows = await asyncio.to_thread(cut, series, ends, spec)
        return windows.X[windows.valid]


def _overlap(r: dict[str, Any], start: float, end: float | None) -> bool:
    r_end = math.inf if r["end"] is None else r["end"]
    return start < r_end and r["start"] < (math.inf if end is None else end)
