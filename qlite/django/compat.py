"""Django's tasks API from wherever this project has it: ``django.tasks`` (Django >= 6.0) or
the ``django-tasks`` backport (``django_tasks``, Django 5.2). The backport wins when it is in
INSTALLED_APPS, since the project's ``@task`` objects then come from it."""

from __future__ import annotations

import importlib
from typing import Any


def _api_root() -> str:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        if "django_tasks" in settings.INSTALLED_APPS:
            return "django_tasks"
    except ImproperlyConfigured:  # no settings yet: whichever API is installed
        pass
    try:
        importlib.import_module("django.tasks")
        return "django.tasks"
    except ImportError:
        pass
    try:
        importlib.import_module("django_tasks")
        return "django_tasks"
    except ImportError:
        raise ImportError("qlite.django needs django.tasks (Django >= 6.0) or the django-tasks "
                          "backport. Try: pip install 'qlite[django]'") from None


ROOT = _api_root()
_api = importlib.import_module(ROOT)
_base = importlib.import_module(f"{ROOT}.base")
_signals = importlib.import_module(f"{ROOT}.signals")
_exceptions = importlib.import_module(f"{ROOT}.exceptions")

BaseTaskBackend: Any = importlib.import_module(f"{ROOT}.backends.base").BaseTaskBackend
Task: Any = _base.Task
TaskContext: Any = _base.TaskContext
TaskError: Any = _base.TaskError
TaskResult: Any = _base.TaskResult
TaskResultStatus: Any = _base.TaskResultStatus
task_backends: Any = _api.task_backends
task_enqueued: Any = _signals.task_enqueued
task_started: Any = _signals.task_started
task_finished: Any = _signals.task_finished
TaskResultDoesNotExist: Any = _exceptions.TaskResultDoesNotExist
# Django 6 renamed the backport's InvalidTaskError to InvalidTask.
InvalidTask: Any = getattr(_exceptions, "InvalidTask", None) or _exceptions.InvalidTaskError


def normalize_json(value: Any) -> Any:
    """Django's own normalisation of arguments and return values (tuples to lists, ...)."""
    try:
        from django.utils.json import normalize_json as normalize
    except ImportError:
        from django_tasks.utils import normalize_json as normalize
    return normalize(value)
