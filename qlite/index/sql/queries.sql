-- Named queries of the index. Every job state transition is one statement.

-- name: known
SELECT id, inbox_key, published, state FROM jobs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: insert_job
INSERT OR IGNORE INTO jobs (id, task, queue, state, priority, max_attempts, run_at, envelope,
                            inbox_key, key, enqueued_at, ingested_at, expires_at, grp, pack,
                            lifo)
VALUES (:id, :task, :queue, CASE WHEN :run_at > :now THEN 'scheduled' ELSE 'queued' END,
        :priority, :max_attempts, :run_at, :envelope, :inbox_key, :key, :enqueued_at, :now_iso,
        :expires_at, :grp, :pack, :lifo);

-- name: insert_pack
INSERT OR IGNORE INTO packs (key, queue, size, at) VALUES (:key, :queue, :size, :now_iso);

-- name: known_packs
SELECT key FROM packs WHERE key IN (SELECT value FROM json_each(:keys));

-- name: pack_open
-- Per pack: its members not yet terminal (a member retried on request has left its pack),
-- plus 1 while the pack itself is not taken in (an index rebuilt from results/ may hold some
-- members before it holds the pack): 0 means every member is in the batched record.
SELECT k.value AS pack,
       (SELECT count(*) FROM jobs
        WHERE jobs.pack = k.value AND jobs.inbox_key = k.value
          AND jobs.state NOT IN ('succeeded', 'failed', 'cancelled'))
       + NOT EXISTS (SELECT 1 FROM packs WHERE packs.key = k.value)
       -- members this index does not hold (never a fleet's partial record as complete)
       + max(0, coalesce((SELECT size FROM packs WHERE packs.key = k.value), 0)
                - (SELECT count(*) FROM jobs WHERE jobs.pack = k.value)) AS n
FROM json_each(:keys) AS k;

-- name: packs_settled
-- Packs taken in whose members (still in them) are all finished and published: nothing is
-- left to do but delete the object (it was put back, or its delete was lost).
SELECT k.value AS pack FROM json_each(:keys) AS k
WHERE (SELECT count(*) FROM jobs WHERE jobs.pack = k.value)
      >= (SELECT size FROM packs WHERE packs.key = k.value)
  AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.pack = k.value AND jobs.inbox_key = k.value
                    AND (jobs.published = 0
                         OR jobs.state NOT IN ('succeeded', 'failed', 'cancelled')));

-- name: pack_members
-- The terminal members of a pack: its batched results record holds them all.
SELECT * FROM jobs
WHERE pack = :key AND inbox_key = pack AND state IN ('succeeded', 'failed', 'cancelled')
ORDER BY id;

-- name: forget_packs
DELETE FROM packs WHERE key IN (SELECT value FROM json_each(:keys))
  AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.pack = packs.key)
RETURNING key;

-- name: insert_quarantine
INSERT OR IGNORE INTO quarantine (key, reason, size, at) VALUES (:key, :reason, :size, :now_iso);

-- name: claim
-- Counts the attempt before the handler runs, so a crash can never reset it. One queue per
-- statement: the jobs_runnable index then gives the order without sorting the backlog.
UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = :now_iso,
                lease_until = :lease_until, owner = :owner
WHERE id IN (
    SELECT jobs.id FROM jobs INDEXED BY jobs_runnable
    WHERE jobs.queue = :queue AND jobs.state IN ('queued', 'scheduled') AND jobs.run_at <= :now
      AND (jobs.expires_at IS NULL OR jobs.expires_at > :now OR jobs.attempts > 0)
      AND jobs.task NOT IN (SELECT value FROM json_each(:blocked))
      AND jobs.suspect = 0  -- suspects run alone (claim_suspect)
      AND NOT EXISTS (SELECT 1 FROM requests AS r
                      WHERE r.job_id = jobs.id AND r.kind = 'cancel' AND r.done = 0)
      -- in a fleet, only jobs of the shards this worker owns now (worker/fleet.py)
      AND (:shards IS NULL
           OR qlite_shard(jobs.id, :nshards) IN (SELECT value FROM json_each(:shards)))
    ORDER BY jobs.priority DESC, jobs.run_at, jobs.id
    LIMIT :n)
-- A start lost to a worker death not pinned on the job does not use up its attempts (reap).
RETURNING id, task, queue, attempts, max_attempts + lost AS max_attempts, envelope,
          enqueued_at, coalesce(pack = inbox_key, 0) AS packed, suspect;

