"""The qlite CLI: parse, call the library, print. Errors become one ``Error: ...`` line and a
non-zero exit; a traceback means a bug. ``qlite put`` is served by putcmd.py (no typer)."""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from qlite.app import load_app
from qlite.cli import put as putcmd
from qlite.errors import QliteError, WaitTimeout
from qlite.settings import Settings

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


def human(text: str) -> str:
    """``text`` safe for a terminal: control characters (ESC, CR, BEL, C1, ...), line and
    paragraph separators and bidi overrides shown as escapes (``\\x1b``), so a remote error
    body or a task argument cannot clear the screen, retitle the terminal or hide text.
    Newlines and tabs stay. JSON output never goes through this: it stays exact."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e"
                     "\u2066-\u2069]")


def _say(text: str, err: bool = False) -> None:
    typer.echo(human(text), err=err)


def _errors(fn: Any) -> Any:
    """Turn qlite errors into one line on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except QliteError as e:
            _say(f"Error: {e}", err=True)
            raise typer.Exit(1) from None
        except OSError as e:  # the file system refused (permissions, a full disk)
            _say(f"Error: {e.strerror or e}: {e.filename or ''}", err=True)
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


@app.command("put-many")
@_errors
def put_many(
    file: Annotated[Path, typer.Argument(help="JSON Lines: one job object per line")],
    queue: Annotated[str, typer.Option(help="queue of lines that name none")] = "default",
    key: Annotated[str | None, typer.Option(
        help="batch key for resuming (default: the file's SHA-256)")] = None,
    as_json: AsJson = False,
    url: Url = None,
    endpoint_url: Endpoint = None,
) -> None:
    """Enqueue one job per line of FILE, packed (up to 1,000 jobs per object), with a progress
    bar. Each line is an object with "task" and put's options ("args", "kwargs", "queue",
    "key", "delay", "priority", ...). Every line is checked before the first write. Run it
    again after an interruption: packs already enqueued are skipped (idempotent by line).

    Example: qlite put-many jobs.jsonl --queue imports
    """
    from qlite.cli.put_many import put_many_file

    out = put_many_file(file, queue=queue, key=key, url=url, endpoint_url=endpoint_url)
    if as_json:
        typer.echo(json.dumps(out))
        return
    rate = out["jobs"] / out["seconds"] if out["seconds"] else 0
    typer.echo(f"{out['enqueued']:,} job(s) enqueued, {out['skipped']:,} already enqueued "
               f"(skipped), from {out['file']} in {out['seconds']:.2f}s ({rate:,.0f} jobs/s); "
               f"ids {out['first_id']} .. {out['last_id']}")


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
    log_format: Annotated[str | None, typer.Option(
        help="text or json log lines (env QLITE_LOG_FORMAT, default text)")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        help="serve Prometheus metrics on this port (env QLITE_METRICS_PORT; default off)")
    ] = None,
    metrics_host: Annotated[str | None, typer.Option(
        help="address of the metrics server (env QLITE_METRICS_HOST, default 127.0.0.1)")
    ] = None,
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
                             log_format=log_format, metrics_port=metrics_port,
                             metrics_host=metrics_host,
                             signing_key=signing_key)
    settings.require_url()
    from qlite.worker.logs import setup

    setup(settings.log_level, settings.log_format)
    from qlite.worker.loop import Worker

    w = Worker(load_app(app_spec), settings)
    w.install_signals()
    raise typer.Exit(w.run(burst=burst))


def _client(url: str | None, endpoint_url: str | None) -> Any:
    from qlite.producer import Client

    return Client(url, endpoint_url=endpoint_url)


def _print_status(status: dict) -> None:
    _say(f"{status['id']}  {status['state']}  task={status.get('task')}  "
               f"queue={status.get('queue')}  attempts={status.get('attempts')}")
    if status.get("result") is not None:
        _say(f"result: {json.dumps(status['result'])}")
    if status.get("error"):
        _say(f"error: {status['error'].get('type')}: {status['error'].get('message')}")


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
    as_json: Annotated[bool, typer.Option(
        "--json", help="print JSON (accepted for symmetry: wait always prints JSON)")] = False,
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
        _say(f"Error: {e}", err=True)
        raise typer.Exit(2) from None
    except QliteError as e:
        _say(f"Error: {e}", err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(s))
    raise typer.Exit(0 if s["state"] == "succeeded" else 1)


