"""The store's label queries (``actors/server/queries.py`` says which predictions become
queries): opening one, closing one, and what is open after a restart. A query's prediction
record holds its sample; answering a query is feedback on that prediction, which closes it in
the feedback's own transaction (``Store.add_feedback``)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from mliot_daemon.sample_codec import decode

T = TypeVar("T")


class QueryTables:
    """Mixed into ``Store``: the ``queries`` table's operations."""

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...  # Store's

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...  # Store's

    async def open_query(self, app: str, query: dict[str, Any], replaces: str | None) -> None:
        """Commit a new open query (``id``, ``prediction_id``, ``label``, ``score``,
        ``candidates``); ``replaces`` names an open one it pushes out of the bounded set."""
        now = time.time()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO queries (id, app, prediction_id, label, score, candidates,"
                         " state, created) VALUES (?,?,?,?,?,?,'open',?)",
                         (query["id"], app, query["prediction_id"], query["label"],
                          query["score"], orjson.dumps(query["candidates"]).decode(),
                          query.get("created") or now))
            if replaces is not None:
                conn.execute("UPDATE queries SET state='replaced', closed=? WHERE id=? AND "
                             "app=? AND state='open'", (now, replaces, app))
        await self._write(write)

    async def close_query(self, app: str, query_id: str, state: str) -> bool:
        """Close an open query (``skipped``); whether it was open."""
        return await self._write(lambda c: c.execute(
            "UPDATE queries SET state=?, closed=? WHERE id=? AND app=? AND state='open'",
            (state, time.time(), query_id, app)).rowcount > 0)

    async def open_queries(self, app: str) -> list[dict[str, Any]]:
        """The app's open queries with their predictions' samples and times."""
        def read(c: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = c.execute(
                "SELECT q.id, q.prediction_id, q.label, q.score, q.candidates, p.created, "
                "p.features, p.shape, q.created, p.margin FROM queries q JOIN predictions p "
                "ON p.id = q.prediction_id WHERE q.app=? AND q.state='open'", (app,)).fetchall()
            return [{"id": r[0], "prediction_id": r[1], "label": r[2], "score": r[3],
                     "candidates": [(c["label"], c["share"]) for c in orjson.loads(r[4])],
                     "predicted_at": r[5], "features": decode(r[6], r[7]).copy(),
                     "created": r[8], "margin": 1.0 if r[9] is None else r[9]}
                    for r in rows]
        return await self._read(read)

    async def last_query_opened(self, app: str) -> float:
        """When the app's newest query opened (0 if never): the pace holds across restarts."""
        row = await self._read(lambda c: c.execute(
            "SELECT max(created) FROM queries WHERE app=?", (app,)).fetchone())
        return float(row[0] or 0.0)