-- name: claim_lifo
-- claim for a LIFO queue (QLITE_LIFO): priority first, then the newest job (ids sort by
-- enqueue time). Its rows are in the jobs_lifo index only, so FIFO queues pay nothing for it.
UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = :now_iso,
                lease_until = :lease_until, owner = :owner
WHERE id IN (
    SELECT jobs.id FROM jobs INDEXED BY jobs_lifo
    WHERE jobs.lifo = 1 AND jobs.queue = :queue AND jobs.state IN ('queued', 'scheduled') AND jobs.run_at <= :now
      AND (jobs.expires_at IS NULL OR jobs.expires_at > :now OR jobs.attempts > 0)
      AND jobs.task NOT IN (SELECT value FROM json_each(:blocked))
      AND jobs.suspect = 0  -- suspects run alone (claim_suspect)
      AND NOT EXISTS (SELECT 1 FROM requests AS r
                      WHERE r.job_id = jobs.id AND r.kind = 'cancel' AND r.done = 0)
      -- in a fleet, only jobs of the shards this worker owns now (worker/fleet.py)
      AND (:shards IS NULL
           OR qlite_shard(jobs.id, :nshards) IN (SELECT value FROM json_each(:shards)))
    ORDER BY jobs.priority DESC, jobs.id DESC
    LIMIT :n)
-- A start lost to a worker death not pinned on the job does not use up its attempts (reap).
RETURNING id, task, queue, attempts, max_attempts + lost AS max_attempts, envelope,
          enqueued_at, coalesce(pack = inbox_key, 0) AS packed, suspect;

-- name: claim_suspect
-- One suspect (a job running when its worker died, or whose own process crashed), claimed when
-- nothing else runs in this worker: it runs alone, in a child process (solo = 0), or, when no
-- child can load the app, in the worker's own process (solo = 1: a worker death is its doing).
UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = :now_iso,
                lease_until = :lease_until, owner = :owner, solo = :solo
WHERE id = (
    SELECT jobs.id FROM jobs INDEXED BY jobs_suspect
    WHERE jobs.suspect = 1 AND jobs.state IN ('queued', 'scheduled') AND jobs.run_at <= :now
      AND jobs.queue IN (SELECT value FROM json_each(:queues))
      AND NOT EXISTS (SELECT 1 FROM requests AS r
                      WHERE r.job_id = jobs.id AND r.kind = 'cancel' AND r.done = 0)
      AND (:shards IS NULL
           OR qlite_shard(jobs.id, :nshards) IN (SELECT value FROM json_each(:shards)))
    ORDER BY jobs.priority DESC, jobs.run_at, jobs.id
    LIMIT 1)
RETURNING id, task, queue, attempts, max_attempts + lost AS max_attempts, envelope,
          enqueued_at, coalesce(pack = inbox_key, 0) AS packed, suspect;

-- name: suspect_waiting
SELECT EXISTS (
    SELECT 1 FROM jobs INDEXED BY jobs_suspect
    WHERE jobs.suspect = 1 AND jobs.state IN ('queued', 'scheduled') AND jobs.run_at <= :now
      AND jobs.queue IN (SELECT value FROM json_each(:queues))
      AND (:shards IS NULL
           OR qlite_shard(jobs.id, :nshards) IN (SELECT value FROM json_each(:shards)))
) AS waiting;

-- name: expire
-- A job not started before its expires_at ends cancelled; one already tried goes on.
UPDATE jobs SET state = 'cancelled', finished_at = :now_iso,
                error = json_object('type', 'Expired', 'traceback', NULL,
                                    'message', 'not started before it expired at ' ||
                                               strftime('%Y-%m-%dT%H:%M:%SZ', expires_at,
                                                        'unixepoch'))
WHERE state IN ('queued', 'scheduled') AND attempts = 0 AND expires_at <= :now
RETURNING id, task, queue, attempts;

-- name: next_expiry
SELECT min(expires_at) AS at FROM jobs
WHERE state IN ('queued', 'scheduled') AND attempts = 0 AND expires_at IS NOT NULL;

-- name: running_by_task
SELECT task, count(*) AS n FROM jobs
WHERE state = 'running' AND task IN (SELECT value FROM json_each(:tasks)) GROUP BY task;

