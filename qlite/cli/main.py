"""The qlite CLI: parse, call the library, print. Errors become one ``Error: ...`` line and a
non-zero exit; a traceback means a bug. ``qlite put`` is served by put.py (no typer), from the
option table both share."""

from __future__ import annotations

import functools
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from qlite.app import load_app
from qlite.cli import put as putcmd
from qlite.errors import QliteError, WaitTimeout
from qlite.ops.running import progress_text, running_for
from qlite.settings import Settings, setting
from qlite.states import INDEXED, TERMINAL
from qlite.status import JobStatus

app = typer.Typer(
    help="qlite: background jobs on S3-compatible storage plus SQLite.\n\n"
         "Producers run 'qlite put'; one worker VM runs 'qlite worker'; anyone with read "
         "access to results/ runs 'qlite status' and 'qlite wait'.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,
)



def _setting(name: str, text: str) -> Any:
    """The option of setting ``name``: flag, env var and default from the table in
    qlite/settings.py, so --help cannot drift from it."""
    s = setting(name)
    return typer.Option(s.option, help=s.cli_help(text), show_default=False)


Url = Annotated[str | None, _setting("url", "s3://bucket[/prefix]")]
Endpoint = Annotated[str | None, _setting("endpoint_url", "S3 endpoint (AWS_ENDPOINT_URL works "
                                                          "too)")]
Db = Annotated[str | None, _setting("db", "SQLite index file")]
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


def _put(**values: Any) -> None:
    typer.echo(putcmd.put(**values))


def _put_signature() -> inspect.Signature:
    """put's parameters from the table in qlite/cli/put.py, which its argparse parser (the
    fast path qlite/__main__.py takes) reads too."""
    params = []
    for a in putcmd.ARGUMENTS:
        kind = a.kind if a.default is ... else a.kind | None
        params.append(inspect.Parameter(
            a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=inspect.Parameter.empty if a.default is ... else a.default,
            annotation=Annotated[kind, typer.Argument(help=a.help, show_default=False)]))
    for o in putcmd.OPTIONS:
        params.append(inspect.Parameter(
            o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default,
            annotation=Annotated[o.kind | None, typer.Option(o.flag, help=o.help,
                                                             metavar=o.metavar,
                                                             show_default=False)]))
    return inspect.Signature(params)


_put.__signature__ = _put_signature()  # type: ignore[attr-defined]
_put.__annotations__ = {p.name: p.annotation
                        for p in _put.__signature__.parameters.values()}  # type: ignore[attr-defined]
