"""The durable store: one SQLite file (WAL) with apps, samples, predictions, feedback and
events.

Every write goes through one writer thread, and writes are *group committed*: while one
transaction commits, new requests queue up and the next transaction takes all of them. So a
burst of small requests costs one fsync, not one each, and the event loop never runs SQLite.
Each request runs inside its own SAVEPOINT, so one bad request fails alone.

Durability: ``synchronous = FULL``. In WAL mode NORMAL is already safe against a process crash
(``kill -9``), but it may lose the last commits on power loss, and an IoT box loses power. An
acknowledgement here means "on disk", so every commit syncs the WAL; group commits keep that
cheap (one fsync per group, about 0.2 ms on this machine). Reads use a second connection on a
thread of their own; WAL lets them run beside the writer.

Owns ``database`` (the ``Store``), ``schema`` (the migrations) and ``records`` (results, ids,
errors). May import: sqlite3, numpy, the shared ``errors`` and ``sample_codec``; nothing from
``actors/`` or the learning library (pool workers read the file themselves:
``learn/dataset.py``).
"""

from mliot_daemon.store.database import Store
from mliot_daemon.store.records import (
    FeedbackResult,
    IngestResult,
    NotFound,
    PredictionRecord,
    StoreError,
    StoreFull,
    new_prediction_id,
)
from mliot_daemon.store.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "FeedbackResult", "IngestResult", "NotFound", "PredictionRecord",
           "Store", "StoreError", "StoreFull", "new_prediction_id"]
