"""The qlite App of a Django project: one qlite task per django.tasks Task defined in an
installed app, named by its module path, running on a QliteBackend.

``qlite.django.worker:app`` is the App's ``--app`` name: child processes (tasks with a timeout,
``--pool process``) load it from there after ``django.setup()``.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from typing import Any

from qlite.app import App


def build_app() -> App:
    """The App of every Task whose backend is a QliteBackend; its queues are those backends'
    QUEUES."""
    from qlite.django.backend import QliteBackend
    from qlite.django.compat import task_backends
    from qlite.django.registry import discover

    backends = {alias: task_backends[alias] for alias in task_backends.settings}
    ours = {a: b for a, b in backends.items() if isinstance(b, QliteBackend)}
    app = App(queues=sorted({q for b in ours.values() for q in b.queues}))
    for path, task in sorted(discover().items()):
        backend = ours.get(task.backend)
        if backend is not None:
            app.task(handler(task), name=path, queue=task.queue_name,
                     max_attempts=backend.max_attempts)
    return app


def handler(task: Any) -> Any:
    """Run ``task`` as Django's backends do: TaskContext, task_started/task_finished signals,
    JSON-normalised return value; database connections closed as after a request."""
    from django.db import close_old_connections

    from qlite.django.backend import QliteBackend, worker_ids
    from qlite.django.compat import (
        TaskContext,
        TaskError,
        TaskResult,
        TaskResultStatus,
        normalize_json,
        task_finished,
        task_started,
    )
    from qlite.errors import Fail

    signature = inspect.signature(task.func)

    def run(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            signature.bind(*([None] if task.takes_context else []), *args, **kwargs)
        except TypeError as e:
            raise Fail(f"{task.module_path} cannot take args={args!r:.200} "
                       f"kwargs={kwargs!r:.200}: {e}") from None
        now = datetime.now(UTC)
        result = TaskResult(
            task=task, id=ctx.job_id, status=TaskResultStatus.RUNNING,
            enqueued_at=datetime.fromisoformat(ctx.enqueued_at) if ctx.enqueued_at else None,
            started_at=now, finished_at=None, last_attempted_at=now, args=list(args),
            kwargs=dict(kwargs), backend=task.backend, errors=[],
            # TaskContext.attempt is len(worker_ids): one entry per attempt
            worker_ids=worker_ids(ctx.workers, ctx.attempt))
        task_started.send(sender=QliteBackend, task_result=result)
        close_old_connections()
        try:
            if task.takes_context:
                value = task.call(TaskContext(task_result=result), *args, **kwargs)
            else:
                value = task.call(*args, **kwargs)
            value = normalize_json(value)
        except (Exception, SystemExit) as e:  # as Django's backends: sys.exit() fails the task
            import traceback

            object.__setattr__(result, "finished_at", datetime.now(UTC))
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            result.errors.append(TaskError(
                exception_class_path=f"{type(e).__module__}.{type(e).__qualname__}",
                traceback="".join(traceback.format_exception(e))))
            task_finished.send(sender=QliteBackend, task_result=result)
            raise
        finally:
            close_old_connections()
        object.__setattr__(result, "finished_at", datetime.now(UTC))
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(result, "_return_value", value)
        task_finished.send(sender=QliteBackend, task_result=result)
        return value

    run.__name__ = run.__qualname__ = task.func.__name__
    run.__doc__ = task.func.__doc__
    return run


def __getattr__(name: str) -> Any:
    if name == "app":  # a child process: set Django up, then build the App once
        import django
        from django.apps import apps

        if not apps.ready:
            django.setup()
        globals()["app"] = built = build_app()
        return built
    raise AttributeError(f"module 'qlite.django.worker' has no attribute {name!r}")
