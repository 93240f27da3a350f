-- Named queries of the index. Every job state transition is one statement.

-- name: known
SELECT id, inbox_key, published, state FROM jobs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: insert_job
INSERT OR IGNORE INTO jobs (id, task, queue, state, priority, max_attempts, run_at, envelope,
                            inbox_key, key, enqueued_at, ingested_at)
VALUES (:id, :task, :queue, CASE WHEN :run_at > :now THEN 'scheduled' ELSE 'queued' END,
        :priority, :max_attempts, :run_at, :envelope, :inbox_key, :key, :enqueued_at, :now_iso);

-- name: insert_quarantine
INSERT OR IGNORE INTO quarantine (key, reason, size, at) VALUES (:key, :reason, :size, :now_iso);

-- name: claim
-- Counts the attempt before the handler runs, so a crash can never reset it.
UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = :now_iso,
                lease_until = :lease_until, owner = :owner
WHERE id IN (
    SELECT jobs.id FROM jobs JOIN json_each(:queues) AS q ON q.value = jobs.queue
    WHERE jobs.state IN ('queued', 'scheduled') AND jobs.run_at <= :now
    ORDER BY q.key, jobs.priority DESC, jobs.run_at, jobs.id
    LIMIT :n)
RETURNING id, task, queue, attempts, max_attempts, envelope, enqueued_at;

-- name: insert_attempt
INSERT OR REPLACE INTO attempts (job_id, attempt, owner, started_at)
VALUES (:id, :attempt, :owner, :now_iso);

-- name: succeed
UPDATE jobs SET state = 'succeeded', result = :result, finished_at = :now_iso,
                lease_until = NULL, owner = NULL
WHERE id = :id AND state = 'running' AND attempts = :attempt AND owner = :owner
RETURNING id;

-- name: retry
UPDATE jobs SET state = 'scheduled', run_at = :run_at, error = :error,
                lease_until = NULL, owner = NULL
WHERE id = :id AND state = 'running' AND attempts = :attempt AND owner = :owner
RETURNING id;

-- name: snooze
-- The handler asked to run later: the attempt it was counted for is given back.
UPDATE jobs SET state = 'scheduled', attempts = attempts - 1, run_at = :run_at,
                lease_until = NULL, owner = NULL
WHERE id = :id AND state = 'running' AND attempts = :attempt AND owner = :owner
RETURNING id;

-- name: fail
UPDATE jobs SET state = 'failed', error = :error, finished_at = :now_iso,
                lease_until = NULL, owner = NULL
WHERE id = :id AND state = 'running' AND attempts = :attempt AND owner = :owner
RETURNING id;

-- name: end_attempt
UPDATE attempts SET finished_at = :now_iso, outcome = :outcome, error_type = :error_type,
                    message = :message, traceback = :traceback
WHERE job_id = :id AND attempt = :attempt;

-- name: heartbeat
UPDATE jobs SET lease_until = :lease_until WHERE state = 'running' AND owner = :owner;

-- name: running_owners
SELECT DISTINCT owner FROM jobs WHERE state = 'running';

-- name: reap
-- Jobs whose worker died: back to queued with the attempt spent, or failed when none are left.
UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
                run_at = :now,
                error = json_object('type', 'WorkerLost',
                                    'message', 'the worker running attempt ' || attempts ||
                                    ' stopped (' || coalesce(owner, '?') || ')',
                                    'traceback', NULL),
                finished_at = CASE WHEN attempts >= max_attempts THEN :now_iso END,
                lease_until = NULL, owner = NULL
WHERE state = 'running'
  AND (owner IN (SELECT value FROM json_each(:dead))
       OR (lease_until < :now AND owner NOT IN (SELECT value FROM json_each(:alive))))
RETURNING id, state, attempts, error;

-- name: lost_attempt
UPDATE attempts SET finished_at = :now_iso, outcome = 'lost', error_type = 'WorkerLost',
                    message = :message
WHERE job_id = :id AND attempt = :attempt AND finished_at IS NULL;

-- name: unpublished
SELECT * FROM jobs
WHERE published = 0 AND state IN ('succeeded', 'failed', 'cancelled')
  AND id NOT IN (SELECT value FROM json_each(:exclude))
ORDER BY finished_at LIMIT :n;

-- name: mark_published
UPDATE jobs SET published = 1 WHERE id IN (SELECT value FROM json_each(:ids));

-- name: attempts_of
SELECT * FROM attempts WHERE job_id IN (SELECT value FROM json_each(:ids))
ORDER BY job_id, attempt;

-- name: next_run_at
SELECT min(run_at) AS run_at FROM jobs JOIN json_each(:queues) AS q ON q.value = jobs.queue
WHERE state IN ('queued', 'scheduled');

-- name: counts
SELECT state, count(*) AS n FROM jobs GROUP BY state;

-- name: list
SELECT id, task, queue, state, attempts, max_attempts, enqueued_at, started_at, finished_at,
       run_at, error
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
INSERT INTO jobs (id, task, queue, state, attempts, max_attempts, run_at, envelope,
                  inbox_key, key, result, error, enqueued_at, ingested_at,
                  started_at, finished_at, published)
VALUES (:id, :task, :queue, :state, :attempts, :max_attempts, 0, :envelope, :inbox_key, :key,
        :result, :error, :enqueued_at, :now_iso, :started_at, :finished_at, 1)
ON CONFLICT (id) DO UPDATE SET
    state = excluded.state, attempts = excluded.attempts, result = excluded.result,
    error = excluded.error, started_at = excluded.started_at,
    finished_at = excluded.finished_at, published = 1, lease_until = NULL, owner = NULL
WHERE jobs.state NOT IN ('succeeded', 'failed', 'cancelled');

-- name: restore_attempt
INSERT OR IGNORE INTO attempts (job_id, attempt, started_at, finished_at, outcome, error_type,
                                message, traceback)
VALUES (:id, :attempt, :at, :at, :outcome, :type, :message, :traceback);
