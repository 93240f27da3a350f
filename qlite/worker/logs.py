"""Worker logging: text or JSON lines with the stable job fields, and the capture of a
handler's own log lines, per job, to store with the job (``qlite logs ID``).

A line about a job carries ``job_id``, ``task``, ``queue`` and ``attempt``: the worker passes
them as ``extra=job_fields(claim)``; a handler's own lines get them from the job context that
``runner.run`` opens around the handler (a ``ContextVar``, so each handler thread, and each
child process, sees only its own job). Text puts them after the message as ``key=value``, JSON
as top-level keys next to ``ts``, ``level``, ``logger``, ``msg`` and ``exc``.

The capture keeps what the handler logs through ``logging`` (any logger, ``ctx.logger``
included) while its job context is open, bounded per attempt (``MAX_LINES`` lines,
``MAX_BYTES`` bytes, each line cut at ``MAX_LINE`` characters). Not captured: lines from
threads the handler starts itself (they do not inherit the context), and the S3 and HTTP
client libraries' lines (request logs carry signed headers). The values of secret-looking
environment variables and the passwords in URLs are replaced before a line is kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from qlite.index.rows import JobRow
from qlite.status import JobStatus

FIELDS = ("job_id", "task", "queue", "attempt")
MAX_LINES = 200  # captured lines per attempt
MAX_BYTES = 32 * 1024  # captured bytes per attempt (messages and tracebacks)
MAX_LINE = 4000  # characters kept of one message (with its traceback)
NOT_CAPTURED = ("botocore", "boto3", "s3transfer", "urllib3")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s/]+@")
_SECRET_NAME = re.compile(r"secret|token|password|passwd|key|credential", re.I)
_current: ContextVar[JobLog | None] = ContextVar("qlite_job", default=None)


def job_fields(claim: Any) -> dict[str, Any]:
    """The stable fields of a log line about ``claim`` (an execute.Claim or an index row)."""
    if isinstance(claim, JobRow):
        return {"job_id": claim.id, "task": claim.task, "queue": claim.queue,
                "attempt": claim.attempts}
    return {"job_id": claim.id, "task": claim.task, "queue": claim.queue,
            "attempt": claim.attempt}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``2026-11-26 10:00:00,123 INFO qlite.worker.loop: job started job_id=... task=...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        head, sep, tail = text.partition("\n")  # fields go on the message line, not the trace
        fields = " ".join(f"{k}={v}" for k, v in _extras(record).items()
                          if f"{k}=" not in head)
        return f"{head} {fields}{sep}{tail}" if fields else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the fields, exc (a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": _iso(record.created), "level": record.levelname,
                                "logger": record.name, "msg": record.getMessage()}
        for k, v in _extras(record).items():
            line.setdefault(k, v)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class JobFields(logging.Filter):
    """Adds the current job's fields to a line logged inside a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = _current.get()
        if job is not None:
            for k, v in job.fields.items():
                if not hasattr(record, k):
                    setattr(record, k, v)
        return True


class JobLog:
    """The lines one attempt logged, bounded."""

    def __init__(self, fields: dict[str, Any]):
        self.fields = fields
        self.lines: list[dict] = []
        self.size = 0
        self.dropped = 0
        self.lock = threading.Lock()

    def add(self, record: logging.LogRecord, scrub: Any) -> None:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + logging.Formatter().formatException(record.exc_info)
        msg = scrub(msg)[:MAX_LINE]
        line = {"ts": _iso(record.created), "level": record.levelname, "logger": record.name,
                "msg": msg}
        size = len(msg.encode("utf-8", "replace")) + 64
        with self.lock:
            if len(self.lines) >= MAX_LINES or self.size + size > MAX_BYTES:
                self.dropped += 1
                return
            self.lines.append(line)
            self.size += size

    def result(self) -> list[dict]:
        if not self.dropped:
            return list(self.lines)
        return [*self.lines, {"ts": _iso(time.time()), "level": "WARNING", "logger": "qlite",
                              "msg": f"{self.dropped} more line(s) not kept (at most "
                                     f"{MAX_LINES} lines or {MAX_BYTES // 1024} KiB per "
                                     "attempt)"}]


