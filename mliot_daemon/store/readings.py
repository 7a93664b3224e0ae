"""The store's stream readings and time-range labels.

Readings are kept compactly: a row is a *block* of one channel's readings (the readings of
one write, time-ordered), its times as millisecond steps from its first reading and its values
as float32, zlib-compressed. A block per write keeps the acknowledgement rule of samples (on
disk before the answer); ``compact_readings`` later merges the small blocks that MQTT and
small batches leave into big ones, where a reading costs a few bytes. Blocks of one channel
may overlap in time (a late reading is a block of its own): readers merge them.

A range label's windows become samples in the same transaction that records the range, so a
range is stored once and wholly, or not at all.
"""

from __future__ import annotations

import sqlite3
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from mliot_daemon.windows import Series

T = TypeVar("T")

COMPACT_AFTER_S = 600.0  # blocks this far behind the newest time are merged
COMPACT_BLOCK = 65_536  # readings per merged block at most
COMPACT_ROWS = 5000  # blocks merged per transaction
MAX_STEP_MS = 2**32 - 1


def encode_block(t: np.ndarray, v: np.ndarray) -> tuple[float, float, bytes]:
    """(t0, t1, data) of time-ordered readings."""
    t0 = float(t[0])
    offsets = np.rint((t - t0) * 1000.0).astype(np.int64)
    steps = np.diff(offsets, prepend=0).astype(np.uint32)
    data = zlib.compress(steps.tobytes() + v.astype(np.float32).tobytes(), 1)
    return t0, t0 + float(offsets[-1]) / 1000.0, data