-- name: rate_get
SELECT key, starts FROM rates WHERE key IN (SELECT value FROM json_each(:keys));

-- name: rate_set
INSERT INTO rates (key, starts) VALUES (:key, :starts)
ON CONFLICT (key) DO UPDATE SET starts = excluded.starts;

-- name: succeed
UPDATE jobs SET suspect = 0, crashes = 0, solo = 0,
                state = 'succeeded', result = :result, finished_at = :now_iso,
                lease_until = NULL, owner = NULL
WHERE id = :id AND state = 'running' AND attempts = :attempt AND owner = :owner
RETURNING id;

-- name: succeed_batch
-- succeed without RETURNING, for executemany over a batch of quick jobs (the worker records
-- them in one transaction, docs/performance.md); its row count says whether all applied.
-- The owner stays: the row is then the record of its last attempt (attempts, owner,
-- started_at, finished_at), and no attempts row is written for it (Index._with_attempts).
UPDATE jobs SET suspect = 0, crashes = 0, solo = 0,
                state = 'succeeded', result = :result, finished_at = :now_iso,
                lease_until = NULL
WHERE id = :id AND state = 'running' AND attempts = :attempt AND owner = :owner;

-- name: requests_done_many
UPDATE requests SET done = 1 WHERE job_id IN (SELECT value FROM json_each(:ids)) AND done = 0;

-- name: unclaim
-- Claimed ahead but never started (the worker stops, or the job's shard left this worker):
-- the attempt is given back, as if it had not been claimed.
UPDATE jobs SET state = 'queued', attempts = attempts - 1,
                started_at = CASE WHEN attempts = 1 THEN NULL ELSE started_at END,
                lease_until = NULL, owner = NULL
WHERE id = :id AND state = 'running' AND attempts = :attempt AND owner = :owner;

-- name: retry
UPDATE jobs SET suspect = 0, crashes = 0, solo = 0,
                state = 'scheduled', run_at = :run_at, error = :error,
                lease_until = NULL, owner = NULL
WHERE id = :id AND state = 'running' AND attempts = :attempt AND owner = :owner
RETURNING id;

-- name: snooze
-- The handler asked to run later: the attempt it was counted for is given back.
UPDATE jobs SET suspect = 0, crashes = 0, solo = 0,
                state = 'scheduled', attempts = attempts - 1, run_at = :run_at,
                lease_until = NULL, owner = NULL
WHERE id = :id AND state = 'running' AND attempts = :attempt AND owner = :owner
RETURNING id;

-- name: fail
UPDATE jobs SET suspect = 0, crashes = 0, solo = 0,
                state = 'failed', error = :error, finished_at = :now_iso,
                lease_until = NULL, owner = NULL
WHERE id = :id AND state = 'running' AND attempts = :attempt AND owner = :owner
RETURNING id;

-- name: cancel
-- A running job whose cancellation was requested, and whose handler did not succeed.
UPDATE jobs SET suspect = 0, crashes = 0, solo = 0,
                state = 'cancelled', error = :error, finished_at = :now_iso,
                lease_until = NULL, owner = NULL
WHERE id = :id AND state = 'running' AND attempts = :attempt AND owner = :owner
RETURNING id;

-- name: crash
-- The job's own process died (os._exit, a signal, the OOM killer): a strike pinned on it. It
-- stays a suspect; it fails at :max_crashes strikes, or when its attempts are spent (no
-- :run_at), else it runs again at :run_at.
UPDATE jobs SET state = CASE WHEN crashes + 1 >= :max_crashes OR :run_at IS NULL
                             THEN 'failed' ELSE 'scheduled' END,
                finished_at = CASE WHEN crashes + 1 >= :max_crashes OR :run_at IS NULL
                                   THEN :now_iso END,
                run_at = coalesce(:run_at, run_at), error = :error,
                crashes = crashes + 1, suspect = 1, solo = 0, lease_until = NULL, owner = NULL
WHERE id = :id AND state = 'running' AND attempts = :attempt AND owner = :owner
RETURNING id, CASE state WHEN 'failed' THEN 'failed' ELSE 'retry' END AS outcome;

-- name: end_attempt
-- An attempt's row is written when it ends, after the outcome's statement: while it runs, it
-- is the job row's (attempts, owner, started_at), so a claim writes one row, not two (and a
-- success recorded in a batch none: succeed_batch). It replaces a row of the same attempt
-- (one ended by a snooze, which gave the attempt back).
-- :logs: the handler's own log lines (JSON array, bounded by the worker).
INSERT OR REPLACE INTO attempts (job_id, attempt, owner, started_at, finished_at, outcome,
                                 error_type, message, traceback, logs)
