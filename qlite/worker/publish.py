"""The publish outbox: terminal rows -> ``results/`` -> inbox acknowledged -> row published.

A terminal row is written first (by the loop), then ``results/{id}.json`` is PUT (for a job
that came in a pack, one ``results/packs/{pack}.json`` record for the pack), then its inbox
object and request markers are deleted in batches, then the row is marked published. A crash
anywhere in between repeats the remaining steps, which are idempotent; follow-ups (webhook,
on_success, on_failure, a group's ``then``) have keys derived from the job's id, so a repeat
re-PUTs them but never runs them twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any

from qlite import envelope
from qlite.crypto import SEALED
from qlite.errors import EnvelopeError, StorageError
from qlite.index.db import TERMINAL, Index
from qlite.index.rows import JobRow
from qlite.producer import Client
from qlite.status import JobStatus
from qlite.store import Store
from qlite.worker.faults import crash_point

log = logging.getLogger(__name__)

PACK_FLUSH = 1.0  # seconds: how long a pack's finished jobs may wait for their batched record
BATCH = 500  # jobs per pass, and acknowledged inbox objects per DeleteObjects
ACK_EVERY = 2.0  # seconds: acknowledged inbox objects are deleted at least this often
WAIT_FOR = 8  # up to this many jobs' own records are waited for (their results show sooner)
# Records in flight at most before the worker claims more jobs: jobs that ran but are not in
# results/ yet are re-run if the disk is lost (docs/guarantees.md), so they must not pile up.
BEHIND = 16


def status_of(job: JobRow) -> JobStatus:
    """The public status record of a terminal job, as written to results/{id}.json."""
    result: Any = job.result
    sealed: Any = None
    if isinstance(result, dict) and list(result) == [SEALED]:  # docs/encryption.md
        result, sealed = None, result[SEALED]
    status = JobStatus(
        id=job.id, state=job.state, task=job.task, queue=job.queue, attempts=job.attempts,
        max_attempts=job.max_attempts, result=result,
        error=job.error if job.state != "succeeded" else None,
        errors=[{"attempt": a.attempt, "type": a.error_type, "message": a.message,
                 "traceback": a.traceback, "at": a.finished_at}
                for a in job.attempt_log if a.outcome not in (None, "succeeded")],
        # The handler's own log lines per attempt (bounded, see logs.py): qlite logs ID.
        logs=[{"attempt": a.attempt, "lines": a.logs} for a in job.attempt_log
              if a.logs is not None],
        key=job.key,
        # The worker of each attempt, in order (liveness.owner_id: host:pid:start); None for
        # an attempt rebuilt from a record by qlite reindex.
        workers=[a.owner for a in job.attempt_log],
        enqueued_at=job.enqueued_at, started_at=job.started_at,
        finished_at=job.finished_at,
        # The last ctx.progress (docs/long-jobs.md); None for a job that reported none.
        progress=_progress(job.progress), sealed_result=sealed)
    env = job.envelope if job.envelope_may_hold("record_args") else {}
    if (env.get("meta") or {}).get("record_args") is True and not env.get("payload_ref"):
        # Asked for by the producer (qlite.django: Django's TaskResult holds the arguments).
        status.args, status.kwargs = env.get("args", []), env.get("kwargs", {})
    return status


def interim_record(job: JobRow, now: float) -> dict:
    """The status record of a job not final yet, for a job whose envelope asks for one
    (``record_start``): ``running`` once an attempt started, ``scheduled`` while it waits for
    its next attempt (``not_before``). ``updated_at`` orders such records (a snooze gives its
    attempt back, so attempts do not); a final record replaces any (Publisher._put_record)."""
    record = {**status_of(job).to_record(), "result": None, "finished_at": None,
              # microseconds: a job may start and fail within one millisecond
              "updated_at": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    if job.state == "running":
        record["error"] = None  # the earlier attempts' errors are in ``errors``
    else:
        record["not_before"] = envelope.now_rfc3339(job.run_at)
    return record


def _parsed(raw: bytes) -> dict | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _progress(report: dict | None) -> dict | None:
    if not report:
        return None
    return {k: report.get(k) for k in ("done", "total", "message", "at", "rate", "eta",
                                       "sealed_message") if k in report}


class Publisher:
    """Owns the outbox state between passes: which jobs are written and await their inbox
    delete (``acked``), and since when each unfinished pack has been waiting."""

    def __init__(self, store: Store, index: Index, io: ThreadPoolExecutor, client: Client,
                 clock: Callable[[], float], max_payload: int,
                 trusted: Callable[[], bool] = lambda: True,
                 wake: Callable[[], None] = lambda: None):
        self.store = store
        self.index = index
        self.io = io
        self.client = client
        self.clock = clock
        self.max_payload = max_payload
        self.trusted = trusted  # in a fleet: this worker still owns its shards
        self.wake = wake  # called when a record written in the background is done
        # records being written on the I/O pool (the loop goes on meanwhile) -> what to
        # acknowledge once written: the jobs, their markers, the packs' open counts
        self.writing: dict[Future, tuple[list[JobRow], dict[str, list[str]],
                                         dict[str, int]]] = {}
        # The first pass writes every finished pack member's record at once: members a
        # previous process finished must not wait (a worker killed again within PACK_FLUSH
        # would leave them to pile up in the index only, at risk if its disk is lost).
        self.first_pass = True
        # The last records written all failed (S3 down, or refusing writes): the worker claims
        # nothing until one lands, so jobs do not run by the thousand with no record in the
        # bucket (only the local disk would know they ran).
        self.failing = False
        # job id -> its inbox key and request markers: results/ written, delete due
        self.acked: dict[str, list[str]] = {}
        self.acked_at: float | None = None
        # The DeleteObjects in flight, and the jobs whose objects it deletes
        self.deleting: tuple[Future, dict[str, list[str]]] | None = None
        self.next_at = 0.0  # when to look for terminal jobs again (sooner: see soon())
        self.pack_seen: dict[str, float] = {}  # pack key -> when a member was first seen done
        self.published = 0  # jobs acknowledged by this process, for qlite stats
        # succeeded jobs that left a checkpoint: it goes in the DeleteObjects of their inbox
        # object (no request of its own); any other is deleted by qlite purge
        self.checkpoints: set[str] = set()

    def soon(self, packed: bool) -> None:
        """A job just ended: a job of its own is published at once; a packed one joins its
        pack's batch."""
        self.next_at = min(self.next_at, self.clock() + (0.25 if packed else 0.0))

    def behind(self) -> bool:
        """Too many records are still being written, or the last ones failed: claim nothing
        until some are done."""
        return self.failing or len(self.writing) >= BEHIND

    def idle(self) -> bool:
        return (not self.acked and not self.writing and self.deleting is None
                and not self.index.unpublished_keys(1))

    def run(self, quiet: Callable[[], bool], flush: bool = False,
            settled: Callable[[], bool] | None = None) -> None:
        """PUT results/ for terminal jobs, then acknowledge their inbox objects in batches:
        one DeleteObjects per 500 jobs, or per ACK_EVERY seconds, or when the queue is
        ``settled()`` (default ``quiet()``; the worker's: quiet and nothing new in the inbox).
        Jobs that came in a pack get one results/packs/ record per pack, written once the
        pack is done or every PACK_FLUSH seconds while it runs (results batched)."""
        now = self.clock()
        failed = self._written(wait=flush)
        if flush or now >= self.next_at or quiet():
            self.next_at = now + 1.0  # a job ending by expiry, cancel or reap shows then
            self._write(now, quiet, flush or self.first_pass)
            self.first_pass = False
            failed = self._written() or failed
        if flush:
            failed = self._written(wait=True) or failed
        failed = self._deleted(wait=flush) or failed
        if self.acked and self.deleting is None and (
                flush or (settled or quiet)() or len(self.acked) >= BATCH
                or now - (self.acked_at or 0) >= ACK_EVERY):
            self._acknowledge()
            failed = self._deleted(wait=flush) or failed
        if failed is not None:
            raise failed

    def _write(self, now: float, quiet: Callable[[], bool], flush: bool) -> None:
        """Start writing the records due (_written acknowledges them once written). Whole
        rows are read only for the records due: the members of a pack that is still running
        wait for it cheaply."""
        writing = [j.id for batch, _, _ in self.writing.values() for j in batch]
        deleting = self.deleting[1] if self.deleting else {}
        jobs = self.index.unpublished_keys(BATCH, exclude=[*self.acked, *writing, *deleting])
        packed: dict[str, list[JobRow]] = {}
        singles = []
        for job in jobs:
            if job.in_pack:
                packed.setdefault(job.pack or "", []).append(job)
            else:
                singles.append(job.id)
        open_ = self.index.pack_open(list(packed)) if packed else {}
        due = []
        settle = bool(packed) and quiet()
        busy = {b[0].pack for b, _, _ in self.writing.values() if b[0].in_pack}
        for key in packed:
            first = self.pack_seen.setdefault(key, now)
            if key in busy:  # its record is being written: the members left go next time
                self.next_at = min(self.next_at, now + 0.25)
                continue
            if flush or not open_[key] or now - first >= PACK_FLUSH or settle:
                due.append(key)
            else:
                self.next_at = min(self.next_at, first + PACK_FLUSH)
        if not singles and not due:
            return
        markers = self.index.markers_of(
            singles + [j.id for key in due for j in packed[key]])
        # In the background: the loop goes on claiming and ingesting while the records are
        # written (the S3 server stays busy), and _written acknowledges them when done. A few
        # jobs' records are waited for when nothing else can run: the loop's own work would
        # slow their PUTs (the GIL). With more to run, waiting would leave the server idle.
        own = [self._background(self.io.submit(self._write_result, job), [job], markers, open_)
               for job in (self.index.jobs_by_ids(singles) if singles else [])]
        if own and len(own) <= WAIT_FOR and quiet():
            wait(own)
        for key in due:
            self._background(self.io.submit(self._write_pack, key,
                                            self.index.pack_members(key), not open_[key]),
                             packed[key], markers, open_)

    def _background(self, future: Future, batch: list[JobRow], markers: dict[str, list[str]],
                    open_: dict[str, int]) -> Future:
        self.writing[future] = (batch, markers, open_)
        future.add_done_callback(lambda _: self.wake())
        return future

    def _written(self, wait: bool = False) -> Exception | None:
        """Acknowledge the records written in the background (all of them, ``wait``);
        returns the first failure (those jobs are written again next pass)."""
        failed = None
        landed = False
        for future in [f for f in self.writing if wait or f.done()]:
            batch, markers, open_ = self.writing.pop(future)
            try:
                self._acked(future.result() or batch, batch, markers, open_)
                landed = True
            except Exception as e:
                failed = e
            self.acked_at = self.acked_at or self.clock()
        if landed and self.failing:
            log.info("results written again: claiming resumes")
        elif failed is not None and not landed and not self.failing:
            log.warning("results cannot be written (%s: %s): claiming no more jobs until "
                        "they can", type(failed).__name__, failed)
        if landed or failed is not None:
            self.failing = not landed
        return failed

    def _acked(self, done: list[JobRow], batch: list[JobRow], markers: dict[str, list[str]],
               open_: dict[str, int]) -> None:
        """Note what to delete for ``done`` (written): its inbox object, or its pack's once
        every member is in the record, and its request markers."""
        missing = [j.id for j in done if j.id not in markers]
        if missing:  # pack members finished earlier than this listing reached
            markers.update(self.index.markers_of(missing))
        for job in done:
            self._group_done(job)
            self.acked[job.id] = list(markers.get(job.id, []))
            if job.id in self.checkpoints and job.state == "succeeded":
                self.acked[job.id].append(envelope.checkpoint_key(job.id))
        first = batch[0]
        if first.in_pack:
            pack = first.pack or ""
            self.pack_seen.pop(pack, None)
            if not open_[pack]:  # every member is in the record
                self.acked[done[-1].id].append(pack)
        else:
            self.acked[first.id].append(first.inbox_key or "")

    def _acknowledge(self) -> None:
        """Delete the acknowledged jobs' inbox objects on the I/O pool: a DeleteObjects of a
        few hundred keys can take a server a quarter of a second, which the loop would spend
        not LISTing nor claiming. _deleted marks the jobs published once it is done."""
        crash_point("after_result_put")
        batch, self.acked, self.acked_at = self.acked, {}, None
        future = self.io.submit(self.store.delete_many,
                                [k for keys in batch.values() for k in keys])
        future.add_done_callback(lambda _: self.wake())
        self.deleting = (future, batch)

    def _deleted(self, wait: bool = False) -> Exception | None:
        """Mark published the jobs whose objects the DeleteObjects in flight deleted (once it
        is done, or waiting for it); when it failed, they are deleted again next time."""
        if self.deleting is None or not (wait or self.deleting[0].done()):
            return None
        (future, batch), self.deleting = self.deleting, None
        try:
            future.result()
        except Exception as e:
            for job_id, keys in batch.items():
                self.acked.setdefault(job_id, keys)
            self.acked_at = self.acked_at or self.clock()
            return e
        crash_point("after_inbox_delete")
        self.index.mark_published(list(batch))
        self.checkpoints.difference_update(batch)
        self.published += len(batch)
        return None

    def _record_of(self, job: JobRow, pack: str | None = None) -> dict:
        """The job's public status record; a result too large to inline is written to its
        own object first (claim check: the record stays small to poll)."""
        status = status_of(job)
        if job.result_json and len(job.result_json) > self.max_payload:
            self.store.put(envelope.value_key(job.id), job.result_json.encode("utf-8"))
            status.result, status.result_ref = None, envelope.value_key(job.id)
        status.pack = pack
        return status.to_record()

    def interim(self, job: JobRow) -> None:
        """Write the running (or waiting) record of ``job`` (Index.get, with its attempt log)
        on the I/O pool, for a job whose envelope asks for it; one PUT, best effort."""
        if self.trusted():  # a zombie of a fleet writes nothing
            self.io.submit(self._put_interim, envelope.result_key(job.id),
                           interim_record(job, self.clock()))

    def _put_interim(self, key: str, record: dict) -> None:
        """Create the record, or replace a non-final one written no later (If-Match its
        ETag). A final record is never replaced: writes racing with the job's end lose."""
        body = json.dumps(record).encode()
        try:
            for _ in range(3):
                if self.store.put_cas(key, body, None) is not None:
                    return
                found = self.store.get_etag(key)
                if found is None:
                    continue  # deleted meanwhile (qlite retry): create it
                there = _parsed(found[0])
                if (there is None or there.get("state") in TERMINAL
                        or str(there.get("updated_at") or "") > record["updated_at"]):
                    return
                if self.store.put_cas(key, body, found[1]) is not None:
                    return
        except Exception as e:  # the final record still comes; only the interim view is late
            log.warning("status record %s not written: %s: %s", key, type(e).__name__, e)

    def _write_result(self, job: JobRow) -> None:
        """PUT the terminal record, then enqueue the job's follow-ups."""
        record = self._record_of(job)
        self._put_record(envelope.result_key(job.id), record)
        self._follow_ups(job, record)

    def _put_record(self, key: str, record: dict) -> None:
        """Write a job's first terminal record (If-None-Match). One already there is kept,
        unless it is of fewer attempts and this worker still owns the job (a record that
        ``qlite retry`` failed to delete): a worker that lost the job meanwhile (a paused
        zombie of a fleet) never writes over the new owner's record. A running or waiting
        record (record_start) is always replaced, never left in place of the final one."""
        body = json.dumps(record).encode()
        interim = False
        for _ in range(3):
            if self.store.put_cas(key, body, None) is not None:
                return
            found = self.store.get_etag(key)
            if found is None:
                continue  # deleted meanwhile: create it
            there = _parsed(found[0]) or {}
            interim = there.get("state") in ("running", "queued", "scheduled")
            if interim:
                # The job's own running or waiting record (record_start): always replaced, by
                # a worker that still owns the job (else the next pass tries again).
                if not self.trusted():
                    raise StorageError(f"s3: put {key}: this worker may no longer own the job "
                                       "(retried next pass)")
            else:
                try:
                    attempts = int(there.get("attempts") or 0)
                except (ValueError, TypeError):
                    attempts = 0  # not a record: replace it
                if attempts >= record["attempts"] or not self.trusted():
                    return
            if self.store.put_cas(key, body, found[1]) is not None:
                return
        if interim:  # not acknowledged: the inbox object stays until the final record is in
            raise StorageError(f"s3: put {key}: the record kept changing under 3 writes "
                               "(retried next pass)")

    def _write_pack(self, key: str, members: list[JobRow], complete: bool) -> list[JobRow]:
        """PUT the batched record of every terminal member of pack ``key`` (``members``), then
        enqueue the follow-ups of those not published before; returns those (to acknowledge).
        Runs on the I/O pool: no SQLite here."""
        parsed = envelope.parse_pack_key(key)
        assert parsed is not None, key  # the index holds only valid pack keys
        pack_id = parsed[1]
        records = {m.id: self._record_of(m, pack_id) for m in members}
        self._merge_pack_record(pack_id, records, complete)
        new = [m for m in members if not m.published]
        for m in new:
            self._follow_ups(m, records[m.id])
        return new

    def _merge_pack_record(self, pack_id: str, records: dict[str, dict],
                           complete: bool) -> None:
        """Write the pack's batched record as a compare-and-swap on the one there: the
        members it holds that we do not (another worker of the fleet ran them), or of more
        attempts, are kept. So a late write (a worker that lost the pack meanwhile) cannot
        take members out of the record."""
        key = envelope.pack_result_key(pack_id)
        for _ in range(5):
            found = self.store.get_etag(key)
            jobs = dict(records)
            done = complete
            if found is not None:
                try:
                    there = json.loads(found[0])
                    for job_id, r in (there.get("jobs") or {}).items():
                        mine = jobs.get(job_id)
                        if mine is None or int(r.get("attempts") or 0) > int(
                                mine.get("attempts") or 0):
                            jobs[job_id] = r
                    done = done or bool(there.get("complete"))
                except (ValueError, TypeError, AttributeError):
                    pass  # not a record: replaced
            body = {"v": 1, "pack": pack_id, "complete": done, "jobs": jobs}
            if self.store.put_cas(key, json.dumps(body).encode(),
                                  found[1] if found is not None else None) is not None:
                return
        raise StorageError(f"s3: put {key}: the record kept changing under 5 writes "
                           "(retried next pass)")

    def _follow_ups(self, job: JobRow, record: dict) -> None:
        """Enqueue the job's follow-ups (webhook, on_success, on_failure) with keys derived
        from its id: repeating this after a crash repeats the PUTs, never the follow-ups."""
        if record.get("result_ref"):
            record = {**record, "result": job.result}  # for on_success
        if not job.envelope_may_hold("webhook", "on_success", "on_failure"):
            return
        env = job.envelope
        follow: list[tuple[str, list[Any], dict[str, Any], str]] = []
        if env.get("webhook"):
            follow.append(("webhook.deliver", [], {"url": env["webhook"], "status": record},
                           "webhook"))
        if env.get("on_success") and job.state == "succeeded":
            follow.append((env["on_success"], [record["result"]], {}, "on_success"))
        if env.get("on_failure") and job.state != "succeeded":
            follow.append((env["on_failure"], [record], {}, "on_failure"))
        for task, args, kwargs, kind in follow:
            try:
                self.client.put(task, args, kwargs, queue=job.queue,
                                key=f"{kind}:{job.id}")
            except EnvelopeError as e:  # e.g. a result too large to pass on: say so, go on
                log.error("%s of job %s not enqueued: %s", kind, job.id, e)

    def _group_done(self, job: JobRow) -> None:
        """When ``job`` is the last member of its group to finish, enqueue the group's ``then``
        (all succeeded: the results in order) or ``on_failure`` (the members' statuses). The
        key ``group:ID`` makes a repeat after a crash, or two last members, one job."""
        group = job.envelope.get("group") if job.envelope_may_hold("group") else None
        if not group:
            return
        members = self.index.group_members(group["id"])
        if len(members) < group["size"] or any(m.state not in TERMINAL for m in members):
            return
        members.sort(key=lambda m: m.envelope["group"]["index"])
        if all(m.state == "succeeded" for m in members):
            task, arg = group.get("then"), [m.result for m in members]
        else:
            task, arg = group.get("on_failure"), [
                {"id": m.id, "state": m.state, "error": m.error} for m in members]
        if task:
            try:
                self.client.put(task, [arg], queue=job.queue, key=f"group:{group['id']}")
                log.info("group finished group_id=%s members=%d enqueued=%s", group["id"],
                         len(members), task)
            except EnvelopeError as e:
                log.error("group %s: %s not enqueued: %s", group["id"], task, e)
