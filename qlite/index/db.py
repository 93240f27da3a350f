"""The SQLite index: the only module that speaks SQL (queries live in sql/*.sql).

A WAL-mode SQLite file on the worker VM. Several worker processes may share it: every state
transition is one UPDATE ... RETURNING, so two processes can never claim the same job, and
completions are fenced by (id, attempt, owner) so a stale attempt cannot overwrite a newer one.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import sqlite_utils

from qlite.envelope import now_rfc3339, pack_key, parse_pack_key, shard_of
from qlite.errors import IndexUnavailable
from qlite.index.rows import Attempt, JobRow
from qlite.states import TERMINAL  # noqa: F401 - also imported from here by the worker
from qlite.status import JobStatus


def _load_queries() -> dict[str, str]:
    text = resources.files("qlite.index").joinpath("sql/queries.sql").read_text()
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.M)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


QUERIES = _load_queries()
SCHEMA = resources.files("qlite.index").joinpath("sql/schema.sql").read_text()
MAX_CRASHES = 3  # crashes pinned on one job before it fails (docs/guarantees.md, guarantee 2)
MAX_LOST = 20  # worker deaths a job only shared before it fails: generous, not max_attempts


@dataclass
class Limits:
    """Per-task limits for a claim: ``concurrency`` {task: most running at once} and
    ``rates`` {task: (rate key, at most this many jobs start, in any window of seconds)}."""
    concurrency: dict[str, int] = field(default_factory=dict)
    rates: dict[str, tuple[str, int, float]] = field(default_factory=dict)
    held_until: float | None = None  # set by a claim: when a rate-held job may go

    def __bool__(self) -> bool:
        return bool(self.concurrency or self.rates)


class _Stale(Exception):
    """Rolls back a batch in which some attempt was stale (see succeed_many)."""


def _text(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def check_file(path: str | Path) -> str | None:
    """What is wrong with the SQLite file at ``path`` as an index (None: nothing): it must pass
    ``PRAGMA quick_check`` and hold every table of the schema. Read-only; for a restored copy."""
    tables = set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                return "quick_check: " + "; ".join(problems)
            have = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as e:
        return str(e)
    missing = sorted(tables - have)
    return f"tables missing: {', '.join(missing)}" if missing else None


def _pack_shard(key: str, shards: int) -> int:
    """The fleet shard of a pack's inbox key (-1: not a pack key)."""
    parsed = parse_pack_key(key)
    return shard_of(parsed[1], shards) if parsed else -1