SELECT id, :attempt, :owner, started_at, :now_iso, :outcome, :error_type, :message,
       :traceback, :logs
FROM jobs WHERE id = :id;

-- name: set_progress
-- Not a transition: the running attempt's latest ctx.progress, fenced by (id, attempt, owner).
UPDATE jobs SET progress = :progress
WHERE id = :id AND attempts = :attempt AND owner = :owner AND state = 'running';

-- name: set_lifo
-- The waiting jobs of the queues now declared LIFO join the jobs_lifo index; the others leave.
UPDATE jobs SET lifo = queue IN (SELECT value FROM json_each(:lifo_queues))
WHERE state IN ('queued', 'scheduled')
  AND lifo != (queue IN (SELECT value FROM json_each(:lifo_queues)));

-- name: heartbeat
UPDATE jobs SET lease_until = :lease_until WHERE state = 'running' AND owner = :owner;

-- name: running_owners
SELECT DISTINCT owner FROM jobs WHERE state = 'running';

-- name: reap
-- Jobs whose worker died come back as suspects (run alone next, claim_suspect). A job that
-- ran alone in that worker's own process (solo) caused the death: a strike, and its attempt
-- is spent. Any other only shared the worker with the cause or was killed from outside: it is
-- not charged; the death counts in lost (failed at :max_lost) and gives the attempt back
-- (claims read max_attempts + lost).
UPDATE jobs SET state = CASE WHEN (solo AND (crashes + 1 >= :max_crashes
                                             OR attempts >= max_attempts + lost))
                                  OR (NOT solo AND lost + 1 >= :max_lost)
                             THEN 'failed' ELSE 'queued' END,
                finished_at = CASE WHEN (solo AND (crashes + 1 >= :max_crashes
                                                   OR attempts >= max_attempts + lost))
                                        OR (NOT solo AND lost + 1 >= :max_lost)
                                   THEN :now_iso END,
                run_at = :now,
                error = json_object('type', 'WorkerLost',
                                    'message', 'the worker running attempt ' || attempts ||
                                    ' stopped (' || coalesce(owner, '?') || ')' ||
                                    CASE WHEN solo THEN ' while the job ran alone in it'
                                         WHEN lost + 1 >= :max_lost
                                         THEN '; ' || (lost + 1) || ' worker deaths while it ran'
                                         ELSE '' END,
                                    'traceback', NULL),
                crashes = crashes + solo, lost = lost + 1 - solo, suspect = 1, solo = 0,
                lease_until = NULL, owner = NULL
WHERE state = 'running'
  AND (owner IN (SELECT value FROM json_each(:dead))
       OR (lease_until < :now AND owner NOT IN (SELECT value FROM json_each(:alive))))
RETURNING id, task, queue, state, attempts, error, crashes, lost;

-- name: reap_attempts
-- The running attempts reap is about to end (the same WHERE), as rows of their own before
-- reap clears their owner (replacing a row of the same attempt ended by a snooze);
-- lost_attempt then ends them.
INSERT OR REPLACE INTO attempts (job_id, attempt, owner, started_at)
SELECT id, attempts, owner, started_at FROM jobs
WHERE state = 'running'
  AND (owner IN (SELECT value FROM json_each(:dead))
       OR (lease_until < :now AND owner NOT IN (SELECT value FROM json_each(:alive))));

-- name: lost_attempt
UPDATE attempts SET finished_at = :now_iso, outcome = 'lost', error_type = 'WorkerLost',
                    message = :message
WHERE job_id = :id AND attempt = :attempt AND finished_at IS NULL;

-- name: unpublished_keys
-- unpublished, only what decides which records are due (publish.py reads whole rows then).
-- The condition is jobs_outbox's, word for word (schema.sql).
SELECT id, state, pack, inbox_key, envelope FROM jobs
WHERE published = 0 AND (state = 'succeeded' OR state = 'failed' OR state = 'cancelled')
  AND id NOT IN (SELECT value FROM json_each(:exclude))
ORDER BY finished_at LIMIT :n;

-- name: jobs_by_ids
SELECT * FROM jobs WHERE id IN (SELECT value FROM json_each(:ids)) ORDER BY finished_at;