def decode_block(t0: float, n: int, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    raw = zlib.decompress(data)
    steps = np.frombuffer(raw, np.uint32, n)
    values = np.frombuffer(raw, np.float32, n, offset=4 * n)
    return t0 + np.cumsum(steps, dtype=np.int64) / 1000.0, values.astype(np.float64)


def split_block(t: np.ndarray, v: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Time-ordered readings in blocks whose millisecond steps fit their uint32 field."""
    if float(t[-1] - t[0]) * 1000.0 < MAX_STEP_MS:
        return [(t, v)]
    cut = np.flatnonzero(np.diff(t) * 1000.0 >= MAX_STEP_MS // 2) + 1  # long gaps: new blocks
    pieces, out = np.split(np.arange(len(t)), cut), []
    for idx in pieces:
        out.append((t[idx], v[idx]))
    return out


def _merged(rows: Sequence[tuple[float, int, bytes]]) -> Series:
    """Blocks' readings in time order (stable: a repeated time keeps the order of writing)."""
    if not rows:
        return Series.empty()
    parts = [decode_block(t0, n, data) for t0, n, data in rows]
    t = np.concatenate([p[0] for p in parts])
    v = np.concatenate([p[1] for p in parts])
    order = np.argsort(t, kind="stable")
    return Series(t[order], v[order])


class ReadingTables:
    """Mixed into ``Store``: the ``readings`` and ``ranges`` tables."""

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...  # Store's

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...  # Store's

    def _insert_samples(self, conn: sqlite3.Connection, app: str, features: Any,
                        labels: Sequence[str], source: str, batch_id: str | None) -> None: ...

    def _check_app(self, app: str) -> None: ...  # Store's: NotFound for an app being deleted

    async def add_readings(self, app: str, blocks: Sequence[tuple[str, np.ndarray, np.ndarray]],
                           batch_id: str | None) -> bool:
        """Commit readings, a block per channel (time-ordered); False when ``batch_id`` was
        stored already (nothing is stored twice)."""
        rows = [(app, channel, *encode_block(t_part, v_part), len(t_part))
                for channel, t, v in blocks if len(t) for t_part, v_part in split_block(t, v)]

        def write(conn: sqlite3.Connection) -> bool:
            self._check_app(app)
            if batch_id is not None:
                key = f"readings:{batch_id}"
                if conn.execute("SELECT 1 FROM batches WHERE app=? AND batch_id=?",
                                (app, key)).fetchone():
                    return False
                conn.execute("INSERT INTO batches VALUES (?,?,?,?)",
                             (app, key, sum(r[-1] for r in rows), time.time()))
            conn.executemany("INSERT INTO readings (app, channel, t0, t1, data, n) "
                             "VALUES (?,?,?,?,?,?)", rows)
            return True
        return await self._write(write)

    async def read_series(self, app: str, channels: Sequence[str], start: float, end: float
                          ) -> list[Series]:
        """Each channel's readings in ``[start, end]``, and the last one before ``start`` (a
        held value, or how long a channel was quiet), in one read."""
        def read(c: sqlite3.Connection) -> list[Series]:
            out = []
            for channel in channels:
                rows = c.execute("SELECT t0, n, data FROM readings WHERE app=? AND channel=? "
                                 "AND t1 >= ? AND t0 <= ?", (app, channel, start, end)).fetchall()
                prior = c.execute("SELECT t0, n, data FROM readings WHERE app=? AND channel=? "
                                  "AND t1 < ? ORDER BY t1 DESC LIMIT 1",
                                  (app, channel, start)).fetchall()
                s = _merged(rows + prior)
                first = max(0, int(np.searchsorted(s.t, start)) - 1)
                last = int(np.searchsorted(s.t, end, side="right"))
                out.append(Series(s.t[first:last], s.v[first:last]))
            return out
        return await self._read(read)

    async def last_reading_time(self, app: str) -> float | None:
        row = await self._read(lambda c: c.execute(
            "SELECT max(t1) FROM readings WHERE app=?", (app,)).fetchone())
        return None if row[0] is None else float(row[0])

    async def readings_bytes(self, app: str) -> tuple[int, int]:
        """(stored readings, bytes of their blocks) of an app."""
        row = await self._read(lambda c: c.execute(
            "SELECT coalesce(sum(n), 0), coalesce(sum(length(data)), 0) + 48 * count(*) "
            "FROM readings WHERE app=?", (app,)).fetchone())
        return int(row[0]), int(row[1])

    async def prune_readings(self, older_than_s: float) -> int:
        """Drop blocks whose readings are all older than the retention."""
        cutoff = time.time() - older_than_s
        return await self._write(lambda c: c.execute(
            "DELETE FROM readings WHERE t1 < ?", (cutoff,)).rowcount)

    async def compact_readings(self) -> int:
        """Merge each channel's small blocks that are COMPACT_AFTER_S behind its newest into
        big ones (one transaction per channel); the blocks merged."""
        keys = await self._read(lambda c: c.execute(
            "SELECT app, channel, max(t1) FROM readings GROUP BY app, channel").fetchall())
        merged = 0
        for app, channel, newest in keys:
            while True:  # a transaction per COMPACT_ROWS blocks: the writer serves others between
                n = await self._write(lambda c, a=app, ch=channel, t=newest - COMPACT_AFTER_S:
                                      _compact(c, a, ch, t))
                merged += n
                if n < COMPACT_ROWS:
                    break
        return merged

    # -- ranges -----------------------------------------------------------------------------

    async def ranges(self, app: str) -> list[dict[str, Any]]:
        rows = await self._read(lambda c: c.execute(
            "SELECT id, label, t_start, t_end, windows FROM ranges WHERE app=? ORDER BY t_start",
            (app,)).fetchall())
        return [{"label_id": r[0], "label": r[1], "start": r[2], "end": r[3], "windows": r[4]}
                for r in rows]

    async def open_range(self, app: str, label_id: str, label: str, start: float) -> None:
        await self._write(lambda c: c.execute(
            "INSERT INTO ranges (id, app, label, t_start, t_end, windows, created) "
            "VALUES (?,?,?,?,NULL,0,?)", (label_id, app, label, start, time.time())))

    async def close_range(self, app: str, label_id: str, label: str, start: float, end: float,
                          windows: np.ndarray) -> int:
        """Record a closed range and its windows as labelled samples, in one transaction; the
        samples stored (0 if the range was closed already: a retry)."""
        def write(conn: sqlite3.Connection) -> int:
            self._check_app(app)
            row = conn.execute("SELECT t_end FROM ranges WHERE app=? AND id=?",
                               (app, label_id)).fetchone()
            if row is not None and row[0] is not None:
                return 0
            conn.execute("INSERT INTO ranges (id, app, label, t_start, t_end, windows, created) "
                         "VALUES (?,?,?,?,?,?,?) ON CONFLICT(app, id) DO UPDATE SET "
                         "t_end=excluded.t_end, windows=excluded.windows",
                         (label_id, app, label, start, end, len(windows), time.time()))
            if len(windows):
                self._insert_samples(conn, app, windows, [label] * len(windows), "range",
                                     f"range:{label_id}")
            return len(windows)
        return await self._write(write)


def _compact(conn: sqlite3.Connection, app: str, channel: str, before: float) -> int:
    rows = conn.execute("SELECT id, t0, n, data FROM readings WHERE app=? AND channel=? AND "
                        "t1 < ? AND n < ? ORDER BY t0 LIMIT ?",
                        (app, channel, before, COMPACT_BLOCK // 16, COMPACT_ROWS)).fetchall()
    if len(rows) < 2:
        return 0
    series = _merged([(t0, n, data) for _, t0, n, data in rows])
    conn.executemany("DELETE FROM readings WHERE id=?", [(r[0],) for r in rows])
    for i in range(0, len(series.t), COMPACT_BLOCK):
        for t, v in split_block(series.t[i:i + COMPACT_BLOCK], series.v[i:i + COMPACT_BLOCK]):
            conn.execute("INSERT INTO readings (app, channel, t0, t1, data, n) "
                         "VALUES (?,?,?,?,?,?)", (app, channel, *encode_block(t, v), len(t)))
    return len(rows)
