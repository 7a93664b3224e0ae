"""Stream apps on the serving side: readings in, windows cut as they complete, each predicted
and recorded, and the debounced activity published when it changes. (``ranges`` turns time
ranges into labelled windows; ``mliot_daemon.windows`` cuts them.)

When a window closes. Windows are cut on the readings' timestamps; a window closes once time
has passed its end, and time is the newer of two clocks:
  * the newest reading of the app, capped at the daemon's clock + CLOCK_SKEW_S (a sender
    whose clock runs ahead must not close windows early);
  * the daemon's clock - CLOCK_GRACE_S, so an app whose channels all report only on change
    (an idle plug) still gets its windows, each CLOCK_GRACE_S after it ends.
A reading behind a window already closed is late: it is stored, and the windows it falls in
are predicted again if they closed less than ``max_lateness_s`` ago; later ones are not.

Everything runs on the loop, per app under one lock; a window's prediction goes through the
serving core like any request (channel ``stream``), so it is recorded and can be corrected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from mliot_daemon.errors import Invalid, Unavailable
from mliot_daemon.messages import ActivityChanged
from mliot_daemon.settings import AppSpec
from mliot_daemon.windows import Series, cut, numeric, window_ends

if TYPE_CHECKING:
    from actors.server.core import ServingCore

log = structlog.get_logger("mliot.streams")

CLOCK_SKEW_S = 2.0
CLOCK_GRACE_S = 0.5
MAX_FUTURE_S = 60.0  # readings further ahead of the daemon's clock are refused
MAX_WINDOWS_STEP = 64  # windows predicted per step; a jump in time skips the older ones
TICK_S = 0.1
MAX_READINGS = 100_000  # per request


@dataclass(frozen=True, slots=True)
class Readings:
    """Checked readings of one app: time, channel index and value, in arrival order."""

    t: np.ndarray
    channel: np.ndarray
    v: np.ndarray


def check_readings(items: Any, spec: AppSpec, now: float, keep_s: float
                   ) -> tuple[Readings, Counter[str], list[str]]:
    """Readings of a request, with the reasons and descriptions of those refused."""
    if not isinstance(items, list):
        raise Invalid('expected {"readings": [{"t": <unix s>, "channel": ..., "value": ...}]}')
    if len(items) > MAX_READINGS:
        raise Invalid(f"readings: at most {MAX_READINGS} per request")
    index = {c.name: i for i, c in enumerate(spec.channels)}
    t, ch, v = np.empty(len(items)), np.empty(len(items), np.int64), np.empty(len(items))
    reasons: Counter[str] = Counter()
    errors: list[str] = []
    keep = np.ones(len(items), bool)
    for i, r in enumerate(items):
        why = None
        if not isinstance(r, dict) or "t" not in r or "channel" not in r or "value" not in r:
            why = "missing_field", 't, channel and value are required'
        elif (c := index.get(r["channel"]) if isinstance(r["channel"], str) else None) is None:
            why = "unknown_channel", f"unknown channel {str(r['channel'])[:64]!r} (channels: " \
                f"{', '.join(index)})"
        elif (value := numeric(r["value"])) is None:
            why = "not_numeric", f"value {str(r['value'])[:32]!r} is not a number"
        elif not isinstance(r["t"], int | float) or isinstance(r["t"], bool) \
                or not math.isfinite(r["t"]):
            why = "missing_field", "t: a unix time in seconds is expected"
        elif r["t"] > now + MAX_FUTURE_S:
            why = "future", f"t = {r['t']} is more than {MAX_FUTURE_S:g} s ahead of the clock"
        elif r["t"] < now - keep_s:
            why = "too_old", f"t = {r['t']} is older than daemon.keep_readings_days"
        if why is not None:
            keep[i] = False
            reasons[why[0]] += 1
            if len(errors) < 10:
                errors.append(f"readings[{i}]: {why[1]}")
            continue
        t[i], ch[i], v[i] = r["t"], c, value
    return Readings(t[keep], ch[keep], v[keep]), reasons, errors


class Debounce:
    """The current activity: a new label is taken once windows have shown it for
    ``min_dwell_s`` without a break (on window time)."""

    def __init__(self, min_dwell_s: float, window_s: float) -> None:
        self.min_dwell_s, self.window_s = min_dwell_s, window_s
        self.label: str | None = None
        self.since: float | None = None
        self._candidate: tuple[str, float] | None = None  # label, first window end showing it

    def observe(self, end: float, label: str) -> bool:
        """A window's label; whether the activity changed."""
        if label == self.label:
            self._candidate = None
            return False
        if self._candidate is None or self._candidate[0] != label:
            self._candidate = (label, end)
        if end - self._candidate[1] + 1e-9 < self.min_dwell_s:
            return False
        # it started about half a window before the first window that showed it
        self.label, self.since = label, round(self._candidate[1] - self.window_s / 2, 3)
        self._candidate = None
        return True

    def as_json(self) -> dict[str, Any] | None:
        return None if self.label is None else {"label": self.label, "since": self.since}


