"""The worker: ingest -> claim -> execute -> record -> publish, until told to stop.

One loop on the main thread owns SQLite; handlers run on a thread pool and S3 requests on a
second, small one. Signal handlers only set flags; the loop acts on them (graceful stop: no new
claims, running jobs get ``grace`` seconds, outcomes are published, exit 0).

The parts, each in its own module: ingest.py (inbox -> index), execute.py and isolate.py
(run a handler in a thread or a child process), outcome.py (what a finished attempt leads to),
publish.py (index -> results/, the outbox), periodic.py (schedules), liveness.py (who is alive,
reaping), restore.py (opening or rebuilding the index), replica.py (Litestream).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from qlite.app import App
from qlite.index.db import MAX_CRASHES, Index, Limits
from qlite.producer import Client
from qlite.settings import Settings
from qlite.store import Store
from qlite.worker.execute import Claim, Outcome, run
from qlite.worker.faults import crash_point
from qlite.worker.fleet import Fleet
from qlite.worker.ingest import Ingest
from qlite.worker.isolate import kill_children, run_in_child
from qlite.worker.liveness import disk_full, owner_id, reap
from qlite.worker.logs import install_capture, job_fields
from qlite.worker.outcome import decide
from qlite.worker.periodic import Periodic
from qlite.worker.publish import Publisher
from qlite.worker.replica import Replica, node_name
from qlite.worker.restore import open_index
from qlite.worker.shards import Shards

log = logging.getLogger(__name__)

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
                             store=self.store, signing_key=settings.signing_key,
                             encryption_key=settings.encryption_key)
        self.running: dict[Future, Claim] = {}
        self.wake = threading.Event()
        self.stopping = False
        self.deadline: float | None = None
        self.poll_every = settings.poll_min
        self.next_poll = 0.0
        self.next_beat = 0.0
        self.outage = 0.0  # back-off after a failed step, seconds
        self.disk_full = False
        self.packed: set[str] = set()  # running jobs that came in a pack
        self.suspects: set[str] = set()  # running suspects: nothing starts beside them
        self.record_failures: dict[str, int] = {}
        self.cancels: dict[str, threading.Event] = {}  # running job id -> its ctx.cancelled
        self.next_cancel_check = 0.0
        self.next_expiry = 0.0  # when the next queued job expires (0: look it up)
        self.held = False  # the last claim left runnable jobs behind, held back by limits
        self.backlog = False  # the last claim filled every free slot
        self.held_until: float | None = None
        self.flushed: dict[str, int] = {}  # counters already added to the index
        self.metrics: Any = None  # metrics.Metrics when --metrics-port is set
        self.shards: Shards | None = None  # the shards of the inbox this worker owns
        # job id -> (id, attempt, report): ctx.progress reports not yet in the index; written
        # by handler threads, taken by the loop at most once a second (qlite ls, show)
        self.reports: dict[str, tuple[str, int, dict]] = {}
        self.reports_lock = threading.Lock()
        self.next_report = 0.0
        install_capture()  # a handler's own log lines are kept with its job
        tasks = app.tasks.values()
        self.concurrency_limits = {t.name: t.concurrency for t in tasks if t.concurrency}
        self.rate_limits = {t.name: (t.rate_key or t.name, *t.rate) for t in tasks if t.rate}
        if app.builtins:
            from qlite.tasks import register

            register(app)
        # Any queue name is served: a producer may put to a queue the code never declared
        # (qlite put --queue low). A typo gets a warning, as in RQ, Celery and Dramatiq.
        for queue in (q for q in settings.queues if q not in app.queues):
            log.warning("--queue %s: no task of this app declares that queue (known: %s); "
                        "serving it anyway. Declare it with qlite.App(queues=[...]) to silence "
                        "this", queue, ", ".join(app.queues), extra={"queue": queue})

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

    def run(self, burst: bool = False) -> int:
        self.store.check()  # endpoint, bucket and credentials, before anything else
        if self.settings.metrics_port:  # first: a busy port fails before any other work
            from qlite.worker.metrics import start  # prometheus-client: loaded only when asked for

            self.metrics = start(self)
        self.index = open_index(self.settings.db_path(), self.store, self.replica)
        self.index.set_lifo(self.settings.lifo)
        if self.replica is not None:
            self.replica.check()  # starts litestream if no other worker replicates this index
        self.ingest = Ingest(self.app, self.settings, self.store, self.index, self.io,
                             self.clock)
        self.publisher = Publisher(self.store, self.index, self.io, self.client, self.clock,
                                   self.settings.max_payload, trusted=self._trusted)
        self.periodic = Periodic(self.app, self.index, self.client, self.clock)
        self._join_fleet()
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
        for part in (self._fleet_step, self._collect_and_claim, self._publish, self._maintain,
                     self._note_progress,
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
        return self._quiet() and self.ingest.all_clean() and self.publisher.idle()

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
        fire = self.periodic.next_at()
        if fire is not None:
            wait = min(wait, fire - now)
        wait = min(max(wait, self.outage, 0.01), self.next_beat - now, 1.0,
                   max(self.publisher.next_at - now, 0.01))
        self.wake.wait(max(wait, 0.0))  # cleared at the start of each step: no lost wake-up

    # -- parts ------------------------------------------------------------------------------

    def _poll(self, burst: bool) -> None:
        if self.stopping or self.disk_full:  # no GETs for rows that cannot be written
            return
        if not self._trusted():  # our shards may be another worker's by now
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
        if self.stopping or free <= 0 or not self._trusted():
            return []
        now = self.clock()
        self._expire(now)
        limits = Limits(self.concurrency_limits, self.rate_limits)
        shards = self.shards.claimable() if self.shards is not None else None
        queues = self._queue_order()
        if self.suspects or (self.running and self.index.suspect_waiting(queues, now, shards)):
            # A suspect runs alone: the jobs running drain, then it starts, then the others.
            self.backlog, self.held, self.held_until = False, True, None
            return []
        if not self.running:
            # Without a child process (an app not loaded by name) it runs in this process:
            # then the worker's death is pinned on it.
            rows = self.index.claim_suspect(queues, self.owner, self.settings.lease, now,
                                            shards, solo=self.app.spec is None)
            if rows:
                self.backlog, self.held, self.held_until = False, True, None
                return rows
        rows = self.index.claim(queues, free, self.owner, self.settings.lease,
                                now, limits, shards=shards)
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
            # A suspect runs in a child process: if that dies, the crash is its own.
            suspect = bool(row["suspect"])
            if suspect:
                self.suspects.add(claim.id)
                log.info("job runs alone: it was running when its worker died, or crashed its "
                         "process", extra=job_fields(claim))
            if task and (timeout or self.settings.pool == "process"
                         or (suspect and self.app.spec is not None)):
                future = self.handlers.submit(run_in_child, self.app, claim, timeout,
                                              str(self.store.url), self.settings.endpoint_url,
                                              cancel, (self.settings.log_level,
                                                       self.settings.log_format),
                                              self.settings.signing_key,
                                              self.settings.progress_every, self._on_progress,
                                              self.settings.encryption_key)
            else:
                future = self.handlers.submit(run, self.app, claim, self.client, cancel,
                                              self.settings.progress_every, self._on_progress)
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
                import traceback

                outcome = Outcome("error", error={
                    "type": type(e).__name__, "message": str(e),
                    "traceback": "".join(traceback.format_exception(e))})
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
            self.publisher.soon(packed=claim.id in self.packed)
            self.packed.discard(claim.id)
            self.suspects.discard(claim.id)
            self.record_failures.pop(claim.id, None)
            self.cancels.pop(claim.id, None)
            del self.running[future]

    def _on_progress(self, job_id: str, attempt: int, report: dict) -> None:
        with self.reports_lock:
            self.reports[job_id] = (job_id, attempt, report)

    def _note_progress(self) -> None:
        """Put the latest ctx.progress of running jobs into the index (qlite ls, show)."""
        now = self.clock()
        if now < self.next_report:
            return
        self.next_report = now + 1.0
        with self.reports_lock:
            reports, self.reports = list(self.reports.values()), {}
        if reports:
            self.index.set_progress(reports, self.owner)

    def _record(self, claim: Claim, outcome: Outcome) -> None:
        now = self.clock()
        if outcome.progress is not None:  # the last report, kept in the job's record
            self.index.set_progress([(claim.id, claim.attempt, outcome.progress)], self.owner)
        if outcome.checkpointed and outcome.state == "succeeded":
            self.publisher.checkpoints.add(claim.id)  # deleted with its inbox object
        fields = job_fields(claim)
        task = self.app.tasks.get(claim.task)
        cancel = self.cancels.get(claim.id)
        d = decide(outcome, attempt=claim.attempt, max_attempts=claim.max_attempts,
                   backoff=task.backoff if task else 1.0,
                   cancelled=cancel is not None and cancel.is_set(), now=now,
                   rng=self.rng)
        error = d.error or {}
        # The job's own child process died: a strike pinned on it (failed at the third).
        crashed = d.state in ("retry", "failed") and error.get("type") == "ProcessCrashed"
        ok = self.index.finish(claim.id, claim.attempt, self.owner, d.state, now=now,
                               result=d.result, error=d.error, run_at=d.run_at,
                               logs=outcome.logs, crashed=crashed)
        if crashed:
            log.warning("job crashed its own process (a strike against it; failed at %d): %s",
                        MAX_CRASHES, error.get("message"),
                        extra={**fields, "error": error.get("type")})
        elif d.state in ("succeeded", "cancelled"):
            log.info("job %s", d.state, extra=fields)
        elif d.state == "snooze":
            log.info("job snoozed for %.1fs", outcome.delay or 0, extra=fields)
        elif d.state == "failed":
            log.warning("job failed: %s", error.get("message"),
                        extra={**fields, "error": error.get("type")})
        else:
            log.info("job will retry in %.1fs: %s", (d.run_at or now) - now,
                     error.get("message"), extra={**fields, "error": error.get("type")})
        if not ok:
            log.warning("stale attempt ignored (the job was taken over)", extra=fields)
        elif self.metrics is not None:
            self.metrics.job_recorded(claim.task, claim.id, d.label)

    def _publish(self, flush: bool = False) -> None:
        if not self._trusted():  # a new owner may be running these jobs: write nothing
            return
        self.publisher.run(self._quiet, flush=flush)

    # -- the fleet ---------------------------------------------------------------------------

    def _join_fleet(self) -> None:
        fleet = Fleet(self.store, node=node_name(self.settings), owner=self.owner,
                      shards=self.settings.shards, lease=self.settings.fleet_lease)
        self.shards = Shards(fleet, self.index, self.store, self.ingest)
        self.shards.start(lambda: self.publisher.published)

    def _trusted(self) -> bool:
        return self.shards is None or self.shards.trusted()

    def _owns_schedule(self, name: str) -> bool:
        return self.shards is None or self.shards.owns_schedule(name)

    def _fleet_step(self) -> None:
        if self.shards is not None and self.shards.step():
            self.next_poll = 0.0  # take in the new shards' jobs now

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
        if not self.app.schedules or self.stopping or self.disk_full:
            return
        for queue in self.periodic.fire(self._owns_schedule):
            self.ingest.expect(queue)
            self.next_poll = 0.0  # take it in now rather than after the idle back-off

    def _maintain(self) -> None:
        now = self.clock()
        if self.replica is not None and self.replica.proc is None:
            # A killed worker's Litestream has just exited: replicate at once, not a third of
            # a lease later (the index is not checkpointed while nobody replicates it).
            self.replica.check()
        if now < self.next_beat:
            return
        if self.running:  # a failed beat is tried again next step, not a third lease later
            self.index.heartbeat(self.owner, self.settings.lease, now)
        self.next_beat = now + self.settings.lease / 3
        self._reap()
        if self.replica is not None:
            self.replica.check()
        self._flush_counters()

    def _flush_counters(self) -> None:
        """Add the S3 requests and jobs published since the last flush to the index's running
        totals (qlite stats: requests per job, dollars per million jobs)."""
        totals = {f"s3.{op}": n for op, n in dict(self.store.requests).items()}
        totals["jobs.published"] = self.publisher.published
        self.index.add_counters({k: n - self.flushed.get(k, 0) for k, n in totals.items()},
                                self.clock())
        self.flushed = totals

    def _reap(self) -> None:
        reap(self.index, self.owner, self.clock())

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
        if self.shards is not None:
            self.shards.leave()  # the others take our shards at once
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
