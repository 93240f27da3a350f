"""The doorbell: an idle worker sleeps on a cheap conditional GET of one small object instead
of LISTing the inbox, and a producer touches that object only when a worker said it is asleep.
Standard library only (the producer imports it).

S3 has no long poll and no portable notifications. A LIST costs 12.5 times a GET, so polling
the inbox every second would cost about $13 a month per queue; a GET If-None-Match every
``EVERY`` seconds costs about $1.22 (docs/costs.md has the arithmetic). ``coord/doorbell.json``::

    {"v": 1, "asleep": true|false, "ring": N, "at": unix seconds}

- A worker goes to sleep after a quiet spell: it writes ``asleep: true`` (If-Match the version
  it read, keeping ``ring``), then LISTs the inbox once more ``CACHE`` + a margin later, which
  sees every put whose producer could still hold an "awake" read from before the write. Then
  it polls the bell every ``EVERY`` seconds (304 while nothing changed) and LISTs the inbox
  only every ``SAFETY`` seconds.
- A producer, after its PUT, reads the bell (at most once per ``CACHE`` seconds per process)
  and, only if a worker is asleep, rings: ``asleep: false, ring: N + 1``. Any change of
  ``ring`` wakes every sleeping worker of the queue (a fleet shares one bell). A failed read or
  ring never fails the put (a producer may hold PutObject on inbox/ only): the job is then
  taken in by the next safety LIST.
- The sleeper's conditional write closes the last race: a worker about to write ``asleep``
  over a ring it has not seen gets 412, reads the ring and stays awake.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from qlite.errors import AccessDenied, ObjectNotFound, StorageError

log = logging.getLogger(__name__)

KEY = "coord/doorbell.json"
# Seconds between a sleeping worker's GETs of the bell: the pickup delay's bound, and $1.22 of
# an idle queue's $1.40 a month (0.8 s read $1.49 in make bench: no margin under $1.50).
EVERY = 0.85
CACHE = 1.0  # seconds a producer trusts its last read of the bell
SAFETY = 600.0  # seconds between a sleeping worker's inbox LISTs (producers that cannot ring)
QUIET_POLLS = 2  # empty inbox LISTs in a row (0.5 s + 1 s of back-off) before sleeping
DENIED_CACHE = 300.0  # a producer not allowed to read the bell asks again this much later


def _body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def ensure(store: Any) -> None:
    """Write the bell, awake, unless it exists (If-None-Match: one PUT per worker start, 412
    for all but the first). A producer's read of a missing bell is a 404, which costs a cold
    process about 8 ms more than a found one (botocore builds its table of S3 error shapes, and
    more is freed at exit); a busy queue whose worker never slept would pay it on every cold
    put. Never raises: the bell is written again when a worker falls asleep."""
    body = json.dumps({"v": 1, "asleep": False, "ring": 0, "at": time.time()}).encode()
    try:
        store.put_cas(KEY, body, None)
    except StorageError as e:
        log.debug("doorbell %s: %s (written when a worker falls asleep)", KEY, e)


class Bell:
    """The producer's side: ``ring_if_asleep()`` after a put. Thread-safe (put_many writes
    from a pool)."""

    def __init__(self, store: Any, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.clock = clock
        self.lock = threading.Lock()
        self.asleep = False
        self.ring = 0
        self.read_at: float | None = None
        self.trust = CACHE  # how long the last read holds

    def ring_if_asleep(self) -> bool:
        """Read the bell (unless read within CACHE seconds) and ring it if a worker sleeps.
        True when this call rang. Never raises: a failure is logged at debug level."""
        with self.lock:
            now = self.clock()
            try:
                if self.read_at is None or now - self.read_at >= self.trust:
                    self.trust = CACHE
                    self.read_at = now
                    found = self.store.get_etag(KEY)
                    body = _body(found[0]) if found else {}
                    self.asleep = body.get("asleep") is True
                    self.ring = int(body.get("ring") or 0)
                if not self.asleep:
                    return False
                self.ring += 1
                self.store.put(KEY, json.dumps({"v": 1, "asleep": False, "ring": self.ring,
                                                "at": time.time()}).encode())
                self.asleep = False
                return True
            except (StorageError, ValueError, TypeError) as e:
                if isinstance(e, AccessDenied):
                    self.trust = DENIED_CACHE  # do not pay a refused request on every put
                log.debug("doorbell %s: %s (the job is taken in by the worker's next safety "
                          "LIST)", KEY, e)
                return False


class Sleeper:
    """The worker's side: ``sleep()`` when idle, ``rung()`` while asleep, ``wake()``."""

    def __init__(self, store: Any):
        self.store = store
        self.asleep = False
        self.etag: str | None = None  # the version of the bell this worker last saw
        self.ring = 0  # its ring counter then

    def sleep(self) -> bool:
        """Write ``asleep: true``; False (stay awake) when a ring came in meanwhile."""
        for _ in range(3):
            found = self.store.get_etag(KEY)
            body = _body(found[0]) if found else {}
            ring = int(body.get("ring") or 0)
            # A ring seen here needs no waking: the closing LIST after this write sees its job.
            new = json.dumps({"v": 1, "asleep": True, "ring": ring, "at": time.time()})
            etag = self.store.put_cas(KEY, new.encode(), found[1] if found else None)
            if etag is not None:
                self.asleep, self.etag, self.ring = True, etag, ring
                return True
            # Someone wrote first: another worker going to sleep (try again over its
            # version), or a producer ringing (stay awake: its job may be ours).
            again = self.store.get_etag(KEY)
            if again is not None and int(_body(again[0]).get("ring") or 0) != ring:
                return False
        return False

    def rung(self) -> bool:
        """One conditional GET: True when the bell rang since this worker fell asleep."""
        assert self.etag is not None
        try:
            found = self.store.get_if_changed(KEY, self.etag)
        except ObjectNotFound:
            return True  # deleted: nothing tells us who sleeps any more; look at the inbox
        if found is None:
            return False
        body = _body(found[0])
        self.etag = found[1]
        if body.get("asleep") is True and int(body.get("ring") or 0) == self.ring:
            return False  # another worker of the fleet went to sleep
        return True

    def wake(self) -> None:
        self.asleep = False
