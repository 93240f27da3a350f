"""The qlite CLI: parse, call the library, print. Errors become one ``Error: ...`` line and a
non-zero exit; a traceback means a bug. ``qlite put`` is served by putcmd.py (no typer)."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import putcmd
from .app import load_app
from .errors import QliteError, WaitTimeout
from .settings import Settings

app = typer.Typer(
    help="qlite: background jobs on S3-compatible storage plus SQLite.\n\n"
         "Producers run 'qlite put'; one worker VM runs 'qlite worker'; anyone with read "
         "access to results/ runs 'qlite status' and 'qlite wait'.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

Url = Annotated[str | None, typer.Option("--url", help="s3://bucket[/prefix] (env QLITE_URL)")]
Endpoint = Annotated[str | None, typer.Option(
    "--endpoint-url", help="S3 endpoint (env AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL)")]
Db = Annotated[str | None, typer.Option("--db", help="SQLite index file (env QLITE_DB)")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]


def _errors(fn: Any) -> Any:
    """Turn qlite errors into one line on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except QliteError as e:
            typer.echo(f"Error: {e}", err=True)
            raise typer.Exit(1) from None
        except OSError as e:  # the file system refused (permissions, a full disk)
            typer.echo(f"Error: {e.strerror or e}: {e.filename or ''}", err=True)
            raise typer.Exit(1) from None

    return wrapper


@app.command(help=putcmd.HELP + "\n\n" + putcmd.EPILOG.replace("\n  ", "\n\n  "))
@_errors
def put(
    task: Annotated[str, typer.Argument(help="registered task name, e.g. math.add")],
    payload: Annotated[str | None, typer.Argument(
        help="JSON array (args) or object (kwargs); '-' reads stdin")] = None,
    queue: Annotated[str, typer.Option(help="queue name")] = "default",
    key: Annotated[str | None, typer.Option(help="idempotency key")] = None,
    delay: Annotated[float | None, typer.Option(help="seconds before it may run")] = None,
    ttl: Annotated[float | None, typer.Option(
        help="cancel it if it has not started within SECONDS")] = None,
    priority: Annotated[int | None, typer.Option(
        help="higher runs first within its queue (default 0)")] = None,
    url: Url = None,
    endpoint_url: Endpoint = None,
    max_payload: Annotated[int | None, typer.Option(
        "--max-payload", help="largest envelope in bytes (env QLITE_MAX_PAYLOAD)")] = None,
) -> None:
    typer.echo(putcmd.put(task, payload, queue=queue, key=key, delay=delay, url=url,
                          endpoint_url=endpoint_url, max_payload=max_payload, ttl=ttl,
                          priority=priority))


