"""Job state names, in one place (the machine is drawn in docs/states.md). Standard library.

``pending`` lives only in the bucket (an object in ``inbox/``); the worker's index holds the
others. The SQL in ``qlite/index/sql/`` spells them as literals, since a statement cannot
import Python; tests/test_states.py checks it uses no other names.
"""

from __future__ import annotations

PENDING = "pending"
QUEUED = "queued"
SCHEDULED = "scheduled"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

WAITING = (QUEUED, SCHEDULED)  # in the index, not running yet
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)  # final until `qlite retry`
INDEXED = (*WAITING, RUNNING, *TERMINAL)  # every state a row of the index can be in
ALL = (PENDING, *INDEXED)  # every state `qlite status` can report