def _index(db: str | None, url: str | None, readonly: bool = True) -> Any:
    from qlite.index.db import Index

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
        _say(f"{r['id']}  {r['state']:<9}  {r['queue']:<10}  {r['task']:<24}  "
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
    from qlite.envelope import redacted

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
        _say(f"{name + ':':<14}{job[name] if job[name] is not None else '-'}")
    _say(f"{'args:':<14}{json.dumps(env['args'])}")
    _say(f"{'kwargs:':<14}{json.dumps(env['kwargs'])}")
    for a in job["attempt_log"]:
        _say(f"\nattempt {a['attempt']}: {a['outcome'] or 'running'}  "
                   f"started={a['started_at']} finished={a['finished_at'] or '-'}")
        if a["error_type"]:
            _say(f"  {a['error_type']}: {a['message']}")
        if a["traceback"]:
            _say("  " + a["traceback"].rstrip().replace("\n", "\n  "))


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
    from qlite.index.db import Index
    from qlite.index.reindex import reindex as rebuild
    from qlite.store import Store

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


def parse_age(text: str, option: str = "--older-than") -> float:
    """'30d', '12h', '90m', '45s' or plain seconds to seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise QliteError(f"{option}: expected an age such as 30d, 12h, 90m or 3600 "
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
    VM; a pack's batched record is deleted with the last of its members). An idempotency key
    is remembered until its job is purged: the same key put after that is a new job. With
    QLITE_SIGNING_KEY set, --older-than is at least 7d (the replay window, docs/signing.md).

    Example: qlite purge --state failed --older-than 30d
    """
    import time

    from qlite.envelope import (
        pack_result_key,
        parse_pack_key,
        payload_key,
        result_key,
        value_key,
    )
    from qlite.index.db import TERMINAL
    from qlite.store import Store

    states = state or list(TERMINAL)
    bad = [s for s in states if s not in TERMINAL]
    if bad:
        raise QliteError(f"--state: only finished jobs can be purged: succeeded, failed or "
                         f"cancelled (got {bad[0]!r})")
    age = parse_age(older_than)
    settings = Settings.load(db=db, url=url, endpoint_url=endpoint_url)
    from qlite.signing import REPLAY_WINDOW

    if settings.signing_key is not None and age < REPLAY_WINDOW:
        # A purged job's signed envelope, put back, must be too old to run (docs/signing.md).
        raise QliteError(f"--older-than {older_than}: with QLITE_SIGNING_KEY set, purge keeps "
                         f"jobs for the {REPLAY_WINDOW // 86400}-day replay window of signed "
                         f"envelopes. Try: --older-than {REPLAY_WINDOW // 86400}d")
    before = time.time() - age
    store = Store(settings.require_url(), settings.endpoint_url)
    index = _index(db, url, readonly=False)
    total = 0
    while jobs := index.purgeable(states, before, queue):
        ids = [j["id"] for j in jobs]
        # Objects first (records, large results and payloads): a crash re-purges.
        store.delete_many([k for i in ids for k in (result_key(i), value_key(i),
                                                    payload_key(i))])
        total += index.purge(ids)
        # A pack's batched record goes with the last of its members.
        gone = index.forget_packs(sorted({j["pack"] for j in jobs if j["pack"]}))
        store.delete_many([pack_result_key(parse_pack_key(k)[1]) for k in gone])
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

    from qlite.envelope import now_rfc3339

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


@app.command()
@_errors
def presign(
    queue: Annotated[str, typer.Option(help="queue the job goes to")] = "default",
    expires: Annotated[int, typer.Option(help="seconds the URL stays valid (at most 604800)")
                       ] = 3600,
    job_id: Annotated[str | None, typer.Option("--id", help="job id (default: a new one)")
                      ] = None,
    key: Annotated[str | None, typer.Option(
        help="idempotency key: the job id is derived from it, as with qlite put --key")] = None,
    post: Annotated[bool, typer.Option(
        "--post", help="an HTML-form POST policy for any key under inbox/QUEUE/ instead")
                    ] = False,
    max_bytes: Annotated[int | None, typer.Option(
        help="--post: largest upload in bytes (default QLITE_MAX_PAYLOAD)")] = None,
    url: Url = None,
    endpoint_url: Endpoint = None,
) -> None:
    """Print a presigned upload as JSON, so a browser or a program in any language enqueues
    without credentials (signed with yours; see docs/deploy.md).

    PUT (default): one new job, {"id", "key", "url", "headers", ...}; upload the envelope with
    that id and exactly those headers. --post: {"url", "fields", "key_prefix", "max_bytes"} for
    a multipart/form-data POST of any number of jobs under inbox/QUEUE/.

    Example: qlite presign --queue default --expires 600 | jq -r .url
    """
    from qlite.presign import presign_post, presign_put

    if post:
        if job_id is not None or key is not None:
            raise QliteError("--post signs any key under inbox/QUEUE/, so --id and --key do "
                             "not apply. Try: drop them, or presign a PUT without --post")
        out = presign_post(url, queue=queue, expires=expires, max_bytes=max_bytes,
                           endpoint_url=endpoint_url)
    else:
        if max_bytes is not None:
            raise QliteError("--max-bytes limits --post uploads only (a presigned PUT is one "
                             "envelope, checked by the worker). Try: add --post")
        out = presign_put(url, queue=queue, job_id=job_id, key=key, expires=expires,
                          endpoint_url=endpoint_url)
    typer.echo(json.dumps(out, indent=2))


# -- seeing: stats, top, dashboard (docs/observe.md) ------------------------------------------

Since = Annotated[str, typer.Option(
    "--since", help="the window of throughput and latency: 1h, 15m, 1d, 3600")]


@app.command()
@_errors
def doctor(
    as_json: AsJson = False,
    url: Url = None,
    endpoint_url: Endpoint = None,
    db: Db = None,
) -> None:
    """Check settings, credentials, the bucket, read/write/delete, that the server enforces
    If-None-Match and If-Match (qlite's one-job-per-key guarantee rests on it), clock skew,
    Litestream and the index replica's freshness. Prints a fix for each failure; exit 1 if any
    check fails. Writes and deletes one scratch object under the queue's doctor/ prefix.

    Example: qlite doctor --json
    """
    from qlite.ops.doctor import diagnose, render, to_json

    checks = diagnose(url=url, endpoint_url=endpoint_url, db=db)
    typer.echo(json.dumps(to_json(checks)) if as_json else render(checks))
    raise typer.Exit(0 if to_json(checks)["ok"] else 1)


@app.command()
@_errors
def stats(
    since: Since = "1h",
    as_json: AsJson = False,
    db: Db = None,
    url: Url = None,
) -> None:
    """Jobs per state and queue, throughput, p50/p95 wait and run time (overall and per task),
    the oldest waiting job, failure rate, S3 requests per job and dollars per million jobs at
    AWS list prices. Reads the worker's index (run on the worker VM).

    Example: qlite stats --since 15m --json
    """
    from qlite.ops.stats import lines, stats

    s = stats(_index(db, url), parse_age(since, "--since") or 1.0)
    if as_json:
        typer.echo(json.dumps(s))
        return
    for line in lines(s):
        typer.echo(line)


@app.command()
@_errors
def top(
    since: Since = "1h",
    once: Annotated[bool, typer.Option(help="print one frame and exit")] = False,
    db: Db = None,
    url: Url = None,
) -> None:
    """A live view of the worker's index, redrawn every second until Ctrl-C: jobs per state
    and queue, per-task throughput and p50/p95 wait and run time, the latest failures, S3 cost.

    Example: qlite top --since 15m
    """
    from qlite.ops.top import run

    run(_index(db, url), parse_age(since, "--since") or 1.0, once=once)


@app.command()
@_errors
def dashboard(
    host: Annotated[str, typer.Option(
        help="address to bind; anything but 127.0.0.1 exposes job data to the network")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free port)")] = 8765,
    token: Annotated[str | None, typer.Option(
        "--token", help="allow retry and cancel to requests carrying it "
        "(env QLITE_DASHBOARD_TOKEN; unset: read-only)")] = None,
    db: Db = None,
    url: Url = None,
    endpoint_url: Endpoint = None,
) -> None:
    """Serve a web dashboard of the worker's index until Ctrl-C: queues, recent and failed
    jobs with their tracebacks, per-task charts of throughput and run time. Read-only unless
    started with a token; then the page shows Retry and Cancel buttons.

    Example: QLITE_DASHBOARD_TOKEN="$(openssl rand -hex 16)" qlite dashboard --port 8765
    """
    from qlite.ops.dashboard import Dashboard, make_server

    settings = Settings.load(db=db, url=url, endpoint_url=endpoint_url, dashboard_token=token)
    index = _index(db, url)  # fails early, with a hint, when there is no index here
    index.close()
    client = _client(url, endpoint_url) if settings.dashboard_token and settings.url else None
    board = Dashboard(settings.db_path(), token=settings.dashboard_token, client=client)
    try:
        server = make_server(board, host, port)
    except OSError as e:
        raise QliteError(f"--host {host} --port {port}: cannot listen: {e.strerror or e}. "
                         "Try: another --port (0 picks a free one)") from None
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    where = f"http://{shown}:{bound_port}/"
    mode = "retry and cancel allowed with the token" if board.token else "read-only"
    typer.echo(f"qlite dashboard on {where} ({mode}); Ctrl-C stops it", err=False)
    if board.token:
        typer.echo(f"open {where}#token=YOUR_TOKEN, or paste the token into the page")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: bound to {host}: anyone who can reach it sees job arguments "
                   "and tracebacks", err=True)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
@_errors
def logs(
    job_id: Annotated[str, typer.Argument(help="job id")],
    as_json: AsJson = False,
    db: Db = None,
    url: Url = None,
    endpoint_url: Endpoint = None,
) -> None:
    """Print the log lines a job's handler wrote while it ran, per attempt: from the worker's
    index on the worker VM, else from the job's results/ record. At most 200 lines or 32 KiB
    are kept per attempt.

    Example: qlite logs 0192f1c4-8f3e-7abc-9def-0123456789ab --json
    """
    from qlite.worker.logs import attempts_of, render

    try:
        job = _index(db, url).get(job_id)
    except QliteError:  # not on the worker VM: the results/ record has the lines too
        job = None
    if job is not None:
        attempts = attempts_of(job=job)
    else:
        attempts = attempts_of(record=_client(url, endpoint_url).status(job_id))
    if as_json:
        typer.echo(json.dumps({"id": job_id, "attempts": attempts}))
    else:
        _say(render(attempts) if attempts else f"job {job_id} has no attempts yet")