@app.command()
@_errors
def worker(
    app_spec: Annotated[str, typer.Option("--app", help="MODULE:ATTR of your qlite.App")],
    queue: Annotated[list[str] | None, typer.Option(
        "--queue", help="queue to serve, repeatable, in priority order (env QLITE_QUEUES)")] = None,
    concurrency: Annotated[int | None, typer.Option(
        help="jobs run at once (env QLITE_CONCURRENCY, default 4)")] = None,
    burst: Annotated[bool, typer.Option(help="exit 0 once no job is runnable now")] = False,
    replicate: Annotated[str | None, typer.Option(
        help="auto, on or off: Litestream replication of the index (env QLITE_REPLICATE)"
    )] = None,
    pool: Annotated[str | None, typer.Option(
        help="thread (default) or process: run every job in a child process (env QLITE_POOL)"
    )] = None,
    url: Url = None,
    endpoint_url: Endpoint = None,
    db: Db = None,
    max_attempts: Annotated[int | None, typer.Option(
        help="default attempts per job (env QLITE_MAX_ATTEMPTS, default 3)")] = None,
    lease: Annotated[float | None, typer.Option(
        help="lease seconds of a running job (env QLITE_LEASE, default 60)")] = None,
    grace: Annotated[float | None, typer.Option(
        help="seconds running jobs get after SIGTERM (env QLITE_GRACE, default 30)")] = None,
    poll_min: Annotated[float | None, typer.Option(
        help="seconds between LISTs while busy (env QLITE_POLL_MIN, default 0.5)")] = None,
    poll_max: Annotated[float | None, typer.Option(
        help="idle LIST back-off cap in seconds (env QLITE_POLL_MAX, default 10)")] = None,
    max_payload: Annotated[int | None, typer.Option(
        help="largest envelope in bytes (env QLITE_MAX_PAYLOAD)")] = None,
    log_level: Annotated[str | None, typer.Option(
        help="DEBUG, INFO, WARNING, ERROR (env QLITE_LOG_LEVEL)")] = None,
    signing_key: Annotated[str | None, typer.Option(
        help="kid:secret[,kid:secret] to verify and sign inbox objects (env "
             "QLITE_SIGNING_KEY; prefer the env var, ps shows options)",
        show_default=False)] = None,
) -> None:
    """Run jobs until SIGTERM or SIGINT (then finish running jobs within the grace period).

    Example: qlite worker --app tasks:app --queue high --queue default --concurrency 8
    """
    settings = Settings.load(url=url, endpoint_url=endpoint_url, db=db, queues=queue,
                             concurrency=concurrency, pool=pool, replicate=replicate,
                             max_attempts=max_attempts,
                             lease=lease,
                             grace=grace, poll_min=poll_min, poll_max=poll_max,
                             max_payload=max_payload, log_level=log_level,
                             signing_key=signing_key)
    settings.require_url()
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    from .worker import Worker

    w = Worker(load_app(app_spec), settings)
    w.install_signals()
    raise typer.Exit(w.run(burst=burst))


def _client(url: str | None, endpoint_url: str | None) -> Any:
    from .producer import Client

    return Client(url, endpoint_url=endpoint_url)


def _print_status(status: dict) -> None:
    typer.echo(f"{status['id']}  {status['state']}  task={status.get('task')}  "
               f"queue={status.get('queue')}  attempts={status.get('attempts')}")
    if status.get("result") is not None:
        typer.echo(f"result: {json.dumps(status['result'])}")
    if status.get("error"):
        typer.echo(f"error: {status['error'].get('type')}: {status['error'].get('message')}")


@app.command()
@_errors
def status(
    job_id: Annotated[str, typer.Argument(help="the id printed by qlite put")],
    as_json: AsJson = False,
    url: Url = None,
    endpoint_url: Endpoint = None,
) -> None:
    """Show a job's state and result from the bucket alone (needs read access to results/).

    Example: qlite status 0192f1c4-8f3e-7abc-9def-0123456789ab --json
    """
    s = _client(url, endpoint_url).status(job_id)
    typer.echo(json.dumps(s)) if as_json else _print_status(s)


@app.command()
def wait(
    job_id: Annotated[str, typer.Argument(help="the id printed by qlite put")],
    timeout: Annotated[float | None, typer.Option(help="give up after SECONDS")] = None,
    url: Url = None,
    endpoint_url: Endpoint = None,
) -> None:
    """Wait for a job to finish and print its status JSON.

    Exit 0 if it succeeded, 1 if it failed or was cancelled, 2 on timeout, 3 on an error
    (unknown job, unreachable bucket).

    Example: qlite wait "$(qlite put math.add '[2, 3]')" --timeout 30
    """
    try:
        s = _client(url, endpoint_url).wait(job_id, timeout)
    except WaitTimeout as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(2) from None
    except QliteError as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(s))
    raise typer.Exit(0 if s["state"] == "succeeded" else 1)


def _index(db: str | None, url: str | None, readonly: bool = True) -> Any:
    from .index import Index

    settings = Settings.load(db=db, url=url)
    if not settings.db and settings.url is None:
        settings.require_url()
    path = settings.db_path()
    if not Path(path).exists():
        raise QliteError(f"no index at {path}. Try: run this on the worker VM, or set QLITE_DB "
                         "(or --db) to the worker's index file")
    return Index(path, readonly=readonly)


