"""The worker: ingest -> claim -> execute -> record -> publish, until told to stop.

One loop on the main thread owns SQLite; handlers run on a thread pool and S3 requests on a
second, small one. Signal handlers only set flags; the loop acts on them (graceful stop: no new
claims, running jobs get ``grace`` seconds, outcomes are published, exit 0).

The parts, each in its own module: ingest.py (inbox -> index), pacing.py (when to LIST the
inbox, how long to wait, sleeping on the doorbell when idle), dispatch.py, execute.py and
isolate.py (run a handler in a thread or a child process), turns.py (quick jobs claimed
ahead, run in turn, recorded in batches), outcome.py (what a finished attempt
leads to), record.py (writing it in the index), publish.py (index -> results/, the outbox),
periodic.py (schedules), liveness.py (who is alive, reaping), suspects.py (a suspect runs
alone), cancels.py (ctx.cancelled of running jobs), expiry.py (ttl=), reports.py (ctx.progress
into the index), counters.py (running totals for qlite stats), restore.py (opening or
rebuilding the index), replica.py (Litestream), shards.py (the fleet), shutdown.py (signals,
closing in order).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from qlite import doorbell
from qlite.app import App
from qlite.index.db import Index, Limits
from qlite.index.rows import JobRow
from qlite.producer import Client
from qlite.settings import Settings
from qlite.store import Store
from qlite.worker import shutdown
from qlite.worker.cancels import Cancels
from qlite.worker.counters import Counters
from qlite.worker.dispatch import in_thread, submit, submit_in_turn
from qlite.worker.execute import Claim
from qlite.worker.expiry import Expiry
from qlite.worker.faults import crash_point
from qlite.worker.fleet import Fleet
from qlite.worker.ingest import Ingest
from qlite.worker.liveness import disk_full, owner_id, reap
from qlite.worker.logs import install_capture, job_fields
from qlite.worker.pacing import Pacer
from qlite.worker.periodic import Periodic
from qlite.worker.publish import Publisher
from qlite.worker.record import Recorder
from qlite.worker.replica import Replica, node_name
from qlite.worker.reports import Reports
from qlite.worker.restore import open_index
from qlite.worker.shards import Shards
from qlite.worker.suspects import Suspects
from qlite.worker.turns import Turns, crashed

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
                             encryption_key=settings.encryption_key, inline=settings.inline)
        # handler slot -> its jobs: one in a child process, or several quick ones in turn
        self.running: dict[Future, list[Claim]] = {}
        self.begun: dict[Future, float] = {}  # when each slot's future was started
        self.turns = Turns()  # quick jobs claimed ahead, finished ones awaiting their batch
        self.wake = threading.Event()
        self.stopping = False
        self.deadline: float | None = None
        self.pacer = Pacer(settings, self.store, clock)  # inbox LISTs, the doorbell
        self.next_beat = 0.0
        self.outage = 0.0  # back-off after a failed step, seconds
        self.disk_full = False
        self.packed: set[str] = set()  # running jobs that came in a pack
        self.suspects = Suspects()  # running suspects: nothing starts beside them
        self.cancels = Cancels()  # running job id -> its ctx.cancelled
        self.expiry = Expiry()
        self.held = False  # the last claim left runnable jobs behind, held back by limits
        self.backlog = False  # the last claim filled every free slot
        self.held_until: float | None = None
        self.counters = Counters()  # running totals already added to the index
        self.metrics: Any = None  # metrics.Metrics when --metrics-port is set
        self.shards: Shards | None = None  # the shards of the inbox this worker owns
        self.reports = Reports()  # ctx.progress of running jobs, into the index once a second
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
        shutdown.install(self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Flags only: taking the Event's lock here could deadlock against the loop holding it.
        # The loop never waits longer than a second, so it notices within one.
        if self.stopping:
            self.deadline = 0.0  # a second signal: stop waiting for running jobs
        self.stopping = True

    # -- the loop ---------------------------------------------------------------------------

    def run(self, burst: bool = False) -> int:
        self.store.check()  # endpoint, bucket and credentials, before anything else
        if self.settings.doorbell == "on":
            doorbell.ensure(self.store)  # so that producers' reads of it find it
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
                                   self.settings.max_payload, trusted=self._trusted,
                                   wake=self.wake.set)
        self.periodic = Periodic(self.app, self.index, self.client, self.clock)
        self.recorder = Recorder(self.index, self.app, self.publisher, self.cancels,
                                 owner=self.owner, clock=self.clock, rng=self.rng,
                                 done=self._done)
        self.recorder.metrics = self.metrics
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
        return not self.running and not self.turns and not self._runnable_now()

    def _runnable_now(self) -> bool:
        at = self.index.next_run_at(self.settings.queues)
        return at is not None and at <= self.clock()

    def _sleep(self, burst: bool) -> None:
        now = self.clock()
        full = len(self.running) >= self.settings.concurrency  # a finished job wakes us
        at = None if full else self.index.next_run_at(self.settings.queues)
        if self.held and at is not None and at <= now:
            at = self.held_until  # runnable jobs wait for a limit: a slot frees or a token
        wait = self.pacer.wait(now, burst=burst, due=(at, self.periodic.next_at()),
                               outage=self.outage, beat_at=self.next_beat,
                               publish_at=self.publisher.next_at)
        record_by = self.turns.wait()  # finished jobs wait at most this for their batch
        # The event is cleared at the start of each step: no lost wake-up.
        self.wake.wait(wait if record_by is None else min(wait, record_by))

    # -- parts ------------------------------------------------------------------------------

    def _poll(self, burst: bool) -> None:
        if self.stopping or self.disk_full:  # no GETs for rows that cannot be written
            return
        if not self._trusted():  # our shards may be another worker's by now
            return
        if not self.pacer.due(burst, self._quiet):
            return
        # Do not LIST while every slot is busy and more jobs wait locally: the inbox waits.
        if len(self.running) >= self.settings.concurrency and (self.backlog or self.turns.ready):
            return
        result = self.ingest.run()
        if result.taken:
            self.expiry.soon()  # new jobs may expire sooner
        if result.taken or result.quarantined:
            log.info("ingested %d job(s), quarantined %d", result.taken, result.quarantined)
        self.pacer.polled(result.objects, more=self.ingest.mid_sweep(), burst=burst,
                          may_sleep=self._may_sleep, inline=result.inline)

    def _may_sleep(self) -> bool:
        """Nothing runs, waits to be published or taken in (the Pacer also asks the fleet)."""
        return self._idle() and not self.held

    def _claim(self) -> None:
        self._collect_and_claim()

    def _claim_rows(self) -> list[JobRow]:
        """Claim jobs for the free slots and, for quick jobs, some ahead (turns.py),
        counting their attempts; _start_ready runs them once that is committed."""
        free = self.settings.concurrency - len(self.running)
        if self.stopping or free <= 0 or self.turns.ready or not self._trusted():
            return []
        now = self.clock()
        self.expiry.run(self.index, now, self.metrics)
        limits = Limits(self.concurrency_limits, self.rate_limits)
        shards = self.shards.claimable() if self.shards is not None else None
        queues = self._queue_order()
        if self.suspects.hold(self.index, queues, now, shards, busy=bool(self.running)):
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
        # None ahead under per-task limits (their counts and rates are taken at the claim), or
        # with --pool process (each job costs a process anyway).
        ahead = 0 if limits or self.settings.pool == "process" else self.turns.ahead(
            self.settings.concurrency)
        want = free + ahead
        rows = self.index.claim(queues, want, self.owner, self.settings.lease,
                                now, limits, shards=shards)
        self.backlog = len(rows) == want  # more may be runnable: no LIST while slots are full
        self.held = bool(limits) and len(rows) < free
        self.held_until = limits.held_until
        return rows

    def _begin(self, row: JobRow) -> Claim:
        """A claimed row as a Claim about to start: its log line, its ctx.cancelled, its
        running record (record_start)."""
        workers: tuple[str, ...] = (self.owner,)
        if row.envelope.get("record_start") and not row.packed:
            workers = self._record_start(row.id) or workers
        claim = Claim(row.id, row.task, row.queue, row.attempts, row.max_attempts,
                      row.envelope, row.enqueued_at or "", workers)
        if log.isEnabledFor(logging.INFO):
            log.info("job started", extra=job_fields(claim))
        self.cancels.open(claim.id)
        if row.packed:
            self.packed.add(claim.id)
        if self.metrics is not None:
            self.metrics.job_started(claim.id)
        return claim

    def _start_ready(self) -> bool | None:
        """Start claimed jobs in the free slots, each slot its share of them in turn; None
        when jobs are ready but may not start here now (stopping, or a fleet worker that is
        not sure of its shards)."""
        concurrency, ready = self.settings.concurrency, self.turns.ready
        if not ready or len(self.running) >= concurrency:
            return False
        if self.stopping or not self._trusted():
            return None
        share = self.turns.share(concurrency)
        while ready and len(self.running) < concurrency:
            chunk: list[Claim] = []
            while ready and len(chunk) < share:
                row = ready[0]
                if self.shards is not None and not self.shards.accepts(row.id):
                    ready.popleft()
                    self.turns.give_back.append((row.id, row.attempts))  # its shard left us
                    continue
                # A suspect runs in a child process: if that dies, the crash is its own.
                suspect = bool(row.suspect)
                child = not in_thread(self.app, row.task, row.envelope, self.settings,
                                      suspect=suspect)
                if (child or suspect) and chunk:
                    break  # a slot of its own, next
                ready.popleft()
                claim = self._begin(row)
                if child or suspect:
                    self.suspects.started(row, claim)
                    self._submit([claim], submit(
                        self.handlers, self.app, claim, settings=self.settings,
                        client=self.client, store_url=str(self.store.url),
                        cancel=self.cancels.events[claim.id], on_progress=self.reports.add,
                        suspect=suspect))
                    break
                chunk.append(claim)
            if chunk:
                self._submit(chunk, submit_in_turn(
                    self.handlers, self.app, [(c, self.cancels.events[c.id]) for c in chunk],
                    settings=self.settings, client=self.client, on_progress=self.reports.add,
                    stopping=lambda: self.stopping))
        return True

    def _submit(self, claims: list[Claim], future: Future) -> None:
        self.running[future] = claims
        self.begun[future] = time.monotonic()
        future.add_done_callback(lambda _: self.wake.set())

    def _record_start(self, job_id: str) -> tuple[str, ...] | None:
        """The job's running record to results/ (its envelope asks for it: record_start), and
        the worker of each of its attempts (None if the row is gone)."""
        job = self.index.get(job_id)
        if job is None:
            return None
        self.publisher.interim(job)
        return tuple(a.owner or "" for a in job.attempt_log)

    def _collect_and_claim(self) -> None:
        """Record the finished jobs and claim the next ones in one SQLite commit: at
        --concurrency 1 that commit is most of the cost of a job (docs/performance.md). Quick
        jobs are claimed ahead and their outcomes recorded in batches (turns.py): a freed
        slot takes the next claimed job without touching SQLite."""
        self._take_finished()
        started = self._start_ready()
        due = self.turns.record_due(stopping=self.stopping, blocked=started is None)
        claim = (not self.stopping and not self.turns.ready and not self.publisher.behind()
                 and len(self.running) < self.settings.concurrency)
        if not (due or claim or self.turns.give_back):
            return
        failed = None
        rows: list[JobRow] = []
        with self.index.batch():
            self._give_back()
            if due:
                self._record_finished()
            try:
                rows = self._claim_rows() if claim else []
            except Exception as e:  # the outcomes recorded above still commit
                failed = e
        if rows:  # after the commit: an attempt is counted before its handler runs
            crash_point("after_claim")
            self.pacer.wake()  # a scheduled job, say: the inbox is polled again while it runs
            self.turns.ready.extend(rows)
            self._start_ready()
        if failed is not None:
            raise failed

    def _give_back(self) -> None:
        """Unclaim the jobs claimed ahead that will not start here (see _start_ready)."""
        if self.turns.give_back:
            n = self.index.unclaim(self.turns.take_back(), self.owner)
            log.info("gave back %d job(s) claimed ahead and not started", n)

    def _take_finished(self) -> None:
        """Move the jobs whose handlers returned from ``running`` to the turns' finished."""
        now = time.monotonic()
        for future in [f for f in self.running if f.done()]:
            claims = self.running.pop(future)
            seconds = now - self.begun.pop(future, now)
            try:
                result = future.result()
                outcomes = result if isinstance(result, list) else [result]
            except BaseException as e:  # run_in_child catches Exception; SystemExit & co.
                outcomes = [crashed(e)]
            self.turns.ran(seconds, len(outcomes))
            for claim, outcome in zip(claims, outcomes, strict=False):
                crash_point("after_handler")
                self.turns.ended(claim, outcome)
            for claim in claims[len(outcomes):]:  # not started: the worker stops
                self.turns.give_back.append((claim.id, claim.attempt))
                self._forget(claim.id)

    def _collect(self) -> None:
        """Record every finished job now, give back those that will not start (shutdown)."""
        self._take_finished()
        if self.turns.finished or self.turns.give_back:
            with self.index.batch():
                self._give_back()
                self._record_finished()

    def _record_finished(self) -> None:
        """Record the finished jobs (record.Recorder); an outcome that fails to record stays
        for the next step."""
        self.turns.left(self.recorder.run(self.turns.finished, self.packed))

    def _done(self, claim: Claim) -> None:
        """Forget a recorded job; its result is published soon."""
        self.publisher.soon(packed=claim.id in self.packed)
        self._forget(claim.id)

    def _forget(self, job_id: str) -> None:
        self.packed.discard(job_id)
        self.suspects.ended(job_id)
        self.cancels.close(job_id)

    def _note_progress(self) -> None:
        """Put the latest ctx.progress of running jobs into the index (qlite ls, show)."""
        self.reports.flush(self.index, self.owner, self.clock())

    def _publish(self, flush: bool = False) -> None:
        if not self._trusted():  # a new owner may be running these jobs: write nothing
            return
        self.publisher.run(self._quiet, flush=flush, settled=self._settled)

    def _settled(self) -> bool:
        """Quiet, and the last LIST found nothing new: acknowledge the inbox objects now
        rather than after a DeleteObjects per burst of a steady stream."""
        return self._quiet() and self.ingest.all_clean()

    # -- the fleet ---------------------------------------------------------------------------

    def _join_fleet(self) -> None:
        fleet = Fleet(self.store, node=node_name(self.settings), owner=self.owner,
                      shards=self.settings.shards, lease=self.settings.fleet_lease)
        self.shards = Shards(fleet, self.index, self.store, self.ingest)
        self.pacer.fleet = fleet  # told when the worker sleeps on the doorbell or wakes
        self.shards.start(lambda: self.publisher.published)

    def _trusted(self) -> bool:
        return self.shards is None or self.shards.trusted()

    def _owns_schedule(self, name: str) -> bool:
        return self.shards is None or self.shards.owns_schedule(name)

    def _fleet_step(self) -> None:
        if self.shards is not None and self.shards.step():
            self.pacer.poll_now()  # take in the new shards' jobs now

    def _queue_order(self) -> tuple[str, ...]:
        """The queues in claim order: as given, or a weighted random order (a queue of weight
        w goes first with odds w / total)."""
        weights = self.settings.weights
        if not weights:
            return self.settings.queues
        keyed = sorted(zip(self.settings.queues, weights, strict=True),
                       key=lambda qw: self.rng.random() ** (1 / qw[1]), reverse=True)
        return tuple(q for q, _ in keyed)

    def _check_cancels(self) -> None:
        """Raise ctx.cancelled for running jobs whose cancellation was requested."""
        self.cancels.check(self.index, (c for claims in self.running.values() for c in claims),
                           self.clock())

    def _schedule(self) -> None:
        if not self.app.schedules or self.stopping or self.disk_full:
            return
        for queue in self.periodic.fire(self._owns_schedule):
            self.ingest.expect(queue)
            self.pacer.poll_now()  # take it in now rather than after the idle back-off

    def _maintain(self) -> None:
        now = self.clock()
        if self.replica is not None and self.replica.proc is None:
            # A killed worker's Litestream has just exited: replicate at once, not a third of
            # a lease later (the index is not checkpointed while nobody replicates it).
            self.replica.check()
        if now < self.next_beat:
            return
        if self.running or self.turns:  # a failed beat: tried again next step
            self.index.heartbeat(self.owner, self.settings.lease, now)
        self.next_beat = now + self.settings.lease / 3
        self._reap()
        if self.replica is not None:
            self.replica.check()
        # An idle worker writes nothing to its index, so Litestream uploads nothing: the
        # counters of idle requests are added with the next job's (or at shutdown).
        if self.running or self.publisher.published != self.counters.flushed.get("jobs.published"):
            self._flush_counters()

    def _flush_counters(self) -> None:
        """Add the S3 requests and jobs published since the last flush to the index's running
        totals (qlite stats: requests per job, dollars per million jobs)."""
        self.counters.flush(self.index, dict(self.store.requests), self.publisher.published,
                            self.clock())

    def _reap(self) -> None:
        reap(self.index, self.owner, self.clock())

    def _shutdown(self) -> int:
        ready = self.turns.ready
        self.turns.give_back += [(r.id, r.attempts) for r in ready]
        ready.clear()
        self._step_quietly(self._give_back)
        if self.running:
            log.info("stopping: waiting up to %.0fs for %d running job(s)",
                     self.settings.grace, len(self.running))
        self.deadline = self.clock() + self.settings.grace if self.deadline is None else 0.0
        while self.running and self.clock() < self.deadline and self.deadline:
            self.wake.wait(0.2)
            self.wake.clear()
            self._step_quietly(self._collect)
            self._step_quietly(self._maintain)
        self._step_quietly(self._collect)  # and those that ended just now, or did not record
        self._step_quietly(lambda: self._publish(flush=True))
        self._step_quietly(self._flush_counters)
        if self.shards is not None:
            self.shards.leave()  # the others take our shards at once
        return shutdown.close(io=self.io, handlers=self.handlers, index=self.index,
                              replica=self.replica, metrics=self.metrics,
                              left=len(self.running))

    def _step_quietly(self, part: Any) -> None:
        try:
            part()
        except Exception as e:
            log.warning("worker step failed during shutdown: %s: %s", type(e).__name__, e)