@dataclass(eq=False)
class Live:
    """One stream app's recent readings and window state."""

    spec: AppSpec
    series: list[Series]
    activity: Debounce
    newest: float = -math.inf  # the newest reading's time
    closed: float | None = None  # end of the last window closed
    closed_at: dict[float, float] = field(default_factory=dict)  # recent window end -> clock
    dirty: set[float] = field(default_factory=set)  # closed windows to predict again
    observed: float = -math.inf  # the last window end the activity saw
    window: dict[str, Any] | None = None  # the last window's validity
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def new(cls, spec: AppSpec) -> Live:
        return cls(spec, [Series.empty() for _ in spec.channels],
                   Debounce(spec.min_dwell_s, spec.window_s))

    def add(self, r: Readings) -> None:
        for c in np.unique(r.channel):
            mask = r.channel == c
            old = self.series[c]
            t, v = np.concatenate((old.t, r.t[mask])), np.concatenate((old.v, r.v[mask]))
            if len(old.t) and r.t[mask].min() < old.t[-1]:
                order = np.argsort(t, kind="stable")
                t, v = t[order], v[order]
            self.series[c] = Series(t, v)
        self.newest = max(self.newest, float(r.t.max()))
        if self.closed is None:  # the first reading: windows before it have nothing to cut
            self.closed = math.floor(float(r.t.min()) / self.spec.hop_s) * self.spec.hop_s

    def late(self, r: Readings) -> int:
        """How many readings fall behind windows already closed; the windows they fall in
        that closed less than ``max_lateness_s`` ago are marked to be predicted again."""
        if self.closed is None:
            return 0
        late = r.t[r.t <= self.closed]
        if len(late) and self.closed_at:
            s, now = self.spec, time.monotonic()
            # only windows closed less than max_lateness_s ago are still in ``closed_at``
            recent = late[late > min(self.closed_at) - s.window_s]
            for t in np.unique(np.floor(recent / s.hop_s)):
                for end in window_ends(t * s.hop_s, t * s.hop_s + s.window_s, s.hop_s):
                    at = self.closed_at.get(float(end))
                    if at is not None and now - at <= s.max_lateness_s:
                        self.dirty.add(float(end))
        return len(late)

    def trim(self) -> None:
        """Keep what a window still to close (or predict again) needs, and one reading before
        it (a held value, or how long the channel was quiet)."""
        s = self.spec
        if self.closed is None:
            return
        start = self.closed - s.window_s - s.max_lateness_s - s.hop_s
        for c, old in enumerate(self.series):
            first = max(0, int(np.searchsorted(old.t, start)) - 1)
            if first:
                self.series[c] = Series(old.t[first:], old.v[first:])
        horizon = time.monotonic() - s.max_lateness_s
        for end in [e for e, at in self.closed_at.items() if at < horizon]:
            del self.closed_at[end]


