"""The worker: ingest -> claim -> execute -> record -> publish, until told to stop.

One loop on the main thread owns SQLite; handlers run on a thread pool and S3 requests on a
second, small one. Signal handlers only set flags; the loop acts on them (graceful stop: no new
claims, running jobs get ``grace`` seconds, outcomes are published, exit 0).

Publishing is an outbox: a terminal row is written first, then ``results/{id}.json`` is PUT,
then the inbox object is deleted, then the row is marked published. A crash anywhere in
between repeats the remaining steps, which are idempotent.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import random
import signal
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qlite import envelope
from qlite.app import App
from qlite.errors import EnvelopeError, TaskError
from qlite.index.db import TERMINAL, Index, Limits
from qlite.index.reindex import reindex
from qlite.producer import Client
from qlite.schedule import tick_key
from qlite.settings import Settings
from qlite.store import Store
from qlite.worker.execute import Claim, Outcome, run
from qlite.worker.faults import crash_point
from qlite.worker.ingest import Ingest
from qlite.worker.isolate import kill_children, run_in_child
from qlite.worker.logs import install_capture, job_fields
from qlite.worker.replica import Replica
from qlite.worker.retry import RetryPolicy

log = logging.getLogger(__name__)

PACK_FLUSH = 1.0  # seconds: how long a pack's finished jobs may wait for their batched record


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or 0}"


def disk_full(error: BaseException) -> bool:
    """SQLite's "database or disk is full", or ENOSPC from the file system."""
    while error is not None:
        if "disk is full" in str(error) or getattr(error, "errno", None) == errno.ENOSPC:
            return True
        error = error.__cause__
    return False


