"""Tasks used by the suite's worker processes (``--app testapp:app``)."""

import os
import time
from pathlib import Path

import qlite

app = qlite.App()


@app.task(name="math.add")
def add(a, b):
    return a + b


@app.task(name="test.flaky", backoff=0.05)
def flaky(ctx, fail_times=1):
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@app.task(name="test.always_fail", max_attempts=2, backoff=0.05)
def always_fail():
    raise ValueError("boom")


@app.task(name="test.not_json")
def not_json():
    return {1, 2}


@app.task(name="test.sleep", max_attempts=5)
def sleep(ctx, seconds, marker_dir):
    """Marks its start (job id + attempt) in marker_dir, sleeps, then marks its end."""
    d = Path(marker_dir)
    (d / f"{ctx.job_id}.{ctx.attempt}.started").write_text(str(os.getpid()))
    time.sleep(seconds)
    (d / f"{ctx.job_id}.{ctx.attempt}.done").write_text("")
    return {"slept": seconds, "attempt": ctx.attempt}


@app.task(name="test.poison", max_attempts=2, backoff=0.05)
def poison():
    """Kills the process it runs in: the worker itself in a worker thread, or the job's own
    child process once it runs as a suspect."""
    os._exit(1)


@app.task(name="test.ledger")
def ledger(ctx, path):
    """Appends (job id, attempt, pid) to an effects ledger: one line per handler run."""
    with open(path, "a") as f:
        f.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")
    return ctx.attempt


@app.task(name="test.work", max_attempts=5)
def work(ctx, path, seconds=0.02):
    """I/O-bound work for the fleet tests: appends (job id, attempt, pid) to the effects ledger
    when it starts, sleeps, and returns its pid (so a result names the process that ran it)."""
    with open(path, "a") as f:
        f.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


@app.task(name="test.total")
def total(values):
    """A group's ``then`` (the members' results in order) or a chain's next step."""
    return sum(values) if isinstance(values, list) else values


@app.task(name="test.fails_once", backoff=30.0)
def fails_once(ctx, path):
    """Fails its first attempt (then waits a back-off of 15-30 s), succeeds on its second;
    appends (job id, attempt, pid) to the ledger at every run."""
    with open(path, "a") as f:
        f.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return ctx.attempt


@app.task(name="test.progress")
def progress(ctx, steps, marker_dir):
    """Reports steps 1..steps/2 at once, marks that, waits for a go file, then reports the
    rest: a job whose progress the tests read while it runs."""
    d = Path(marker_dir)
    for i in range(1, steps // 2 + 1):
        ctx.progress(i, steps, "first half")
    (d / f"{ctx.job_id}.half").write_text("")
    while not (d / f"{ctx.job_id}.go").exists():
        time.sleep(0.02)
    for i in range(steps // 2 + 1, steps + 1):
        ctx.progress(i, steps, "done" if i == steps else "second half")
    return {"steps": steps}


@app.task(name="test.import_csv", max_attempts=5)
def import_csv(ctx, csv_path, out_path, marker_dir, every=5000, pause_at=None):
    """A CSV import that checkpoints the next row every ``every`` rows and resumes from
    ctx.resume. On its first attempt it marks and then hangs right after checkpointing
    ``pause_at`` (for a kill -9); with ``fail_at`` semantics in pause_at < 0 it raises there."""
    start = (ctx.resume or {}).get("row", 0)
    done = start
    with open(csv_path) as src, open(out_path, "a") as out:
        rows = src.readlines()[1:]  # the header
        total = len(rows)
        for n in range(start, total):
            out.write(rows[n].split(",")[0] + "\n")
            done = n + 1
            if done % every == 0:
                out.flush()
                ctx.checkpoint({"row": done})
                ctx.progress(done, total, "importing")
                if ctx.attempt == 1 and pause_at is not None and done == abs(pause_at):
                    (Path(marker_dir) / f"{ctx.job_id}.paused").write_text(str(os.getpid()))
                    if pause_at < 0:
                        raise RuntimeError(f"failing on purpose at row {done}")
                    time.sleep(600)
    return {"resumed_from": start, "rows": done - start, "total": total}
