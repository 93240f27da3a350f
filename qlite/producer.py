"""The producer: put / put_many / status / wait. Standard library and boto3 only.

A put is one PutObject of the envelope to ``inbox/{queue}/{id}.json`` with
``If-None-Match: *``, so it never overwrites: with ``key=`` the id is derived from the key and
a second put of the same key returns the same job (guarantee 4 of docs/design.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from qlite import envelope
from qlite.doorbell import Bell
from qlite.errors import (
    AccessDenied,
    AlreadyExists,
    ConfigError,
    EnvelopeError,
    JobFailed,
    JobNotFound,
    JobStateError,
    PayloadTooLarge,
    WaitTimeout,
)
from qlite.settings import Settings
from qlite.states import PENDING, QUEUED, RUNNING, SCHEDULED, TERMINAL
from qlite.store import Store

if TYPE_CHECKING:  # loaded when used: a cold put does not pay for them (bench cold case)
    from qlite import crypto, signing
    from qlite.status import JobStatus


class Client:
    """Enqueue jobs and read their status. ``url`` defaults to ``QLITE_URL``."""

    def __init__(self, url: str | None = None, *, endpoint_url: str | None = None,
                 max_payload: int | None = None, store: Store | None = None,
                 signing_key: str | signing.Keyring | None = None,
                 encryption_key: str | crypto.Cipher | None = None, inline: str | None = None):
        self.settings = Settings.load(url=url, endpoint_url=endpoint_url, max_payload=max_payload,
                                      signing_key=signing_key, encryption_key=encryption_key,
                                      inline=inline)
        self.store = store or Store(self.settings.require_url(), self.settings.endpoint_url)
        self.keyring = self.settings.signing_key  # QLITE_SIGNING_KEY: sign what we write
        self.cipher = self.settings.encryption_key  # QLITE_ENCRYPTION_KEY: seal and open
        # QLITE_DOORBELL: after a put, wake a worker that sleeps (docs/costs.md)
        self.bell = Bell(self.store) if self.settings.doorbell == "on" else None

    def put(self, task: Any, args: Any = (), kwargs: dict | None = None, *,
            queue: str = "default", key: str | None = None, delay: float | timedelta | None = None,
            at: datetime | float | None = None, priority: int | None = None,
            max_attempts: int | None = None, timeout: float | None = None,
            ttl: float | timedelta | None = None, expires_at: datetime | float | None = None,
            webhook: str | None = None, on_success: Any = None, on_failure: Any = None,
            meta: dict | None = None, record_start: bool = False) -> Job:
        """Enqueue one job and return its handle. The job is durable once this returns.

        ``delay``/``at``: not before then. ``ttl``/``expires_at``: a job not started by then
        ends ``cancelled`` (error type ``Expired``). ``key``: the same key is the same job.
        ``webhook``: POST the final status there (signed); ``on_success``/``on_failure``: a
        task to enqueue with the result / the status (docs/builtins.md). ``record_start``:
        the worker writes a ``running`` status record when each attempt starts (and a waiting
        one when it is retried), so ``status`` shows it (docs/envelope.md)."""
        env = self._envelope(task, args, kwargs, queue=queue, key=key, delay=delay, at=at,
                             priority=priority, max_attempts=max_attempts, timeout=timeout,
                             ttl=ttl, expires_at=expires_at, webhook=webhook,
                             on_success=on_success, on_failure=on_failure, meta=meta,
                             record_start=record_start)
        job = self._write(*self._encode(env))
        self._ring()
        return job

    def validate(self, task: Any, args: Any = (), kwargs: dict | None = None,
                 **options: Any) -> None:
        """Raise the error ``put`` would raise for these arguments, writing nothing: to check
        input up front (``qlite put-many`` names the first bad line of a file with it)."""
        self._encode(self._envelope(task, args, kwargs, **options))

    def put_many(self, jobs: Iterable[dict | tuple], *, workers: int = 16,
                 pack: bool = True, key: str | None = None,
                 progress: Any = None) -> list[Job]:
        """Enqueue many jobs; each item is a dict of ``put``'s arguments
        (``{"task": "math.add", "args": [1, 2]}``) or a tuple ``(task, args[, kwargs])``.
        Every envelope is validated before the first PUT, so bad input enqueues nothing.

        Jobs are packed: up to envelope.PACK_MAX of one queue per object, written
        concurrently, and the worker writes their results in batches too. Jobs with ``key=``
        (idempotent) or arguments over the inline limit are still put one object each;
        ``pack=False`` puts every job as its own object.

        ``key``: the whole batch is idempotent: pack ids derive from it, so the same call
        again (say, after an interruption) skips the packs already enqueued (until purged).
        ``progress(jobs, skipped)`` is called after each object is written."""
        now = time.time()  # one timestamp for the batch
        handles: list[Job] = []
        writes: list[tuple[Callable[..., Any], tuple]] = []
        packs: dict[str, _Pack] = {}
        numbers: dict[str, int] = {}  # packs started per queue (for keyed pack ids)
        for item in _items(jobs, "put_many"):
            if key is not None and "key" not in item and not pack:
                item = {**item, "key": f"{key}:{len(handles)}"}
            if not pack or "key" in item:
                env, raw, payload = self._encode(self._envelope(**item, now=now))
                writes.append((self._write, (env, raw, payload)))
                handles.append(Job(self, env["id"], env["queue"]))
                continue
            queue = item.get("queue", "default")
            current = packs.get(queue)
            for _ in range(2):  # a full pack is sealed and the job goes to a fresh one
                if current is None:
                    numbers[queue] = numbers.get(queue, 0) + 1
                    keyed = (self.key_id(f"pack:{key}:{queue}:{numbers[queue]}")
                             if key is not None else None)
                    current = packs[queue] = _Pack(queue, now, keyed)
                env = self._envelope(**item, now=now, job_id=current.next_id())
                try:
                    raw = envelope.encode(env, self.settings.max_payload)
                except PayloadTooLarge:  # claim check: its own object
                    if key is not None:
                        item = {**item, "key": f"{key}:{current.id}:{current.next_index}"}
                    env, raw, payload = self._encode(self._envelope(**item, now=now))
                    writes.append((self._write, (env, raw, payload)))
                    break
                if current.fits(raw):
                    current.add(raw)
                    break
                writes.append((self._write_pack, (current,)))
                current = None
                del packs[queue]
            handles.append(Job(self, env["id"], env["queue"]))
        writes += [(self._write_pack, (p,)) for p in packs.values() if p is not None and p.lines]

        def write(w: tuple) -> None:
            fn, args = w
            written = fn(*args)
            if progress is not None:
                n = len(args[0].lines) if fn == self._write_pack else 1
                progress(n, 0 if written is not False else n)

        if writes:
            with ThreadPoolExecutor(max_workers=min(workers, len(writes))) as pool:
                list(pool.map(write, writes))
            self._ring()
        return handles

    def group(self, jobs: Iterable[dict | tuple], *, then: Any = None, on_failure: Any = None,
              key: str | None = None, workers: int = 16) -> Group:
        """Fan out: enqueue ``jobs`` (as for ``put_many``) as one group; fan in: once every
        member succeeded the worker enqueues ``then`` with the list of their results, in
        order. If a member ends failed or cancelled, ``then`` never runs and ``on_failure``
        (if given) gets the list of member statuses. With ``key=`` the whole group is
        idempotent."""
        items = _items(jobs, "group")
        if not items:
            raise ConfigError("group: expected at least one job")
        if len(items) > envelope.PACK_MAX:
            raise ConfigError(f"group: at most {envelope.PACK_MAX} jobs (got {len(items)}). "
                              "Try: a group of groups (each member's then fans in further)")
        # Member i's id is the group's base id with its last 12 bits set to i, as in a pack:
        # the whole group lands in one fleet shard, so one worker sees it finish.
        base = (self.key_id(f"group:{key}") if key is not None else envelope.new_id())[:-3]
        group_id = base + "000"
        envs = []
        for i, item in enumerate(items):
            if "key" in item:
                raise ConfigError(f"group: job {i} has its own key; a group is idempotent as "
                                  "a whole. Try: group(..., key=...)")
            member = {"id": group_id, "size": len(items), "index": i,
                      "then": getattr(then, "name", then),
                      "on_failure": getattr(on_failure, "name", on_failure)}
            job_id = base + f"{i:03x}"
            if key is not None:
                item = {"key": f"{key}:{i}", **item}
            envs.append(self._encode(self._envelope(**item, group=member, job_id=job_id)))
        return Group(self, group_id, self._write_all(envs, workers))

    def _write_all(self, envs: list[tuple], workers: int) -> list[Job]:
        if not envs:
            return []
        with ThreadPoolExecutor(max_workers=min(workers, len(envs))) as pool:
            jobs = list(pool.map(lambda pair: self._write(*pair), envs))
        self._ring()
        return jobs

    def _ring(self) -> None:
        """Wake a sleeping worker (docs/costs.md): a GET at most once a second per Client,
        and a PUT only when a worker said it is asleep. Never fails the put."""
        if self.bell is not None:
            self.bell.ring_if_asleep()

    def cancel(self, job_id: str, queue: str | None = None) -> dict:
        """Ask the worker to cancel a job: one that has not started never runs; a running one
        sees ``ctx.cancelled`` and ends ``cancelled`` unless it succeeds. Returns the status
        the job had; raises JobStateError if it already finished."""
        # scheduled, running: the record of a record_start job not final yet
        return self._request("cancel", job_id, queue,
                             allowed=(PENDING, QUEUED, SCHEDULED, RUNNING))

    def retry(self, job_id: str, queue: str | None = None) -> dict:
        """Ask the worker to run a failed or cancelled job again, with a fresh budget of
        attempts; its attempt history is kept. Returns the status it had."""
        return self._request("retry", job_id, queue, allowed=("failed", "cancelled"))

    def _request(self, kind: str, job_id: str, queue: str | None,
                 allowed: tuple[str, ...]) -> dict:
        status = self.status(job_id, queue)
        if status["state"] not in allowed:
            why, done, hint = {
                "cancel": ("finished", "cancelled", ". Try: qlite retry for failed jobs"),
                "retry": ("not failed or cancelled", "retried", ""),
            }[kind]
            raise JobStateError(f"job {job_id} is {status['state']}: {why}, so it cannot be "
                                f"{done}{hint}")
        request_id = envelope.new_id()
        marker = envelope.marker_key(status["queue"], job_id, kind, request_id)
        # The request id in the body ties a signed marker to its key: no replay elsewhere.
        body = json.dumps({"v": 1, "kind": kind, "id": job_id, "request": request_id,
                           "at": envelope.now_rfc3339()}).encode()
        self.put_object(marker, body)
        self._ring()
        return status

    def key_id(self, key: str) -> str:
        """The job id of idempotency key ``key``: with a signing key, an HMAC of the key that
        a writer without the secret cannot predict (docs/signing.md)."""
        return envelope.key_id(key, self.keyring.keys[0][1] if self.keyring else None)

    def job(self, job_id: str, queue: str | None = None) -> Job:
        return Job(self, job_id, queue)

    def status(self, job_id: str, queue: str | None = None) -> dict:
        """The job's status from the bucket alone: results/ if finished, else inbox/."""
        return self.job_status(job_id, queue).to_record()

    def job_status(self, job_id: str, queue: str | None = None) -> JobStatus:
        """``status``, typed: the record as a :class:`qlite.status.JobStatus`."""
        from qlite.status import JobStatus
        if not envelope.ID_RE.match(job_id or ""):
            raise JobNotFound(f"job id {job_id!r} is not a qlite job id (a UUID like "
                              "0192f1c4-8f3e-7abc-9def-0123456789ab)")
        record = self._result(job_id)
        if record is not None:
            # running, or waiting for a retry: a job that asked for those records (record_start)
            return record if record.state in TERMINAL else self._with_progress(record)
        queues = [queue] if queue else self.store.list_dirs("inbox/")
        for q in queues:
            raw = self.pending_envelope(q, job_id)
            if raw is not None:
                return self._with_progress(JobStatus.pending(job_id, q, _envelope_of(raw)))
        # A packed job (put_many): its record is in its pack's results, or the pack is pending.
        record = self._packed_result(job_id)
        if record is not None:
            return record
        pack_id = envelope.pack_of(job_id)
        for q in queues:
            key = envelope.pack_key(q, pack_id)
            try:
                present = self.store.exists(key)
            except AccessDenied:
                present = self._listed(key)
            if present:
                return self._with_progress(JobStatus.pending(job_id, q, {}, pack=pack_id))
        # The worker may have finished it between our reads.
        record = self._result(job_id) or self._packed_result(job_id)
        if record is not None:
            return record
        raise JobNotFound(f"no job {job_id} in {self.store.url}: not in results/ nor inbox/ "
                          "(mistyped id, wrong QLITE_URL, or purged)")

    def _with_progress(self, status: JobStatus) -> JobStatus:
        """An unfinished job's status with its latest ctx.progress, if it reported any: one
        GET of results/{id}.progress.json (docs/long-jobs.md)."""
        try:
            raw = self.store.get_or_none(envelope.progress_key(status.id))
        except AccessDenied:
            raw = None
        try:
            report = json.loads(raw) if raw is not None else None
        except ValueError:
            report = None
        if isinstance(report, dict) and report.get("id") == status.id:
            status.progress = self._open_progress(status.id, report)
        return status

    def _open_progress(self, job_id: str, report: dict) -> dict:
        """The public fields of a progress report, its message opened if sealed (without the
        key it reads "encrypted")."""
        from qlite import crypto
        progress = {k: report.get(k) for k in ("done", "total", "message", "at", "rate", "eta")}
        if report.get("sealed_message") is not None:
            progress["message"] = "encrypted" if self.cipher is None else crypto.open_sealed(
                self.cipher, job_id, "progress", report["sealed_message"])
        return progress

    def pending_envelope(self, queue: str, job_id: str) -> bytes | None:
        """The envelope bytes of a job still in ``inbox/{queue}/``, or None: a GET of its
        object, else a LIST for its inline key (QLITE_INLINE), whose text is the envelope.
        ``b"{}"`` when the job is there but a reader may not GET inbox objects."""
        key = envelope.inbox_key(queue, job_id)
        try:
            raw = self.store.get_or_none(key)
        except AccessDenied:
            raw = None
        if raw is not None:
            return raw
        try:
            page, _ = self.store.list_page(f"inbox/{queue}/{job_id}.")
        except AccessDenied:
            return None  # allowed to GET inbox objects, not to LIST them: not found
        for listed, _ in page:
            if listed == key:
                return b"{}"
            try:
                inline = envelope.inline_envelope(listed)
            except EnvelopeError:
                inline = b"{}"  # an inline key that is not an envelope: pending all the same
            if inline is not None:
                return inline
        return None

    def _listed(self, key: str) -> bool:
        """Whether ``key`` exists, by a LIST: a reader allowed results/ only
        (deploy/iam/reader.json) may not read inbox objects, but a LIST still tells that a job
        or its pack is pending."""
        page, _ = self.store.list_page(key, max_keys=1)
        return bool(page) and page[0][0] == key

    def wait(self, job_id: str, timeout: float | None = None, queue: str | None = None,
             poll: float = 0.2, poll_max: float = 2.0) -> dict:
        """Poll until the job is terminal; raise WaitTimeout after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self.job_status(job_id, queue)
        while status.state not in TERMINAL:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout(f"job {job_id} is still {status.state} after {timeout:g}s")
            time.sleep(poll if left is None else min(poll, left))
            poll = min(poll * 1.5, poll_max)
            record = self._result(job_id)
            if record is None and status.pack is not None:
                record = self._packed_result(job_id)
            if record is not None:
                status = record
        return status.to_record()

    # -- internals --------------------------------------------------------------------------

    def _envelope(self, task: Any, args: Any = (), kwargs: dict | None = None, *,
                  queue: str = "default", key: str | None = None, delay: Any = None,
                  at: Any = None, priority: int | None = None, max_attempts: int | None = None,
                  timeout: float | None = None, ttl: Any = None, expires_at: Any = None,
                  webhook: str | None = None, on_success: Any = None, on_failure: Any = None,
                  meta: dict | None = None, group: dict | None = None,
                  record_start: bool = False, now: float | None = None,
                  job_id: str | None = None) -> dict:
        name = getattr(task, "name", task)
        if not isinstance(name, str) or not envelope.TASK_RE.match(name):
            raise ConfigError(f"task: expected a task name like 'math.add' (got {name!r})")
        now = time.time() if now is None else now
        not_before = _when(delay, at, now)
        expiry = _when(ttl, expires_at, now, names=("ttl", "expires_at"))
        if ttl is not None and expiry is None:
            raise ConfigError(f"ttl: expected seconds > 0 (got {ttl!r})")
        if expiry is not None and expiry <= (not_before or now):
            raise ConfigError("expires_at/ttl: the job would expire before it may run. Try: a "
                              "ttl longer than its delay")
        return envelope.make(name, args, kwargs, queue=queue, key=key,
                             not_before=not_before, expires_at=expiry, priority=priority,
                             webhook=webhook, on_success=getattr(on_success, "name", on_success),
                             on_failure=getattr(on_failure, "name", on_failure), group=group,
                             max_attempts=max_attempts, timeout=timeout, meta=meta,
                             record_start=record_start, now=now,
                             job_id=job_id or (self.key_id(key) if isinstance(key, str) and key
                                               else None))

    def _encode(self, env: dict) -> tuple[dict, bytes, bytes | None]:
        """The envelope's bytes; arguments over the inline limit go to their own object
        (claim check), up to envelope.LARGE_LIMIT: (envelope, bytes, payload bytes or None).
        With QLITE_ENCRYPTION_KEY the arguments travel sealed, in ``sealed`` (inline only)."""
        if self.cipher is not None and "sealed" not in env:
            from qlite import crypto
            env = {**env, "args": [], "kwargs": {}, "sealed": crypto.seal(
                self.cipher, env["id"], "args", {"args": env["args"], "kwargs": env["kwargs"]})}
            return env, envelope.encode(env, self.settings.max_payload), None
        try:
            return env, envelope.encode(env, self.settings.max_payload), None
        except PayloadTooLarge:
            payload = envelope.encode_payload(env)
            slim = {**env, "args": [], "kwargs": {},
                    "payload_ref": envelope.payload_key(env["id"]), "payload_size": len(payload)}
            return slim, envelope.encode(slim, self.settings.max_payload), payload

    def _write(self, env: dict, raw: bytes, payload: bytes | None = None) -> Job:
        key = self._inline_key(env, raw, payload) or envelope.inbox_key(env["queue"], env["id"])
        if payload is not None:  # first, so the worker never sees a job without its payload
            try:
                self.put_object(env["payload_ref"], payload)
            except AlreadyExists:
                pass  # the same job put again (key=, or a retried request): keep the first
        try:
            self.put_object(key, raw)
        except AlreadyExists:
            # With an idempotency key the job already exists: return its handle. Without one,
            # the usual cause is boto3 retrying a PUT whose first response was lost: it is
            # ours if the stored bytes are ours.
            if "key" not in env and self.store.get_or_none(key) != raw:
                raise
        return Job(self, env["id"], env["queue"])

    def _inline_key(self, env: dict, raw: bytes, payload: bytes | None) -> str | None:
        """QLITE_INLINE: a small job's key carries its envelope, so the worker's LIST reads it
        without a GET. Not with an idempotency key (its key must follow from the id alone),
        a signing or encryption key, or a claim-checked payload; nor when it does not fit."""
        if (self.settings.inline != "on" or "key" in env or payload is not None
                or self.keyring is not None or self.cipher is not None
                or len(raw) > envelope.NAME_MAX):
            return None
        return envelope.inline_key(env)

    def _write_pack(self, pack: _Pack) -> bool:
        """PUT a pack; False when a keyed pack was enqueued before (and is skipped)."""
        key = envelope.pack_key(pack.queue, pack.id)
        body = b"\n".join(pack.lines) + b"\n"
        if pack.keyed and self.store.exists(envelope.pack_result_key(pack.id)):
            return False  # taken in and (partly) done already: never enqueue it twice
        try:
            self.put_object(key, body)  # signed, as every producer write
        except AlreadyExists:
            # A keyed pack: enqueued by an earlier run. Otherwise a new pack id per call
            # never overwrites, so a 412 means boto3 retried our own PUT.
            if not pack.keyed and self.store.get_or_none(key) != body:
                raise
            return not pack.keyed
        return True

    def _packed_result(self, job_id: str) -> JobStatus | None:
        """The job's record in its pack's batched results, if it is a finished pack member."""
        from qlite.status import JobStatus
        raw = self.store.get_or_none(envelope.pack_result_key(envelope.pack_of(job_id)))
        if raw is None:
            return None
        try:
            body = json.loads(raw)
            record = body["jobs"].get(job_id)
            if record is None and body.get("quarantined"):  # the whole pack was refused
                q = body["quarantined"]
                return JobStatus.quarantined(job_id, None, q["message"], q["quarantine_key"],
                                             q["finished_at"], pack=body["pack"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise JobNotFound(f"{envelope.pack_result_key(envelope.pack_of(job_id))} is not a "
                              "qlite pack results record (was it written by something else?)"
                              ) from None
        if record is None:
            return None
        try:
            return self._resolve(JobStatus.from_record(record, job_id))
        except ValueError:
            raise JobNotFound(f"{envelope.pack_result_key(envelope.pack_of(job_id))}: the record "
                              f"of job {job_id} is not a qlite status record (was it written "
                              "by something else?)") from None

    def put_object(self, key: str, body: bytes) -> None:
        """The one write of the producer path: PUT ``body`` to ``key`` if absent, signed when
        QLITE_SIGNING_KEY is set (docs/signing.md)."""
        metadata = None
        if self.keyring is not None:
            from qlite import signing
            metadata = signing.metadata(body, self.keyring)
        self.store.put(key, body, if_none_match=True, metadata=metadata)

    def _result(self, job_id: str) -> JobStatus | None:
        from qlite.status import JobStatus
        raw = self.store.get_or_none(envelope.result_key(job_id))
        if raw is None:
            return None
        try:
            status = JobStatus.from_record(json.loads(raw), job_id)
        except ValueError:
            raise JobNotFound(f"results/{job_id}.json is not a qlite status record of job "
                              f"{job_id} (was it written by something else?)") from None
        return self._resolve(status)

    def _resolve(self, record: JobStatus) -> JobStatus:
        """``record`` with a claim-checked result read in, and a sealed one opened (with
        QLITE_ENCRYPTION_KEY; without, ``result`` stays None and ``encrypted`` says why).
        Only the value key its id implies is read: a crafted ``result_ref`` must not make
        status print another object."""
        from qlite import crypto
        record.error = crypto.opened_error(self.cipher, record.id, record.error)
        record.errors = [crypto.opened_error(self.cipher, record.id, e) for e in record.errors]
        if isinstance(record.progress, dict):
            record.progress = self._open_progress(record.id, record.progress)
        sealed = record.sealed_result
        if sealed is not None:
            if self.cipher is None:
                record.encrypted = True
            else:
                record.result = crypto.open_sealed(self.cipher, record.id, "result", sealed)
                record.sealed_result = None
        ref = record.result_ref
        if ref:
            expected = envelope.value_key(record.id)
            if ref != expected:
                raise JobNotFound(f"results/{record.id}.json: result_ref {str(ref)[:80]!r} "
                                  f"is not {expected!r}; refused (was the record written by "
                                  "something else?)")
            try:
                record.result = json.loads(self.store.get(ref))
            except ValueError:
                raise JobNotFound(f"{ref} is not JSON (was it written by something "
                                  "else?)") from None
        return record


class Job:
    """A handle on an enqueued job."""

    def __init__(self, client: Client, job_id: str, queue: str | None = None):
        self.client = client
        self.id = job_id
        self.queue = queue

    def __repr__(self) -> str:
        return f"<Job {self.id} queue={self.queue}>"

    def status(self) -> dict:
        return self.client.status(self.id, self.queue)

    def wait(self, timeout: float | None = None) -> dict:
        return self.client.wait(self.id, timeout, self.queue)

    def result(self, timeout: float | None = None) -> Any:
        """The job's JSON result. Waits up to ``timeout`` seconds (None: do not wait); raises
        JobFailed if it failed or was cancelled, WaitTimeout if it has not finished."""
        status = self.client.wait(self.id, timeout or 0, self.queue)
        if status["state"] != "succeeded":
            error = status.get("error") or {}
            raise JobFailed(f"job {self.id} {status['state']}: {error.get('type', '')}: "
                            f"{error.get('message', '')}", status)
        return status.get("result")


class Group:
    """A handle on a group: its member jobs, and the ``then`` (or ``on_failure``) job that
    the worker enqueues once every member has finished."""

    def __init__(self, client: Client, group_id: str, jobs: list[Job]):
        self.client = client
        self.id = group_id
        self.jobs = jobs
        self.then = Job(client, client.key_id(f"group:{group_id}"))

    def __repr__(self) -> str:
        return f"<Group {self.id} jobs={len(self.jobs)}>"

    def result(self, timeout: float | None = None) -> Any:
        """The ``then`` job's result, waiting up to ``timeout`` seconds (None: do not wait,
        as ``Job.result``) for it to be enqueued and finish. Raises JobNotFound while members
        are still running, WaitTimeout while ``then`` runs, JobFailed if it failed."""
        deadline = time.monotonic() + (timeout or 0)
        while True:
            try:
                return self.then.result(max(0.0, deadline - time.monotonic()))
            except JobNotFound:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)


class _Pack:
    """Envelopes of one queue being gathered into one pack object."""

    def __init__(self, queue: str, now: float, keyed_id: str | None = None):
        self.queue = queue
        self.keyed = keyed_id is not None
        self.id = (keyed_id[:-3] + "000" if keyed_id is not None
                   else envelope.pack_ids(1, now)[0])
        self.lines: list[bytes] = []
        self.size = 0
        self.next_index = 0

    def next_id(self) -> str:
        return self.id[:-3] + f"{self.next_index:03x}"

    def fits(self, raw: bytes) -> bool:
        return (self.next_index < envelope.PACK_MAX
                and self.size + len(raw) + 1 <= envelope.PACK_LIMIT)

    def add(self, raw: bytes) -> None:
        self.lines.append(raw)
        self.size += len(raw) + 1
        self.next_index += 1


def _items(jobs: Iterable[dict | tuple], what: str) -> list[dict]:
    items = []
    for item in jobs:
        if isinstance(item, tuple):
            item = dict(zip(("task", "args", "kwargs"), item, strict=False))
        if not isinstance(item, dict) or "task" not in item:
            raise ConfigError(f"{what}: expected dicts with a 'task' (got {item!r:.80})")
        items.append(item)
    return items


LATEST = 253402300799.0  # 9999-12-31T23:59:59Z, the last time RFC 3339 can write


def _when(delay: Any, at: Any, now: float,
          names: tuple[str, str] = ("delay", "at")) -> float | None:
    """A relative (``delay``, ``ttl``) or absolute (``at``, ``expires_at``) time to Unix
    seconds; None when neither is given (or the delay is 0)."""
    if delay is not None and at is not None:
        raise ConfigError(f"give {names[0]}= or {names[1]}=, not both")
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if (not isinstance(seconds, int | float) or isinstance(seconds, bool)
                or not 0 <= seconds <= LATEST - now):
            raise ConfigError(f"{names[0]}: expected seconds >= 0 and before year 10000 "
                              f"(got {delay!r})")
        return now + seconds if seconds else None
    if at is not None:
        if isinstance(at, datetime):
            if at.tzinfo is None:
                raise ConfigError(f"{names[1]}: needs a time zone, e.g. datetime.now(UTC) "
                                  f"(got {at!r})")
            return at.timestamp()
        if isinstance(at, int | float) and not isinstance(at, bool) and 0 <= at <= LATEST:
            return float(at)
        raise ConfigError(f"{names[1]}: expected an aware datetime or Unix seconds "
                          f"(got {at!r})")
    return None


def _envelope_of(raw: bytes) -> dict:
    """An inbox object's envelope for a pending status; empty when it cannot be read."""
    try:
        env = json.loads(raw)
    except ValueError:
        env = {}
    return env if isinstance(env, dict) else {}
