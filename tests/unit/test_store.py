"""The SQLite store: group commits, idempotent batches, counts, pruning, reopening."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from mliot_daemon.learn.dataset import read_samples
from mliot_daemon.store import SCHEMA_VERSION, NotFound, PredictionRecord, Store, StoreFull


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store(tmp_path / "m.db")
    await s.open()
    yield s
    await s.close()


async def test_concurrent_writes_are_group_committed(store: Store) -> None:
    x = np.arange(4, dtype=np.float32)
    results = await asyncio.gather(*(store.add_samples("a", [x, x], ["p", "q"], "http")
                                     for _ in range(50)))
    assert sorted(r.n_samples for r in results)[-1] == 100 == store.count_samples("a")
    assert store.commits < 50  # many requests shared a transaction
    feats, labels, _, _ = read_samples(store.path, "a", "1", ())  # as pool workers read them
    assert len(feats) == 100 and labels[:2] == ["p", "q"]
    np.testing.assert_array_equal(feats[0], x)


async def test_repeated_batch_id_is_accepted_once(store: Store) -> None:
    x = np.ones(3, dtype=np.float32)
    first = await store.add_samples("a", [x] * 3, ["l"] * 3, "http", batch_id="b-1")
    again = await store.add_samples("a", [x] * 3, ["l"] * 3, "http", batch_id="b-1")
    assert (first.accepted, first.duplicate) == (3, False)
    assert (again.accepted, again.duplicate, again.n_samples) == (3, True, 3)
    assert store.count_samples("a") == 3


async def test_reopen_keeps_data_and_schema_version(tmp_path: Path) -> None:
    s = Store(tmp_path / "m.db")
    await s.open()
    await s.add_samples("a", [np.zeros((2, 2), np.float32)], ["l"], "http")
    await s.put_app("a", {"name": "a", "data_type": "image"})
    await s.close()
    s = Store(tmp_path / "m.db")
    await s.open()
    assert s.count_samples("a") == 1
    assert await s.sample_shape("a") == (2, 2)
    assert (await s.list_apps())["a"]["data_type"] == "image"
    await s.delete_app("a")
    assert s.count_samples("a") == 0 and await s.list_apps() == {}
    await s.close()
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_predictions_are_written_and_pruned(store: Store) -> None:
    store.record_predictions([PredictionRecord(id=f"p{i}", app="a", label="x", confidence=1.0,
                                               stage=2, model_version=1,
                                               features=np.zeros(2)) for i in range(5)])
    await store.put_app("other", {})  # a write after them: they are committed by now
    assert await store.prune_predictions(older_than_s=-1) == 5


async def test_full_database_fails_the_write_and_keeps_the_rest(tmp_path: Path) -> None:
    s = Store(tmp_path / "m.db")
    await s.open()
    await s.add_samples("a", [np.zeros(8, np.float32)], ["l"], "http")
    # A size cap gives SQLite's SQLITE_FULL, the error a full disk gives.
    await s._write(lambda c: c.execute("PRAGMA max_page_count = 40"))
    big = [np.zeros(20000, np.float32)] * 20
    with pytest.raises(StoreFull):
        await s.add_samples("a", big, ["l"] * 20, "http")
    assert s.count_samples("a") == 1
    assert len(read_samples(s.path, "a", "1", ())[0]) == 1
    await s.close()


async def test_one_correction_per_prediction(store: Store) -> None:
    store.record_predictions([PredictionRecord(id="p1", app="a", label="x", confidence=1.0,
                                               stage=2, model_version=1,
                                               features=np.ones(2))])
    first = await store.add_feedback("a", "p1", "y")
    again = await store.add_feedback("a", "p1", "z")  # a retry, or a second thought
    assert (first.predicted, first.label, first.duplicate) == ("x", "y", False)
    assert (again.label, again.sample_id, again.duplicate) == ("y", first.sample_id, True)
    assert await store.count_feedback("a") == 1 and store.count_samples("a") == 1
    with pytest.raises(NotFound):
        await store.add_feedback("a", "nope", "y")


async def test_writes_queued_behind_a_delete_leave_no_rows(store: Store) -> None:
    x = np.ones(2, dtype=np.float32)
    await store.put_app("a", {"name": "a", "data_type": "vector"})
    await store.add_samples("a", [x], ["l"], "http")
    store.record_predictions([PredictionRecord(id="p1", app="a", label="l", confidence=1.0,
                                               stage=2, model_version=1, features=x)])
    deleted, late = await asyncio.gather(store.delete_app("a"),
                                         store.add_samples("a", [x], ["l"], "http"),
                                         return_exceptions=True)
    assert deleted is None and isinstance(late, NotFound)  # refused, so never acknowledged
    await store.put_app("other", {})  # the pending prediction record's commit
    with sqlite3.connect(store.path) as conn:
        left = [conn.execute(f"SELECT count(*) FROM {t} WHERE app='a'").fetchone()[0]
                for t in ("samples", "predictions")]
    assert left == [0, 0]
    # an app created again under the name starts empty and takes samples
    await store.put_app("a", {"name": "a", "data_type": "vector"})
    assert (await store.add_samples("a", [x], ["m"], "http")).n_samples == 1


async def test_counts_show_only_what_a_pool_worker_can_read(store: Store) -> None:
    """The trainer starts runs on these counts, and its workers read the file: a count must
    never run ahead of the commit (a run that found no rows failed, and waited for more)."""
    inside, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:  # keeps the group's transaction open
        inside.set()
        release.wait(10)

    x = np.ones(2, dtype=np.float32)
    added = asyncio.ensure_future(store.add_samples("a", [x] * 3, ["l"] * 3, "http"))
    held = asyncio.ensure_future(store._write(hold))  # joins the same group, after the samples
    await asyncio.to_thread(inside.wait, 10)
    assert store.count_samples("a") == 0 and store.label_counts("a") == {}
    assert read_samples(store.path, "a", "1", ())[0] == []
    release.set()
    assert (await added).n_samples == 3
    await held
    assert store.count_samples("a") == 3 and len(read_samples(store.path, "a", "1", ())[0]) == 3


async def test_a_version_2_database_gains_its_history(tmp_path: Path) -> None:
    """Schema 3 builds the version history from the old events and gives old corrections
    the version of the prediction they corrected."""
    from mliot_daemon.store.schema import MIGRATIONS

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        for v in (1, 2):
            conn.executescript(f"{MIGRATIONS[v]}\nPRAGMA user_version = {v};")
        conn.execute("INSERT INTO events (app, kind, data, created) VALUES "
                     "('a', 'version_published', '{\"version\": 1, \"reason\": \"initial\", "
                     "\"decision\": null}', 5.0)")
        conn.execute("INSERT INTO predictions VALUES ('p1', 'a', 'x', 1.0, 2, 1, x'00', '1', 6)")
        conn.execute("INSERT INTO feedback (app, prediction_id, predicted, label, features, "
                     "shape, created) VALUES ('a', 'p1', 'x', 'y', x'00', '1', 7)")
    store = Store(path)
    await store.open()
    try:
        (version,) = await store.history("a")
        assert (version["version"], version["reason"], version["created"]) == (1, "initial", 5.0)
        assert version["decision"] is None and version["members"] == []
        assert (version["feedback_n"], version["feedback_accuracy"]) == (1, 0.0)
    finally:
        await store.close()
