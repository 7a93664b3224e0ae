"""An app's samples, corrections among them, read for an export (``GET
/v1/apps/{app}/export``) from one snapshot of the store.

The export has a read-only connection of its own, and reads every page inside one read
transaction: WAL keeps that transaction on the snapshot of its first read, so a long export
is consistent (every page, and the counts it was planned from, see the same rows) while
writes go on, and the store's own reader thread is not held up. Blocking: call each method in
a thread, one at a time.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAGE_BYTES = 4 << 20  # features per page: bounds memory, and the loop's wait between writes


@dataclass(frozen=True, slots=True)
class Page:
    """Consecutive samples: ``X`` stacked, or for clips of several lengths padded with zeros
    to ``width`` (``lengths`` say how long each is)."""

    X: np.ndarray
    labels: list[str]
    sources: list[str]
    created: list[float]
    predicted: list[str]  # for a correction, what the model had said; "" for a sample
    lengths: list[int]  # each sample's first dimension


class SampleSnapshot:
    """Every sample of ``app`` as of the first read: ``n`` of them (``corrections`` made by
    feedback), of the one ``shape`` they share, or clips of several lengths, at most
    ``width`` values long (``shape`` is then None)."""

    def __init__(self, db_path: Path, app: str) -> None:
        self.app = app
        self._conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False)  # used by one thread at a time
        try:
            self._conn.execute("BEGIN")  # the snapshot starts at the first SELECT below
            self.n, self.corrections, width, kinds = self._conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE source = 'feedback'), "
                "max(length(features)) / 4, count(DISTINCT shape) FROM samples WHERE app=?",
                (app,)).fetchone()
            self.width = int(width or 0)
            shapes = [r[0] for r in self._conn.execute(
                "SELECT DISTINCT shape FROM samples WHERE app=? LIMIT 2", (app,))]
            self.shape: tuple[int, ...] | None = _shape(shapes[0]) if kinds == 1 else None
            # clips of several lengths pad well only when every one is a flat clip
            self.flat_clips = kinds > 1 and not self._conn.execute(
                "SELECT 1 FROM samples WHERE app=? AND instr(shape, ',') LIMIT 1",
                (app,)).fetchone()
            self._predicted = dict(self._conn.execute(
                "SELECT sample_id, predicted FROM feedback WHERE app=? AND sample_id "
                "IS NOT NULL", (app,)).fetchall())
        except BaseException:
            self._conn.close()
            raise

    def page_rows(self) -> int:
        """Rows per page: about PAGE_BYTES of features."""
        return max(1, PAGE_BYTES // max(4 * self.width, 1))

    def page(self, after_id: int) -> tuple[int, Page | None]:
        """The samples after ``after_id`` (at most ``page_rows()`` of them), and the last id read;
        None at the end."""
        rows = self._conn.execute(
            "SELECT id, features, shape, label, source, created FROM samples "
            "WHERE app=? AND id > ? ORDER BY id LIMIT ?", (self.app, after_id, self.page_rows())
        ).fetchall()
        if not rows:
            return after_id, None
        shapes = [_shape(r[2]) for r in rows]
        if self.shape is not None:
            X = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(
                len(rows), *self.shape)
        else:
            X = np.zeros((len(rows), self.width), dtype=np.float32)
            for i, r in enumerate(rows):
                clip = np.frombuffer(r[1], dtype=np.float32)
                X[i, :len(clip)] = clip
        page = Page(X, [r[3] for r in rows], [r[4] for r in rows], [r[5] for r in rows],
                    [self._predicted.get(r[0], "") for r in rows], [s[0] for s in shapes])
        return rows[-1][0], page

    def close(self) -> None:
        self._conn.close()  # ends the read transaction: nothing was written


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(","))