def is_local(owner: str) -> bool:
    return owner.rsplit(":", 2)[0] == socket.gethostname()


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` ran on this host and that process is gone. Workers on other
    hosts are judged by their lease alone."""
    try:
        host, pid_text, started = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    now_started = _start_time(pid)
    return now_started is not None and started != "0" and now_started != started


class Worker:
    def __init__(self, app: App, settings: Settings, *, store: Store | None = None,
                 clock=time.time, rng: random.Random | None = None):
        self.app = app
        self.settings = settings
        self.store = store or Store(settings.require_url(), settings.endpoint_url)
        self.replica = Replica.from_settings(settings)
        self.index: Index = None  # type: ignore[assignment]  # opened by run(), after restore
        self.clock = clock
        self.rng = rng or random.Random()
        self.owner = owner_id()
        self.handlers = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="qlite-job")
        self.io = ThreadPoolExecutor(8, thread_name_prefix="qlite-io")
        self.client = Client(str(self.store.url), endpoint_url=settings.endpoint_url,
                             store=self.store, signing_key=settings.signing_key)
        self.running: dict[Future, Claim] = {}
        self.wake = threading.Event()
        self.stopping = False
        self.deadline: float | None = None
        self.poll_every = settings.poll_min
        self.next_poll = 0.0
        self.next_beat = 0.0
        self.outage = 0.0  # back-off after a failed step, seconds
        self.disk_full = False
        # job id -> its inbox key and request markers: results/ written, delete due
        self.acked: dict[str, list[str]] = {}
        self.acked_at: float | None = None
        self.next_publish = 0.0  # when to look for terminal jobs again (sooner: see _collect)
        self.pack_seen: dict[str, float] = {}  # pack key -> when a member was first seen done
        self.packed: set[str] = set()  # running jobs that came in a pack
        self.record_failures: dict[str, int] = {}
        self.cancels: dict[str, threading.Event] = {}  # running job id -> its ctx.cancelled
        self.next_cancel_check = 0.0
        self.next_expiry = 0.0  # when the next queued job expires (0: look it up)
        self.next_fire: dict[str, float] = {}  # schedule name -> its next tick
        self.held = False  # the last claim left runnable jobs behind, held back by limits
        self.backlog = False  # the last claim filled every free slot
        self.held_until: float | None = None
        self.published = 0  # jobs acknowledged by this process, for qlite stats
        self.flushed: dict[str, int] = {}  # counters already added to the index
        self.metrics: Any = None  # metrics.Metrics when --metrics-port is set
        install_capture()  # a handler's own log lines are kept with its job
        tasks = app.tasks.values()
        self.concurrency_limits = {t.name: t.concurrency for t in tasks if t.concurrency}
        self.rate_limits = {t.name: (t.rate_key, *t.rate) for t in tasks if t.rate}
        if app.builtins:
            from qlite.tasks import register

            register(app)
        unknown = [q for q in settings.queues if q not in app.queues]
        if unknown:
            raise TaskError(f"--queue {unknown[0]}: no task of this app uses that queue (known: "
                            f"{', '.join(app.queues)}). Try: a known name, or declare it with "
                            f"qlite.App(queues=[...])")

    # -- signals ----------------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Flags only: taking the Event's lock here could deadlock against the loop holding it.
        # The loop never waits longer than a second, so it notices within one.
        if self.stopping:
            self.deadline = 0.0  # a second signal: stop waiting for running jobs
        self.stopping = True

    # -- the loop ---------------------------------------------------------------------------

    def _open_index(self) -> None:
        """Open the index. On a fresh disk, build it aside first: restore the replica (if any),
        add what finished after its last sync from results/, then move it into place, so a
        crash half-way leaves no half-built index behind."""
        path = self.settings.db_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # workers sharing the index build it once
            self._build_index(path)
        self.index = Index(path)
        if self.replica is not None:
            self.replica.check()  # starts litestream if no other worker replicates this index
        self.ingest = Ingest(self.app, self.settings, self.store, self.index, self.io,
                             self.clock)

    def _build_index(self, path: Path) -> None:
        if not path.exists():
            new = path.with_name(path.name + ".new")
            for leftover in (new, Path(f"{new}-wal"), Path(f"{new}-shm")):
                leftover.unlink(missing_ok=True)
            if self.replica is not None:
                self.replica.restore(new)
            index = Index(new)
            restored = sum(index.counts().values())
            _, written = reindex(self.store, index)
            index.close()
            for stale in (Path(f"{path}-wal"), Path(f"{path}-shm")):
                stale.unlink(missing_ok=True)  # a WAL left by a deleted index must not replay
            os.replace(new, path)
            log.info("new index: %d job(s) from the replica, %d finished job(s) from results/",
                     restored, written)

    def run(self, burst: bool = False) -> int:
        self.store.check()  # endpoint, bucket and credentials, before anything else
        if self.settings.metrics_port:  # first: a busy port fails before any other work
            from qlite.worker.metrics import start  # prometheus-client: loaded only when asked for

            self.metrics = start(self)
        self._open_index()
        keyring = self.settings.signing_key
        log.info("worker started owner=%s queues=%s concurrency=%d index=%s url=%s signing=%s",
                 self.owner, ",".join(self.settings.queues), self.settings.concurrency,
                 self.index.path, self.store.url, ",".join(keyring.kids) if keyring else "off")
        self._step_quietly(self._reap)
        while not self.stopping:
            ok = self._step(burst)
            try:
                if burst and ok and self._idle():
                    log.info("burst: no runnable job left; exiting")
                    break
                self._sleep(burst)
            except Exception as e:  # e.g. "database is locked" past the busy timeout
                log.warning("worker loop: %s: %s", type(e).__name__, e)
                time.sleep(1.0)
        return self._shutdown()

    def _step(self, burst: bool) -> bool:
        """One iteration; False when some part failed (S3 outage, disk trouble)."""
        self.wake.clear()
        ok = True
        full = False
        # Claim right after collecting, so a freed slot is refilled before the S3 work.
        for part in (self._collect_and_claim, self._publish, self._maintain,
                     self._check_cancels, lambda: self._poll(burst), self._schedule,
                     self._claim):
            try:
                part()
            except Exception as e:  # each part logs its own failure; the loop goes on
                ok = False
                if self.metrics is not None:
                    self.metrics.step_failed(part)
                if disk_full(e):
                    full = True
                    continue
                log.warning("worker step failed: %s: %s", type(e).__name__, e,
                            exc_info=log.isEnabledFor(logging.DEBUG))
        if full and not self.disk_full:
            log.error("disk full under the index %s: not taking in or claiming jobs until "
                      "space is freed; nothing is lost (jobs wait in inbox/)", self.index.path)
        elif ok and self.disk_full:
            log.info("the index is writable again: resuming")
        self.disk_full = full or (self.disk_full and not ok)
        self.outage = 0.0 if ok else min(max(self.outage * 2, 0.5), self.settings.poll_max)
        return ok

    def _idle(self) -> bool:
        return (self._quiet() and self.ingest.all_clean() and not self.acked
                and not self.index.unpublished(1))

    def _quiet(self) -> bool:
        """Nothing running and nothing runnable now."""
        return not self.running and not self._runnable_now()

    def _runnable_now(self) -> bool:
        at = self.index.next_run_at(self.settings.queues)
        return at is not None and at <= self.clock()

    def _sleep(self, burst: bool) -> None:
        now = self.clock()
        wait = self.next_poll - now if not burst else 0.05
        full = len(self.running) >= self.settings.concurrency  # a finished job wakes us
        at = None if full else self.index.next_run_at(self.settings.queues)
        if self.held and at is not None and at <= now:
            at = self.held_until  # runnable jobs wait for a limit: a slot frees or a token
        if at is not None and len(self.running) < self.settings.concurrency:
            wait = min(wait, at - now)
        if self.app.schedules and self.next_fire:
            wait = min(wait, min(self.next_fire.values()) - now)
        wait = min(max(wait, self.outage, 0.01), self.next_beat - now, 1.0,
                   max(self.next_publish - now, 0.01))
        self.wake.wait(max(wait, 0.0))  # cleared at the start of each step: no lost wake-up

    # -- parts ------------------------------------------------------------------------------

    def _poll(self, burst: bool) -> None:
        if self.stopping or self.disk_full:  # no GETs for rows that cannot be written
            return
        if self.clock() < self.next_poll and not (burst and self._quiet()):
            return
        # Do not LIST while every slot is busy and more jobs wait locally: the inbox waits.
        if len(self.running) >= self.settings.concurrency and self.backlog:
            return
        result = self.ingest.run()
        if result.taken:
            self.next_expiry = 0.0  # new jobs may expire sooner
        if result.taken or result.quarantined or self.ingest.mid_sweep():
            if result.taken or result.quarantined:
                log.info("ingested %d job(s), quarantined %d", result.taken,
                         result.quarantined)
            self.poll_every = self.settings.poll_min  # more pages to read: no back-off
        else:
            self.poll_every = min(self.poll_every * 2, self.settings.poll_max)
        self.next_poll = self.clock() + self.poll_every

    def _claim(self) -> None:
        self._start(self._claim_rows())

    def _claim_rows(self) -> list[dict]:
        """Claim jobs for the free slots (counting their attempts); _start runs them once
        that is committed."""
        free = self.settings.concurrency - len(self.running)
        if self.stopping or free <= 0:
            return []
        now = self.clock()
        self._expire(now)
        limits = Limits(self.concurrency_limits, self.rate_limits)
        rows = self.index.claim(self._queue_order(), free, self.owner, self.settings.lease,
                                now, limits)
        self.backlog = len(rows) == free  # more may be runnable: no LIST while slots are full
        self.held = bool(limits) and len(rows) < free
        self.held_until = limits.held_until
        return rows

    def _start(self, rows: list[dict]) -> None:
        if rows:
            crash_point("after_claim")
        for row in rows:
            claim = Claim(row["id"], row["task"], row["queue"], row["attempts"],
                          row["max_attempts"], json.loads(row["envelope"]), row["enqueued_at"])
            log.info("job started", extra=job_fields(claim))
            task = self.app.tasks.get(claim.task)
            timeout = claim.envelope.get("timeout") or (task.timeout if task else None)
            cancel = self.cancels[claim.id] = threading.Event()
            if row["packed"]:
                self.packed.add(claim.id)
            if task and (timeout or self.settings.pool == "process"):
                future = self.handlers.submit(run_in_child, self.app, claim, timeout,
                                              str(self.store.url), self.settings.endpoint_url,
                                              cancel, (self.settings.log_level,
                                                       self.settings.log_format),
                                              self.settings.signing_key)
            else:
                future = self.handlers.submit(run, self.app, claim, self.client, cancel)
            self.running[future] = claim
            if self.metrics is not None:
                self.metrics.job_started(claim.id)
            future.add_done_callback(lambda _: self.wake.set())

    def _collect_and_claim(self) -> None:
        """Record the finished jobs and claim the next ones in one SQLite commit: at
        --concurrency 1 that commit is most of the cost of a job (docs/performance.md)."""
        free = not self.stopping and len(self.running) < self.settings.concurrency
        if not free and not any(f.done() for f in self.running):
            return
        failed = None
        rows: list[dict] = []
        with self.index.batch():
            self._collect()
            try:
                rows = self._claim_rows()
            except Exception as e:  # the outcomes recorded above still commit
                failed = e
        self._start(rows)  # after the commit: an attempt is counted before its handler runs
        if failed is not None:
            raise failed

    def _collect(self) -> None:
        for future in [f for f in self.running if f.done()]:
            claim = self.running[future]
            try:
                outcome = future.result()
            except BaseException as e:  # run() catches Exception; this is SystemExit & co.
                outcome = Outcome("error", error={"type": type(e).__name__, "message": str(e),
                                                  "traceback": None})
            crash_point("after_handler")
            try:
                self._record(claim, outcome)
            except Exception as e:
                tries = self.record_failures[claim.id] = self.record_failures.get(claim.id, 0) + 1
                if disk_full(e) or tries < 3:
                    if not disk_full(e):
                        log.warning("recording the job failed (%s: %s); trying again",
                                    type(e).__name__, e, extra=job_fields(claim))
                    continue  # the outcome stays in memory; the next step records it
                # Never let one outcome block the others for good: record a plain failure.
                log.error("recording the job failed: %s: %s", type(e).__name__, e,
                          extra=job_fields(claim))
                self._step_quietly(lambda c=claim, e=e: self.index.finish(
                    c.id, c.attempt, self.owner, "failed", now=self.clock(), error={
                        "type": "RecordError", "traceback": None,
                        "message": f"the outcome could not be recorded: {type(e).__name__}"}))
            crash_point("after_record")
            # A job of its own is published at once; a packed one joins its pack's batch.
            soon = self.clock() + (0.25 if claim.id in self.packed else 0.0)
            self.next_publish = min(self.next_publish, soon)
            self.packed.discard(claim.id)
            self.record_failures.pop(claim.id, None)
            self.cancels.pop(claim.id, None)
            del self.running[future]

    def _record(self, claim: Claim, outcome: Outcome) -> None:
        now = self.clock()
        fields = job_fields(claim)
        cancel = self.cancels.get(claim.id)
        if outcome.state == "succeeded":
            ok = self.index.finish(claim.id, claim.attempt, self.owner, "succeeded",
                                   result=outcome.result, now=now, logs=outcome.logs)
            label = "succeeded"
            log.info("job succeeded", extra=fields)
        elif cancel is not None and cancel.is_set():
            error = {"type": "Cancelled", "traceback": (outcome.error or {}).get("traceback"),
                     "message": f"cancelled on request while running attempt {claim.attempt}"}
            ok = self.index.finish(claim.id, claim.attempt, self.owner, "cancelled",
                                   error=error, now=now, logs=outcome.logs)
            label = "cancelled"
            log.info("job cancelled", extra=fields)
        elif outcome.state == "snooze":
            ok = self.index.finish(claim.id, claim.attempt, self.owner, "snooze",
                                   run_at=now + (outcome.delay or 0), now=now,
                                   logs=outcome.logs)
            label = "snoozed"
            log.info("job snoozed for %.1fs", outcome.delay or 0, extra=fields)
        else:
            task = self.app.tasks.get(claim.task)
            policy = RetryPolicy(max_attempts=claim.max_attempts,
                                 base=task.backoff if task else 1.0)
            run_at = None if outcome.state == "failed" else policy.next_run(
                claim.attempt, now, self.rng, after=outcome.delay)
            error = outcome.error or {}
            if run_at is None:
                ok = self.index.finish(claim.id, claim.attempt, self.owner, "failed",
                                       error=error, now=now, logs=outcome.logs)
                label = "failed"
                log.warning("job failed: %s", error.get("message"),
                            extra={**fields, "error": error.get("type")})
            else:
                ok = self.index.finish(claim.id, claim.attempt, self.owner, "retry",
                                       error=error, run_at=run_at, now=now, logs=outcome.logs)
                label = "retry"
                log.info("job will retry in %.1fs: %s", run_at - now, error.get("message"),
                         extra={**fields, "error": error.get("type")})
        if not ok:
            log.warning("stale attempt ignored (the job was taken over)", extra=fields)
        elif self.metrics is not None:
            self.metrics.job_recorded(claim.task, claim.id, label)

    def _publish(self, flush: bool = False) -> None:
        """PUT results/ for terminal jobs, then acknowledge their inbox objects in batches:
        one DeleteObjects per 500 jobs, or per second, or when the queue goes quiet. Jobs that
        came in a pack get one results/packs/ record per pack, written once the pack is done
        or every PACK_FLUSH seconds while it runs (results batched)."""
        now = self.clock()
        failed = None
        if flush or now >= self.next_publish or self._quiet():
            self.next_publish = now + 1.0  # a job ending by expiry, cancel or reap shows then
            jobs = self.index.unpublished(500, exclude=list(self.acked))
            packed: dict[str, list[dict]] = {}
            for job in jobs:
                if job["pack"] and job["pack"] == job["inbox_key"]:
                    packed.setdefault(job["pack"], []).append(job)
            singles = [j for j in jobs if not (j["pack"] and j["pack"] == j["inbox_key"])]
            markers = self.index.markers_of([j["id"] for j in jobs]) if jobs else {}
            open_ = self.index.pack_open(list(packed)) if packed else {}
            due = []
            quiet = bool(packed) and self._quiet()
            for key in packed:
                first = self.pack_seen.setdefault(key, now)
                if flush or not open_[key] or now - first >= PACK_FLUSH or quiet:
                    due.append(key)
                else:
                    self.next_publish = min(self.next_publish, first + PACK_FLUSH)
            futures = {self.io.submit(self._write_result, j): [j] for j in singles}
            futures.update({self.io.submit(self._write_pack, key, self.index.pack_members(key),
                                           not open_[key]): packed[key] for key in due})
            for future, batch in futures.items():
                try:
                    done = future.result() or batch
                    missing = [j["id"] for j in done if j["id"] not in markers]
                    if missing:  # pack members finished earlier than this listing reached
                        markers.update(self.index.markers_of(missing))
                    for job in done:
                        self._group_done(job)
                        self.acked[job["id"]] = markers.get(job["id"], [])
                    if batch[0]["pack"] and batch[0]["pack"] == batch[0]["inbox_key"]:
                        self.pack_seen.pop(batch[0]["pack"], None)
                        if not open_[batch[0]["pack"]]:  # every member is in the record
                            self.acked[done[-1]["id"]].append(batch[0]["pack"])
                    else:
                        self.acked[batch[0]["id"]].append(batch[0]["inbox_key"])
                except Exception as e:
                    failed = e
            if futures:
                self.acked_at = self.acked_at or now
        if self.acked and (flush or self._quiet() or len(self.acked) >= 500
                           or now - (self.acked_at or 0) >= 1.0):
            crash_point("after_result_put")
            self.store.delete_many([k for keys in self.acked.values() for k in keys])
            crash_point("after_inbox_delete")
            self.index.mark_published(list(self.acked))
            self.published += len(self.acked)
            self.acked.clear()
            self.acked_at = None
        if failed is not None:
            raise failed

    def _record_of(self, job: dict) -> dict:
        """The job's public status record; a result too large to inline is written to its
        own object first (claim check: the record stays small to poll)."""
        record = result_record(job)
        if job.get("result") and len(job["result"]) > self.settings.max_payload:
            self.store.put(envelope.value_key(job["id"]), job["result"].encode("utf-8"))
            record = {**record, "result": None, "result_ref": envelope.value_key(job["id"])}
        return record

    def _write_result(self, job: dict) -> None:
        """PUT the terminal record, then enqueue the job's follow-ups."""
        record = self._record_of(job)
        self.store.put(envelope.result_key(job["id"]), json.dumps(record).encode())
        self._follow_ups(job, record)

    def _write_pack(self, key: str, members: list[dict], complete: bool) -> list[dict]:
        """PUT the batched record of every terminal member of pack ``key`` (``members``), then
        enqueue the follow-ups of those not published before; returns those (to acknowledge).
        Runs on the I/O pool: no SQLite here."""
        pack_id = envelope.parse_pack_key(key)[1]
        records = {m["id"]: {**self._record_of(m), "pack": pack_id} for m in members}
        body = {"v": 1, "pack": pack_id, "complete": complete, "jobs": records}
        self.store.put(envelope.pack_result_key(pack_id), json.dumps(body).encode())
        new = [m for m in members if not m["published"]]
        for m in new:
            self._follow_ups(m, records[m["id"]])
        return new

    def _follow_ups(self, job: dict, record: dict) -> None:
        """Enqueue the job's follow-ups (webhook, on_success, on_failure) with keys derived
        from its id: repeating this after a crash repeats the PUTs, never the follow-ups."""
        if record.get("result_ref"):
            record = {**record, "result": json.loads(job["result"])}  # for on_success
        env = json.loads(job["envelope"])
        follow = []
        if env.get("webhook"):
            follow.append(("webhook.deliver", [], {"url": env["webhook"], "status": record},
                           "webhook"))
        if env.get("on_success") and job["state"] == "succeeded":
            follow.append((env["on_success"], [record["result"]], {}, "on_success"))
        if env.get("on_failure") and job["state"] != "succeeded":
            follow.append((env["on_failure"], [record], {}, "on_failure"))
        for task, args, kwargs, kind in follow:
            try:
                self.client.put(task, args, kwargs, queue=job["queue"],
                                key=f"{kind}:{job['id']}")
            except EnvelopeError as e:  # e.g. a result too large to pass on: say so, go on
                log.error("%s of job %s not enqueued: %s", kind, job["id"], e)

    def _group_done(self, job: dict) -> None:
        """When ``job`` is the last member of its group to finish, enqueue the group's ``then``
        (all succeeded: the results in order) or ``on_failure`` (the members' statuses). The
        key ``group:ID`` makes a repeat after a crash, or two last members, one job."""
        group = json.loads(job["envelope"]).get("group")
        if not group:
            return
        members = self.index.group_members(group["id"])
        if len(members) < group["size"] or any(m["state"] not in TERMINAL for m in members):
            return
        members.sort(key=lambda m: json.loads(m["envelope"])["group"]["index"])
        if all(m["state"] == "succeeded" for m in members):
            task, arg = group.get("then"), [json.loads(m["result"]) for m in members]
        else:
            task, arg = group.get("on_failure"), [
                {"id": m["id"], "state": m["state"],
                 "error": json.loads(m["error"]) if m["error"] else None} for m in members]
        if task:
            try:
                self.client.put(task, [arg], queue=job["queue"], key=f"group:{group['id']}")
                log.info("group finished group_id=%s members=%d enqueued=%s", group["id"],
                         len(members), task)
            except EnvelopeError as e:
                log.error("group %s: %s not enqueued: %s", group["id"], task, e)

    def _queue_order(self) -> tuple[str, ...]:
        """The queues in claim order: as given, or a weighted random order (a queue of weight
        w goes first with odds w / total)."""
        weights = self.settings.weights
        if not weights:
            return self.settings.queues
        keyed = sorted(zip(self.settings.queues, weights, strict=True),
                       key=lambda qw: self.rng.random() ** (1 / qw[1]), reverse=True)
        return tuple(q for q, _ in keyed)

    def _expire(self, now: float) -> None:
        if now < self.next_expiry:
            return
        for row in self.index.expire(now, rows=True):
            log.info("job expired before it started", extra=job_fields(row))
            if self.metrics is not None:
                self.metrics.job_expired(row["task"])
        self.next_expiry = self.index.next_expiry() or float("inf")

    def _check_cancels(self) -> None:
        """Raise ctx.cancelled for running jobs whose cancellation was requested."""
        now = self.clock()
        if not self.running or now < self.next_cancel_check:
            return
        self.next_cancel_check = now + 0.5
        for job_id in self.index.cancelling(list(self.cancels)):
            if not self.cancels[job_id].is_set():
                claim = next((c for c in self.running.values() if c.id == job_id), None)
                log.info("cancellation requested for the running job",
                         extra=job_fields(claim) if claim else {"job_id": job_id})
                self.cancels[job_id].set()

    def _schedule(self) -> None:
        """Enqueue the due ticks of periodic tasks (each tick is one job: see schedule.py)."""
        if not self.app.schedules or self.stopping or self.disk_full:
            return
        now = self.clock()
        for s in self.app.schedules.values():
            if self.next_fire.get(s.name, 0.0) > now:
                continue
            last = self.index.schedule_last(s.name, now)
            ticks, new_last = s.due(last, now)
            task = self.app.tasks[s.task]
            for tick in ticks:
                at = envelope.now_rfc3339(tick)
                job = self.client.put(s.task, s.args, s.kwargs, queue=s.queue,
                                      key=tick_key(s.name, tick), priority=task.priority,
                                      meta={"schedule": s.name, "tick": at})
                self.index.schedule_fired(s.name, tick, now)
                self.ingest.expect(s.queue)
                self.next_poll = 0.0  # take it in now rather than after the idle back-off
                log.info("periodic job enqueued schedule=%s tick=%s job_id=%s", s.name, at,
                         job.id)
            if new_last > last and not ticks:
                self.index.schedule_fired(s.name, new_last, now)
                log.info("periodic ticks missed while no worker ran were skipped schedule=%s "
                         "misfire=%s", s.name, s.misfire)
            self.next_fire[s.name] = s.next_after(max(last, new_last))

    def _maintain(self) -> None:
        now = self.clock()
        if now < self.next_beat:
            return
        self.next_beat = now + self.settings.lease / 3
        if self.running:
            self.index.heartbeat(self.owner, self.settings.lease, now)
        self._reap()
        if self.replica is not None:
            self.replica.check()
        self._flush_counters()

    def _flush_counters(self) -> None:
        """Add the S3 requests and jobs published since the last flush to the index's running
        totals (qlite stats: requests per job, dollars per million jobs)."""
        totals = {f"s3.{op}": n for op, n in dict(self.store.requests).items()}
        totals["jobs.published"] = self.published
        self.index.add_counters({k: n - self.flushed.get(k, 0) for k, n in totals.items()},
                                self.clock())
        self.flushed = totals

    def _reap(self) -> None:
        owners = [o for o in self.index.running_owners() if o != self.owner]
        dead = [o for o in owners if owner_is_dead(o)]
        # A live process on this host may just be slow to heartbeat (its loop blocked on S3):
        # its jobs are not taken from it.
        alive = [self.owner] + [o for o in owners if o not in dead and is_local(o)]
        for row in self.index.reap(dead, alive, self.clock()):
            log.warning("job %s after its worker stopped",
                        "requeued" if row["state"] == "queued" else "failed",
                        extra=job_fields(row))

    def _shutdown(self) -> int:
        if self.running:
            log.info("stopping: waiting up to %.0fs for %d running job(s)",
                     self.settings.grace, len(self.running))
        self.deadline = self.clock() + self.settings.grace if self.deadline is None else 0.0
        while self.running and self.clock() < self.deadline and self.deadline:
            self.wake.wait(0.2)
            self.wake.clear()
            self._step_quietly(self._collect)
            self._step_quietly(self._maintain)
        self._step_quietly(lambda: self._publish(flush=True))
        self._step_quietly(self._flush_counters)
        left = len(self.running)
        self.io.shutdown(wait=True)
        self.index.close()
        if self.replica is not None:
            self.replica.stop()  # after the last commit: litestream syncs it, then exits
        if left:
            # Their rows stay 'running' under this (soon dead) owner: the next worker start
            # requeues them at once.
            kill_children()
            log.warning("stopped with %d job(s) still running; they run again on restart", left)
            logging.shutdown()
            os._exit(0)  # handler threads cannot be interrupted; do not wait for them
        self.handlers.shutdown(wait=True)
        if self.metrics is not None:
            self.metrics.stop()
        log.info("worker stopped")
        return 0

    def _step_quietly(self, part: Any) -> None:
        try:
            part()
        except Exception as e:
            log.warning("worker step failed during shutdown: %s: %s", type(e).__name__, e)


def result_record(job: dict) -> dict:
    """The public status record of a terminal job, as written to results/{id}.json."""
    error = json.loads(job["error"]) if job.get("error") else None
    return {
        "v": 1,
        "id": job["id"],
        "state": job["state"],
        "task": job["task"],
        "queue": job["queue"],
        "attempts": job["attempts"],
        "max_attempts": job["max_attempts"],
        "result": json.loads(job["result"]) if job.get("result") is not None else None,
        "error": error if job["state"] != "succeeded" else None,
        "errors": [
            {"attempt": a["attempt"], "type": a["error_type"], "message": a["message"],
             "traceback": a["traceback"], "at": a["finished_at"]}
            for a in job.get("attempt_log", []) if a["outcome"] not in (None, "succeeded")
        ],
        # The handler's own log lines per attempt (bounded, see logs.py): qlite logs ID.
        "logs": [{"attempt": a["attempt"], "lines": json.loads(a["logs"])}
                 for a in job.get("attempt_log", []) if a.get("logs")],
        "key": job.get("key"),
        "enqueued_at": job["enqueued_at"],
        "started_at": job["started_at"],
        "finished_at": job["finished_at"],
    }