@app.command("ls")
@_errors
def ls(
    state: Annotated[str | None, typer.Option(
        help="queued, scheduled, running, succeeded, failed or cancelled")] = None,
    queue: Annotated[str | None, typer.Option(help="only this queue")] = None,
    limit: Annotated[int, typer.Option(help="at most N jobs, newest first")] = 50,
    as_json: AsJson = False,
    db: Db = None,
    url: Url = None,
) -> None:
    """List jobs in the worker's index (run on the worker VM).

    Example: qlite ls --state failed --limit 20
    """
    states = ("queued", "scheduled", "running", "succeeded", "failed", "cancelled")
    if state is not None and state not in states:
        raise QliteError(f"--state: expected one of {', '.join(states)} (got {state!r})")
    rows = _index(db, url).list(state, queue, limit)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        error = json.loads(r["error"]) if r["error"] and r["state"] != "succeeded" else None
        typer.echo(f"{r['id']}  {r['state']:<9}  {r['queue']:<10}  {r['task']:<24}  "
                   f"attempts={r['attempts']}/{r['max_attempts']}  enqueued={r['enqueued_at']}"
                   + (f"  error={error['type']}" if error else ""))


@app.command()
@_errors
def show(
    job_id: Annotated[str, typer.Argument(help="job id")],
    as_json: AsJson = False,
    db: Db = None,
    url: Url = None,
) -> None:
    """Show one job from the worker's index: attempts, errors with tracebacks, times, result.

    Example: qlite show 0192f1c4-8f3e-7abc-9def-0123456789ab
    """
    from .envelope import redacted

    job = _index(db, url).get(job_id)
    if job is None:
        raise QliteError(f"no job {job_id} in the index. Try: qlite status {job_id}")
    env = redacted(json.loads(job["envelope"]))  # secrets in arguments are not shown
    job["envelope"] = json.dumps(env)
    if as_json:
        typer.echo(json.dumps(job))
        return
    for name in ("id", "state", "task", "queue", "attempts", "max_attempts", "key",
                 "enqueued_at", "started_at", "finished_at", "result"):
        typer.echo(f"{name + ':':<14}{job[name] if job[name] is not None else '-'}")
    typer.echo(f"{'args:':<14}{json.dumps(env['args'])}")
    typer.echo(f"{'kwargs:':<14}{json.dumps(env['kwargs'])}")
    for a in job["attempt_log"]:
        typer.echo(f"\nattempt {a['attempt']}: {a['outcome'] or 'running'}  "
                   f"started={a['started_at']} finished={a['finished_at'] or '-'}")
        if a["error_type"]:
            typer.echo(f"  {a['error_type']}: {a['message']}")
        if a["traceback"]:
            typer.echo("  " + a["traceback"].rstrip().replace("\n", "\n  "))


@app.command()
@_errors
def reindex(
    db: Db = None,
    url: Url = None,
    endpoint_url: Endpoint = None,
) -> None:
    """Rebuild the worker's index from the bucket (when its disk and replica are both lost).

    Terminal jobs come back from results/; unfinished jobs are still in inbox/ and are taken
    in again when the worker starts. Safe to run on an existing index (known jobs are kept).

    Example: qlite reindex --db /var/lib/qlite/index.db
    """
    from .index import Index
    from .reindex import reindex as rebuild
    from .store import Store

    settings = Settings.load(db=db, url=url, endpoint_url=endpoint_url)
    store = Store(settings.require_url(), settings.endpoint_url)
    store.check()
    read, written = rebuild(store, Index(settings.db_path()))
    typer.echo(f"read {read} result record(s) from results/, wrote {written} job(s) to "
               f"{settings.db_path()}; unfinished jobs are re-ingested from inbox/ by the worker")


@app.command()
@_errors
def cancel(
    job_id: Annotated[str, typer.Argument(help="the id printed by qlite put")],
    url: Url = None,
    endpoint_url: Endpoint = None,
) -> None:
    """Cancel a job: if it has not started it never runs; if it is running its handler sees
    ctx.cancelled (a child-process job is killed) and it ends cancelled unless it succeeds.

    Writes a request object next to the job in inbox/, which the worker applies at its next
    LIST. Exit 1 if the job already finished.

    Example: qlite cancel 0192f1c4-8f3e-7abc-9def-0123456789ab
    """
    status = _client(url, endpoint_url).cancel(job_id)
    typer.echo(f"cancel requested for job {job_id} ({status['state']}); the worker applies it "
               "at its next poll. Follow it with: qlite wait " + job_id)