class StreamDesk:
    """Every stream app's live state; the core's ``streams``."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core
        self.live: dict[str, Live] = {}
        self._ticker: asyncio.Task[None] | None = None

    async def sync(self) -> None:
        """Follow the catalog: new stream apps start from their stored recent readings, a
        changed one starts over, a removed one is forgotten."""
        core = self._core
        for name in core.catalog.names():
            entry = core.catalog.get(name)
            spec = entry.spec if entry is not None and entry.spec.channels else None
            live = self.live.get(name)
            if spec is None:
                self.live.pop(name, None)
            elif live is None or live.spec != spec:
                self.live[name] = await self._restore(spec)
        for name in set(self.live) - set(core.catalog.names()):
            del self.live[name]
        if self.live and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="streams.tick")

    async def _restore(self, spec: AppSpec) -> Live:
        live = Live.new(spec)
        now = time.time()
        start = now - spec.window_s - spec.max_lateness_s - spec.hop_s
        live.series = await self._core.store.read_series(
            spec.name, [c.name for c in spec.channels], start, now + MAX_FUTURE_S)
        newest = [float(s.t[-1]) for s in live.series if len(s.t)]
        if newest:
            live.newest = max(newest)
            live.closed = math.floor(min(now, live.newest) / spec.hop_s) * spec.hop_s
        return live

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()

    # -- readings -------------------------------------------------------------------------------

    async def ingest(self, app: str, items: Any, source: str, batch_id: Any = None,
                     size: int = 0) -> dict[str, Any]:
        """Check and commit a batch of readings; acknowledged after the commit. A batch with a
        refused reading is refused whole (a 4xx naming them), and the refusals counted."""
        core = self._core
        live = self._live(app)
        if batch_id is not None and not isinstance(batch_id, str):
            raise Invalid("batch_id: a string is expected")
        keep_s = core.settings.daemon.keep_readings_days * 86400.0
        readings, reasons, errors = await core.offload(
            size, lambda: check_readings(items, live.spec, time.time(), keep_s))
        self.count_refused(app, reasons)
        if errors:
            raise Invalid(f"{sum(reasons.values())} of {len(items)} readings refused; none "
                          "stored", errors)
        return {"accepted": await self.commit(app, readings, source, batch_id)}

    def count_refused(self, app: str, reasons: Counter[str]) -> None:
        for reason, n in reasons.items():
            self._core.metrics.readings_rejected.labels(app, reason).inc(n)
        if reasons:
            log.warning("readings_refused", app=app, **reasons)

    async def commit(self, app: str, r: Readings, source: str, batch_id: str | None = None
                     ) -> int:
        """Store checked readings, then cut and predict the windows they complete."""
        live = self._live(app)
        if not len(r.t):
            return 0
        blocks = []
        for c, channel in enumerate(live.spec.channels):
            mask = r.channel == c
            if mask.any():
                order = np.argsort(r.t[mask], kind="stable")
                blocks.append((channel.name, r.t[mask][order], r.v[mask][order]))
        stored = await self._core.store.add_readings(app, blocks, batch_id)
        live = self.live.get(app)
        if not stored or live is None:  # a retried batch, or the app changed meanwhile
            return len(r.t) if stored else 0
        late = live.late(r)
        metrics = self._core.metrics.readings
        metrics.labels(app, "in_order").inc(len(r.t) - late)
        if late:
            metrics.labels(app, "late").inc(late)
        live.add(r)
        log.debug("readings_committed", app=app, source=source, n=len(r.t), late=late)
        await self.step(app)
        return len(r.t)

    def _live(self, app: str) -> Live:
        live = self.live.get(self._core.app(app).name)
        if live is None:
            raise Invalid(f"app {app!r} has no channels: readings are for stream apps "
                          "(a sensor app with [[apps.channels]])")
        return live

    # -- windows ----------------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for app in list(self.live):
                try:
                    await self.step(app)
                except Exception:  # one app's trouble must not stop the others' windows
                    log.exception("stream_step_failed", app=app)

    async def step(self, app: str) -> None:
        """Close the windows time has passed, predict the valid ones, update the activity."""
        live = self.live.get(app)
        if live is None or live.closed is None:
            return
        async with live.lock:
            s, now = live.spec, time.time()
            horizon = max(min(live.newest, now + CLOCK_SKEW_S), now - CLOCK_GRACE_S)
            ends = window_ends(live.closed, horizon, s.hop_s)
            if len(ends):
                live.closed = float(ends[-1])
                if len(ends) > MAX_WINDOWS_STEP:
                    self._core.metrics.windows.labels(app, "skipped").inc(
                        len(ends) - MAX_WINDOWS_STEP)
                    ends = ends[-MAX_WINDOWS_STEP:]
                clock = time.monotonic()
                live.closed_at.update((float(e), clock) for e in ends)
            again = sorted(live.dirty - set(ends.tolist()))
            live.dirty.clear()
            if again:
                self._core.metrics.windows.labels(app, "late").inc(len(again))
                ends = np.union1d(ends, again)
            if not len(ends):
                return
            windows = cut(live.series, ends, s)
            live.trim()
            await self._predict(live, windows)

    async def _predict(self, live: Live, windows: Any) -> None:
        core, app, s = self._core, live.spec.name, live.spec
        valid = windows.valid
        bad = [c.name for c, b in zip(s.channels, windows.bad[-1], strict=True) if b]
        live.window = {"end": float(windows.ends[-1]), "valid": bool(valid[-1]),
                       "missing": bad}
        if (~valid).any():
            core.metrics.windows.labels(app, "invalid").inc(int((~valid).sum()))
        if not valid.any():
            return
        entry = core.catalog.get(app)
        if entry is None:
            return
        samples = list(windows.X[valid])
        try:
            answers = await core.finish(entry, samples, False, core.start(entry, samples, False),
                                        "stream")
        except Unavailable:  # no model yet
            return
        core.metrics.windows.labels(app, "predicted").inc(len(samples))
        for end, answer in zip(windows.ends[valid], answers, strict=True):
            if end > live.observed:
                live.observed = float(end)
                if live.activity.observe(float(end), answer["label"]):
                    self._activity(live)

    def _activity(self, live: Live) -> None:
        core, app = self._core, live.spec.name
        activity = live.activity.as_json()
        assert activity is not None
        log.info("activity_changed", app=app, **activity)
        core.broadcast(app, {"type": "event", "kind": "activity", **activity})
        if core.settings.mqtt is not None:
            core.refs.mqtt.offer(ActivityChanged(app=app, **activity))

    # -- status ---------------------------------------------------------------------------------

    def status(self, app: str) -> dict[str, Any]:
        """What ``GET /v1/apps/{app}`` adds for a stream app (each channel's spec gains its
        last reading's time and whether it is stale)."""
        live = self.live.get(app)
        if live is None:
            return {}
        now = time.time()
        channels = []
        for c, s in zip(live.spec.channels, live.series, strict=True):
            last = float(s.t[-1]) if len(s.t) else None
            stale = last is None or (c.stale_s is not None and now - last > c.stale_s)
            channels.append({**dataclasses.asdict(c), "last_t": last, "stale": stale})
        return {"activity": live.activity.as_json(), "channels": channels,
                "window": live.window}
