"""The store's SQL schema, as numbered migrations: a database is taken from its
``PRAGMA user_version`` to ``SCHEMA_VERSION`` one step at a time, each step one transaction."""

from __future__ import annotations

SCHEMA_VERSION = 2
MIGRATIONS: dict[int, str] = {
    # version -> the SQL that takes the schema from version - 1 to version
    1: """
    CREATE TABLE apps (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY,
        app TEXT NOT NULL,
        features BLOB NOT NULL,      -- float32, C order
        shape TEXT NOT NULL,         -- "64" or "8,8"
        label TEXT NOT NULL,
        source TEXT NOT NULL,        -- http, ws, mqtt, file, feedback
        created REAL NOT NULL,
        batch_id TEXT
    );
    CREATE INDEX samples_app ON samples (app, id);
    CREATE TABLE batches (
        app TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        accepted INTEGER NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (app, batch_id)
    );
    CREATE TABLE predictions (
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL,
        label TEXT NOT NULL,
        confidence REAL NOT NULL,
        stage INTEGER NOT NULL,
        model_version INTEGER,
        features BLOB NOT NULL,
        shape TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX predictions_created ON predictions (created);
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY,
        app TEXT NOT NULL,
        prediction_id TEXT NOT NULL,
        predicted TEXT NOT NULL,
        label TEXT NOT NULL,
        features BLOB NOT NULL,      -- copied, so corrections outlive pruned predictions
        shape TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX feedback_app ON feedback (app, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        app TEXT,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        created REAL NOT NULL
    );
    """,
    2: """
    ALTER TABLE feedback ADD COLUMN sample_id INTEGER;  -- the training sample it became
    CREATE UNIQUE INDEX feedback_once ON feedback (app, prediction_id);
    """,
}