-- name: unpublished
SELECT * FROM jobs
WHERE published = 0 AND (state = 'succeeded' OR state = 'failed' OR state = 'cancelled')
  AND id NOT IN (SELECT value FROM json_each(:exclude))
ORDER BY finished_at LIMIT :n;

-- name: markers_of
SELECT job_id, key FROM requests WHERE job_id IN (SELECT value FROM json_each(:ids));

-- name: mark_published
UPDATE jobs SET published = 1 WHERE id IN (SELECT value FROM json_each(:ids));

-- name: attempts_of
SELECT * FROM attempts WHERE job_id IN (SELECT value FROM json_each(:ids))
ORDER BY job_id, attempt;

-- name: next_run_at
SELECT min(run_at) AS run_at FROM jobs WHERE queue = :queue AND state IN ('queued', 'scheduled');

-- name: depth
-- Jobs waiting or running, by queue and state (the metrics' queue depth).
SELECT queue, state, count(*) AS n FROM jobs
WHERE state IN ('queued', 'scheduled', 'running') GROUP BY queue, state;

-- name: counts
SELECT state, count(*) AS n FROM jobs GROUP BY state;

-- name: list
SELECT id, task, queue, state, attempts, max_attempts, enqueued_at, started_at, finished_at,
       run_at, error, progress
FROM jobs
WHERE (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)
ORDER BY id DESC LIMIT :limit;

-- name: get
SELECT * FROM jobs WHERE id = :id;

-- name: quarantined
SELECT * FROM quarantine ORDER BY at DESC LIMIT :limit;

-- name: restore_job
-- qlite reindex: a terminal job from its results/ record. A row the replica restored in an
-- older, unfinished state takes the terminal one; a terminal row is left alone.
-- A packed job is restored unpublished: publishing rewrites its pack's record and deletes the
-- pack object if a crash left it behind.
INSERT INTO jobs (id, task, queue, state, attempts, max_attempts, run_at, envelope,
                  inbox_key, key, result, error, enqueued_at, ingested_at,
                  started_at, finished_at, published, pack)
VALUES (:id, :task, :queue, :state, :attempts, :max_attempts, 0, :envelope, :inbox_key, :key,
        :result, :error, :enqueued_at, :now_iso, :started_at, :finished_at, :published, :pack)
ON CONFLICT (id) DO UPDATE SET
    state = excluded.state, attempts = excluded.attempts, result = excluded.result,
    error = excluded.error, started_at = excluded.started_at,
    finished_at = excluded.finished_at, published = excluded.published,
    inbox_key = excluded.inbox_key, pack = excluded.pack, lease_until = NULL, owner = NULL
WHERE jobs.state NOT IN ('succeeded', 'failed', 'cancelled');

-- name: restore_attempt
INSERT OR IGNORE INTO attempts (job_id, attempt, started_at, finished_at, outcome, error_type,
                                message, traceback)
VALUES (:id, :attempt, :at, :at, :outcome, :type, :message, :traceback);

-- name: schedule_init
INSERT OR IGNORE INTO schedules (name, last_tick, fired_at) VALUES (:name, :now, :now_iso);

-- name: schedule_last
SELECT last_tick FROM schedules WHERE name = :name;

-- name: schedule_fired
UPDATE schedules SET last_tick = :tick, fired_at = :now_iso
WHERE name = :name AND last_tick < :tick;

-- name: schedules
SELECT * FROM schedules;

-- name: requests_known
SELECT key FROM requests WHERE key IN (SELECT value FROM json_each(:keys));

-- name: insert_request
INSERT OR IGNORE INTO requests (key, job_id, kind, at) VALUES (:key, :job_id, :kind, :now_iso);

-- name: apply_cancels
-- Cancel requests on jobs not running: they end cancelled and never run.
UPDATE jobs SET state = 'cancelled', finished_at = :now_iso,
                error = json_object('type', 'Cancelled', 'traceback', NULL,
                                    'message', 'cancelled on request before it ran' ||
                                               CASE WHEN attempts > 0
                                                    THEN ' again (after ' || attempts ||
                                                         ' attempt(s))'
                                                    ELSE '' END)
WHERE state IN ('queued', 'scheduled')
  AND id IN (SELECT job_id FROM requests WHERE kind = 'cancel' AND done = 0)
RETURNING id;

-- name: settle_requests
-- Requests on terminal jobs have done their part (or came too late): they are done.
UPDATE requests SET done = 1
WHERE done = 0
  AND ((kind = 'cancel' AND job_id IN (
           SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')))
       OR (kind = 'retry' AND job_id IN (SELECT id FROM jobs WHERE state = 'succeeded')))
RETURNING key, job_id, kind;

-- name: retry_candidates
SELECT jobs.id, jobs.task, jobs.queue, jobs.inbox_key, jobs.envelope, jobs.attempts
FROM requests AS r JOIN jobs ON jobs.id = r.job_id
WHERE r.kind = 'retry' AND r.done = 0
  AND jobs.state IN ('failed', 'cancelled') AND jobs.published = 1;

-- name: apply_retry
-- qlite retry: a failed or cancelled job runs again with a fresh budget of attempts; its
-- attempt history stays.
UPDATE jobs SET state = 'queued', run_at = :now, max_attempts = attempts + :budget,
                crashes = 0, lost = 0, finished_at = NULL, published = 0, inbox_key = :inbox_key
WHERE id = :id AND state IN ('failed', 'cancelled') AND published = 1
RETURNING id;

-- name: requests_done_for
UPDATE requests SET done = 1 WHERE job_id = :id AND done = 0;

-- name: cancelling
SELECT DISTINCT job_id FROM requests
WHERE kind = 'cancel' AND done = 0 AND job_id IN (SELECT value FROM json_each(:ids));

-- name: purgeable
SELECT id, queue, CASE WHEN inbox_key = pack THEN pack END AS pack FROM jobs
WHERE state IN (SELECT value FROM json_each(:states)) AND published = 1
  AND finished_at < :before AND (:queue IS NULL OR queue = :queue)
ORDER BY finished_at LIMIT :n;

-- name: purge
DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(:ids)) AND published = 1;

-- name: purge_attempts
DELETE FROM attempts WHERE job_id IN (SELECT value FROM json_each(:ids));

-- name: purge_requests
DELETE FROM requests WHERE job_id IN (SELECT value FROM json_each(:ids));

-- name: stale_markers
-- Cancel/retry markers taken in before :before for a job id this index never held: the job
-- never arrived (or went to another worker), so they would stay in the inbox forever.
SELECT key FROM requests
WHERE at < :before AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = requests.job_id)
  AND (:queue IS NULL OR substr(key, 1, length('inbox/' || :queue || '/')) = 'inbox/' || :queue || '/')
ORDER BY at LIMIT :n;

-- name: forget_markers
DELETE FROM requests
WHERE key IN (SELECT value FROM json_each(:keys))
  AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = requests.job_id);

