-- The worker's index. The bucket is the source of truth; this file is its fast index.
-- States: queued | scheduled -> running -> succeeded | failed | cancelled (docs/states.md).

CREATE TABLE IF NOT EXISTS jobs (
    id           TEXT PRIMARY KEY,
    task         TEXT NOT NULL,
    queue        TEXT NOT NULL,
    state        TEXT NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 0,
    attempts     INTEGER NOT NULL DEFAULT 0,   -- counted inside the claim, before the handler runs
    max_attempts INTEGER NOT NULL,             -- envelope, else task, else worker default
    run_at       REAL NOT NULL,                -- Unix seconds: runnable once run_at <= now
    lease_until  REAL,                         -- running only: renewed by heartbeat
    owner        TEXT,                         -- running: host:pid:start of the worker; kept by a
                                               -- success recorded in a batch (its attempt's record)
    envelope     TEXT NOT NULL,                -- the envelope as ingested
    inbox_key    TEXT NOT NULL,
    key          TEXT,                         -- idempotency key, if any
    result       TEXT,                         -- JSON result of the successful attempt
    error        TEXT,                         -- JSON {type, message, traceback} of the last failure
    enqueued_at  TEXT NOT NULL,
    ingested_at  TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    published    INTEGER NOT NULL DEFAULT 0,   -- 1: results/ has the terminal record, inbox object deleted
    expires_at   REAL,                         -- Unix seconds: cancelled if not started by then
    grp          TEXT,                         -- the group (qlite.group) this job belongs to
    pack         TEXT,                         -- the pack object it came in (put_many), if any
    -- Crash attribution (docs/states.md): a job running when its worker died is a suspect and
    -- runs again alone, in a child process, until it ends an attempt without crashing.
    suspect      INTEGER NOT NULL DEFAULT 0,   -- 1: run alone in a child process next time
    solo         INTEGER NOT NULL DEFAULT 0,   -- running only: 1 when it runs alone in the worker's own process
    crashes      INTEGER NOT NULL DEFAULT 0,   -- strikes: crashes pinned on this job (failed at 3)
    lost         INTEGER NOT NULL DEFAULT 0,   -- worker deaths it only shared (own cap, not max_attempts)
    progress     TEXT,                         -- JSON: the last ctx.progress {done, total, message, at, ...}
    lifo         INTEGER NOT NULL DEFAULT 0    -- 1: its queue is LIFO (QLITE_LIFO), claimed newest first
);

CREATE INDEX IF NOT EXISTS jobs_runnable ON jobs (queue, priority DESC, run_at, id)
    WHERE state IN ('queued', 'scheduled');
-- LIFO queues only (lifo = 1): FIFO jobs are not written to it.
CREATE INDEX IF NOT EXISTS jobs_lifo ON jobs (queue, priority DESC, id DESC)
    WHERE lifo = 1 AND state IN ('queued', 'scheduled');
CREATE INDEX IF NOT EXISTS jobs_next ON jobs (queue, run_at)
    WHERE state IN ('queued', 'scheduled');
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (owner, lease_until) WHERE state = 'running';
-- The publisher's outbox. Its condition is written with OR, not IN: SQLite evaluates a partial
-- index's condition on every write of the row, and an IN list of three or more values costs
-- an ephemeral table each time (~6 us a write, a third of a success's UPDATE). The queries
-- that use it repeat the condition word for word (the planner matches it term by term).
CREATE INDEX IF NOT EXISTS jobs_outbox ON jobs (finished_at)
    WHERE published = 0 AND (state = 'succeeded' OR state = 'failed' OR state = 'cancelled');

CREATE TABLE IF NOT EXISTS attempts (
    job_id      TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    owner       TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    outcome     TEXT,            -- succeeded | retry | failed | lost
    error_type  TEXT,
    message     TEXT,
    traceback   TEXT,
    logs        TEXT,            -- JSON array of the handler's own log lines (qlite logs ID)
    PRIMARY KEY (job_id, attempt)
);

CREATE TABLE IF NOT EXISTS quarantine (
    key    TEXT PRIMARY KEY,     -- the inbox key it came from (relative to the prefix)
    reason TEXT NOT NULL,
    size   INTEGER,
    at     TEXT NOT NULL
);

-- Periodic schedules: the last tick fired (or skipped by the misfire policy), per schedule.
CREATE TABLE IF NOT EXISTS schedules (
    name      TEXT PRIMARY KEY,
    last_tick REAL NOT NULL,
    fired_at  TEXT NOT NULL
);

-- Cancel and retry requests, from marker objects inbox/{queue}/{job_id}.{kind}.{request_id}.
-- A row is kept after the marker is deleted, so a marker a late LIST still shows is not
-- applied twice.
CREATE TABLE IF NOT EXISTS requests (
    key    TEXT PRIMARY KEY,     -- the marker's key, relative to the prefix
    job_id TEXT NOT NULL,
    kind   TEXT NOT NULL,        -- cancel | retry
    at     TEXT NOT NULL,
    done   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_job ON requests (job_id, kind, done);

-- Rate limits: the start times (Unix seconds, JSON array) of the latest jobs per rate key,
-- so "N per period" holds over any window of that period, not just on average.
CREATE TABLE IF NOT EXISTS rates (
    key    TEXT PRIMARY KEY,
    starts TEXT NOT NULL
);

-- Pack objects taken in (put_many: many envelopes in one inbox object). The object is deleted
-- once every member still in it is terminal and in its batched results/packs/ record.
CREATE TABLE IF NOT EXISTS packs (
    key   TEXT PRIMARY KEY,      -- inbox/{queue}/{pack_id}.pack.jsonl
    queue TEXT NOT NULL,
    size  INTEGER NOT NULL,
    at    TEXT NOT NULL
);
-- Running totals the worker adds to (S3 requests by operation, jobs published), for stats.
-- Several worker processes may share the file: each adds its own deltas.
CREATE TABLE IF NOT EXISTS counters (
    name    TEXT PRIMARY KEY,    -- s3.put, s3.get, s3.list, ..., jobs.published
    value   INTEGER NOT NULL,
    since   TEXT NOT NULL,       -- first added
    updated TEXT NOT NULL        -- last added
);

-- No index serves only qlite stats or the dashboard: every index is written by every job's
-- claim or finish, and halving those writes (docs/performance.md) is worth a scan of the
-- tables when someone looks.
