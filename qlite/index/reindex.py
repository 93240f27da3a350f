"""``qlite reindex``: rebuild the index from the bucket when the disk and the replica are lost.

Terminal jobs come back from their ``results/`` records (state, result, attempts, errors);
unfinished jobs need nothing here: their inbox objects are still in ``inbox/`` (deleted only
after the terminal record exists) and the worker ingests them again when it starts. What is
lost is the progress of unfinished jobs: their attempt counts start again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from qlite.index.db import Index
from qlite.states import TERMINAL
from qlite.status import records_in
from qlite.store import Store


def reindex(store: Store, index: Index) -> tuple[int, int]:
    """Add the terminal jobs of results/ that the index does not hold as terminal (unknown, or
    restored from a replica older than their end); returns (records read, rows written).
    One LIST per 1,000 results, and a GET only for those jobs."""
    keys = [key for key, _ in store.iter_keys("results/")
            if key.endswith(".json")
            and not key.endswith((".value.json", ".progress.json"))]
    pack_keys = [k for k in keys if k.startswith("results/packs/")]
    keys = [k for k in keys if not k.startswith("results/packs/")]
    ids = [key.removeprefix("results/").removesuffix(".json") for key in keys]
    done: set[str] = set()  # ids the index already holds as terminal
    for i in range(0, len(ids), 5000):
        done.update(job_id for job_id, row in index.known(ids[i:i + 5000]).items()
                    if row.state in TERMINAL)
    keys = [k for k, job_id in zip(keys, ids, strict=True) if job_id not in done]
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(store.get_or_none, keys))
        packs = list(pool.map(store.get_or_none, pack_keys))
    # A job's record, or the batched records of packed jobs (put_many).
    candidates = [r for body in bodies + packs for r in records_in(body)]
    ids = [r.id for r in candidates]
    done = {job_id for job_id, row in index.known(ids).items()
            if row.state in TERMINAL} if packs else set()
    # Quarantined objects never were jobs: their record stays in the bucket only. A running or
    # waiting record (record_start) is not final: its inbox object is still there.
    records = [r for r in candidates if r.task and r.state in TERMINAL and r.id not in done]
    return len(records), index.restore(records)
