"""Dispatch: where a claimed job's handler runs. In a thread of the worker (the default), or
in a child process (isolate.py) when the task has a ``timeout`` (a thread cannot be killed),
with ``--pool process``, or for a suspect when the app can be loaded by name (so a crash is
pinned on it, not on the worker)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from qlite.app import App
from qlite.producer import Client
from qlite.settings import Settings
from qlite.worker.execute import Claim, run
from qlite.worker.isolate import run_in_child


def submit(pool: ThreadPoolExecutor, app: App, claim: Claim, *, settings: Settings,
           client: Client, store_url: str, cancel: threading.Event,
           on_progress: Callable[[str, int, dict], None], suspect: bool) -> Future:
    """Start the job's handler on ``pool`` (a child process is watched from a thread)."""
    task = app.tasks.get(claim.task)
    timeout = claim.envelope.get("timeout") or (task.timeout if task else None)
    if task and (timeout or settings.pool == "process" or (suspect and app.spec is not None)):
        return pool.submit(run_in_child, app, claim, timeout, store_url, settings.endpoint_url,
                           cancel, (settings.log_level, settings.log_format),
                           settings.signing_key, settings.progress_every, on_progress,
                           settings.encryption_key)
    return pool.submit(run, app, claim, client, cancel, settings.progress_every, on_progress)
