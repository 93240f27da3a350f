"""``qlite.django.QliteBackend``: enqueue = one PutObject of an envelope; get_result = the
job's status from the bucket (``results/``, or the inbox while it waits)."""

from __future__ import annotations

import builtins
import json
import os
import threading
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from qlite import envelope, errors
from qlite.django.compat import (
    BaseTaskBackend,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    normalize_json,
    task_enqueued,
)
from qlite.errors import JobNotFound
from qlite.status import JobStatus

# Django makes a backend per thread (per request under runserver and threaded servers): the
# S3 client, some 0.2 s to build, and the project's tasks are shared by every backend.
_clients: dict[tuple, Any] = {}
_tasks: dict[str, Any] = {}
_lock = threading.Lock()

STATUS = {"pending": "READY", "queued": "READY", "scheduled": "READY", "running": "RUNNING",
          "succeeded": "SUCCESSFUL", "failed": "FAILED", "cancelled": "FAILED"}


class QliteBackend(BaseTaskBackend):
    """``OPTIONS``: ``url`` (default QLITE_URL), ``endpoint_url`` (default
    AWS_ENDPOINT_URL_S3), ``max_attempts`` (default: the worker's, 3)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        for q in self.queues:
            if not isinstance(q, str) or not envelope.QUEUE_RE.match(q):
                raise ImproperlyConfigured(
                    f"TASKS[{alias!r}]['QUEUES']: {q!r} is not a valid qlite queue name "
                    "(letters, digits, '_', '-', '.'; at most 64)")
        unknown = set(self.options) - {"url", "endpoint_url", "max_attempts"}
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']: unknown option(s) {sorted(unknown)}. "
                "Try: url, endpoint_url, max_attempts")
        self.max_attempts = self.options.get("max_attempts")

    @property
    def client(self) -> Any:
        """The qlite Client of this configuration, built once per process."""
        url = self.options.get("url") or os.environ.get("QLITE_URL")
        endpoint = self.options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3")
        key = (url, endpoint, os.environ.get("QLITE_SIGNING_KEY"))
        with _lock:
            if key not in _clients:
                from qlite.producer import Client

                _clients[key] = Client(url, endpoint_url=endpoint)
            return _clients[key]

    def connect(self) -> None:
        """Build the S3 client now, without sending a request: importing boto3 and loading its
        models take some 0.5 s, which the first enqueue of a process would otherwise pay. Call
        it where the web process starts (wsgi.py)."""
        self.client.store.client  # noqa: B018 - the property builds it

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        self.validate_task(task)
        # TypeError for what JSON cannot hold, as Django's own backends raise.
        args, kwargs = normalize_json(list(args)), normalize_json(dict(kwargs))
        run_after = task.run_after
        if run_after is not None and timezone.is_naive(run_after):  # USE_TZ = False
            run_after = timezone.make_aware(run_after)
        job = self.client.put(task.module_path, args, kwargs, queue=task.queue_name,
                              priority=task.priority or None, at=run_after,
                              max_attempts=self.max_attempts,
                              # results/ repeats the arguments: get_result returns them
                              meta={"record_args": True},
                              # a running record when each attempt starts: RUNNING
                              record_start=True)
        result = TaskResult(task=task, id=job.id, status=TaskResultStatus.READY,
                            enqueued_at=id_time(job.id), started_at=None, finished_at=None,
                            last_attempted_at=None, args=args, kwargs=kwargs,
                            backend=self.alias, errors=[], worker_ids=[])
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> Any:
        try:
            status = self.client.job_status(result_id)
        except JobNotFound:
            raise TaskResultDoesNotExist(result_id) from None
        return self.result_from(status)

    def result_from(self, status: JobStatus) -> Any:
        """A TaskResult from a qlite status record (``Client.job_status``)."""
        task = self.task_named(status.task or "")
        if task is None:
            raise TaskResultDoesNotExist(
                f"job {status.id} runs {status.task!r}, which is not a django.tasks "
                "Task defined in an installed app of this project")
        args, kwargs = self._arguments(status)
        state = status.state
        errs = list(status.errors)
        if state in ("failed", "cancelled") and status.error and not errs:
            errs = [status.error]  # failed without running: cancelled, expired, refused
        attempts = status.attempts or 0
        started = _time(status.started_at)
        finished = _time(status.finished_at)
        last = max([t for t in [started, *(_time(e.get("at")) for e in errs)] if t],
                   default=None)
        result = TaskResult(
            task=task, id=status.id, status=TaskResultStatus[STATUS[state]],
            enqueued_at=_time(status.enqueued_at), started_at=started,
            finished_at=finished, last_attempted_at=last, args=args, kwargs=kwargs,
            backend=self.alias,
            errors=[TaskError(exception_class_path=class_path(e.get("type") or "Exception"),
                              traceback=_trace(e)) for e in errs],
            worker_ids=worker_ids(status.workers, attempts))
        if state == "succeeded":
            object.__setattr__(result, "_return_value", status.result)
        return result

    def task_named(self, path: str) -> Any:
        """The project's Task with this module path (None if there is none)."""
        from qlite.django.registry import discover

        with _lock:
            if path not in _tasks:
                _tasks.update(discover())
            return _tasks.get(path)

    def _arguments(self, status: JobStatus) -> tuple[list, dict]:
        if isinstance(status.args, list):  # the result record repeats them
            return status.args, status.kwargs or {}
        raw = self.client.pending_envelope(status.queue or "", status.id)
        try:
            env = json.loads(raw) if raw is not None else {}
            return list(env.get("args", [])), dict(env.get("kwargs", {}))
        except (ValueError, TypeError, AttributeError):
            return [], {}


def worker_ids(workers: list | tuple | None, attempts: int) -> list[str]:
    """The worker of each attempt from the record's ``workers`` (``host:pid:start``), one
    entry per attempt (Django's ``TaskResult.attempts`` is their number): an attempt the
    record has no worker for (a record from before qlite wrote them, or rebuilt by qlite
    reindex) is ``"unknown"``."""
    known = [w if isinstance(w, str) and w else "unknown"
             for w in (workers or [])][:attempts]
    return ["unknown"] * (attempts - len(known)) + known


def class_path(kind: str) -> str:
    """qlite's error type to an importable exception class path, for ``TaskError``:
    'ValueError' is builtins.ValueError, 'Retry' is qlite.errors.Retry, 'app.errors.Boom' (a
    handler's own) stays; qlite's own kinds of failure that are no exception class
    ('Cancelled', 'Expired', 'UnknownTask', 'Timeout', ...) are qlite.errors.JobFailed, the
    kind then leading the traceback text (``_trace``)."""
    if "." in kind:
        return kind
    for module, name in ((builtins, "builtins"), (errors, "qlite.errors")):
        found = getattr(module, kind, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            return f"{name}.{kind}"
    return "qlite.errors.JobFailed"


def _trace(error: dict) -> str:
    """The traceback of a failed attempt; for a failure qlite itself saw (no traceback: a
    cancel, an expiry, a timeout, a refused task), its kind and message."""
    if error.get("traceback"):
        return str(error["traceback"])
    return f"{error.get('type') or 'Error'}: {error.get('message') or ''}"


def id_time(job_id: str) -> datetime:
    """The time in a UUIDv7 job id (its first 48 bits, in ms): the envelope's ``enqueued_at``,
    so the result of enqueue equals what get_result reads back."""
    ms = int(job_id.replace("-", "")[:12], 16)
    return datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)


def _time(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) and text else None
