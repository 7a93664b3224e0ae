"""The store itself: its two connections (a writer thread that group-commits, a reader thread
beside it), and every read and write. The package docstring says why it commits in groups and
syncs every commit."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import structlog

from mliot_daemon.sample_codec import encode
from mliot_daemon.store import records
from mliot_daemon.store.queries import QueryTables
from mliot_daemon.store.readings import ReadingTables
from mliot_daemon.store.schema import MIGRATIONS, SCHEMA_VERSION

log = structlog.get_logger("mliot.store")
T = TypeVar("T")

PREDICTION_FLUSH_S = 0.05  # prediction records reach the disk within this (DESIGN: 100 ms)


class Store(QueryTables, ReadingTables):
    """The daemon's SQLite store; all methods are coroutines that never block the loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="store-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._predictions: list[records.PredictionRecord] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        # labelled samples per app and label as committed: the trainer asks on every ingest,
        # and a GROUP BY would scan the table. A transaction counts into a draft (the writer
        # thread's), which replaces them only once it has committed: a reader on the loop
        # must never see rows a pool worker could not read yet.
        self._labels: dict[str, Counter[str]] = {}
        self._draft: dict[str, Counter[str]] = {}
        # Apps being deleted: writes queued behind the delete must not leave rows for them
        # (they would turn up in a new app of the same name). Added on the loop when the
        # delete is queued, removed by the writer when an app of that name is put again.
        self._gone: set[str] = set()
        self._flush_scheduled = False
        self._closing = False
        self.commits = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or migrate the database and start the group-commit writer."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._open_writer)
        await loop.run_in_executor(self._reader, self._open_reader)
        self._flusher = asyncio.create_task(self._flush_loop(), name="store.flush")

    async def close(self) -> None:
        """Commit what is queued, then close both connections."""
        if self._flusher is not None:
            self._closing = True  # commit everything queued, prediction records included
            self._idle.clear()
            self._wake.set()
            await self._idle.wait()  # set when a pass finds nothing left to commit
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        loop = asyncio.get_running_loop()
        for pool, attr in ((self._writer, "_wconn"), (self._reader, "_rconn")):
            conn = getattr(self, attr)
            if conn is not None:
                await loop.run_in_executor(pool, conn.close)
                setattr(self, attr, None)
            pool.shutdown(wait=True)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._wconn = self._connect()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise records.StoreError(f"{self.path}: schema version {version} is newer than this "
                                     f"mliot ({SCHEMA_VERSION}); upgrade mliot")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            try:  # one transaction per step: a crash mid-migration leaves the old version
                conn.executescript(f"BEGIN IMMEDIATE;\n{MIGRATIONS[v]}\n"
                                   f"PRAGMA user_version = {v};\nCOMMIT;")
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            log.info("store_migrated", version=v)
        for app, label, n in conn.execute("SELECT app, label, count(*) FROM samples "
                                          "GROUP BY app, label"):
            self._labels.setdefault(app, Counter())[label] = n

    def _open_reader(self) -> None:
        self._rconn = self._connect()

    # -- group commit -------------------------------------------------------------------------

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the next group transaction; resolves once it has been committed."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, fut))
        self._wake.set()
        return await fut

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            predictions, self._predictions = self._predictions, []
            if not batch and not predictions:
                self._idle.set()
                continue
            self._idle.clear()
            try:
                results = await loop.run_in_executor(self._writer, self._commit, batch, predictions)
            except records.StoreError as exc:
                results = [exc] * len(batch)
            except Exception as exc:  # never leave a writer waiting: the loop must go on
                log.exception("store_commit_crashed")
                results = [records.StoreError(f"commit failed: {exc!r}")] * len(batch)
            self.commits += 1
            # Look again at once when writes queued during the commit: someone awaits them.
            # Prediction records that queued meanwhile wait for their timer (or the next
            # write), so a steady stream of predictions costs one commit (and fsync) per
            # PREDICTION_FLUSH_S, not one per commit time: back to back, tiny commits kept
            # the writer thread busy and cost every request ~0.1 ms.
            if self._pending or self._closing or (self._predictions
                                                  and not self._flush_scheduled):
                self._wake.set()
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _commit(self, batch: Sequence[tuple[Callable[[sqlite3.Connection], Any], Any]],
                predictions: Sequence[records.PredictionRecord]) -> list[Any]:
        conn = self._wconn
        assert conn is not None
        self._draft = {app: Counter(c) for app, c in self._labels.items()}
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Predictions first: feedback in the same group may refer to them.
            predictions = [p for p in predictions if p.app not in self._gone]
            if predictions:
                now = time.time()
                conn.executemany(
                    "INSERT OR IGNORE INTO predictions (id, app, label, confidence, stage, "
                    "model_version, features, shape, created, margin) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [(p.id, p.app, p.label, p.confidence, p.stage, p.model_version,
                      *encode(p.features), now, p.margin) for p in predictions])
            for fn, _ in batch:
                conn.execute("SAVEPOINT item")
                try:
                    results.append(fn(conn))
                    conn.execute("RELEASE item")
                except sqlite3.Error as exc:
                    if _is_full(exc) or not conn.in_transaction:
                        raise  # SQLite may have rolled the whole transaction back already
                    conn.execute("ROLLBACK TO item")
                    conn.execute("RELEASE item")
                    results.append(records.StoreError(str(exc)))
                except Exception as exc:  # a request's own error (NotFound, ...): fail it alone
                    conn.execute("ROLLBACK TO item")
                    conn.execute("RELEASE item")
                    results.append(exc)
            conn.execute("COMMIT")
            self._labels = self._draft  # one reference swap: readers see committed counts
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")  # the transaction is gone, and so are its counts
            if not isinstance(exc, sqlite3.Error):
                raise
            if _is_full(exc):
                log.error("store_full", error=str(exc))
                raise records.StoreFull("disk full: the write was not stored") from exc
            log.error("store_commit_failed", error=str(exc))
            raise records.StoreError(f"commit failed: {exc}") from exc
        return results

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._rconn is not None
            return fn(self._rconn)
        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    # -- samples ------------------------------------------------------------------------------

    async def add_samples(self, app: str, features: Iterable[np.ndarray], labels: Sequence[str],
                          source: str, batch_id: str | None = None) -> records.IngestResult:
        """Store a batch of labelled samples atomically; a repeated batch_id is accepted once."""

        def write(conn: sqlite3.Connection) -> records.IngestResult:
            self._check_app(app)
            if batch_id is not None:
                seen = conn.execute("SELECT accepted FROM batches WHERE app=? AND batch_id=?",
                                    (app, batch_id)).fetchone()
                if seen is not None:
                    return records.IngestResult(seen[0], self._drafted(app), duplicate=True)
                conn.execute("INSERT INTO batches VALUES (?,?,?,?)",
                             (app, batch_id, len(labels), time.time()))
            self._insert_samples(conn, app, features, labels, source, batch_id)
            return records.IngestResult(len(labels), self._drafted(app), duplicate=False)

        return await self._write(write)

    def _check_app(self, app: str) -> None:
        """On the writer thread: an app being deleted takes no more rows."""
        if app in self._gone:
            raise records.NotFound(app)

    def _insert_samples(self, conn: sqlite3.Connection, app: str, features: Iterable[np.ndarray],
                        labels: Sequence[str], source: str, batch_id: str | None) -> None:
        """Insert labelled samples (encoded here, on the writer thread, not the loop) and
        count them into the transaction's draft."""
        now = time.time()
        conn.executemany(
            "INSERT INTO samples (app, features, shape, label, source, created, batch_id) "
            "VALUES (?,?,?,?,?,?,?)",
            [(app, *encode(x), label, source, now, batch_id)
             for x, label in zip(features, labels, strict=True)])
        self._draft.setdefault(app, Counter()).update(labels)

    def label_counts(self, app: str) -> dict[str, int]:
        """Committed samples of an app per label."""
        return dict(self._labels.get(app, {}))

    async def last_sample_id(self, app: str) -> int:
        row = await self._read(lambda c: c.execute(
            "SELECT max(id) FROM samples WHERE app=?", (app,)).fetchone())
        return int(row[0] or 0)

    def _drafted(self, app: str) -> int:
        """An app's samples as the transaction in progress will have committed them."""
        return sum(self._draft.get(app, {}).values())

    def count_samples(self, app: str) -> int:
        """Committed samples of an app (kept in memory; exact after every commit)."""
        return sum(self._labels.get(app, {}).values())

    async def sample_shape(self, app: str) -> tuple[int, ...] | None:
        """The shape of the app's first stored sample (fixes the shape when the spec has none)."""
        row = await self._read(lambda c: c.execute(
            "SELECT shape FROM samples WHERE app=? ORDER BY id LIMIT 1", (app,)).fetchone())
        return tuple(int(s) for s in row[0].split(",")) if row else None

    # -- apps ---------------------------------------------------------------------------------

    async def list_apps(self) -> dict[str, dict[str, Any]]:
        """API-created apps: name -> spec JSON."""
        rows = await self._read(lambda c: c.execute("SELECT name, spec FROM apps").fetchall())
        return {name: orjson.loads(spec) for name, spec in rows}

    async def put_app(self, name: str, spec: dict[str, Any]) -> None:
        blob = orjson.dumps(spec).decode()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO apps VALUES (?,?,?) "
                         "ON CONFLICT(name) DO UPDATE SET spec=excluded.spec",
                         (name, blob, time.time()))
            self._gone.discard(name)  # in order: writes queued after this one are the new app's

        await self._write(write)

    async def delete_app(self, name: str) -> None:
        """Remove an app with its samples, batches, predictions and feedback. Writes for it
        queued after this call fail with NotFound (and its pending prediction records are
        dropped) until an app of that name is put again."""
        self._gone.add(name)

        def write(conn: sqlite3.Connection) -> None:
            for table in ("samples", "batches", "predictions", "feedback", "versions",
                          "queries", "readings", "ranges"):
                conn.execute(f"DELETE FROM {table} WHERE app=?", (name,))
            conn.execute("DELETE FROM apps WHERE name=?", (name,))
            self._draft.pop(name, None)
        await self._write(write)

    # -- predictions, feedback, events --------------------------------------------------------

    def record_predictions(self, batch: Iterable[records.PredictionRecord]) -> None:
        """Queue prediction records; a group commit writes them within PREDICTION_FLUSH_S (or
        sooner, with the next write), so the hot path never waits for a commit."""
        self._predictions.extend(batch)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(PREDICTION_FLUSH_S, self._flush_predictions)

    def _flush_predictions(self) -> None:
        self._flush_scheduled = False
        self._wake.set()

    async def prune_predictions(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s

        def write(c: sqlite3.Connection) -> int:
            n = c.execute("DELETE FROM predictions WHERE created < ?", (cutoff,)).rowcount
            # a query expires with its prediction record
            c.execute("DELETE FROM queries WHERE NOT EXISTS (SELECT 1 FROM predictions p "
                      "WHERE p.id = queries.prediction_id)")
            return n
        return await self._write(write)

    async def add_feedback(self, app: str, prediction_id: str, label: str
                           ) -> records.FeedbackResult:
        """Store a correction of a served prediction, and the sample it makes; NotFound when
        the prediction is unknown (or pruned)."""

        def write(conn: sqlite3.Connection) -> records.FeedbackResult:
            first = conn.execute("SELECT label, predicted, sample_id FROM feedback "
                                 "WHERE app=? AND prediction_id=?", (app, prediction_id)).fetchone()
            if first is not None:  # a retried request: the first answer stands
                return records.FeedbackResult(int(first[2]), first[1], first[0], duplicate=True)
            row = conn.execute("SELECT label, features, shape, model_version FROM predictions "
                               "WHERE id=? AND app=?", (prediction_id, app)).fetchone()
            if row is None:
                raise records.NotFound(prediction_id)
            predicted, blob, shape, version = row
            now = time.time()
            cur = conn.execute("INSERT INTO samples (app, features, shape, label, source, created)"
                               " VALUES (?,?,?,?,?,?)", (app, blob, shape, label, "feedback", now))
            conn.execute("INSERT INTO feedback (app, prediction_id, predicted, label, features, "
                         "shape, created, sample_id, model_version) VALUES (?,?,?,?,?,?,?,?,?)",
                         (app, prediction_id, predicted, label, blob, shape, now, cur.lastrowid,
                          version))
            self._draft.setdefault(app, Counter())[label] += 1
            conn.execute("UPDATE queries SET state='answered', closed=? WHERE app=? AND "
                         "prediction_id=? AND state='open'", (now, app, prediction_id))
            return records.FeedbackResult(int(cur.lastrowid or 0), predicted, label,
                                          duplicate=False)

        return await self._write(write)

    async def count_feedback(self, app: str) -> int:
        row = await self._read(lambda c: c.execute(
            "SELECT count(*) FROM feedback WHERE app=?", (app,)).fetchone())
        return int(row[0])

    async def add_version(self, app: str, version: int, created: float, reason: str,
                          members: list[str], metrics: dict[str, Any],
                          decision: dict[str, Any] | None) -> None:
        """Record a version published (or activated again: ``rollback``) in the app's history,
        which retention never prunes."""
        row = (app, version, created, reason, orjson.dumps(members).decode(),
               orjson.dumps(metrics, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
               None if decision is None else orjson.dumps(decision).decode())
        await self._write(lambda c: c.execute(
            "INSERT INTO versions (app, version, created, reason, members, metrics, decision) "
            "VALUES (?,?,?,?,?,?,?)", row))

    async def history(self, app: str) -> list[dict[str, Any]]:
        """Every version of the app in order, each with the accuracy people's feedback gave
        its predictions (``feedback_accuracy``, ``feedback_n``)."""

        def read(c: sqlite3.Connection) -> list[dict[str, Any]]:
            scored = {v: (n, hits) for v, n, hits in c.execute(
                "SELECT model_version, count(*), sum(label = predicted) FROM feedback "
                "WHERE app=? GROUP BY model_version", (app,))}
            out = []
            for version, created, reason, members, metrics, decision in c.execute(
                    "SELECT version, created, reason, members, metrics, decision FROM versions "
                    "WHERE app=? ORDER BY id", (app,)):
                n, hits = scored.get(version, (0, 0))
                out.append({"version": version, "created": created, "reason": reason,
                            "members": orjson.loads(members), "metrics": orjson.loads(metrics),
                            "decision": orjson.loads(decision) if decision else None,
                            "feedback_accuracy": round(hits / n, 5) if n else None,
                            "feedback_n": n})
            return out

        return await self._read(read)

    async def feedback_pairs(self, app: str, limit: int) -> list[tuple[str, str]]:
        """(label, predicted) of the app's newest ``limit`` corrections and confirmations,
        oldest first."""
        rows = await self._read(lambda c: c.execute(
            "SELECT label, predicted FROM feedback WHERE app=? ORDER BY id DESC LIMIT ?",
            (app, limit)).fetchall())
        return [(label, predicted) for label, predicted in reversed(rows)]


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or \
        "disk is full" in str(exc) or "database or disk is full" in str(exc)
