"""Tasks: ``app = qlite.App()`` and ``@app.task``. Standard library only.

Only registered names run: the worker looks a job's task name up in its App and nothing is
ever imported from a payload. A task's name defaults to ``module.function`` (the function's
``__module__`` and ``__qualname__``), which is stable as long as the code does not move; give
``name=`` to decouple the wire name from the code layout.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from qlite import envelope
from qlite.errors import TaskError


class Task:
    """A registered function. Calling it runs it here; ``.put(...)`` enqueues it."""

    def __init__(self, app: App, fn: Callable, name: str, *, queue: str = "default",
                 max_attempts: int | None = None, priority: int | None = None,
                 backoff: Any = 1.0, retry_on: tuple[type, ...] = (Exception,),
                 give_up_on: tuple[type, ...] = (), timeout: float | None = None,
                 concurrency: int | None = None, rate: tuple[int, float] | None = None,
                 rate_key: str | None = None):
        self.app = app
        self.concurrency = concurrency
        self.rate = rate  # (jobs, per seconds)
        self.rate_key = rate_key
        self.backoff = backoff
        self.retry_on = retry_on
        self.give_up_on = give_up_on
        self.timeout = timeout
        self.fn = fn
        self.name = name
        self.queue = queue
        self.max_attempts = max_attempts
        self.priority = priority
        self.signature = inspect.signature(fn)  # checked against each job's arguments
        params = list(self.signature.parameters)
        # A handler that names a ``ctx`` parameter gets the job context: positionally when it
        # is the first parameter, else by keyword.
        self.wants_ctx = "ctx" in params
        self.ctx_first = params[:1] == ["ctx"]
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def put(self, *args: Any, **kwargs: Any) -> Any:
        """Enqueue ``fn(*args, **kwargs)`` on the task's queue with the app's client."""
        return self.put_with(args, kwargs)

    def put_with(self, args: Any = (), kwargs: dict | None = None, **options: Any) -> Any:
        """Enqueue with put options: ``queue=``, ``key=``, ``delay=``, ``at=``, ``priority=``."""
        options.setdefault("queue", self.queue)
        if self.priority is not None:
            options.setdefault("priority", self.priority)
        return self.app.client.put(self.name, args, kwargs, **options)


class App:
    """A registry of tasks. ``url`` (default ``QLITE_URL``) is used by ``task.put``."""

    def __init__(self, url: str | None = None, *, queues: tuple[str, ...] | list[str] = (),
                 builtins: bool = True):
        self.url = url
        self.builtins = builtins  # the worker adds the built-in tasks (qlite.tasks)
        self.spec: str | None = None  # MODULE:ATTR, once loaded by name (child processes use it)
        self.tasks: dict[str, Task] = {}
        self.schedules: dict[str, Any] = {}  # name -> qlite.schedule.Schedule
        for q in queues:
            if not envelope.QUEUE_RE.match(q):
                raise TaskError(f"App(queues=...): queue name {q!r} is not valid (letters, "
                                "digits, '_', '-', '.'; at most 64)")
        self.declared_queues = tuple(queues)
        self._client: Any = None

    @property
    def queues(self) -> tuple[str, ...]:
        """Queues this app knows: declared with App(queues=...), used by a task, and
        ``default``. A worker refuses to serve any other (a typo would wait forever)."""
        names = ["default", *self.declared_queues, *(t.queue for t in self.tasks.values())]
        return tuple(dict.fromkeys(names))

    @property
    def client(self) -> Any:
        if self._client is None:
            from qlite.producer import Client

            self._client = Client(self.url)
        return self._client

    def task(self, fn: Callable | None = None, *, name: str | None = None,
             queue: str = "default", max_attempts: int | None = None,
             priority: int | None = None, backoff: Any = 1.0,
             retry_on: type | tuple[type, ...] = Exception,
             give_up_on: type | tuple[type, ...] = (), timeout: float | None = None,
             concurrency: int | None = None, rate: str | None = None,
             rate_key: str | None = None) -> Any:
        """Register ``fn`` as a task: ``@app.task`` or ``@app.task(name="math.add")``.

        ``max_attempts`` overrides the worker's default (3). ``backoff`` is the upper bound in
        seconds of the first retry's delay, doubling per attempt up to 300 s, or a tenacity
        wait strategy (qlite.worker.retry). Only exceptions that are ``retry_on`` and not
        ``give_up_on`` are retried; others fail the job at once. ``timeout`` (seconds) is a
        hard limit: such a task runs in a child process that is killed when time is up.

        ``concurrency`` caps how many of its jobs run at once (across the worker processes
        sharing an index); ``rate`` ("10/s", "100/m", "5/10s") caps how many start per period,
        shared by every task with the same ``rate_key`` (default: the task name). A job held
        back by a limit waits in the index without taking a worker slot.
        """

        def register(fn: Callable) -> Task:
            task_name = name or f"{fn.__module__}.{fn.__qualname__}"
            if fn.__module__ == "__main__" and name is None:
                raise TaskError(
                    f"task {fn.__qualname__!r} is defined in __main__, so its default name is "
                    "not stable. Try: @app.task(name='...') or move it to a module"
                )
            if not envelope.TASK_RE.match(task_name) or "<" in task_name:
                raise TaskError(f"task name {task_name!r} is not valid (letters, digits, "
                                "'_', '.', ':', '-'; at most 200). Try: name='area.action'")
            if task_name in self.tasks and self.tasks[task_name].fn is not fn:
                raise TaskError(f"task name {task_name!r} is registered twice")
            if max_attempts is not None and not 1 <= max_attempts <= 1000:
                raise TaskError(f"max_attempts: expected 1..1000 (got {max_attempts!r})")
            if not callable(backoff) and not (isinstance(backoff, int | float) and backoff > 0):
                raise TaskError(f"backoff: expected seconds > 0 or a tenacity wait strategy "
                                f"(got {backoff!r})")
            if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
                raise TaskError(f"timeout: expected seconds > 0 (got {timeout!r})")
            if concurrency is not None and (type(concurrency) is not int or concurrency < 1):
                raise TaskError(f"concurrency: expected a whole number >= 1 "
                                f"(got {concurrency!r})")
            if rate_key is not None and rate is None:
                raise TaskError("rate_key= needs rate=. Try: rate='10/s', rate_key='smtp'")
            task = Task(self, fn, task_name, queue=queue, max_attempts=max_attempts,
                        priority=priority, backoff=backoff, retry_on=_types(retry_on),
                        give_up_on=_types(give_up_on), timeout=timeout,
                        concurrency=concurrency,
                        rate=parse_rate(rate) if rate is not None else None,
                        rate_key=(rate_key or task_name) if rate is not None else None)
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(self, cron: str | None = None, *, every: Any = None, name: str | None = None,
                 tz: str = "UTC", misfire: str = "latest", args: Any = (),
                 kwargs: dict | None = None, **options: Any) -> Any:
        """Register ``fn`` as a task that the worker enqueues on a schedule:
        ``@app.periodic("*/5 * * * *")`` (cron, evaluated in ``tz``) or
        ``@app.periodic(every=300)`` (seconds or a timedelta, aligned to the Unix epoch).

        Each tick runs once even with several workers or a restart in between. ``misfire``
        decides about ticks missed while no worker ran: ``latest`` (run the most recent one),
        ``all`` (run each) or ``skip``. Other options are ``task()``'s.
        """
        from qlite.schedule import Schedule

        def register(fn: Callable) -> Task:
            task = self.task(fn, name=name, **options)
            if task.name in self.schedules:
                raise TaskError(f"periodic {task.name!r} is registered twice")
            try:
                self.schedules[task.name] = Schedule.build(
                    task.name, task.name, cron, every, tz, misfire, args=tuple(args),
                    kwargs=dict(kwargs or {}), queue=task.queue)
            except TaskError:
                del self.tasks[task.name]  # a bad schedule registers nothing
                raise
            return task

        return register


_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
          "hour": 3600, "d": 86400, "day": 86400}


def parse_rate(text: Any) -> tuple[int, float]:
    """``"10/s"``, ``"100/m"``, ``"5/10s"``, ``"1000/h"`` to (jobs, per seconds)."""
    import re

    m = re.fullmatch(r"\s*([1-9][0-9]*)\s*/\s*((?:[0-9]+(?:\.[0-9]+)?)?)\s*([a-z]+)\s*",
                     text if isinstance(text, str) else "")
    if not m or m.group(3) not in _UNITS or (m.group(2) and not float(m.group(2)) > 0):
        raise TaskError(f"rate: expected JOBS/PERIOD such as '10/s', '100/m', '5/10s' or "
                        f"'1000/h' (got {text!r})")
    return int(m.group(1)), float(m.group(2) or 1) * _UNITS[m.group(3)]


def _types(value: type | tuple[type, ...]) -> tuple[type, ...]:
    types = value if isinstance(value, tuple) else (value,)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TaskError(f"retry_on/give_up_on: expected exception classes (got {t!r})")
    return types


def load_app(spec: str) -> App:
    """``MODULE:ATTR`` to the App it names; the current directory is importable."""
    import importlib
    import os
    import sys

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise TaskError(f"--app: expected MODULE:ATTR such as tasks:app (got {spec!r})")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise TaskError(f"--app {spec}: no module named {module_name!r}. Try: run from the "
                            "folder that holds it, or set PYTHONPATH") from None
        raise TaskError(f"--app {spec}: importing {module_name!r} failed: {e}") from None
    except Exception as e:
        raise TaskError(f"--app {spec}: importing {module_name!r} failed: "
                        f"{type(e).__name__}: {e}") from None
    target = getattr(module, attr, None)
    if not isinstance(target, App):
        found = "nothing" if target is None else f"a {type(target).__name__}"
        raise TaskError(f"--app {spec}: {module_name}.{attr} is {found}, not a qlite.App. "
                        "Try: app = qlite.App() in that module")
    target.spec = spec
    return target