class CaptureHandler(logging.Handler):
    """Keeps each line logged inside a job context in that job's JobLog."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets = _secret_values(os.environ)

    def emit(self, record: logging.LogRecord) -> None:
        job = _current.get()
        if job is None or record.name.startswith(NOT_CAPTURED):
            return
        try:
            job.add(record, self.scrub)
        except Exception:  # a log line must never fail the job
            self.handleError(record)

    def scrub(self, text: str) -> str:
        text = _URL_PASSWORD.sub(r"\1[redacted]@", text)
        for value in self.secrets:
            text = text.replace(value, "[redacted]")
        return text


def _secret_values(env: Any) -> list[str]:
    """Values of secret-looking variables (AWS_SECRET_ACCESS_KEY, QLITE_WEBHOOK_SECRET, ...)
    and passwords in URL-valued ones (QLITE_SMTP_URL), longest first."""
    values = set()
    for name, value in env.items():
        if _SECRET_NAME.search(name) and len(value) >= 6:
            values.add(value)
        for m in re.finditer(r"://[^:/@\s]+:([^@\s/]+)@", value):
            if len(m.group(1)) >= 4:
                values.add(m.group(1))
    return sorted(values, key=len, reverse=True)


@contextmanager
def job_context(claim: Any) -> Iterator[JobLog]:
    """Open ``claim``'s job context in this thread: lines logged inside carry its fields and
    are kept in the JobLog yielded."""
    install_capture()
    job = JobLog(job_fields(claim))
    token = _current.set(job)
    try:
        yield job
    finally:
        _current.reset(token)


_install_lock = threading.Lock()


def install_capture() -> None:
    """Put the capture handler (once) on the root logger."""
    root = logging.getLogger()
    if any(isinstance(h, CaptureHandler) for h in root.handlers):
        return
    with _install_lock:
        if not any(isinstance(h, CaptureHandler) for h in root.handlers):
            root.addHandler(CaptureHandler())


def setup(level: str = "INFO", fmt: str = "text", stream: Any = None) -> None:
    """Configure the worker's logging: ``fmt`` text or json lines on stderr at ``level``,
    with the job fields, and the per-job capture. Replaces what an earlier call set up."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "qlite", False)]:
        root.removeHandler(h)
    out = logging.StreamHandler(stream or sys.stderr)
    out.qlite = True  # type: ignore[attr-defined]
    out.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    out.addFilter(JobFields())
    root.addHandler(out)
    root.setLevel(level)
    install_capture()
    for noisy in NOT_CAPTURED:  # their DEBUG lines hold request details; WARNING is enough
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def attempts_of(job: JobRow | None = None, record: JobStatus | None = None) -> list[dict]:
    """A job's captured lines per attempt, from its index row (``Index.get``) or, away from
    the worker VM, its results/ record: [{attempt, outcome, started_at, finished_at, lines}]."""
    if job is not None:
        return [{"attempt": a.attempt, "outcome": a.outcome, "started_at": a.started_at,
                 "finished_at": a.finished_at, "lines": a.logs or []}
                for a in job.attempt_log]
    return [{"attempt": a["attempt"], "outcome": None, "started_at": None, "finished_at": None,
             "lines": a["lines"]} for a in (record.logs if record is not None else [])]


def render(attempts: list[dict]) -> str:
    out = []
    for a in attempts:
        when = f"  started={a['started_at']} finished={a['finished_at'] or '-'}" \
            if a["started_at"] else ""
        out.append(f"attempt {a['attempt']}: {a['outcome'] or 'finished'}{when}"
                   if a["outcome"] or a["started_at"] else f"attempt {a['attempt']}:")
        if not a["lines"]:
            out.append("  (no log lines)")
        for line in a["lines"]:
            msg = line["msg"].rstrip().replace("\n", "\n    ")
            out.append(f"  {line['ts']} {line['level']} {line['logger']}: {msg}")
    return "\n".join(out)