-- name: group_members
SELECT id, state, result, error, envelope FROM jobs WHERE grp = :grp;

-- name: counter_add
INSERT INTO counters (name, value, since, updated) VALUES (:name, :n, :now_iso, :now_iso)
ON CONFLICT (name) DO UPDATE SET value = value + excluded.value, updated = excluded.updated;

-- name: counters
SELECT name, value, since, updated FROM counters;

-- Read-only queries of qlite stats and the dashboard (qlite/stats.py). Times are RFC 3339.

-- name: stats_by_queue
SELECT queue, state, count(*) AS n FROM jobs GROUP BY queue, state;

-- name: stats_finished
SELECT task, state, finished_at FROM jobs
WHERE finished_at >= :since AND state IN ('succeeded', 'failed', 'cancelled');

-- name: stats_run_times
-- One row per attempt that ended (not lost): how long its handler ran. A success recorded in
-- a batch has no attempts row: its job row (owner kept) is its record.
SELECT jobs.task, a.finished_at,
       max(0.0, (julianday(a.finished_at) - julianday(a.started_at)) * 86400) AS seconds
FROM attempts AS a JOIN jobs ON jobs.id = a.job_id
WHERE a.finished_at >= :since AND a.outcome IN ('succeeded', 'retry', 'failed', 'cancelled')
UNION ALL
SELECT task, finished_at,
       max(0.0, (julianday(finished_at) - julianday(started_at)) * 86400) AS seconds
FROM jobs WHERE state = 'succeeded' AND owner IS NOT NULL AND finished_at >= :since;

