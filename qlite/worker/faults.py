"""Deterministic crash points for the chaos suite.

``QLITE_CRASH_AT=NAME`` (or ``NAME:N``) makes the worker SIGKILL itself the first (or Nth) time
it reaches the named point, so tests can prove that a crash at exactly that instruction loses
nothing. It is read when the worker's process starts (the chaos suite sets it in the
environment of the worker it starts); unset (always, in production), ``crash_point`` is one
test of a global: it runs a few times per job.

Points, in a job's order: after_ingest_commit, after_claim, after_handler, after_record,
after_result_put, after_inbox_delete.
"""

from __future__ import annotations

import os
import signal

POINTS = ("after_ingest_commit", "after_claim", "after_handler", "after_record",
          "after_result_put", "after_inbox_delete")
_hits: dict[str, int] = {}
_SPEC = os.environ.get("QLITE_CRASH_AT")


def crash_point(name: str) -> None:
    if not _SPEC:
        return
    target, _, nth = _SPEC.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
