"""The qlite exception tree.

    QliteError                    every error qlite raises on purpose
    ├── ConfigError               a setting is missing or malformed
    ├── EnvelopeError             a job envelope is not valid (bad JSON, fields, size)
    │   └── PayloadTooLarge       the envelope exceeds the inline size limit
    ├── TaskError                 an app or task definition problem (unknown --app, bad name)
    ├── JobNotFound               no job with that id in results/ or inbox/
    ├── WaitTimeout               a job did not finish within the wait
    ├── JobFailed                 result() of a job that failed or was cancelled
    └── StorageError              the object store failed; wraps the cause
        ├── EndpointUnreachable   could not connect to the S3 endpoint
        ├── BucketNotFound        the bucket does not exist
        ├── AccessDenied          credentials missing, refused or lacking permission
        ├── ObjectNotFound        the key does not exist
        └── AlreadyExists         a conditional write (If-None-Match: *) lost

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


class StorageError(QliteError):
    """The object store request failed."""


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


class WaitTimeout(QliteError):
    """The job did not reach a terminal state in time."""


class JobFailed(QliteError):
    """The job failed or was cancelled; its error says why."""

    def __init__(self, message: str | None = None, status: dict | None = None) -> None:
        super().__init__(message)
        self.status = status or {}