app.command("put", help=putcmd.HELP + "\n\n" + putcmd.EPILOG.replace("\n  ", "\n\n  "))(
    _errors(_put))


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
    queue: Annotated[list[str] | None, _setting(
        "queues", "queue to serve, repeatable, in priority order; NAME=WEIGHT for weighted")
    ] = None,
    concurrency: Annotated[int | None, _setting("concurrency", "jobs run at once")] = None,
    lifo: Annotated[list[str] | None, _setting(
        "lifo", "queue claimed newest first (LIFO), repeatable")] = None,
    burst: Annotated[bool, typer.Option(help="exit 0 once no job is runnable now")] = False,
    replicate: Annotated[str | None, _setting(
        "replicate", "auto, on or off: Litestream replication of the index")] = None,
    pool: Annotated[str | None, _setting(
        "pool", "thread or process: process runs every job in a child process")] = None,
    url: Url = None,
    endpoint_url: Endpoint = None,
    db: Db = None,
    max_attempts: Annotated[int | None, _setting(
        "max_attempts", "default attempts per job")] = None,
    lease: Annotated[float | None, _setting("lease", "lease seconds of a running job")] = None,
    progress_every: Annotated[float | None, _setting(
        "progress_every", "seconds between a job's progress writes to the bucket")] = None,
    grace: Annotated[float | None, _setting(
        "grace", "seconds running jobs get after SIGTERM")] = None,
    shards: Annotated[int | None, _setting(
        "shards", "shards of the inbox for a fleet of workers (the first worker on the bucket "
        "fixes it)")] = None,
    node: Annotated[str | None, _setting(
        "node", "this worker's stable name in the fleet and its replica path")] = None,
    fleet_lease: Annotated[float | None, _setting(
        "fleet_lease", "seconds a worker's shard lease lasts (the first worker on the bucket "
        "fixes it)")] = None,
    poll_min: Annotated[float | None, _setting(
        "poll_min", "most seconds between LISTs while busy")] = None,
    poll_max: Annotated[float | None, _setting(
        "poll_max", "idle LIST back-off cap in seconds")] = None,
    doorbell: Annotated[str | None, _setting(
        "doorbell", "on or off: an idle worker sleeps on coord/doorbell.json")] = None,
    max_payload: Annotated[int | None, _setting(
        "max_payload", "largest inline envelope in bytes")] = None,
    log_level: Annotated[str | None, _setting(
        "log_level", "DEBUG, INFO, WARNING or ERROR")] = None,
    log_format: Annotated[str | None, _setting("log_format", "text or json log lines")] = None,
    metrics_port: Annotated[int | None, _setting(
        "metrics_port", "serve Prometheus metrics on this port; unset: off")] = None,
    metrics_host: Annotated[str | None, _setting(
        "metrics_host", "address of the metrics server")] = None,
    signing_key: Annotated[str | None, _setting(
        "signing_key", "kid:secret[,kid:secret] to verify and sign inbox objects; prefer the "
        "env var, ps shows options")] = None,
    encryption_key: Annotated[str | None, _setting(
        "encryption_key", "kid:KEY[,kid:KEY] to open sealed arguments and seal results; prefer "
        "the env var, ps shows options")] = None,
) -> None:
    """Run jobs until SIGTERM or SIGINT (then finish running jobs within the grace period).

    Example: qlite worker --app tasks:app --queue high --queue default --concurrency 8
    (--queue latest --lifo latest: that queue's newest jobs first)
    """
    settings = Settings.load(url=url, endpoint_url=endpoint_url, db=db, queues=queue,
                             lifo=lifo, concurrency=concurrency, pool=pool, replicate=replicate,
                             max_attempts=max_attempts,
                             lease=lease, progress_every=progress_every, shards=shards,
                             fleet_lease=fleet_lease, node=node,
                             grace=grace, poll_min=poll_min, poll_max=poll_max,
                             doorbell=doorbell, max_payload=max_payload, log_level=log_level,
                             log_format=log_format, metrics_port=metrics_port,
                             metrics_host=metrics_host,
                             signing_key=signing_key, encryption_key=encryption_key)
    settings.require_url()
    from qlite.worker.logs import setup

    setup(settings.log_level, settings.log_format)
    from qlite.worker.loop import Worker

    w = Worker(load_app(app_spec), settings)
    w.install_signals()
    raise typer.Exit(w.run(burst=burst))


@app.command()
@_errors
def fleet(
    as_json: AsJson = False,
    url: Url = None,
    endpoint_url: Endpoint = None,
) -> None:
    """The workers sharing this bucket, from coord/ in the bucket: each member's node, the
    shards it owns, when it last renewed its lease (by its own clock) and the jobs it has
    published (and per minute since it started); and shards nobody owns (taken within a
    lease). Logs say when a shard is taken, handed over or taken from a dead worker.

    Example: qlite fleet --json
    """
    from qlite.store import Store
    from qlite.worker.fleet import describe

    settings = Settings.load(url=url, endpoint_url=endpoint_url)
    out = describe(Store(settings.require_url(), settings.endpoint_url))
    if as_json:
        typer.echo(json.dumps(out))
        return
    if not out["members"]:
        typer.echo("no worker has joined (coord/ is empty): start one with qlite worker")
        return
    typer.echo(f"{len(out['members'])} member(s), {out['shards']} shards, lease "
               f"{out['lease']:.0f}s, table generation {out['table_gen']}")
    for m in out["members"]:
        state = "fenced" if m["fenced_by"] else "live"
        renewed = f"{m['renewed_ago']:.0f}s ago" if m["renewed_ago"] is not None else "-"
        typer.echo(f"  {m['mid']}  {state:8}  {m['shards']:4} shard(s) {m['shard_ranges']}  "
                   f"renewed {renewed}  {m['jobs']} job(s) ({m['jobs_per_min'] or 0}/min)  "
                   f"node={m['node']}")
    if out["unowned"]:
        typer.echo(f"  unowned: {out['unowned']} shard(s) {out['unowned_ranges']}")


