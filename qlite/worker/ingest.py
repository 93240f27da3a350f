"""Ingest: inbox objects into index rows, or into quarantine with the reason.

One pass LISTs a page (1,000 keys) per queue after a cursor, GETs the unknown objects
concurrently, validates them and inserts the rows in one transaction. Nothing is deleted here
except duplicates of jobs the index already holds (an idempotency key put again) and
quarantined objects once their copy is safe: inbox objects of real jobs are deleted only after
the job's terminal record is in results/ (guarantee 1 of docs/design.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from qlite import envelope, signing
from qlite.app import App
from qlite.errors import AlreadyExists, EnvelopeError, ObjectNotFound, SignatureError
from qlite.index.db import Index
from qlite.index.rows import JobRow
from qlite.settings import Settings
from qlite.status import JobStatus, records_in
from qlite.store import Store
from qlite.worker.faults import crash_point

log = logging.getLogger(__name__)
LONG_KEY = 512  # bytes: a longer quarantine key gets a short name


@dataclass
class Sweep:
    """Where a queue's listing stands: the cursor of the next page, and whether the sweep that
    started at the beginning of the inbox has found nothing new so far."""
    cursor: str | None = None
    clean: bool = False  # the last full sweep found nothing to take in
    found: int = 0


@dataclass
class Pass:
    taken: int = 0
    quarantined: int = 0
    objects: int = 0  # new inbox objects read: a job's, a pack's, or one quarantined
    inline: int = 0  # of those, jobs read from their key alone (no GET)
    deleted: list[str] = field(default_factory=list)


class Ingest:
    def __init__(self, app: App, settings: Settings, store: Store, index: Index, io: Executor,
                 clock=time.time):
        self.app = app
        self.settings = settings
        self.store = store
        self.index = index
        self.io = io
        self.clock = clock
        self.sweeps = {q: Sweep() for q in settings.queues}
        # In a fleet: whether this worker takes in the object of a job id (its shard is
        # owned here); None takes everything. Objects of other shards are left alone.
        self.accept: Callable[[str], bool] | None = None
        self.shards = 1  # the fleet's shard count
        # Shards just taken from another index -> the queues not yet swept since: their
        # objects may be jobs the other worker finished (results written, inbox delete not yet
        # done, or a pack half done), so their records are read before anything runs again.
        self.suspect: dict[int, set[str]] = {}
        # Job id -> its attempts and retry time from a shard handed over to us (fleet.py)
        self.carried: dict[str, dict] = {}

    def all_clean(self) -> bool:
        """True when the latest full sweep of every queue found nothing to take in."""
        return all(s.clean for s in self.sweeps.values())

    def expect(self, queue: str) -> None:
        """This process just put a job on ``queue``: the next sweep must look for it."""
        if queue in self.sweeps:
            self.sweeps[queue].clean = False

    def took_over(self, shards: set[int]) -> None:
        """``shards`` were taken over from another index: sweep every queue from the start,
        checking results/ for the objects of those shards (see _settle)."""
        for shard in shards:
            self.suspect[shard] = set(self.settings.queues)
        for sweep in self.sweeps.values():
            sweep.cursor, sweep.clean = None, False

    def mid_sweep(self) -> bool:
        """True while some queue's listing has more pages to read."""
        return any(s.cursor is not None for s in self.sweeps.values())

    def run(self) -> Pass:
        result = Pass()
        failed = None
        for queue in self.settings.queues:
            try:  # one queue's trouble must not stop the others
                self._queue(queue, result)
            except Exception as e:
                failed = e
                log.warning("ingest of queue %s failed: %s: %s", queue, type(e).__name__, e)
        if result.deleted:
            self.store.delete_many(result.deleted)
        if failed is not None:
            raise failed
        return result

    def _queue(self, queue: str, result: Pass) -> None:
        sweep = self.sweeps[queue]
        prefix = f"inbox/{queue}/"
        if sweep.cursor is None:
            sweep.found = 0
        page, truncated = self.store.list_page(prefix, start_after=sweep.cursor)
        sweep.cursor = page[-1][0] if truncated and page else None

        by_id: dict[str, tuple[str, int]] = {}
        bad_names = []
        markers = []
        packs = []
        accept = self.accept
        for key, size in page:
            parsed = envelope.parse_inbox_key(key)
            marker = envelope.parse_marker(key) if parsed is None else None
            pack = envelope.parse_pack_key(key) if parsed is None and marker is None else None
            if accept is not None and not accept(
                    (parsed or pack or marker or (None, envelope.key_id(key)))[1]):
                continue  # another worker's shard
            if parsed is not None:
                by_id[parsed[1]] = (key, size)
            elif pack is not None:
                packs.append((key, pack[1], size))
            elif marker is not None:
                markers.append((key, marker[1], marker[2]))
            else:
                bad_names.append((key, size))
        if self.suspect:
            self._settle(by_id, packs)
        # Requests first: a retry puts its job's inbox object back, which is then no duplicate.
        self._requests(markers, result)
        known = self.index.known(list(by_id))
        fetch: list[tuple[str, Any, str, int]] = []
        for job_id, (key, size) in by_id.items():
            row = known.get(job_id)
            if row is None:
                fetch.append((queue, job_id, key, size))
            elif row.published or row.inbox_key != key:
                # The same idempotency key put again: the job exists, this object is a duplicate.
                log.info("duplicate of job %s deleted key=%s", job_id, key)
                result.deleted.append(key)
        # A pack taken in stays in the inbox until all its members are published.
        known_packs = self.index.known_packs([key for key, _, _ in packs]) if packs else set()
        for key in self.index.packs_settled(sorted(known_packs)) if known_packs else ():
            log.info("pack %s already done: deleted", key)
            result.deleted.append(key)
        fetch.extend((queue, ("pack", pack_id), key, size) for key, pack_id, size in packs
                     if key not in known_packs)
        # Every object at a malformed key is read and quarantined anew (never deleted unseen).
        fetch.extend((queue, None, key, size) for key, size in bad_names)

        rows = []
        taken_packs = []
        for outcome in self.io.map(self._take_in_safely, fetch):
            if outcome is None:
                continue
            result.objects += 1
            if outcome[0] == "job":
                rows.append(outcome[1])
                result.inline += outcome[2]
            elif outcome[0] == "pack":
                if self._pack_done(outcome[2]):
                    # Every member already has its record (an index rebuilt from results/
                    # published them before the pack was taken in again): only the object
                    # is left to acknowledge.
                    log.info("pack %s already done: deleted", outcome[1][0])
                    result.deleted.append(outcome[1][0])
                    continue
                taken_packs.append(outcome[1])
                rows.extend(outcome[2])
            else:
                _, key, reason, size = outcome
                self.index.quarantine(key, reason, size, self.clock())
                result.deleted.append(key)
                result.quarantined += 1
        if rows:
            try:
                result.taken += self.index.insert_jobs(rows, self.clock(), taken_packs)
            except Exception as e:  # one row SQLite refuses must not block the page
                if "disk is full" in str(e):
                    raise  # no row fits: the worker stops taking in until space is freed
                log.warning("batch insert failed (%s); inserting one by one", e)
                # A pack goes in whole or not at all: a pack row without all its jobs would
                # let the pack object be deleted with a job never run.
                units: list[tuple[list[dict], list]] = [
                    ([row], []) for row in rows if not row.get("pack")]
                units += [([r for r in rows if r.get("pack") == p[0]], [p]) for p in taken_packs]
                for unit, unit_packs in units:
                    try:
                        result.taken += self.index.insert_jobs(unit, self.clock(), unit_packs)
                    except Exception as row_error:
                        log.error("job %s cannot be indexed: %s (left in the inbox)",
                                  unit[0]["id"], row_error)
            if self.carried:
                inserted = [self.carried.pop(r["id"]) for r in rows if r["id"] in self.carried]
                if inserted:
                    self.index.carry(inserted, self.clock())
            crash_point("after_ingest_commit")
        sweep.found += len(fetch)
        if sweep.cursor is None:
            sweep.clean = sweep.found == 0
            for shard in list(self.suspect):
                self.suspect[shard].discard(queue)
                if not self.suspect[shard]:
                    del self.suspect[shard]

    def _settle(self, by_id: dict[str, tuple[str, int]], packs: list[tuple]) -> None:
        """For objects of shards taken over: restore the jobs that already have a terminal
        record (results/ or their pack's record) before they could run again. Such a single
        job is then a known, published row, and its inbox object is deleted as a duplicate;
        a half-done pack's finished members stay finished when the pack is taken in."""
        def suspect(job_id: str) -> bool:
            return envelope.shard_of(job_id, self.shards) in self.suspect

        ids = [i for i in by_id if suspect(i)]
        known = self.index.known(ids) if ids else {}
        keys = [envelope.result_key(i) for i in ids if i not in known]
        pack_keys = [k for k, p, _ in packs if suspect(p)]
        known_packs = self.index.known_packs(pack_keys) if pack_keys else set()
        keys += [envelope.pack_result_key(p) for k, p, _ in packs
                 if suspect(p) and k not in known_packs]
        if not keys:
            return
        records = [r for body in self.io.map(self.store.get_or_none, keys)
                   for r in records_in(body)  # a job's record, or a pack's batched one
                   if r.task and r.state in ("succeeded", "failed", "cancelled")]
        if records:
            n = self.index.restore(records, self.clock())
            log.info("%d job(s) of shards taken over were already finished elsewhere: "
                     "restored from their records, not run again", n)

    def _pack_done(self, rows: list[dict]) -> bool:
        known = self.index.known([r["id"] for r in rows])
        return len(known) == len(rows) and all(k.published for k in known.values())

    def _take_in_safely(self, item: tuple[str, str | None, str, int]) -> tuple | None:
        """_take_in, with a failure of one object (a GET refused, a copy failing) logged and
        left for the next pass instead of aborting the page."""
        try:
            return self._take_in(item)
        except Exception as e:
            log.warning("cannot take in %s: %s: %s (retried next pass)", item[2],
                        type(e).__name__, e)
            return None

    def _take_in(self, item: tuple[str, str | None, str, int]) -> tuple | None:
        """GET and validate one inbox object (runs on the I/O pool; touches no SQLite)."""
        queue, job_id, key, size = item
        if isinstance(job_id, tuple):
            return self._take_in_pack(queue, job_id[1], key, size)
        limit = self.settings.max_payload
        meta: dict[str, str] | None = None  # the object's metadata, once read
        try:
            if job_id is None:
                raise EnvelopeError(
                    f"object key {key!r} is not inbox/QUEUE/JOB_ID.json with a UUID job id")
            if size > limit:
                raise EnvelopeError(f"object is {size} bytes, over the {limit}-byte limit "
                                    "(QLITE_MAX_PAYLOAD)")
            raw, env = self._inline(key)
            if raw is None or env is None:
                try:
                    raw, meta = self.store.get_with_metadata(key)
                except ObjectNotFound:
                    return None  # deleted since the LIST (another worker took it)
                self._verify(raw, meta)  # before parsing: unsigned bytes are never interpreted
                env = envelope.decode(raw, limit)
            self._fresh(env)
            if env["id"] != job_id or env["queue"] != queue:
                raise EnvelopeError(f"envelope id/queue ({env['id']}, {env['queue']}) do not "
                                    f"match its object key {key!r}")
        except (EnvelopeError, SignatureError) as e:
            self._quarantine(key, job_id, str(e), (meta or {}).get(signing.METADATA))
            return ("quarantine", key, str(e), size)
        return ("job", self._row(env, raw, key), meta is None)

    def _inline(self, key: str) -> tuple[bytes | None, dict | None]:
        """The envelope an inline key carries (QLITE_INLINE), bytes and decoded, so no GET is
        needed; (None, None) to read the object: a plain key, an inline text that is no
        envelope (the body decides), or QLITE_SIGNING_KEY set (only the body's signed bytes
        are trusted)."""
        if self.settings.signing_key is not None:
            return None, None
        try:
            raw = envelope.inline_envelope(key)
            if raw is None:
                return None, None
            return raw, envelope.decode(raw, self.settings.max_payload)
        except EnvelopeError as e:
            log.info("inline key of %s not used (%s): reading the object", key, e)
            return None, None

    def _take_in_pack(self, queue: str, pack_id: str, key: str, size: int) -> tuple | None:
        """GET and validate a pack: all its jobs, or (one bad line) quarantine for all."""
        meta: dict[str, str] = {}
        try:
            if size > envelope.PACK_LIMIT:
                raise EnvelopeError(f"pack object is {size} bytes, over the "
                                    f"{envelope.PACK_LIMIT}-byte limit")
            try:
                raw, meta = self.store.get_with_metadata(key)
            except ObjectNotFound:
                return None
            self._verify(raw, meta)  # the signature covers the whole pack
            members = envelope.decode_pack(raw, queue, pack_id, self.settings.max_payload)
            for env, _ in members:
                self._fresh(env)
        except (EnvelopeError, SignatureError) as e:
            self._quarantine(key, None, str(e), meta.get(signing.METADATA))
            return ("quarantine", key, str(e), size)
        rows = [{**self._row(env, line, key), "pack": key} for env, line in members]
        return ("pack", (key, queue, len(rows)), rows)

    def _row(self, env: dict, raw: bytes, key: str) -> dict:
        """The index row of a valid envelope that came in object ``key``."""
        task = self.app.tasks.get(env["task"])
        max_attempts = (env.get("max_attempts")
                        or (task.max_attempts if task else None)
                        or self.settings.max_attempts)
        run_at = (envelope.parse_time(env["not_before"])
                  if env.get("not_before") else envelope.parse_time(env["enqueued_at"]))
        return {
            "id": env["id"], "task": env["task"], "queue": env["queue"],
            "priority": env.get("priority") or 0, "max_attempts": max_attempts,
            "run_at": run_at, "envelope": raw.decode("utf-8"), "inbox_key": key,
            "key": env.get("key"), "enqueued_at": env["enqueued_at"],
            "expires_at": (envelope.parse_time(env["expires_at"])
                           if env.get("expires_at") else None),
            "grp": env["group"]["id"] if env.get("group") else None,
        }

    def _requests(self, markers: list[tuple[str, str, str]], result: Pass) -> None:
        """Take in cancel/retry markers (each applied once), then run the retries that can go.
        A marker is deleted with its job's inbox object, or now if the job was published."""
        new = set(self.index.new_requests([key for key, _, _ in markers])) if markers else set()
        fresh = [m for m in markers if m[0] in new]
        if fresh and self.settings.signing_key is not None:
            fresh = self._verified_markers(fresh, result)
        if fresh:
            cancelled, settled = self.index.add_requests(fresh, self.clock())
            for job_id in cancelled:
                log.info("job cancelled on request job_id=%s", job_id)
            published = self.index.known(sorted({r["job_id"] for r in settled}))
            result.deleted += [r["key"] for r in settled
                               if (j := published.get(r["job_id"])) and j.published]
        for job in self.index.retry_candidates():
            self._retry(job)

    def _retry(self, job: JobRow) -> None:
        """Run a failed or cancelled job again: its envelope goes back to the inbox (so the job
        is as durable as a new one and status shows it pending), then the row is requeued,
        then the old terminal record is deleted."""
        env = job.envelope
        task = self.app.tasks.get(job.task)
        budget = (env.get("max_attempts") or (task.max_attempts if task else None)
                  or self.settings.max_attempts)
        key = envelope.inbox_key(job.queue, job.id)  # a packed job leaves its pack
        raw = (job.envelope_json or "").encode("utf-8")  # as ingested: its signature holds
        self.store.put(key, raw, metadata=signing.metadata(raw, self.settings.signing_key))
        if self.index.apply_retry(job.id, budget, key, self.clock()):
            self.store.delete_many([envelope.result_key(job.id)])
            log.info("job requeued on request job_id=%s task=%s attempts_so_far=%d",
                     job.id, job.task, job.attempts)

    def _verify(self, raw: bytes, meta: dict[str, str]) -> None:
        """With QLITE_SIGNING_KEY set, the object's bytes must carry a valid signature."""
        if self.settings.signing_key is not None:
            signing.verify(raw, meta.get(signing.METADATA), self.settings.signing_key)

    def _fresh(self, env: dict) -> None:
        """With QLITE_SIGNING_KEY set, a new envelope must be younger than the replay window:
        older signed bytes may be a capture put back after its job was purged."""
        if self.settings.signing_key is None:
            return
        age = self.clock() - envelope.parse_time(env["enqueued_at"])
        if age > signing.REPLAY_WINDOW:
            raise SignatureError(
                f"replay refused: enqueued_at {env['enqueued_at']} is {age / 86400:.1f} days "
                f"old, beyond the {signing.REPLAY_WINDOW // 86400}-day replay window of signed "
                "envelopes (captured bytes put back after a purge?). Try: put the job again")

    def _verified_markers(self, markers: list[tuple[str, str, str]],
                          result: Pass) -> list[tuple[str, str, str]]:
        """The cancel/retry markers whose signature verifies and whose body names the job,
        kind and request of its key (so a signed marker cannot be replayed under another
        key); the others are quarantined. Costs a GET per new marker, only with a key."""
        good = []
        for marker, outcome in zip(markers, self.io.map(self._check_marker, markers),
                                   strict=True):
            if outcome == "ok":
                good.append(marker)
            elif isinstance(outcome, tuple):
                reason, signature = outcome
                key = marker[0]
                try:
                    self._quarantine(key, None, reason, signature)
                except Exception as e:
                    log.warning("cannot quarantine %s: %s (retried next pass)", key, e)
                    continue
                self.index.quarantine(key, reason, None, self.clock())
                result.deleted.append(key)
                result.quarantined += 1
        return good

    def _check_marker(self, marker: tuple[str, str, str]) -> str | tuple[str, str | None] | None:
        """"ok", (reason, signature) to quarantine, or None to look again next pass."""
        key, job_id, kind = marker
        meta: dict[str, str] = {}
        try:
            raw, meta = self.store.get_with_metadata(key)
            self._verify(raw, meta)
            body = envelope.loads_strict(raw, "request marker")
            request_id = key.rsplit(".", 1)[1]
            if not isinstance(body, dict) or (
                    body.get("kind"), body.get("id"), body.get("request")) != (
                    kind, job_id, request_id):
                raise EnvelopeError(
                    f"request marker body does not match its key {key!r}: expected a JSON "
                    f"object with kind {kind!r}, id {job_id!r} and request {request_id!r}")
        except (EnvelopeError, SignatureError) as e:
            return str(e), meta.get(signing.METADATA)
        except ObjectNotFound:
            return None
        except Exception as e:
            log.warning("cannot check request %s: %s: %s (retried next pass)", key,
                        type(e).__name__, e)
            return None
        return "ok"

    def _quarantine(self, key: str, job_id: str | None, reason: str,
                    signature: str | None = None) -> None:
        """Copy the object to quarantine/ with the reason (and its signature, if it had one,
        for whoever looks into it); tell a waiting producer it failed."""
        log.warning("quarantined key=%s reason=%s", key, reason)
        safe = reason.encode("ascii", "backslashreplace").decode("ascii")[:1024]
        target = envelope.quarantine_key(key)
        metadata = {"qlite-reason": safe}
        # S3 keys end at 1,024 bytes (some servers: fewer): a long key, which the longer
        # quarantine name could push over the limit, is quarantined under a short name, its
        # original key in the index and the metadata. Otherwise its copy would fail on every
        # pass and the inbox would never drain.
        if len((self.store.prefix + target).encode("utf-8")) > LONG_KEY:
            digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
            target = f"quarantine/_long/{digest}"
            metadata["qlite-original-key"] = key.encode(
                "ascii", "backslashreplace").decode("ascii")[:240]
        if self.store.exists(target):  # an earlier object at the same key: keep both
            target = f"{target}.{int(self.clock() * 1000)}"
        if signature:
            metadata[signing.METADATA] = signature.encode(
                "ascii", "backslashreplace").decode("ascii")[:512]
        self.store.copy(key, target, metadata=metadata)
        if job_id is not None:
            status = JobStatus.quarantined(job_id, key.split("/")[1], reason, target,
                                           envelope.now_rfc3339(self.clock()))
            try:
                self.store.put(envelope.result_key(job_id),
                               json.dumps(status.to_record()).encode(),
                               if_none_match=True)
            except AlreadyExists:
                pass
        pack = envelope.parse_pack_key(key)
        if pack is not None:  # every member's status: failed, with the pack's reason
            pack_record = {"v": 1, "pack": pack[1], "complete": True, "jobs": {},
                           "quarantined": {"message": reason, "quarantine_key": target,
                                           "finished_at": envelope.now_rfc3339(self.clock())}}
            try:
                self.store.put(envelope.pack_result_key(pack[1]),
                               json.dumps(pack_record).encode(),
                               if_none_match=True)
            except AlreadyExists:
                pass
