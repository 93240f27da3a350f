"""qlite: a background-job queue on S3-compatible object storage plus SQLite.

The producer API lives here and imports only the standard library (boto3 is imported when the
first request is made). The worker, the index and the CLI live in their own modules.
"""

import typing

from qlite.errors import (
    AccessDenied,
    AlreadyExists,
    BucketNotFound,
    ConfigError,
    DecryptError,
    EndpointUnreachable,
    EnvelopeError,
    Fail,
    IndexUnavailable,
    JobFailed,
    JobNotFound,
    JobStateError,
    ObjectNotFound,
    PayloadTooLarge,
    QliteError,
    Retry,
    SignatureError,
    Snooze,
    StorageError,
    TaskError,
    WaitTimeout,
)
from qlite.producer import Client, Group, Job

if typing.TYPE_CHECKING:
    from qlite.app import App, Task
    from qlite.webhook import verify_webhook

__version__ = "0.1.0"


def group(jobs: list, *, then: object = None, on_failure: object = None,
          key: str | None = None, url: str | None = None) -> Group:
    """``Client(url).group(...)``: fan out ``jobs``, then run ``then`` with their results."""
    return Client(url).group(jobs, then=then, on_failure=on_failure, key=key)

_LAZY = {"App": "qlite.app", "Task": "qlite.app", "verify_webhook": "qlite.webhook"}


def __getattr__(name: str) -> object:
    """``qlite.App``, ``qlite.Task``, ``qlite.verify_webhook``: loaded on first use, so that
    a producer's ``import qlite`` does not pay for the worker's side."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qlite' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "App",
    "BucketNotFound",
    "Client",
    "ConfigError",
    "DecryptError",
    "EndpointUnreachable",
    "EnvelopeError",
    "Fail",
    "Group",
    "IndexUnavailable",
    "Job",
    "JobFailed",
    "JobNotFound",
    "JobStateError",
    "ObjectNotFound",
    "PayloadTooLarge",
    "QliteError",
    "Retry",
    "SignatureError",
    "Snooze",
    "StorageError",
    "Task",
    "TaskError",
    "WaitTimeout",
    "__version__",
    "group",
    "verify_webhook",
]
