"""Run one claimed job's handler and describe what happened, as an Outcome.

Runs on a handler thread (or in a job's child process); never touches SQLite. S3 only for a
claim-checked payload and what the handler asks for (ctx.progress, ctx.checkpoint,
ctx.resume: progress.py). The worker's loop turns the Outcome into one index transition.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from qlite.app import App
from qlite.errors import Fail, Retry, Snooze
from qlite.worker.progress import Progress
from qlite.worker.retry import retryable


@dataclass(frozen=True)
class Claim:
    id: str
    task: str
    queue: str
    attempt: int
    max_attempts: int
    envelope: dict
    enqueued_at: str
    # The worker of each attempt so far, this one last (liveness.owner_id); the earlier ones
    # are looked up only for a job whose envelope has record_start (qlite.django).
    workers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    # "succeeded"; "error" (retry if attempts are left); "failed" (no retry); "snooze" (run
    # again after ``delay`` without spending the attempt)
    state: str
    result: str | None = None  # JSON text
    error: dict | None = None  # {type, message, traceback}
    delay: float | None = None  # seconds before the next attempt, when the handler named it
    logs: list | None = None  # the handler's own log lines (logs.JobLog.result())
    progress: dict | None = None  # the last ctx.progress of the attempt, if any
    checkpointed: bool = False  # the job has a checkpoint in the bucket (ctx.checkpoint)


@dataclass
class Context:
    """What a handler that takes a ``ctx`` parameter receives."""
    job_id: str
    task: str
    queue: str
    attempt: int
    max_attempts: int
    enqueued_at: str
    logger: logging.Logger
    client: Any = None
    meta: dict = field(default_factory=dict)  # the envelope's meta (periodic: schedule, tick)
    cancel_event: threading.Event | None = None
    tracker: Progress | None = None
    workers: tuple[str, ...] = ()  # Claim.workers

    @property
    def worker(self) -> str:
        """The id of the worker running this attempt (``host:pid:start``)."""
        return self.workers[-1] if self.workers else ""

    @property
    def cancelled(self) -> bool:
        """True once ``qlite cancel`` was requested for this job: stop early, and the job
        ends cancelled (unless the handler returns successfully)."""
        return self.cancel_event is not None and self.cancel_event.is_set()

    def put(self, task: Any, args: Any = (), kwargs: dict | None = None, **options: Any) -> Any:
        """Enqueue a follow-up job from inside a handler."""
        return self.client.put(task, args, kwargs, **options)

    def progress(self, done: float, total: float | None = None,
                 message: str | None = None) -> None:
        """Report how far the job is: ``done`` of ``total`` units (numbers >= 0). Cheap to
        call often: writes to the bucket are coalesced (QLITE_PROGRESS_EVERY)."""
        self._tracker().report(done, total, message)

    def checkpoint(self, state: Any) -> None:
        """Store ``state`` (small JSON) in the bucket now; when this job runs again (a crash,
        a deploy, a retry, another worker) ``ctx.resume`` holds it."""
        self._tracker().checkpoint(state)

    @property
    def resume(self) -> Any:
        """The state of this job's last ``ctx.checkpoint`` (None: none yet). Read from the
        bucket on first use."""
        return self._tracker().resume()

    def _tracker(self) -> Progress:
        if self.tracker is None:  # a Context made by hand (tests of a handler)
            raise RuntimeError("this ctx has no progress tracker: run the task through a "
                               "worker (or qlite.testing) to use progress and checkpoints")
        return self.tracker


def _error(kind: str, message: str, tb: str | None = None) -> dict:
    return {"type": kind, "message": _escaped(message), "traceback": _escaped(tb)}


def _escaped(text: str | None) -> str | None:
    """``text`` with lone surrogates (a file name os.listdir could not decode) escaped as
    ``\\udcff``: they cannot be encoded, so neither stored, sent, nor logged safely."""
    return text if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _payload(claim: Claim, client: Any) -> tuple[list, dict] | Outcome:
    """The arguments of a claim-checked job, from their own object."""
    from qlite.envelope import loads_strict
    from qlite.errors import EnvelopeError, ObjectNotFound, SignatureError
    from qlite.signing import METADATA, verify

    ref = claim.envelope["payload_ref"]
    try:
        raw, meta = client.store.get_with_metadata(ref)
        keyring = getattr(client, "keyring", None)
        if keyring is not None:  # signed like the envelope that names it
            verify(raw, meta.get(METADATA), keyring)
        payload = loads_strict(raw, "payload")
    except SignatureError as e:
        return Outcome("failed", error=_error("BadSignature", f"{ref}: {e}"))
    except ObjectNotFound:
        return Outcome("failed", error=_error("PayloadMissing", f"{ref} does not exist (deleted "
                                              "by hand, or by a purge)"))
    except EnvelopeError as e:
        return Outcome("failed", error=_error("BadPayload", f"{ref}: {e}"))
    except Exception as e:  # the store failed: the attempt is retried
        return Outcome("error", error=_error(type(e).__name__, f"reading {ref}: {e}"))
    if not (isinstance(payload, dict) and isinstance(payload.get("args"), list)
            and isinstance(payload.get("kwargs"), dict)):
        return Outcome("failed", error=_error("BadPayload", f"{ref}: expected an object with "
                                              "'args' (array) and 'kwargs' (object)"))
    return list(payload["args"]), dict(payload["kwargs"])


def _open_args(claim: Claim, client: Any) -> tuple[list, dict] | Outcome:
    from qlite.crypto import open_sealed
    from qlite.errors import DecryptError

    try:
        value = open_sealed(getattr(client, "cipher", None), claim.id, "args",
                            claim.envelope["sealed"])
    except DecryptError as e:
        return Outcome("failed", error=_error("DecryptError", str(e)))
    if not (isinstance(value, dict) and isinstance(value.get("args"), list)
            and isinstance(value.get("kwargs"), dict)):
        return Outcome("failed", error=_error("BadPayload", f"job {claim.id}: the sealed "
                                              "arguments are not {'args': [...], 'kwargs': {}}"))
    return value["args"], value["kwargs"]


def seal_result(outcome: Outcome, job_id: str, cipher: Any) -> Outcome:
    """The outcome with its result and a handler's error message sealed
    (QLITE_ENCRYPTION_KEY): the index, its replica and results/ then hold only ciphertext."""
    if cipher is None:
        return outcome
    from qlite.crypto import SEALED, seal, seal_error

    if outcome.error is not None and outcome.error.get("traceback") is not None:
        # raised by the handler: its message may quote the arguments (qlite's own have none)
        outcome = replace(outcome, error=seal_error(cipher, job_id, outcome.error))
    if outcome.result is None:
        return outcome
    sealed = seal(cipher, job_id, "result", json.loads(outcome.result))
    return replace(outcome, result=json.dumps({SEALED: sealed}))


def run(app: App, claim: Claim, client: Any = None,
        cancel: threading.Event | None = None, progress_every: float = 5.0,
        on_progress: Callable[[str, int, dict], None] | None = None) -> Outcome:
    """Run the handler inside the job's log context: its log lines carry the job's fields and
    come back in ``Outcome.logs``; its last ``ctx.progress`` comes back in
    ``Outcome.progress``. ``on_progress(job_id, attempt, progress)`` sees every report."""
    from qlite.worker.logs import job_context

    tracker = Progress(getattr(client, "store", None), claim.id, claim.attempt, progress_every,
                       on_change=None if on_progress is None else
                       (lambda p: on_progress(claim.id, claim.attempt, p)),
                       cipher=getattr(client, "cipher", None))
    with job_context(claim) as captured:
        outcome = _run(app, claim, client, cancel, tracker)
    tracker.flush()
    outcome = seal_result(outcome, claim.id, getattr(client, "cipher", None))
    lines = captured.result()
    if not lines and tracker.latest is None and not tracker.checkpointed:
        return outcome  # a plain outcome (most quick jobs): nothing to add
    return replace(outcome, logs=lines or None, progress=tracker.latest,
                   checkpointed=tracker.checkpointed)


# Argument shapes (signature, number of positional arguments, keyword names) known to bind:
# whether arguments bind to a handler depends on their shape only, not on their values. The
# signature is kept as the value, so its id stays its own while the entry lives.
_BOUND: dict[tuple[int, int, tuple[str, ...]], inspect.Signature] = {}
_BOUND_MAX = 4096  # shapes remembered at most (they come from producers)


def _bind(task: Any, args: list, kwargs: dict) -> None:
    """Check that ``args`` and ``kwargs`` bind to the task's signature (TypeError if not)
    before the handler runs; a shape already seen is not checked again."""
    signature = task.signature
    shape = (id(signature), len(args), tuple(kwargs))
    if _BOUND.get(shape) is signature:
        return
    signature.bind(*args, **kwargs)
    if len(_BOUND) >= _BOUND_MAX:
        _BOUND.clear()
    _BOUND[shape] = signature


def _run(app: App, claim: Claim, client: Any, cancel: threading.Event | None,
         tracker: Progress) -> Outcome:
    task = app.tasks.get(claim.task)
    if task is None:
        names = ", ".join(sorted(app.tasks)) or "none"
        return Outcome("failed", error=_error(
            "UnknownTask", f"unknown task {claim.task!r}: this worker's app registers: {names}"))
    args, kwargs = list(claim.envelope["args"]), dict(claim.envelope["kwargs"])
    if claim.envelope.get("payload_ref"):
        loaded = _payload(claim, client)
        if isinstance(loaded, Outcome):
            return loaded
        args, kwargs = loaded
    if claim.envelope.get("sealed") is not None:  # QLITE_ENCRYPTION_KEY (docs/encryption.md)
        opened = _open_args(claim, client)
        if isinstance(opened, Outcome):
            return opened
        args, kwargs = opened
    if task.wants_ctx:
        ctx = Context(claim.id, claim.task, claim.queue, claim.attempt, claim.max_attempts,
                      claim.enqueued_at,
                      logging.getLogger(f"qlite.task.{claim.task}"), client,
                      dict(claim.envelope.get("meta") or {}), cancel, tracker, claim.workers)
        if task.ctx_first:
            args.insert(0, ctx)
        else:
            kwargs["ctx"] = ctx
    try:
        _bind(task, args, kwargs)
    except TypeError as e:
        return Outcome("failed", error=_error(
            "BadArguments", f"{claim.task} cannot take args={claim.envelope['args']!r:.200} "
            f"kwargs={claim.envelope['kwargs']!r:.200}: {e}"))
    try:
        value = task.fn(*args, **kwargs)
    except Snooze as e:
        return Outcome("snooze", delay=e.after)
    except Exception as e:
        kind = f"{type(e).__module__}.{type(e).__qualname__}".removeprefix("builtins.")
        error = _error(kind.removeprefix("qlite.errors."), str(e), traceback.format_exc())
        if isinstance(e, Retry):
            return Outcome("error", error=error, delay=e.after)
        if isinstance(e, Fail) or not retryable(e, task.retry_on, task.give_up_on):
            return Outcome("failed", error=error)
        return Outcome("error", error=error)
    if value is None:
        return Outcome("succeeded", result="null")
    try:
        result = json.dumps(value, ensure_ascii=False, allow_nan=False)
        result.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as e:
        return Outcome("failed", error=_error(
            "ResultNotJSON", f"{claim.task} returned a {type(value).__name__}, which is not "
            f"JSON-serialisable ({e}). Try: return lists, dicts, strings, numbers, bools, None"))
    return Outcome("succeeded", result=result)
