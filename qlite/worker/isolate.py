"""Run a job in a child process: a hard timeout, and a crash that cannot take the worker down.

Children come from a forkserver: forked from a small single-threaded process (not from the
worker with its threads and sockets), so they start in milliseconds and safely. The child loads
the app by its ``MODULE:ATTR`` name, runs the handler (runner.run) and sends back the Outcome.
The parent kills it with SIGKILL when the timeout passes, so a job stuck in a C call or an
infinite loop is stopped, and reports a child that died (os._exit, segfault, OOM killer).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from qlite.app import App, load_app
from qlite.worker.execute import Claim, Outcome

STARTUP_LIMIT = 120.0  # seconds for a child to import the app before it counts as failed
_mp: Any = None
_mp_lock = threading.Lock()
_children: set = set()  # live child processes, killed if the worker exits without them


def _context(spec: str) -> Any:
    global _mp
    with _mp_lock:
        if _mp is None:
            _mp = multiprocessing.get_context("forkserver")
            _mp.set_forkserver_preload(["qlite.worker.isolate", spec.partition(":")[0]])
        return _mp


def _child(spec: str, claim: Claim, url: str, endpoint_url: str | None, conn: Any,
           log: tuple[str, str] | None = None, signing_key: Any = None,
           environ: dict[str, str] | None = None, progress_every: float = 5.0,
           encryption_key: Any = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when jobs stop
    if environ is not None:  # the worker's environment now, not the forkserver's at its start
        os.environ.clear()
        os.environ.update(environ)
    from qlite.producer import Client

    if log is not None:  # the worker's level and format, on the stderr it shares
        from qlite.worker.logs import setup

        setup(*log)

    app = load_app(spec)
    if app.builtins:  # as the worker did: a built-in task may run here too
        from qlite.tasks import register

        register(app)
    conn.send("started")
    from qlite.worker.execute import run

    client = Client(url, endpoint_url=endpoint_url, signing_key=signing_key,
                    encryption_key=encryption_key)
    # Each report goes to the worker too, which keeps the index's view (qlite ls, show).
    conn.send(run(app, claim, client, progress_every=progress_every,
                  on_progress=lambda *report: conn.send(("progress", *report))))
    conn.close()


def _error(kind: str, message: str) -> Outcome:
    return Outcome("error", error={"type": kind, "message": message, "traceback": None})


def _describe(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_in_child(app: App, claim: Claim, timeout: float | None, url: str,
                 endpoint_url: str | None, cancel: threading.Event | None = None,
                 log: tuple[str, str] | None = None, signing_key: Any = None,
                 progress_every: float = 5.0,
                 on_progress: Callable[[str, int, dict], None] | None = None,
                 encryption_key: Any = None) -> Outcome:
    if app.spec is None:
        return Outcome("failed", error={
            "type": "NotIsolatable", "traceback": None,
            "message": f"{claim.task} needs a child process (timeout or --pool process), which "
                       "loads the app by name: run it with qlite worker --app MODULE:ATTR"})
    mp = _context(app.spec)
    recv, send = mp.Pipe(duplex=False)
    # The forkserver is started once, by the first job, and its children inherit the
    # environment of that moment: hand each child the worker's environment as it is now.
    proc = mp.Process(target=_child, args=(app.spec, claim, url, endpoint_url, send, log,
                                           signing_key, dict(os.environ), progress_every,
                                           encryption_key),
                      daemon=True, name=f"qlite-job-{claim.id}")
    proc.start()
    _children.add(proc)
    send.close()
    try:
        if not recv.poll(STARTUP_LIMIT):
            return _error("ChildStartTimeout",
                          f"the job's process did not load {app.spec} in {STARTUP_LIMIT:.0f}s")
        recv.recv()  # "started": the timeout counts from here
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while not recv.poll(0.2 if deadline is None else
                                max(0.0, min(0.2, deadline - time.monotonic()))):
                if cancel is not None and cancel.is_set():
                    proc.kill()  # a child cannot see ctx.cancelled: cancelling it stops it
                    return _error("Cancelled", f"{claim.task} was cancelled on request while "
                                               "running; its process was killed")
                if deadline is not None and time.monotonic() >= deadline:
                    proc.kill()
                    return _error("Timeout", f"{claim.task} ran longer than its {timeout:g}s "
                                             "timeout and was killed")
            message = recv.recv()
            if not (isinstance(message, tuple) and message[:1] == ("progress",)):
                return message
            if on_progress is not None:
                on_progress(*message[1:])
    except (EOFError, OSError):
        proc.join(5)
        return _error("ProcessCrashed",
                      f"the job's process died ({_describe(proc.exitcode)}): os._exit, a "
                      "crash in native code, or the OOM killer")
    finally:
        recv.close()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        _children.discard(proc)


def kill_children() -> None:
    """Kill every job process still running (the worker is exiting without them)."""
    for proc in list(_children):
        proc.kill()
