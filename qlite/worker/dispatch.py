"""Dispatch: where a claimed job's handler runs. In a thread of the worker (the default), or
in a child process (isolate.py) when the task has a ``timeout`` (a thread cannot be killed),
with ``--pool process``, or for a suspect when the app can be loaded by name (so a crash is
pinned on it, not on the worker). Quick jobs claimed ahead run in turn on one thread
(``submit_in_turn``, turns.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from qlite.app import App
from qlite.producer import Client
from qlite.settings import Settings
from qlite.worker.execute import Claim, run
from qlite.worker.isolate import run_in_child
from qlite.worker.turns import run_in_turn


def submit(pool: ThreadPoolExecutor, app: App, claim: Claim, *, settings: Settings,
           client: Client, store_url: str, cancel: threading.Event,
           on_progress: Callable[[str, int, dict], None], suspect: bool) -> Future:
    """Start the job's handler on ``pool`` (a child process is watched from a thread)."""
    if in_thread(app, claim.task, claim.envelope, settings, suspect=suspect):
        return pool.submit(run, app, claim, client, cancel, settings.progress_every,
                           on_progress)
    timeout = claim.envelope.get("timeout") or app.tasks[claim.task].timeout
    return pool.submit(run_in_child, app, claim, timeout, store_url, settings.endpoint_url,
                       cancel, (settings.log_level, settings.log_format),
                       settings.signing_key, settings.progress_every, on_progress,
                       settings.encryption_key)


def in_thread(app: App, name: str, envelope: dict, settings: Settings, *,
              suspect: bool) -> bool:
    """Whether a job of task ``name`` runs in a thread of the worker (else in a child
    process)."""
    task = app.tasks.get(name)
    timeout = envelope.get("timeout") or (task.timeout if task else None)
    return not (task and (timeout or settings.pool == "process"
                          or (suspect and app.spec is not None)))


def submit_in_turn(pool: ThreadPoolExecutor, app: App, claims: list[tuple[Claim, threading.Event]],
                   *, settings: Settings, client: Client,
                   on_progress: Callable[[str, int, dict], None],
                   stopping: Callable[[], bool]) -> Future:
    """Run quick jobs one after the other on one handler thread (turns.py); the future's
    result is their outcomes, fewer than the claims if the worker stopped meanwhile."""
    events = {c.id: cancel for c, cancel in claims}
    return pool.submit(run_in_turn, lambda c: run(app, c, client, events[c.id],
                                                  settings.progress_every, on_progress),
                       [c for c, _ in claims], stopping)