-- name: stats_wait_times
-- First attempts: from when the job could run (enqueued, or its not_before) to its start,
-- and from enqueue to ingest (pickup). Producer clocks may be ahead: never below zero.
-- A first attempt still running, or a success recorded in a batch, has no attempts row: the
-- job row's start is its own.
SELECT jobs.task, s.started_at,
       max(0.0, (julianday(s.started_at) - julianday(coalesce(
           json_extract(jobs.envelope, '$.not_before'), jobs.enqueued_at))) * 86400) AS seconds,
       max(0.0, (julianday(jobs.ingested_at) - julianday(jobs.enqueued_at)) * 86400) AS pickup
FROM (SELECT job_id, started_at FROM attempts WHERE attempt = 1 AND started_at >= :since
      UNION ALL
      SELECT id, started_at FROM jobs
      WHERE (state = 'running' OR (state = 'succeeded' AND owner IS NOT NULL))
        AND attempts = 1 AND started_at >= :since
        AND NOT EXISTS (SELECT 1 FROM attempts WHERE job_id = jobs.id AND attempt = 1)
     ) AS s JOIN jobs ON jobs.id = s.job_id;

-- name: stats_waiting
-- Runnable jobs not yet started, per queue, with the oldest one's run_at (Unix seconds).
SELECT queue, count(*) AS n, min(run_at) AS oldest FROM jobs
WHERE state IN ('queued', 'scheduled') AND run_at <= :now GROUP BY queue;

-- name: drop_shards
-- A fleet shard this index no longer holds (taken by another worker), or one taken back after
-- another index ran it: its rows here are stale. Published records stay as history.
DELETE FROM jobs
WHERE qlite_shard(id, :nshards) IN (SELECT value FROM json_each(:shards)) AND published = 0
RETURNING id, pack;

-- name: carried_jobs
-- A shard's jobs that already spent attempts and wait for another, for its next owner
-- (worker/carry.py); with :running, those running too (read from a dead worker's replica).
SELECT id, state, attempts, run_at, error, lost, crashes, owner, started_at FROM jobs
WHERE qlite_shard(id, :nshards) IN (SELECT value FROM json_each(:shards))
  AND ((state IN ('queued', 'scheduled') AND attempts > 0) OR (:running AND state = 'running'));

-- name: carry
-- A job taken in from a shard handed over or taken from a dead worker: its attempts so far,
-- its retry time and its worker deaths come along. Past :max_lost deaths it fails, as reap.
UPDATE jobs SET attempts = :attempts, error = :error, lost = :lost, crashes = :crashes,
                run_at = max(run_at, :run_at),
                state = CASE WHEN :lost >= :max_lost THEN 'failed'
                             WHEN max(run_at, :run_at) > :now THEN 'scheduled' ELSE state END,
                finished_at = CASE WHEN :lost >= :max_lost THEN :now_iso END
WHERE id = :id AND attempts = 0 AND state IN ('queued', 'scheduled');

-- name: carry_attempt
INSERT OR IGNORE INTO attempts (job_id, attempt, owner, started_at, finished_at, outcome,
                                error_type, message, traceback, logs)
VALUES (:id, :attempt, :owner, :started_at, :finished_at, :outcome, :error_type, :message,
        :traceback, :logs);

-- name: carry_schedule
-- A schedule's last tick from the index that fired it before (never moved back).
INSERT INTO schedules (name, last_tick, fired_at) VALUES (:name, :tick, :now_iso)
ON CONFLICT (name) DO UPDATE SET last_tick = max(last_tick, excluded.last_tick);

-- name: drop_waiting
-- A shard being handed over: its jobs not started are left to the next owner, who takes
-- them in from the inbox again.
DELETE FROM jobs
WHERE qlite_shard(id, :nshards) IN (SELECT value FROM json_each(:shards))
  AND state IN ('queued', 'scheduled')
RETURNING id, pack;

-- name: drop_packs
-- The packs of shards this index no longer holds: not taken in here any more, so they stay
-- open (pack_open) and their objects are never deleted from here; taken again, they are
-- read again (with their records, when another index ran some of their jobs).
DELETE FROM packs
WHERE qlite_pack_shard(key, :nshards) IN (SELECT value FROM json_each(:shards));

-- name: shards_busy
-- Rows that keep a shard from being handed over: running, or finished and not yet published.
SELECT count(*) AS n FROM jobs
WHERE qlite_shard(id, :nshards) IN (SELECT value FROM json_each(:shards))
  AND (state = 'running' OR (published = 0 AND state IN ('succeeded', 'failed', 'cancelled')));