@app.command()
@_errors
def retry(
    job_id: Annotated[str, typer.Argument(help="id of a failed or cancelled job")],
    url: Url = None,
    endpoint_url: Endpoint = None,
) -> None:
    """Run a failed or cancelled job again, with a fresh budget of attempts; its earlier
    attempts stay in its history. Exit 1 if the job did not fail or was not cancelled.

    Example: qlite retry 0192f1c4-8f3e-7abc-9def-0123456789ab
    """
    status = _client(url, endpoint_url).retry(job_id)
    typer.echo(f"retry requested for job {job_id} ({status['state']} after "
               f"{status.get('attempts')} attempt(s)); follow it with: qlite wait {job_id}")


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '45s' or plain seconds to seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise QliteError(f"--older-than: expected an age such as 30d, 12h, 90m or 3600 "
                         f"(got {text!r})")
    return seconds


@app.command()
@_errors
def purge(
    older_than: Annotated[str, typer.Option(
        "--older-than", help="finished longer ago than this: 30d, 12h, 90m, 3600")],
    state: Annotated[list[str] | None, typer.Option(
        help="succeeded, failed or cancelled; repeatable (default: all three)")] = None,
    queue: Annotated[str | None, typer.Option(help="only this queue")] = None,
    db: Db = None,
    url: Url = None,
    endpoint_url: Endpoint = None,
) -> None:
    """Delete finished jobs from the index and their records from results/ (run on the worker
    VM). An idempotency key is remembered until its job is purged: the same key put after
    that is a new job.

    Example: qlite purge --state failed --older-than 30d
    """
    import time

    from .envelope import payload_key, result_key, value_key
    from .index import TERMINAL
    from .store import Store

    states = state or list(TERMINAL)
    bad = [s for s in states if s not in TERMINAL]
    if bad:
        raise QliteError(f"--state: only finished jobs can be purged: succeeded, failed or "
                         f"cancelled (got {bad[0]!r})")
    before = time.time() - parse_age(older_than)
    settings = Settings.load(db=db, url=url, endpoint_url=endpoint_url)
    store = Store(settings.require_url(), settings.endpoint_url)
    index = _index(db, url, readonly=False)
    total = 0
    while jobs := index.purgeable(states, before, queue):
        ids = [j["id"] for j in jobs]
        # Objects first (records, large results and payloads): a crash re-purges.
        store.delete_many([k for i in ids for k in (result_key(i), value_key(i),
                                                    payload_key(i))])
        total += index.purge(ids)
    typer.echo(f"purged {total} job(s) finished before "
               f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(before))} "
               f"(states: {', '.join(states)})")


@app.command()
@_errors
def schedules(
    app_spec: Annotated[str, typer.Option("--app", help="MODULE:ATTR of your qlite.App")],
    as_json: AsJson = False,
    db: Db = None,
    url: Url = None,
) -> None:
    """List the app's periodic tasks with their last and next tick (the last from the
    worker's index when it is here).

    Example: qlite schedules --app tasks:app
    """
    import time

    from .envelope import now_rfc3339

    target = load_app(app_spec)
    fired: dict[str, dict] = {}
    try:
        fired = _index(db, url).schedules()
    except QliteError:
        pass  # not on the worker VM: the next ticks are still worth showing
    now = time.time()
    rows = []
    for s in target.schedules.values():
        last = fired.get(s.name, {}).get("last_tick")
        rows.append({"name": s.name, "schedule": s.spec, "tz": s.tz, "misfire": s.misfire,
                     "queue": s.queue, "last_tick": now_rfc3339(last) if last else None,
                     "next_tick": now_rfc3339(s.next_after(now))})
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo(f"{app_spec} has no periodic tasks (@app.periodic)")
    for r in rows:
        typer.echo(f"{r['name']:<28}  {r['schedule']:<16}  tz={r['tz']:<14}  "
                   f"misfire={r['misfire']:<6}  last={r['last_tick'] or '-'}  "
                   f"next={r['next_tick']}")
