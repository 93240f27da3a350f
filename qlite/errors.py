"""The qlite exception tree.

    QliteError                    every error qlite raises on purpose
    ├── ConfigError               a setting is missing or malformed
    ├── EnvelopeError             a job envelope is not valid (bad JSON, fields, size)
    │   └── PayloadTooLarge       the envelope exceeds the inline size limit
    ├── TaskError                 an app or task definition problem (unknown --app, bad name)
    ├── JobNotFound               no job with that id in results/ or inbox/
    ├── WaitTimeout               a job did not finish within the wait
    ├── IndexUnavailable          the SQLite index cannot be opened or used
    ├── JobFailed                 result() of a job that failed or was cancelled
    ├── JobStateError             cancel of a finished job, retry of one that did not fail
    ├── SignatureError            an inbox object is unsigned or its signature does not verify
    ├── DecryptError              a sealed field cannot be opened (no key, wrong key, tampered)
    └── StorageError              the object store failed; wraps the cause
        ├── EndpointUnreachable   could not connect to the S3 endpoint
        ├── BucketNotFound        the bucket does not exist
        ├── AccessDenied          credentials missing, refused or lacking permission
        ├── ObjectNotFound        the key does not exist
        └── AlreadyExists         a conditional write (If-None-Match: *) lost

Handlers steer their own job with Retry, Snooze and Fail (plain Exceptions, not QliteErrors).

An exception's docstring is its default message. Every message names the value, the problem
and, where there is one, the fix, so the CLI can print it on one line as ``Error: ...``.
"""

from __future__ import annotations


class QliteError(Exception):
    """qlite failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(QliteError):
    """A qlite setting is missing or malformed."""


class EnvelopeError(QliteError):
    """The job envelope is not valid."""


class PayloadTooLarge(EnvelopeError):
    """The job envelope is larger than the inline size limit."""


class TaskError(QliteError):
    """The task or app definition is not usable."""


class JobNotFound(QliteError):
    """No job with that id exists in results/ or inbox/."""


class IndexUnavailable(QliteError):
    """The worker's SQLite index cannot be opened or used."""


class StorageError(QliteError):
    """The object store request failed."""

    code = ""  # the server's error code ("AccessDenied", "NotImplemented", "412"), when known


class EndpointUnreachable(StorageError):
    """Could not connect to the S3 endpoint."""


class BucketNotFound(StorageError):
    """The bucket does not exist."""


class AccessDenied(StorageError):
    """The S3 endpoint refused the credentials or the request."""


class ObjectNotFound(StorageError):
    """The object does not exist."""


class AlreadyExists(StorageError):
    """The object already exists (conditional write refused)."""


class SignatureError(QliteError):
    """The object is unsigned, or its signature does not verify with the signing keys."""


class DecryptError(QliteError):
    """A sealed field cannot be decrypted: no key, an unknown key id, or tampered with."""


class WaitTimeout(QliteError):
    """The job did not reach a terminal state in time."""


class JobFailed(QliteError):
    """The job failed or was cancelled; its error says why."""

    def __init__(self, message: str | None = None, status: dict | None = None) -> None:
        super().__init__(message)
        self.status = status or {}


class JobStateError(QliteError):
    """The job's state does not allow this (cancel a finished job, retry a succeeded one)."""


# Raised by handlers to steer their own job. Not errors of qlite, so not QliteErrors.


class Retry(Exception):  # noqa: N818 - a signal, named for what the handler asks
    """Run this job again after ``after`` seconds (or the task's back-off); spends an attempt.

    Raise it to honour a server's Retry-After without sleeping in a worker slot.
    """

    def __init__(self, message: str = "retry requested", *, after: float | None = None):
        super().__init__(message)
        self.after = _seconds("Retry", after)


class Snooze(Exception):  # noqa: N818
    """Run this job again after ``after`` seconds without spending an attempt."""

    def __init__(self, after: float, message: str = "snoozed"):
        super().__init__(message)
        self.after = _seconds("Snooze", after)


class Fail(Exception):  # noqa: N818
    """Fail this job now, whatever attempts are left."""


def _seconds(what: str, value: float | None) -> float | None:
    if value is not None and (not isinstance(value, int | float) or not 0 <= value < 1e9):
        raise ValueError(f"{what}(after=...): expected seconds >= 0 (got {value!r})")
    return value
