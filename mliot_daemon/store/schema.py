"""The store's SQL schema, as numbered migrations: a database is taken from its
``PRAGMA user_version`` to ``SCHEMA_VERSION`` one step at a time, each step one transaction."""

from __future__ import annotations

SCHEMA_VERSION = 5
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
    3: """
    CREATE TABLE versions (             -- every version ever published or activated: the
        id INTEGER PRIMARY KEY,         -- history outlives the model folders retention prunes
        app TEXT NOT NULL,
        version INTEGER NOT NULL,
        created REAL NOT NULL,
        reason TEXT NOT NULL,           -- initial, lazy, data, feedback, rollback
        members TEXT NOT NULL,          -- JSON list of the member families
        metrics TEXT NOT NULL,          -- JSON: validation accuracy, confusion, ...
        decision TEXT                   -- JSON: an adaptation's decision, or NULL
    );
    CREATE INDEX versions_app ON versions (app, id);
    INSERT INTO versions (app, version, created, reason, members, metrics, decision)
        SELECT app, json_extract(data, '$.version'), created, json_extract(data, '$.reason'),
               '[]', '{}', json_extract(data, '$.decision')
        FROM events WHERE kind = 'version_published' ORDER BY id;
    ALTER TABLE feedback ADD COLUMN model_version INTEGER;  -- the version it corrects
    UPDATE feedback SET model_version = (SELECT model_version FROM predictions p
                                         WHERE p.id = feedback.prediction_id);
    """,
    4: """
    ALTER TABLE predictions ADD COLUMN margin REAL;  -- top two vote shares apart; NULL before
    CREATE TABLE queries (              -- label queries: predictions worth a person's label
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL,
        prediction_id TEXT NOT NULL,
        label TEXT NOT NULL,            -- what was predicted
        score REAL NOT NULL,            -- how informative: higher is asked first
        candidates TEXT NOT NULL,       -- JSON [[label, share], ...], most likely first
        state TEXT NOT NULL,            -- open, answered, skipped
        created REAL NOT NULL,
        closed REAL
    );
    CREATE INDEX queries_app ON queries (app, state);
    CREATE INDEX queries_prediction ON queries (prediction_id);
    """,
    5: """
    CREATE TABLE readings (             -- stream readings, a block per channel and write
        id INTEGER PRIMARY KEY,
        app TEXT NOT NULL,
        channel TEXT NOT NULL,
        t0 REAL NOT NULL,               -- the first and last reading's unix time
        t1 REAL NOT NULL,
        n INTEGER NOT NULL,
        data BLOB NOT NULL              -- zlib: uint32 ms steps from t0, then float32 values
    );
    CREATE INDEX readings_span ON readings (app, channel, t1);
    CREATE TABLE ranges (               -- labels by time range; an open one has no end
        id TEXT NOT NULL,               -- the label_id
        app TEXT NOT NULL,
        label TEXT NOT NULL,
        t_start REAL NOT NULL,
        t_end REAL,                     -- NULL: open
        windows INTEGER NOT NULL,       -- the samples it made
        created REAL NOT NULL,
        PRIMARY KEY (app, id)
    );
    """,
}