class Index:
    def __init__(self, path: str | Path, *, readonly: bool = False, checkpoint: bool = True):
        """``checkpoint=False`` for an index Litestream replicates: only Litestream
        checkpoints its WAL. A checkpoint by this process while no Litestream runs (between
        a killed worker's Litestream and the next one) makes Litestream 0.5 write a replica
        that restores malformed (issue 19; docs/troubleshooting.md)."""
        self.path = Path(path)
        self._batch = False  # inside batch(): calls use savepoints, batch() commits
        self.lifo: frozenset[str] = frozenset()  # queues claimed newest first (set_lifo)
        try:
            if readonly:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                self.db = sqlite_utils.Database(conn)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite_utils.Database(self.path)
            self.conn = self.db.conn
            self.conn.create_function("qlite_shard", 2, shard_of, deterministic=True)
            self.conn.create_function("qlite_pack_shard", 2, _pack_shard, deterministic=True)
            self.conn.execute("PRAGMA busy_timeout = 10000")
            if not readonly:
                self.db.enable_wal()
                if not checkpoint:
                    self.conn.execute("PRAGMA wal_autocheckpoint = 0")
                    no_close_checkpoint = getattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE",
                                                  None)  # Python 3.12+
                    if no_close_checkpoint is not None:
                        self.conn.setconfig(no_close_checkpoint, True)  # type: ignore[attr-defined]
                # NORMAL in WAL mode survives a process crash; a power loss may undo the last
                # commits, which only re-runs jobs: inbox objects outlive their rows.
                self.conn.execute("PRAGMA synchronous = NORMAL")
                self.conn.executescript(SCHEMA)
                self._migrate()
        except (sqlite3.Error, OSError) as e:
            raise IndexUnavailable(f"index {self.path}: {e}. Try: check the path and its "
                                   "permissions (QLITE_DB / --db)") from e

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        """Bring an index written by an older qlite up to this schema (columns added since)."""
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(jobs)")}
        with self._tx():
            for column in ("expires_at REAL", "grp TEXT", "pack TEXT",
                           "suspect INTEGER NOT NULL DEFAULT 0",
                           "solo INTEGER NOT NULL DEFAULT 0",
                           "crashes INTEGER NOT NULL DEFAULT 0",
                           "lost INTEGER NOT NULL DEFAULT 0", "progress TEXT",
                           "lifo INTEGER NOT NULL DEFAULT 0"):
                if column.split()[0] not in columns:
                    self.conn.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
            attempt_columns = {row[1] for row in self.conn.execute("PRAGMA table_info(attempts)")}
            if "logs" not in attempt_columns:
                self.conn.execute("ALTER TABLE attempts ADD COLUMN logs TEXT")
            self.conn.execute("CREATE INDEX IF NOT EXISTS jobs_group ON jobs (grp) "
                              "WHERE grp IS NOT NULL")
            # A pack's members by pack only (jobs_pack held the state too, so every claim
            # and finish of a packed job moved its entry): the few per-pack queries of the
            # publisher read the rows.
            self.conn.execute("CREATE INDEX IF NOT EXISTS jobs_packed ON jobs (pack) "
                              "WHERE pack IS NOT NULL")
            for name in ("jobs_state", "jobs_finished", "attempts_finished", "attempts_first",
                         "jobs_unpublished", "jobs_pack"):  # jobs_unpublished: jobs_outbox now
                self.conn.execute(f"DROP INDEX IF EXISTS {name}")  # see schema.sql
            self.conn.execute("CREATE INDEX IF NOT EXISTS jobs_lifo ON jobs (queue, priority "
                              "DESC, id DESC) WHERE lifo = 1 AND state IN ('queued', 'scheduled')")
            self.conn.execute("CREATE INDEX IF NOT EXISTS jobs_suspect ON jobs (priority DESC, "
                              "run_at, id) WHERE suspect = 1 AND state IN ('queued', 'scheduled')")
            self.conn.execute(
                "CREATE INDEX IF NOT EXISTS jobs_expiring ON jobs (expires_at) "
                "WHERE state IN ('queued', 'scheduled') AND expires_at IS NOT NULL")

    # -- helpers ----------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for several calls (the worker records outcomes and claims the next
        jobs in one commit). Each call inside still succeeds or fails alone (a savepoint)."""
        if self._batch:  # nested: a savepoint
            with self._tx():
                yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._batch = True
        try:
            yield
        except BaseException:
            self._batch = False
            self.conn.rollback()
            raise
        self._batch = False
        self.conn.commit()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        if not self._batch:
            with self.conn:
                yield
            return
        self.conn.execute("SAVEPOINT call")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO call")
            self.conn.execute("RELEASE call")
            raise
        self.conn.execute("RELEASE call")

    def _rows(self, query: str, /, **params: Any) -> list[dict]:
        try:
            cur = self.conn.execute(QUERIES[query], params)
            cols = [c[0] for c in cur.description] if cur.description else []
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        except sqlite3.Error as e:
            raise IndexUnavailable(f"index {self.path}: {query}: {e}") from e

    def _write(self, query: str, /, **params: Any) -> list[dict]:
        with self._tx():
            return self._rows(query, **params)

    def _jobs(self, query: str, /, **params: Any) -> list[JobRow]:
        return [JobRow.of(r) for r in self._rows(query, **params)]

    @staticmethod
    def _now(now: float | None) -> tuple[float, str]:
        now = time.time() if now is None else now
        return now, now_rfc3339(now)

    # -- ingest -----------------------------------------------------------------------------

    def known(self, ids: list[str]) -> dict[str, JobRow]:
        """The rows of these ids the index holds (id, inbox_key, published, state)."""
        return {r.id: r for r in self._jobs("known", ids=json.dumps(ids))}

    def insert_jobs(self, jobs: Iterable[dict], now: float | None = None,
                    packs: Iterable[tuple[str, str, int]] = ()) -> int:
        """Insert ingested jobs (dicts with the insert_job parameters) and the packs they came
        in ((key, queue, size)) in one transaction."""
        now, now_iso = self._now(now)
        lifo = self.lifo
        with self._tx():
            for key, queue, size in packs:
                self.conn.execute(QUERIES["insert_pack"], {"key": key, "queue": queue,
                                                           "size": size, "now_iso": now_iso})
            n = self.conn.executemany(QUERIES["insert_job"], (
                {"expires_at": None, "grp": None, "pack": None, **job, "now": now,
                 "now_iso": now_iso, "lifo": job["queue"] in lifo} for job in jobs)).rowcount
            # A cancel request may have arrived before its job: it applies as the job lands.
            self.conn.execute(QUERIES["apply_cancels"], {"now_iso": now_iso}).fetchall()
        return n

    def known_packs(self, keys: list[str]) -> set[str]:
        return {r["key"] for r in self._rows("known_packs", keys=json.dumps(keys))}

    def pack_open(self, keys: list[str]) -> dict[str, int]:
        """Per pack, how many members are not terminal yet (+1 if the pack was not taken in):
        0 means its batched record is complete and the pack object may go."""
        return {r["pack"]: r["n"] for r in self._rows("pack_open", keys=json.dumps(keys))}

    def packs_settled(self, keys: list[str]) -> list[str]:
        return [r["pack"] for r in self._rows("packs_settled", keys=json.dumps(keys))]

    def pack_members(self, key: str) -> list[JobRow]:
        """The terminal members still in pack ``key``, with their attempts."""
        return self._with_attempts(self._jobs("pack_members", key=key))

    def quarantine(self, key: str, reason: str, size: int | None, now: float | None = None):
        _, now_iso = self._now(now)
        self._write("insert_quarantine", key=key, reason=reason, size=size, now_iso=now_iso)

    # -- claim and complete -----------------------------------------------------------------

    def set_lifo(self, queues: Iterable[str]) -> None:
        """Claim ``queues`` newest first (LIFO) from now on, the others oldest first; the
        jobs already waiting follow at once (one statement)."""
        self.lifo = frozenset(queues)
        self._write("set_lifo", lifo_queues=json.dumps(sorted(self.lifo)))

    def _claim_query(self, queue: str) -> str:
        return "claim_lifo" if queue in self.lifo else "claim"

    def claim(self, queues: tuple[str, ...], n: int, owner: str, lease: float,
              now: float | None = None, limits: Limits | None = None,
              shards: tuple[set[int], int] | None = None) -> list[JobRow]:
        """Claim up to ``n`` runnable jobs in queue order, priority, then FIFO (LIFO for the
        queues of ``set_lifo``), within the tasks' concurrency and rate ``limits``.
        ``limits.held_until`` then says when a job held back by a rate limit may go (None:
        when a running job ends). ``shards`` (owned, of how many) limits a fleet worker to
        the shards it owns."""
        params = self._claim_params(queues, owner, lease, now, shards)
        if not limits:
            rows: list[dict] = []
            with self._tx():
                for queue in queues:
                    rows += self._rows(self._claim_query(queue), n=n - len(rows),
                                       blocked="[]", queue=queue, **params)
                    if len(rows) >= n:
                        break
        else:
            rows = self._claim_limited(n, queues, limits, params)
        order = {q: i for i, q in enumerate(queues)}
        return [JobRow.of(r) for r in sorted(rows, key=lambda r: (order[r["queue"]], r["id"]))]

    def _claim_params(self, queues: tuple[str, ...], owner: str, lease: float,
                      now: float | None, shards: tuple[set[int], int] | None) -> dict:
        now, now_iso = self._now(now)
        # A fleet of one owns every shard: no filter then (it calls qlite_shard per row).
        some = shards is not None and not set(range(shards[1])) <= shards[0]
        return {"queues": json.dumps(list(queues)), "owner": owner, "now": now,
                "lease_until": now + lease, "now_iso": now_iso,
                "shards": json.dumps(sorted(shards[0])) if shards and some else None,
                "nshards": shards[1] if shards else 1}

    def claim_suspect(self, queues: tuple[str, ...], owner: str, lease: float,
                      now: float | None = None, shards: tuple[set[int], int] | None = None,
                      solo: bool = False) -> list[JobRow]:
        """Claim one runnable suspect (a job that was running when its worker died, or whose
        own process crashed), to run alone. ``solo``: it runs in this worker's own process,
        so a death of the worker is pinned on it (reap)."""
        params = self._claim_params(queues, owner, lease, now, shards)
        rows = self._write("claim_suspect", solo=int(solo), **params)
        return [JobRow.of(r) for r in rows]

    def suspect_waiting(self, queues: tuple[str, ...], now: float | None = None,
                        shards: tuple[set[int], int] | None = None) -> bool:
        """Whether a suspect could run now: the worker then starts nothing beside it."""
        params = self._claim_params(queues, "", 0.0, now, shards)
        return bool(self._rows("suspect_waiting", **{k: params[k] for k in (
            "queues", "now", "shards", "nshards")})[0]["waiting"])

    def _claim_limited(self, n: int, queues: tuple[str, ...], limits: Limits,
                       params: dict) -> list[dict]:
        """One job per statement, in one IMMEDIATE transaction: the counts and rate state
        read here cannot change under it, even with other worker processes on the file."""
        now = params["now"]
        rows: list[dict] = []
        with self.batch():  # BEGIN IMMEDIATE, or a savepoint inside the worker's batch
            running = {r["task"]: r["n"] for r in self._rows(
                "running_by_task", tasks=json.dumps(list(limits.concurrency)))}
            starts = {r["key"]: json.loads(r["starts"]) for r in self._rows(
                "rate_get", keys=json.dumps(sorted({k for k, _, _ in limits.rates.values()})))}
            limits.held_until = None
            while len(rows) < n:
                blocked = [t for t, cap in limits.concurrency.items()
                           if running.get(t, 0) >= cap]
                for task, (key, jobs, period) in limits.rates.items():
                    recent = [t for t in starts.get(key, []) if t > now - period]
                    if len(recent) >= jobs:  # a full window: wait until its oldest leaves
                        blocked.append(task)
                        free_at = recent[-jobs] + period
                        limits.held_until = min(limits.held_until or free_at, free_at)
                got = []
                for queue in queues:
                    got = self._rows(self._claim_query(queue), n=1,
                                     blocked=json.dumps(blocked), queue=queue, **params)
                    if got:
                        break
                if not got:
                    break
                row = got[0]
                rows.append(row)
                running[row["task"]] = running.get(row["task"], 0) + 1
                if row["task"] in limits.rates:
                    key, jobs, period = limits.rates[row["task"]]
                    starts[key] = [t for t in starts.get(key, []) if t > now - period][-jobs:]
                    starts[key].append(now)
                    self._rows("rate_set", key=key, starts=json.dumps(starts[key]))
        return rows

    def unclaim(self, jobs: list[tuple[str, int]], owner: str) -> int:
        """Give back the attempts of jobs claimed but never started ((id, attempt) pairs,
        fenced like an outcome): they are queued again as if never claimed. Returns how
        many."""
        params = [{"id": i, "attempt": a, "owner": owner} for i, a in jobs]
        with self._tx():  # a running attempt has no attempts row yet (end_attempt)
            return self.conn.executemany(QUERIES["unclaim"], params).rowcount

    def drop_shards(self, shards: set[int], nshards: int) -> int:
        """Forget the unpublished rows of fleet ``shards`` (see drop_shards in queries.sql);
        returns how many."""
        return self._drop("drop_shards", shards, nshards)

    def carried(self, shards: set[int], nshards: int, running: bool = False) -> list[JobRow]:
        """The jobs of fleet ``shards`` waiting for a retry (and, with ``running``, those
        running), with their attempt logs: what the shards' next owner needs (worker/carry.py)."""
        return self._with_attempts(self._jobs(
            "carried_jobs", shards=json.dumps(sorted(shards)), nshards=nshards,
            running=int(running)))

    def carry(self, jobs: list[dict], now: float | None = None) -> int:
        """Give jobs taken in from a shard handed over, or taken from a dead worker, their
        attempts, retry time, worker deaths and attempt log (worker/carry.py)."""
        now, now_iso = self._now(now)
        carried = 0
        with self._tx():
            for j in jobs:
                n = self.conn.execute(QUERIES["carry"], {
                    "id": j["id"], "attempts": j["attempts"], "run_at": j["run_at"],
                    "error": j.get("error"), "lost": j.get("lost") or 0,
                    "crashes": j.get("crashes") or 0, "max_lost": MAX_LOST, "now": now,
                    "now_iso": now_iso}).rowcount
                for a in (j.get("log") or []) if n else []:  # the earlier attempts' errors
                    self.conn.execute(QUERIES["carry_attempt"], {
                        "id": j["id"], **{k: a.get(k) for k in (
                            "attempt", "owner", "started_at", "finished_at", "outcome",
                            "error_type", "message", "traceback", "logs")}})
                carried += n
        return carried

    def carry_schedules(self, ticks: dict[str, float], now: float | None = None) -> None:
        """Schedules' last ticks from the index that fired them before (a shard taken)."""
        _, now_iso = self._now(now)
        with self._tx():
            for name, tick in ticks.items():
                self.conn.execute(QUERIES["carry_schedule"], {"name": name, "tick": tick,
                                                              "now_iso": now_iso})

    def drop_waiting(self, shards: set[int], nshards: int) -> int:
        """Forget the jobs of ``shards`` that have not started (a shard handed over)."""
        return self._drop("drop_waiting", shards, nshards)

    def _drop(self, query: str, shards: set[int], nshards: int) -> int:
        with self._tx():
            rows = self._rows(query, shards=json.dumps(sorted(shards)), nshards=nshards)
            self._rows("drop_packs", shards=json.dumps(sorted(shards)), nshards=nshards)
        return len(rows)

    def shards_busy(self, shards: set[int], nshards: int) -> int:
        return self._rows("shards_busy", shards=json.dumps(sorted(shards)),
                          nshards=nshards)[0]["n"]

    def expire(self, now: float | None = None) -> list[JobRow]:
        """Cancel the jobs not started before their expires_at; returns them (id, task, queue
        and attempts)."""
        now, now_iso = self._now(now)
        with self._tx():
            return self._jobs("expire", now=now, now_iso=now_iso)

    def next_expiry(self) -> float | None:
        return self._rows("next_expiry")[0]["at"]

    def finish(self, job_id: str, attempt: int, owner: str, outcome: str, *,
               result: str | None = None, error: dict | None = None,
               run_at: float | None = None, now: float | None = None,
               logs: list | None = None, crashed: bool = False) -> bool:
        """Record an attempt's outcome: ``succeeded``, ``retry`` (at ``run_at``), ``failed``, or
        ``snooze`` (at ``run_at``, giving the attempt back). ``crashed``: the job's own process
        died (``retry`` or ``failed``): a strike pinned on it (the crash statement).

        Returns False when the attempt is stale (the job was reaped and claimed again): its
        outcome is then ignored, fenced by (id, attempt, owner).
        """
        now, now_iso = self._now(now)
        if error:  # a handler's message may hold lone surrogates, which SQLite cannot store
            error = {k: _text(v) for k, v in error.items()}
        error_json = json.dumps(error) if error else None
        with self._tx():
            query = {"succeeded": "succeed", "retry": "retry", "failed": "fail",
                     "snooze": "snooze", "cancelled": "cancel"}[outcome]
            if crashed:
                query, run_at = "crash", run_at if outcome == "retry" else None
            done = self._rows(query, id=job_id,
                              attempt=attempt, owner=owner, result=result, error=error_json,
                              run_at=run_at, now_iso=now_iso, max_crashes=MAX_CRASHES)
            if done:
                outcome = done[0].get("outcome", outcome)
                error = error or {}
                self.conn.execute(QUERIES["end_attempt"], {
                    "id": job_id, "attempt": attempt, "owner": owner, "now_iso": now_iso,
                    "outcome": outcome, "error_type": error.get("type"),
                    "message": error.get("message"), "traceback": error.get("traceback"),
                    "logs": json.dumps([{k: _text(v) for k, v in line.items()}
                                        for line in logs], ensure_ascii=False)
                    if logs else None})
                if outcome in TERMINAL:
                    self.conn.execute(QUERIES["requests_done_for"], {"id": job_id})
        return bool(done)

    def succeed_many(self, jobs: list[tuple[str, int, str]], owner: str,
                     now: float | None = None) -> set[str]:
        """Record many successful attempts ((id, attempt, result JSON text)) with one
        executemany, fenced like finish(); returns the ids recorded (the others are stale
        attempts, ignored). No attempts row is written: each job's row, which keeps its
        owner, is its last attempt's record (_with_attempts)."""
        if not jobs:
            return set()
        _, now_iso = self._now(now)
        params = [{"id": i, "attempt": a, "result": r, "owner": owner, "now_iso": now_iso}
                  for i, a, r in jobs]
        ids = json.dumps([i for i, _, _ in jobs])
        try:
            with self._tx():
                n = self.conn.executemany(QUERIES["succeed_batch"], params).rowcount
                if n != len(jobs):
                    raise _Stale
                self.conn.execute(QUERIES["requests_done_many"], {"ids": ids})
                return {i for i, _, _ in jobs}
        except _Stale:
            pass
        # Some attempt is stale (rare): the batch was rolled back; one by one tells which.
        return {i for i, a, r in jobs if self.finish(i, a, owner, "succeeded", result=r,
                                                       now=now)}

    def set_progress(self, reports: list[tuple[str, int, dict]], owner: str) -> None:
        """Keep the last ctx.progress of running attempts (job id, attempt, report), fenced
        like an outcome: a stale attempt's report is dropped."""
        with self._tx():
            for job_id, attempt, report in reports:
                self.conn.execute(QUERIES["set_progress"], {
                    "id": job_id, "attempt": attempt, "owner": owner,
                    "progress": json.dumps({k: _text(v) for k, v in report.items()})})

    def heartbeat(self, owner: str, lease: float, now: float | None = None) -> None:
        now, _ = self._now(now)
        self._write("heartbeat", owner=owner, lease_until=now + lease)

    def running_owners(self) -> list[str]:
        return [r["owner"] for r in self._rows("running_owners") if r["owner"]]

    def reap(self, dead_owners: list[str], alive_owners: Sequence[str] = (),
             now: float | None = None) -> list[JobRow]:
        """Requeue as suspects (or fail, see the reap statement) jobs whose owner died, or
        whose lease expired unless their owner is a process on this host known to be alive."""
        now, now_iso = self._now(now)
        dead, alive = json.dumps(dead_owners), json.dumps(list(alive_owners))
        with self._tx():
            self._rows("reap_attempts", dead=dead, alive=alive, now=now)
            rows = self._jobs("reap", dead=dead, alive=alive, now=now, now_iso=now_iso,
                              max_crashes=MAX_CRASHES, max_lost=MAX_LOST)
            for r in rows:
                self.conn.execute(QUERIES["lost_attempt"], {
                    "id": r.id, "attempt": r.attempts, "now_iso": now_iso,
                    "message": (r.error or {}).get("message")})
        return rows

    # -- publish ----------------------------------------------------------------------------

    def unpublished_keys(self, n: int = 1000, exclude: Sequence[str] = ()) -> list[JobRow]:
        """unpublished() without the heavy columns: id, state, pack, inbox_key, envelope."""
        return self._jobs("unpublished_keys", n=n, exclude=json.dumps(list(exclude)))

    def jobs_by_ids(self, ids: list[str]) -> list[JobRow]:
        """Whole rows with their attempts (publish), oldest finished first."""
        return self._with_attempts(self._jobs("jobs_by_ids", ids=json.dumps(ids)))

    def unpublished(self, n: int = 1000, exclude: Sequence[str] = ()) -> list[JobRow]:
        """Terminal jobs not yet acknowledged, except ``exclude`` (results already written)."""
        return self._with_attempts(
            self._jobs("unpublished", n=n, exclude=json.dumps(list(exclude))))

    def _with_attempts(self, jobs: list[JobRow]) -> list[JobRow]:
        """Give ``jobs`` their attempt logs: the attempts rows, and the last attempt from the
        job's own row when it has none (written when an attempt ends, end_attempt): a
        running job's, and a success recorded in a batch (succeed_batch keeps the owner)."""
        if jobs:
            attempts: dict[str, list[Attempt]] = {}
            for a in self._rows("attempts_of", ids=json.dumps([j.id for j in jobs])):
                attempts.setdefault(a["job_id"], []).append(Attempt.of(a))
            for j in jobs:
                log = attempts.get(j.id, [])
                last = None
                if j.state == "running":
                    last = Attempt(j.id, j.attempts, j.owner, j.started_at)
                elif j.state == "succeeded" and j.owner:
                    last = Attempt(j.id, j.attempts, j.owner, j.started_at, j.finished_at,
                                   "succeeded")
                if last is not None:  # a row of the same attempt ended in a snooze: replaced
                    log = [a for a in log if a.attempt < j.attempts] + [last]
                j.attempt_log = log
        return jobs

    def markers_of(self, ids: list[str]) -> dict[str, list[str]]:
        """The cancel/retry marker objects of these jobs, to delete with their inbox object."""
        out: dict[str, list[str]] = {}
        for r in self._rows("markers_of", ids=json.dumps(ids)):
            out.setdefault(r["job_id"], []).append(r["key"])
        return out

    def mark_published(self, ids: list[str]) -> None:
        self._write("mark_published", ids=json.dumps(ids))

    def restore(self, records: list[JobStatus], now: float | None = None) -> int:
        """Insert terminal jobs from their results/ records (qlite reindex); known ids are
        left alone. Returns how many rows were added."""
        _, now_iso = self._now(now)
        added = 0
        with self._tx():
            for r in records:
                pack = pack_key(r.queue or "", r.pack) if r.pack else None
                envelope = {"v": 1, "id": r.id, "task": r.task, "args": [], "kwargs": {},
                            "queue": r.queue, "enqueued_at": r.enqueued_at,
                            "meta": {"rebuilt_from": "results/"}}
                added += self.conn.execute(QUERIES["restore_job"], {
                    "id": r.id, "task": r.task, "queue": r.queue, "state": r.state,
                    "attempts": r.attempts, "max_attempts": r.max_attempts, "key": r.key,
                    "enqueued_at": r.enqueued_at, "started_at": r.started_at,
                    "finished_at": r.finished_at, "now_iso": now_iso,
                    "envelope": json.dumps(envelope),
                    "inbox_key": pack or f"inbox/{r.queue}/{r.id}.json",
                    "pack": pack, "published": 0 if pack else 1,
                    "result": json.dumps(r.result) if r.state == "succeeded" else None,
                    "error": json.dumps(r.error) if r.error else None}).rowcount
                for e in r.errors:
                    self.conn.execute(QUERIES["restore_attempt"], {
                        "id": r.id, "outcome": "failed", **e})
        return added

    def group_members(self, group_id: str) -> list[JobRow]:
        return self._jobs("group_members", grp=group_id)

    # -- schedules --------------------------------------------------------------------------

    def schedule_last(self, name: str, now: float | None = None) -> float:
        """The schedule's last tick; a schedule seen for the first time starts from now."""
        now, now_iso = self._now(now)
        with self._tx():
            self._rows("schedule_init", name=name, now=now, now_iso=now_iso)
            return self._rows("schedule_last", name=name)[0]["last_tick"]

    def schedule_fired(self, name: str, tick: float, now: float | None = None) -> None:
        _, now_iso = self._now(now)
        self._write("schedule_fired", name=name, tick=tick, now_iso=now_iso)

    def schedules(self) -> dict[str, dict]:
        return {r["name"]: r for r in self._rows("schedules")}

    # -- cancel and retry requests ----------------------------------------------------------

    def new_requests(self, keys: list[str]) -> list[str]:
        known = {r["key"] for r in self._rows("requests_known", keys=json.dumps(keys))}
        return [k for k in keys if k not in known]

    def add_requests(self, requests: list[tuple[str, str, str]],
                     now: float | None = None) -> tuple[list[str], list[dict]]:
        """Record (marker key, job id, kind) requests and apply cancels to jobs not running.
        Returns the ids cancelled and the requests settled (their job is terminal)."""
        _, now_iso = self._now(now)
        with self._tx():
            for key, job_id, kind in requests:
                self.conn.execute(QUERIES["insert_request"], {
                    "key": key, "job_id": job_id, "kind": kind, "now_iso": now_iso})
            cancelled = [r["id"] for r in self._rows("apply_cancels", now_iso=now_iso)]
            settled = self._rows("settle_requests")
        return cancelled, settled

    def retry_candidates(self) -> list[JobRow]:
        """Failed or cancelled jobs, already published, with a retry request pending."""
        return self._jobs("retry_candidates")

    def apply_retry(self, job_id: str, budget: int, inbox_key: str,
                    now: float | None = None) -> bool:
        """Requeue a failed or cancelled job whose envelope was put back at ``inbox_key`` (a
        packed job leaves its pack: it is a job of its own from now on)."""
        now, _ = self._now(now)
        with self._tx():
            done = self._rows("apply_retry", id=job_id, budget=budget, now=now,
                              inbox_key=inbox_key)
            self.conn.execute(QUERIES["requests_done_for"], {"id": job_id})
        return bool(done)

    def cancelling(self, ids: list[str]) -> set[str]:
        """Which of these (running) jobs have a cancellation requested."""
        return {r["job_id"] for r in self._rows("cancelling", ids=json.dumps(ids))}

    def purgeable(self, states: list[str], before: float, queue: str | None = None,
                  n: int = 1000) -> list[JobRow]:
        """Published terminal jobs to purge: id, queue, and the pack they are still in."""
        return self._jobs("purgeable", states=json.dumps(states), before=now_rfc3339(before),
                          queue=queue, n=n)

    def purge(self, ids: list[str]) -> int:
        """Forget published terminal jobs (their results/ objects are deleted first)."""
        with self._tx():
            self._rows("purge_attempts", ids=json.dumps(ids))
            self._rows("purge_requests", ids=json.dumps(ids))
            return self.conn.execute(QUERIES["purge"], {"ids": json.dumps(ids)}).rowcount

    def stale_markers(self, before: float, queue: str | None = None,
                      n: int = 1000) -> list[str]:
        """Keys of cancel/retry markers taken in before ``before`` whose job never arrived."""
        return [r["key"] for r in self._rows("stale_markers", before=now_rfc3339(before),
                                             queue=queue, n=n)]

    def forget_markers(self, keys: list[str]) -> int:
        """Forget marker rows (their objects are deleted first), unless their job came."""
        with self._tx():
            return self.conn.execute(QUERIES["forget_markers"],
                                     {"keys": json.dumps(keys)}).rowcount

    def forget_packs(self, keys: list[str]) -> list[str]:
        """Drop the rows of packs none of whose members is left (after a purge); returns
        their keys."""
        return [r["key"] for r in self._write("forget_packs", keys=json.dumps(keys))]

    # -- reading ----------------------------------------------------------------------------

    def next_run_at(self, queues: tuple[str, ...]) -> float | None:
        times = [self._rows("next_run_at", queue=q)[0]["run_at"] for q in queues]
        return min((t for t in times if t is not None), default=None)

    def depth(self) -> list[dict]:
        """[{queue, state, n}] of the jobs waiting or running."""
        return self._rows("depth")

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self._rows("counts")}

    def jobs(self, state: str | None = None, queue: str | None = None,
             limit: int = 50) -> list[JobRow]:
        return self._jobs("list", state=state, queue=queue, limit=limit)

    def get(self, job_id: str) -> JobRow | None:
        """The job with its attempts; None when the index does not hold it."""
        rows = self._with_attempts(self._jobs("get", id=job_id))
        return rows[0] if rows else None

    def quarantined(self, limit: int = 50) -> list[dict]:
        return self._rows("quarantined", limit=limit)

    # -- counters and stats -----------------------------------------------------------------

    def add_counters(self, deltas: dict[str, int], now: float | None = None) -> None:
        """Add to running totals (S3 requests by operation, jobs published): one transaction."""
        _, now_iso = self._now(now)
        with self._tx():
            for name, n in deltas.items():
                if n:
                    self.conn.execute(QUERIES["counter_add"],
                                      {"name": name, "n": n, "now_iso": now_iso})

    def counters(self) -> dict[str, dict]:
        """The running totals; empty for an index written before qlite kept them."""
        if not self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'counters'").fetchone():
            return {}
        return {r["name"]: r for r in self._rows("counters")}

    def read(self, query: str, /, **params: Any) -> list[dict]:
        """Rows of a named read-only query (the ``stats_*`` ones of sql/queries.sql)."""
        if not query.startswith("stats_"):
            raise ValueError(f"not a read-only query: {query}")
        return self._rows(query, **params)
