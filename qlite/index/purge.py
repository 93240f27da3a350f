"""Purge: forget finished jobs, in the index and in the bucket.

Objects go first (each job's record, large result, payload, progress and checkpoint), then the
index rows: a crash between the two leaves rows whose objects are gone, and the next purge
deletes them again
(deleting a missing key is not an error). A pack's batched record goes with the last of its
members. Cancel/retry markers whose job never arrived go once they are older than the age too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from qlite.envelope import (
    checkpoint_key,
    pack_result_key,
    parse_pack_key,
    payload_key,
    progress_key,
    result_key,
    value_key,
)
from qlite.errors import ConfigError
from qlite.index.db import Index
from qlite.states import TERMINAL
from qlite.store import Store


@dataclass(frozen=True)
class Purged:
    jobs: int  # how many were forgotten
    before: float  # Unix seconds: they finished before this
    states: tuple[str, ...]
    markers: int = 0  # cancel/retry markers deleted whose job never arrived


def finished_states(states: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The states to purge: every terminal one by default; ConfigError for any other."""
    chosen = tuple(states or TERMINAL)
    bad = [s for s in chosen if s not in TERMINAL]
    if bad:
        raise ConfigError(f"state: only finished jobs can be purged: {', '.join(TERMINAL)} "
                          f"(got {bad[0]!r})")
    return chosen


def purge(index: Index, store: Store, older_than: float, *,
          states: tuple[str, ...] | list[str] | None = None, queue: str | None = None,
          now: float | None = None) -> Purged:
    """Forget jobs in ``states`` (default: every terminal one) that finished more than
    ``older_than`` seconds ago, optionally of one ``queue`` only, and delete the cancel/retry
    markers taken in that long ago whose job never arrived."""
    chosen = finished_states(states)
    before = (time.time() if now is None else now) - older_than
    total = 0
    # Objects first (records, large results and payloads): a crash re-purges.
    while jobs := index.purgeable(list(chosen), before, queue):
        ids = [j.id for j in jobs]
        store.delete_many([k for i in ids for k in (result_key(i), value_key(i),
                                                    payload_key(i), progress_key(i),
                                                    checkpoint_key(i))])
        total += index.purge(ids)
        gone = index.forget_packs(sorted({j.pack for j in jobs if j.pack}))
        store.delete_many([pack_result_key(k.rsplit("/", 1)[-1].removesuffix(".pack.jsonl"))
                           for k in gone if parse_pack_key(k)])
    # A marker whose job never arrived is settled by nothing else (the job would delete it).
    markers = 0
    while keys := index.stale_markers(before, queue):
        store.delete_many(keys)
        markers += len(keys)
        index.forget_markers(keys)
    return Purged(total, before, chosen, markers)
