"""Django's tasks framework on qlite: ``TASKS = {"default": {"BACKEND":
"qlite.django.QliteBackend", ...}}`` and ``"qlite.django"`` in INSTALLED_APPS (for the
``qlite_worker`` management command). See docs/django.md.

The producer side (enqueue, get_result) loads Django, the standard library and boto3 only.
"""

from typing import Any

__all__ = ["QliteBackend"]


def __getattr__(name: str) -> Any:
    # Lazy, so that listing the app in INSTALLED_APPS (and a worker's child process importing
    # qlite.django.worker) picks the tasks API only once settings are known.
    if name == "QliteBackend":
        from qlite.django.backend import QliteBackend

        return QliteBackend
    raise AttributeError(f"module 'qlite.django' has no attribute {name!r}")
