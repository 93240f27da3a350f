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
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import sqlite_utils

from .envelope import now_rfc3339
from .errors import IndexUnavailable


def _load_queries() -> dict[str, str]:
    text = resources.files("qlite").joinpath("sql/queries.sql").read_text()
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.M)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


QUERIES = _load_queries()
SCHEMA = resources.files("qlite").joinpath("sql/schema.sql").read_text()
TERMINAL = ("succeeded", "failed", "cancelled")


def _text(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


class Index:
    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        try:
            if readonly:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                self.db = sqlite_utils.Database(conn)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite_utils.Database(self.path)
            self.conn = self.db.conn
            self.conn.execute("PRAGMA busy_timeout = 10000")
            if not readonly:
                self.db.enable_wal()
                # NORMAL in WAL mode survives a process crash; a power loss may undo the last
                # commits, which only re-runs jobs: inbox objects outlive their rows.
                self.conn.execute("PRAGMA synchronous = NORMAL")
                self.conn.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise IndexUnavailable(f"index {self.path}: {e}. Try: check the path and its "
                                   "permissions (QLITE_DB / --db)") from e

    def close(self) -> None:
        self.conn.close()

    # -- helpers ----------------------------------------------------------------------------

    def _rows(self, name: str, **params: Any) -> list[dict]:
        try:
            cur = self.conn.execute(QUERIES[name], params)
            cols = [c[0] for c in cur.description] if cur.description else []
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        except sqlite3.Error as e:
            raise IndexUnavailable(f"index {self.path}: {name}: {e}") from e

    def _write(self, name: str, **params: Any) -> list[dict]:
        with self.conn:
            return self._rows(name, **params)

    @staticmethod
    def _now(now: float | None) -> tuple[float, str]:
        now = time.time() if now is None else now
        return now, now_rfc3339(now)

    # -- ingest -----------------------------------------------------------------------------

    def known(self, ids: list[str]) -> dict[str, dict]:
        return {r["id"]: r for r in self._rows("known", ids=json.dumps(ids))}

    def insert_jobs(self, jobs: Iterable[dict], now: float | None = None) -> int:
        """Insert ingested jobs (dicts with the insert_job parameters) in one transaction."""
        now, now_iso = self._now(now)
        n = 0
        with self.conn:
            for job in jobs:
                n += self.conn.execute(QUERIES["insert_job"],
                                       {**job, "now": now, "now_iso": now_iso}).rowcount
        return n

    def quarantine(self, key: str, reason: str, size: int | None, now: float | None = None):
        _, now_iso = self._now(now)
        self._write("insert_quarantine", key=key, reason=reason, size=size, now_iso=now_iso)

    # -- claim and complete -----------------------------------------------------------------

    def claim(self, queues: tuple[str, ...], n: int, owner: str, lease: float,
              now: float | None = None) -> list[dict]:
        """Claim up to ``n`` runnable jobs in queue order, priority, then FIFO."""
        now, now_iso = self._now(now)
        with self.conn:
            rows = self._rows("claim", queues=json.dumps(list(queues)), n=n, owner=owner,
                              lease_until=now + lease, now=now, now_iso=now_iso)
            for r in rows:
                self.conn.execute(QUERIES["insert_attempt"], {
                    "id": r["id"], "attempt": r["attempts"], "owner": owner, "now_iso": now_iso})
        order = {q: i for i, q in enumerate(queues)}
        return sorted(rows, key=lambda r: (order[r["queue"]], r["id"]))

    def finish(self, job_id: str, attempt: int, owner: str, outcome: str, *,
               result: str | None = None, error: dict | None = None,
               run_at: float | None = None, now: float | None = None) -> bool:
        """Record an attempt's outcome: ``succeeded``, ``retry`` (at ``run_at``), ``failed``, or
        ``snooze`` (at ``run_at``, giving the attempt back).

        Returns False when the attempt is stale (the job was reaped and claimed again): its
        outcome is then ignored, fenced by (id, attempt, owner).
        """
        now, now_iso = self._now(now)
        if error:  # a handler's message may hold lone surrogates, which SQLite cannot store
            error = {k: _text(v) for k, v in error.items()}
        error_json = json.dumps(error) if error else None
        with self.conn:
            query = {"succeeded": "succeed", "retry": "retry", "failed": "fail",
                     "snooze": "snooze"}[outcome]
            done = self._rows(query, id=job_id,
                              attempt=attempt, owner=owner, result=result, error=error_json,
                              run_at=run_at, now_iso=now_iso)
            if done:
                error = error or {}
                self.conn.execute(QUERIES["end_attempt"], {
                    "id": job_id, "attempt": attempt, "now_iso": now_iso, "outcome": outcome,
                    "error_type": error.get("type"), "message": error.get("message"),
                    "traceback": error.get("traceback")})
        return bool(done)

    def heartbeat(self, owner: str, lease: float, now: float | None = None) -> None:
        now, _ = self._now(now)
        self._write("heartbeat", owner=owner, lease_until=now + lease)

    def running_owners(self) -> list[str]:
        return [r["owner"] for r in self._rows("running_owners") if r["owner"]]

    def reap(self, dead_owners: list[str], alive_owners: list[str] = (),
             now: float | None = None) -> list[dict]:
        """Requeue (or fail, when out of attempts) jobs whose owner died, or whose lease
        expired unless their owner is a process on this host known to be alive."""
        now, now_iso = self._now(now)
        with self.conn:
            rows = self._rows("reap", dead=json.dumps(dead_owners),
                              alive=json.dumps(list(alive_owners)), now=now, now_iso=now_iso)
            for r in rows:
                self.conn.execute(QUERIES["lost_attempt"], {
                    "id": r["id"], "attempt": r["attempts"], "now_iso": now_iso,
                    "message": json.loads(r["error"])["message"]})
        return rows

    # -- publish ----------------------------------------------------------------------------

    def unpublished(self, n: int = 1000, exclude: list[str] = ()) -> list[dict]:
        """Terminal jobs not yet acknowledged, except ``exclude`` (results already written)."""
        jobs = self._rows("unpublished", n=n, exclude=json.dumps(list(exclude)))
        if jobs:
            attempts: dict[str, list[dict]] = {}
            for a in self._rows("attempts_of", ids=json.dumps([j["id"] for j in jobs])):
                attempts.setdefault(a["job_id"], []).append(a)
            for j in jobs:
                j["attempt_log"] = attempts.get(j["id"], [])
        return jobs

    def mark_published(self, ids: list[str]) -> None:
        self._write("mark_published", ids=json.dumps(ids))

    def restore(self, records: list[dict], now: float | None = None) -> int:
        """Insert terminal jobs from their results/ records (qlite reindex); known ids are
        left alone. Returns how many rows were added."""
        _, now_iso = self._now(now)
        added = 0
        with self.conn:
            for r in records:
                envelope = {"v": 1, "id": r["id"], "task": r["task"], "args": [], "kwargs": {},
                            "queue": r["queue"], "enqueued_at": r["enqueued_at"],
                            "meta": {"rebuilt_from": "results/"}}
                added += self.conn.execute(QUERIES["restore_job"], {
                    **r, "now_iso": now_iso, "envelope": json.dumps(envelope),
                    "inbox_key": f"inbox/{r['queue']}/{r['id']}.json",
                    "result": json.dumps(r.get("result")) if r["state"] == "succeeded" else None,
                    "error": json.dumps(r["error"]) if r.get("error") else None}).rowcount
                for e in r.get("errors") or []:
                    self.conn.execute(QUERIES["restore_attempt"], {
                        "id": r["id"], "outcome": "failed", **e})
        return added

    # -- reading ----------------------------------------------------------------------------

    def next_run_at(self, queues: tuple[str, ...]) -> float | None:
        return self._rows("next_run_at", queues=json.dumps(list(queues)))[0]["run_at"]

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self._rows("counts")}

    def list(self, state: str | None = None, queue: str | None = None,
             limit: int = 50) -> list[dict]:
        return self._rows("list", state=state, queue=queue, limit=limit)

    def get(self, job_id: str) -> dict | None:
        rows = self._rows("get", id=job_id)
        if not rows:
            return None
        job = rows[0]
        job["attempt_log"] = self._rows("attempts_of", ids=json.dumps([job_id]))
        return job

    def quarantined(self, limit: int = 50) -> list[dict]:
        return self._rows("quarantined", limit=limit)
