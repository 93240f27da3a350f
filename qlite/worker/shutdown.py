"""Stopping the worker. Signal handlers only set flags (loop.py); the loop then stops claiming,
gives running jobs ``grace`` seconds, publishes their outcomes, hands its fleet shards over,
and last closes what it holds, here, in an order that loses nothing: the I/O pool (its
requests finish), the index (its last commit), then Litestream, which syncs that commit."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qlite.index.db import Index
from qlite.worker.isolate import kill_children
from qlite.worker.replica import Replica

log = logging.getLogger(__name__)


def install(on_signal: Callable[[int, Any], None]) -> None:
    """SIGTERM and SIGINT call ``on_signal``, which must only set flags."""
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def close(*, io: ThreadPoolExecutor, handlers: ThreadPoolExecutor, index: Index,
          replica: Replica | None, metrics: Any, left: int) -> int:
    """Close the worker's pools, index and replica; ``left``: jobs still running after the
    grace period (the process then exits at once). Returns the exit status."""
    io.shutdown(wait=True)
    index.close()
    if replica is not None:
        replica.stop()  # after the last commit: litestream syncs it, then exits
    if left:
        # Their rows stay 'running' under this (soon dead) owner: the next worker start
        # requeues them at once.
        kill_children()
        log.warning("stopped with %d job(s) still running; they run again on restart", left)
        logging.shutdown()
        os._exit(0)  # handler threads cannot be interrupted; do not wait for them
    handlers.shutdown(wait=True)
    if metrics is not None:
        metrics.stop()
    log.info("worker stopped")
    return 0
