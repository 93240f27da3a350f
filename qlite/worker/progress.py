"""A running job's progress and checkpoints: what ``ctx.progress``, ``ctx.checkpoint`` and
``ctx.resume`` write and read (docs/long-jobs.md).

Progress is coalesced: the first report of an attempt is PUT at once, later ones at most once
per ``every`` seconds (QLITE_PROGRESS_EVERY), and a report left over at the end is PUT when the
handler returns, so ``results/{id}.progress.json`` ends with the last value. A failed progress
write is logged, never fatal: progress is a view. A checkpoint is PUT at once (the handler
relies on it) to ``checkpoints/{id}.json``, and a failed write raises. A job that uses neither
sends no request: ``ctx.resume`` is read on first use only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from qlite import envelope
from qlite.errors import TaskError

log = logging.getLogger(__name__)

MAX_CHECKPOINT = 256 * 1024  # bytes of JSON: a checkpoint is a cursor, not the data
MAX_MESSAGE = 500  # characters of a progress message kept


def _number(value: Any, name: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
            or value < 0 or value == float("inf"):
        raise TaskError(f"ctx.progress: {name} must be a number >= 0 (got {value!r})")
    return value


def rate_and_eta(first: dict | None, latest: dict) -> tuple[float | None, float | None]:
    """Units per second since the attempt's first report, and seconds left at that rate
    (None when unknown: one report so far, no total, or no headway)."""
    if not first or latest["t"] <= first["t"]:
        return None, None
    rate = (latest["done"] - first["done"]) / (latest["t"] - first["t"])
    if rate <= 0:
        return None, None
    total = latest.get("total")
    eta = max(0.0, (total - latest["done"]) / rate) if total is not None else None
    return round(rate, 3), None if eta is None else round(eta, 1)


class Progress:
    """One attempt's progress reports and checkpoints. Thread-safe: a handler may report from
    threads of its own."""

    def __init__(self, store: Any, job_id: str, attempt: int, every: float,
                 on_change: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, cipher: Any = None):
        self.cipher = cipher  # QLITE_ENCRYPTION_KEY: messages and checkpoints go sealed
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.every = every
        self.on_change = on_change
        self.clock = clock
        self.monotonic = monotonic
        self.latest: dict | None = None  # the public view: done, total, message, at, ...
        self._first: dict | None = None
        self._written_at: float | None = None
        self._dirty = False
        self._lock = threading.Lock()
        self._resume: Any = None
        self._resumed = False
        self.checkpointed = False  # a checkpoint of this job exists: delete it on success

    # -- progress ---------------------------------------------------------------------------

    def report(self, done: Any, total: Any = None, message: Any = None) -> None:
        done = _number(done, "done")
        if total is not None:
            total = _number(total, "total")
        sealed = None
        if message is not None:
            message = str(message)[:MAX_MESSAGE]
            if self.cipher is not None:  # the index, its replica and the bucket: ciphertext
                from qlite.crypto import seal

                message, sealed = None, seal(self.cipher, self.job_id, "progress", message)
        now = self.clock()
        with self._lock:
            point = {"done": done, "total": total, "t": now}
            if self._first is None:
                self._first = point
            rate, eta = rate_and_eta(self._first, point)
            self.latest = {"done": done, "total": total, "message": message,
                           "at": envelope.now_rfc3339(now), "attempt": self.attempt,
                           "rate": rate, "eta": eta}
            if sealed is not None:
                self.latest["sealed_message"] = sealed
            due = self._written_at is None or self.monotonic() - self._written_at >= self.every
            self._dirty = not due
            latest = self.latest
        if self.on_change is not None:
            self.on_change(latest)
        if due:
            self._write(latest)

    def flush(self) -> None:
        """PUT a report that the coalescing held back (the handler has returned)."""
        with self._lock:
            latest, self._dirty = (self.latest if self._dirty else None), False
        if latest is not None:
            self._write(latest)

    def _write(self, latest: dict) -> None:
        self._written_at = self.monotonic()
        body = json.dumps({"v": 1, "id": self.job_id, **latest}).encode()
        try:
            self.store.put(envelope.progress_key(self.job_id), body)
        except Exception as e:  # a view of the job, not the job: never fail it for this
            log.warning("progress write failed: %s: %s", type(e).__name__, e,
                        extra={"job_id": self.job_id})

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint(self, state: Any) -> None:
        try:
            record = {"v": 1, "id": self.job_id, "attempt": self.attempt,
                      "at": envelope.now_rfc3339(self.clock()), "state": state}
            if self.cipher is not None:
                from qlite.crypto import seal

                record["state"], record["sealed_state"] = None, seal(
                    self.cipher, self.job_id, "checkpoint", state)
            raw = json.dumps(record, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as e:
            raise TaskError(f"ctx.checkpoint: the state must be JSON ({e}). Try: a dict of "
                            "strings and numbers, e.g. {'row': 5000}") from None
        if len(raw) > MAX_CHECKPOINT:
            raise TaskError(f"ctx.checkpoint: the state is {len(raw)} bytes, over the "
                            f"{MAX_CHECKPOINT}-byte limit. Try: checkpoint a cursor (a row "
                            "number, a key) and keep the data itself in the bucket")
        self.store.put(envelope.checkpoint_key(self.job_id), raw)
        with self._lock:
            self._resume, self._resumed = state, True
            self.checkpointed = True

    def resume(self) -> Any:
        """The last checkpointed state of this job (any attempt, any worker), or None."""
        with self._lock:
            if self._resumed:
                return self._resume
        state = read_checkpoint(self.store, self.job_id, self.cipher)
        with self._lock:
            if not self._resumed:
                self._resume, self._resumed = state, True
                self.checkpointed = self.checkpointed or state is not None
            return self._resume


def read_checkpoint(store: Any, job_id: str, cipher: Any = None) -> Any:
    """The state of ``checkpoints/{job_id}.json`` (None: none). One that is not a checkpoint of
    this job is ignored with a warning, so the job starts afresh rather than from junk."""
    key = envelope.checkpoint_key(job_id)
    raw = store.get_or_none(key)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not (isinstance(record, dict) and record.get("id") == job_id and "state" in record):
        log.warning("%s is not a checkpoint of this job: starting afresh", key,
                    extra={"job_id": job_id})
        return None
    if record.get("sealed_state") is not None:  # raises DecryptError: the attempt fails
        from qlite.crypto import open_sealed

        return open_sealed(cipher, job_id, "checkpoint", record["sealed_state"])
    return record["state"]

