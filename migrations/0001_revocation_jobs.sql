-- The queue producers write into, and the bookkeeping the dispatcher needs.
-- Times are Unix epoch milliseconds (INTEGER), so they compare and sort cheaply.
-- Defaults use julianday(), not unixepoch(), so producers on SQLite older than 3.38 can insert.

CREATE TABLE revocation_jobs (
    id                INTEGER PRIMARY KEY,
    user_id           TEXT    NOT NULL,
    entity_id         TEXT    NOT NULL,
    context_entity_id TEXT    NOT NULL,
    access_type       INTEGER NOT NULL DEFAULT 1,
    status            TEXT    NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'in_flight', 'submitted', 'completed', 'failed')),
    request_id        TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,
    -- earliest time the job may be sent again (retry backoff); 0 = now
    run_after         INTEGER NOT NULL DEFAULT 0,
    -- the dispatcher instance holding the job while it is in_flight, and since when
    claimed_by        TEXT,
    claimed_at        INTEGER,
    created_at        INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    updated_at        INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    submitted_at      INTEGER,
    finished_at       INTEGER
);

-- Claiming scans pending rows in id order. Partial, so a job leaves it once (when claimed) and
-- later status changes touch no index; counts per status scan the table, which is cheap enough
-- for a summary line.
CREATE INDEX revocation_jobs_pending ON revocation_jobs (id) WHERE status = 'pending';

-- Start times of every API call this account made through the service, so the
-- sliding-window limiter survives a restart and operators can see the budget spent.
CREATE TABLE api_calls (
    id          INTEGER PRIMARY KEY,
    started_at  INTEGER NOT NULL,
    endpoint    TEXT    NOT NULL,
    http_status INTEGER,
    latency_ms  INTEGER,
    job_count   INTEGER NOT NULL DEFAULT 0,
    request_id  TEXT
);

CREATE INDEX api_calls_started_at ON api_calls (started_at);
