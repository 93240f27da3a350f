"""qlite: a background-job queue on S3-compatible object storage plus SQLite.

The producer API lives here and imports only the standard library (boto3 is imported when the
first request is made). The worker, the index and the CLI live in their own modules.
"""

from .app import App, Task
from .errors import (
    AccessDenied,
    AlreadyExists,
    BucketNotFound,
    ConfigError,
    EndpointUnreachable,
    EnvelopeError,
    JobFailed,
    JobNotFound,
    ObjectNotFound,
    PayloadTooLarge,
    QliteError,
    StorageError,
    TaskError,
    WaitTimeout,
)
from .producer import Client, Job

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "App",
    "BucketNotFound",
    "Client",
    "ConfigError",
    "EndpointUnreachable",
    "EnvelopeError",
    "Job",
    "JobFailed",
    "JobNotFound",
    "ObjectNotFound",
    "PayloadTooLarge",
    "QliteError",
    "StorageError",
    "Task",
    "TaskError",
    "WaitTimeout",
    "__version__",
]
