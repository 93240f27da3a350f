"""``qlite put-many FILE.jsonl``: enqueue one job per line, packed, with a progress bar.

Resumable: the batch key defaults to the file's SHA-256, so pack ids are the same on every run
of the same file and a run after an interruption skips the packs already enqueued (until their
jobs are purged). A bad line stops everything before the first write, naming the line.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qlite.errors import ConfigError, EnvelopeError

if TYPE_CHECKING:
    from qlite.producer import Client

FIELDS = ("task", "args", "kwargs", "queue", "key", "delay", "at", "ttl", "expires_at",
          "priority", "max_attempts", "timeout", "webhook", "on_success", "on_failure", "meta")


def read_jobs(path: Path, queue: str) -> list[tuple[int, dict]]:
    """The file's lines as (line number, put_many item); ConfigError naming the first bad
    line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror}). Try: a path to a JSON Lines "
                          "file, one job per line") from None
    jobs = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"{where}: not JSON ({e}). Try: one object per line, like "
                              '{"task": "math.add", "args": [1, 2]}') from None
        if not isinstance(item, dict) or not isinstance(item.get("task"), str):
            raise ConfigError(f"{where}: expected an object with a \"task\" name (got "
                              f"{line[:60].decode('utf-8', 'replace')!r})")
        unknown = sorted(set(item) - set(FIELDS))
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r}. Try: one of "
                              f"{', '.join(FIELDS)}")
        item.setdefault("queue", queue)
        jobs.append((number, item))
    if not jobs:
        raise ConfigError(f"{path}: no jobs in it (empty, or only blank lines)")
    return jobs


def put_many_file(path: Path, *, queue: str = "default", key: str | None = None,
                  url: str | None = None, endpoint_url: str | None = None,
                  show_progress: bool | None = None) -> dict:
    """Enqueue every line of ``path``; returns a summary (jobs, written, skipped, seconds)."""
    from qlite.producer import Client

    numbered = read_jobs(path, queue)
    jobs = [item for _, item in numbered]
    batch = key or "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
    client = Client(url, endpoint_url=endpoint_url)
    done = {"jobs": 0, "skipped": 0}
    show = sys.stderr.isatty() if show_progress is None else show_progress
    started = time.perf_counter()
    try:
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            with Progress(TextColumn("enqueueing"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[skipped]} skipped"),
                          transient=True) as bar:
                task = bar.add_task("put-many", total=len(jobs), skipped=0)

                def tick(n: int, skipped: int) -> None:
                    done["jobs"] += n
                    done["skipped"] += skipped
                    bar.update(task, completed=done["jobs"], skipped=done["skipped"])

                handles = client.put_many(jobs, key=batch, progress=tick)
        else:
            def count(n: int, skipped: int) -> None:
                done["jobs"] += n
                done["skipped"] += skipped

            handles = client.put_many(jobs, key=batch, progress=count)
    except (EnvelopeError, ConfigError) as e:
        # Every envelope is checked before the first write, so nothing was enqueued.
        raise ConfigError(f"{path} line {_culprit(client, numbered)}: {e} (nothing was "
                          "enqueued)") from None
    seconds = time.perf_counter() - started
    return {"file": str(path), "jobs": len(handles), "enqueued": done["jobs"] - done["skipped"],
            "skipped": done["skipped"], "seconds": round(seconds, 3), "key": batch,
            "first_id": handles[0].id, "last_id": handles[-1].id}


def _culprit(client: Client, numbered: list[tuple[int, dict]]) -> int | str:
    """The number of the first line whose job does not validate (after put_many refused)."""
    for number, item in numbered:
        try:
            client.validate(**item)
        except (EnvelopeError, ConfigError):
            return number
    return "?"