def _client(url: str | None, endpoint_url: str | None) -> Any:
    from qlite.producer import Client

    return Client(url, endpoint_url=endpoint_url)


def _print_status(status: JobStatus) -> None:
    _say(f"{status.id}  {status.state}  task={status.task}  queue={status.queue}  "
         f"attempts={status.attempts}")
    if status.progress:
        _say(f"progress: {progress_text(status.progress)}")
    if status.result is not None:
        _say(f"result: {json.dumps(status.result)}")
    elif status.encrypted:
        _say("result: encrypted (set QLITE_ENCRYPTION_KEY to read it)")
    if status.error:
        _say(f"error: {status.error.get('type')}: {status.error.get('message')}")


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
    s = _client(url, endpoint_url).job_status(job_id)
    typer.echo(json.dumps(s.to_record())) if as_json else _print_status(s)


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
    state: Annotated[str | None, typer.Option(help=", ".join(INDEXED))] = None,
    queue: Annotated[str | None, typer.Option(help="only this queue")] = None,
    limit: Annotated[int, typer.Option(help="at most N jobs, newest first")] = 50,
    as_json: AsJson = False,
    db: Db = None,
    url: Url = None,
) -> None:
    """List jobs in the worker's index (run on the worker VM). Running jobs show how long
    they have run and their last ctx.progress.

    Example: qlite ls --state failed --limit 20; qlite ls --state running
    """
    if state is not None and state not in INDEXED:
        raise QliteError(f"--state: expected one of {', '.join(INDEXED)} (got {state!r})")
    from qlite.index.rows import LISTED

    rows = _index(db, url).jobs(state, queue, limit)
    if as_json:
        typer.echo(json.dumps([{**{k: getattr(r, k) for k in LISTED}, "error": r.error,
                                "progress": r.progress} for r in rows]))
        return
    for r in rows:
        error = r.error if r.state != "succeeded" else None
        line = (f"{r.id}  {r.state:<9}  {r.queue:<10}  {r.task:<24}  "
                f"attempts={r.attempts}/{r.max_attempts}  enqueued={r.enqueued_at}"
                + (f"  error={error['type']}" if error else ""))
        if r.state == "running":  # how long it has run, and how far it got
            line += f"  running={running_for(r.started_at)}"
            if r.progress:
                line += f"  progress={progress_text(r.progress)}"
        _say(line)


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
    env = redacted(job.envelope)  # secrets in arguments are not shown
    from qlite.crypto import opened_error, opened_result

    cipher = Settings.load().encryption_key  # sealed fields (docs/encryption.md) are opened
    result = opened_result(cipher, job_id, job.result)
    attempts = [{**vars(a), **opened_error(cipher, job_id, {
        "message": a.message, "traceback": a.traceback})} for a in job.attempt_log]
    if env.get("sealed") is not None:
        env["args"], env["kwargs"] = ["encrypted"], {}
    if as_json:
        typer.echo(json.dumps({**job.public(), "envelope": env, "result": result,
                               "attempt_log": attempts}))
        return
    shown = {**{name: getattr(job, name) for name in (
        "id", "state", "task", "queue", "attempts", "max_attempts", "key", "enqueued_at",
        "started_at", "finished_at")}, "result": None if job.result_json is None else
        json.dumps(result, ensure_ascii=False)}
    for name, value in shown.items():
        _say(f"{name + ':':<14}{value if value is not None else '-'}")
    # Crash attribution (docs/states.md): strikes pinned on the job, worker deaths it shared.
    _say(f"{'crashes:':<14}{job.crashes}" + ("  (suspect: runs alone next)"
                                              if job.suspect else ""))
    _say(f"{'worker lost:':<14}{job.lost}")
    _say(f"{'progress:':<14}{progress_text(job.progress) if job.progress else '-'}")
    _say(f"{'args:':<14}{json.dumps(env['args'])}")
    _say(f"{'kwargs:':<14}{json.dumps(env['kwargs'])}")
    for a in attempts:
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
    """'30d', '12h', '90m', '45s', '2w' or plain seconds to seconds."""
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
        help=f"{', '.join(TERMINAL)}; repeatable (default: all of them)")] = None,
    queue: Annotated[str | None, typer.Option(help="only this queue")] = None,
    db: Db = None,
    url: Url = None,
    endpoint_url: Endpoint = None,
) -> None:
    """Delete finished jobs from the index and their records from results/ (run on the worker
    VM; a pack's batched record is deleted with the last of its members), and cancel/retry
    markers as old whose job never arrived. An idempotency key
    is remembered until its job is purged: the same key put after that is a new job. With
    QLITE_SIGNING_KEY set, --older-than is at least 7d (the replay window, docs/signing.md).

    Example: qlite purge --state failed --older-than 30d
    """
    import time

    from qlite.index.purge import finished_states
    from qlite.index.purge import purge as purge_jobs
    from qlite.store import Store

    age, states = parse_age(older_than), finished_states(state)  # before touching anything
    settings = Settings.load(db=db, url=url, endpoint_url=endpoint_url)
    from qlite.signing import REPLAY_WINDOW

    if settings.signing_key is not None and age < REPLAY_WINDOW:
        # A purged job's signed envelope, put back, must be too old to run (docs/signing.md).
        raise QliteError(f"--older-than {older_than}: with QLITE_SIGNING_KEY set, purge keeps "
                         f"jobs for the {REPLAY_WINDOW // 86400}-day replay window of signed "
                         f"envelopes. Try: --older-than {REPLAY_WINDOW // 86400}d")
    store = Store(settings.require_url(), settings.endpoint_url)
    done = purge_jobs(_index(db, url, readonly=False), store, age, states=states, queue=queue)
    typer.echo(f"purged {done.jobs} job(s) finished before "
               f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(done.before))} "
               f"(states: {', '.join(done.states)})"
               + (f"; deleted {done.markers} cancel/retry marker(s) whose job never arrived"
                  if done.markers else ""))


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
def keygen() -> None:
    """Print a new encryption key in the QLITE_ENCRYPTION_KEY format (kid:KEY).

    To rotate, put the new key first and keep the old ones after it until no job sealed with
    them is left: export QLITE_ENCRYPTION_KEY="$(qlite keygen),$QLITE_ENCRYPTION_KEY"

    Example: export QLITE_ENCRYPTION_KEY="$(qlite keygen)"
    """
    from qlite.crypto import keygen as new_key

    typer.echo(new_key())


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
    AWS list prices. Reads the worker's index (run on the worker VM); with QLITE_URL set, also
    the fleet of workers on the bucket (qlite fleet).

    Example: qlite stats --since 15m --json
    """
    from qlite.ops.stats import lines, stats
    from qlite.store import Store
    from qlite.worker.fleet import describe_or_why, fleet_line

    s = stats(_index(db, url), parse_age(since, "--since") or 1.0)
    settings = Settings.load(url=url)
    fleet = describe_or_why(Store(settings.url, settings.endpoint_url) if settings.url else None)
    if as_json:
        typer.echo(json.dumps({**s, "fleet": fleet}))
        return
    for line in lines(s):
        typer.echo(line)
    typer.echo(fleet_line(fleet))


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
    board = Dashboard(settings.db_path(), token=settings.dashboard_token, client=client,
                      cipher=settings.encryption_key, url=settings.url,
                      endpoint_url=settings.endpoint_url)
    try:
        server = make_server(board, host, port)
    except OSError as e:
        raise QliteError(f"--host {host} --port {port}: cannot listen: {e.strerror or e}. "
                         "Try: another --port (0 picks a free one)") from None
    bound_host, bound_port = str(server.server_address[0]), server.server_address[1]
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
        attempts = attempts_of(record=_client(url, endpoint_url).job_status(job_id))
    if as_json:
        typer.echo(json.dumps({"id": job_id, "attempts": attempts}))
    else:
        _say(render(attempts) if attempts else f"job {job_id} has no attempts yet")
