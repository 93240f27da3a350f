"""Who a worker process is, and whether another one is still alive.

A worker's owner id is ``host:pid:start-time``: the start time tells a reused pid from the
process that held the jobs. A process on this host is judged by the kernel (is it still
there?); a worker on another host by its lease in the index alone.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

from qlite.index.db import Index
from qlite.worker.logs import job_fields

log = logging.getLogger(__name__)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or 0}"


def is_local(owner: str) -> bool:
    return owner.rsplit(":", 2)[0] == socket.gethostname()


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` ran on this host and that process is gone. Workers on other
    hosts are judged by their lease alone."""
    try:
        host, pid_text, started = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    now_started = _start_time(pid)
    return now_started is not None and started != "0" and now_started != started


def disk_full(error: BaseException | None) -> bool:
    """SQLite's "database or disk is full", or ENOSPC from the file system."""
    while error is not None:
        if "disk is full" in str(error) or getattr(error, "errno", None) == errno.ENOSPC:
            return True
        error = error.__cause__
    return False


def reap(index: Index, owner: str, now: float) -> None:
    """Requeue as suspects (or fail, see Index.reap) the running jobs of dead workers and of
    expired leases."""
    owners = [o for o in index.running_owners() if o != owner]
    dead = [o for o in owners if owner_is_dead(o)]
    # A live process on this host may just be slow to heartbeat (its loop blocked on S3):
    # its jobs are not taken from it.
    alive = [owner] + [o for o in owners if o not in dead and is_local(o)]
    for row in index.reap(dead, alive, now):
        if row.state == "queued":
            log.warning("job requeued after its worker stopped; it runs alone next (crashes "
                        "pinned on it: %d, worker deaths it shared: %d)", row.crashes,
                        row.lost, extra=job_fields(row))
        else:
            log.warning("job failed after its worker stopped: %s",
                        (row.error or {}).get("message"), extra=job_fields(row))
