"""A fleet of workers on one bucket: the inbox is split into shards, and each shard is owned by
one worker at a time, through objects in ``coord/`` written with S3 conditional writes. S3 is
the coordinator; there is no Redis, etcd or leader (docs/fleet.md says why it is built so).

Objects (``coord/`` sorts before ``inbox/``)::

    coord/config.json           {shards, lease}             written once, If-None-Match: *
    coord/members/{mid}.json    {mid, node, owner, seq, nonce, fenced_by}
    coord/shards.json           {gen, owners: {shard: {mid, node, gen}}}   If-Match: ETag

- **Members.** Each worker process is a member with an id new at every start (``mid``) and a
  ``node``: the host and index file it writes. It renews its member object every third of the
  lease, If-Match its own last ETag; asleep (idle, on the doorbell: qlite/doorbell.py) every
  ``ASLEEP_RENEW`` seconds, a PUT and no LIST. The object says which (``renew_every``).
- **Liveness is judged by the observer**: a member whose ETag has not changed for its
  patience, max(lease, 3 x the ``renew_every`` it advertised), on *my* monotonic clock is dead
  (no clocks are compared across machines, only a duration is read); one on this host
  whose process is gone is dead at once. Before taking a dead member's shards the taker writes
  ``fenced_by`` into its member object (If-Match), so a paused worker that wakes finds its
  next renewal refused and stops.
- **Trust.** A worker starts jobs, takes in objects and writes results only until (send time of
  its last successful renewal) + lease - margin: an observer cannot declare it dead before then.
- **Assignment** is one table, changed by compare-and-swap: a worker takes unowned shards and
  those of dead members up to its fair share, ceil(shards / live members); a worker holding
  more than its share while another holds less (membership stable for two ticks) drains the
  surplus (no new jobs of them start; running ones finish and publish) and then releases it.
  Each ownership change bumps the shard's ``gen``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qlite.doorbell import KEY as BELL_KEY
from qlite.doorbell import Bell
from qlite.errors import ConfigError, StorageError
from qlite.store import Store
from qlite.worker.liveness import is_local, owner_is_dead

log = logging.getLogger(__name__)

CONFIG = "coord/config.json"
MEMBERS = "coord/members/"
TABLE = "coord/shards.json"
# Seconds between renewals of a sleeping member: patience 3 x 180 s = 9 minutes before a
# member that died asleep is taken over (a live one wakes on the doorbell's first ring).
ASLEEP_RENEW = 180.0


def handoff_key(shard: int) -> str:
    """Where a worker handing ``shard`` over leaves its jobs waiting for a retry (their
    attempts so far and when they may run), for the next owner."""
    return f"coord/handoff/{shard:04d}.json"


def _score(shard: int, mid: str) -> int:
    """Rendezvous hashing: each member prefers different shards, so members taking shards at
    the same moment seldom collide on the table."""
    return int.from_bytes(hashlib.blake2b(f"{shard}:{mid}".encode(), digest_size=8).digest(),
                          "big")


@dataclass
class Seen:
    """Another member as this worker last observed it."""
    etag: str
    since: float  # monotonic time when this ETag was first seen here
    body: dict = field(default_factory=dict)


@dataclass
class Changes:
    """What the worker's loop must do for the fleet (it owns SQLite; the fleet thread only
    speaks S3)."""
    acquired: dict[int, bool] = field(default_factory=dict)  # shard -> rows here are stale
    lost: set[int] = field(default_factory=set)  # taken from us: drop their rows, publish none
    release: set[int] = field(default_factory=set)  # drain these, then call released()
    handoff: set[int] = field(default_factory=set)  # acquired with a coord/handoff/ object
    # acquired from a dead member of another index: shard -> that index (its node), whose
    # replica holds the shard's waiting retries and schedules' last ticks (worker/carry.py)
    died: dict[int, str] = field(default_factory=dict)


class Fleet:
    def __init__(self, store: Store, *, node: str, owner: str, shards: int, lease: float,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.node = node
        self.owner = owner
        self.shards = shards
        self.lease = lease
        self.clock = clock
        self.mid = ""
        self.etag: str | None = None
        self.nonce = ""
        self.seq = 0
        self.trusted_until = 0.0
        self.members: dict[str, Seen] = {}
        # The doorbell as last seen in coord/: its ETag, its ring count, and when (my clock) a
        # new ring was first seen. A ring wakes every live sleeper, which then renews at once:
        # a member asleep at the ring that has not renewed a lease later is dead.
        self.bell_etag: str | None = None
        self.ring: int | None = None
        self.rang_at: float | None = None
        self.table: dict[str, Any] = {"gen": 0, "owners": {}}
        self.table_etag: str | None = None
        self.owned: frozenset[int] = frozenset()
        self.releasing: set[int] = set()
        self.drained: dict[int, bool] = {}  # shard -> a handoff object was written
        self.live_before: frozenset[str] = frozenset()
        self.stable = 0  # ticks the set of live members has not changed
        self.changes = Changes()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.poke = threading.Event()  # renew now (asleep or awake again)
        self.asleep = False  # the worker sleeps on the doorbell: renew rarely, observe nothing
        self.sent_every = lease / 3  # the renew_every of the member object last sent
        self.thread: threading.Thread | None = None
        self.started_at = time.time()  # for qlite fleet only: never compared across machines
        self.jobs: Callable[[], int] = lambda: 0  # jobs this worker published, for qlite fleet

    # -- the worker's loop asks ----------------------------------------------------------

    @property
    def margin(self) -> float:
        return max(self.lease / 10, 0.5)

    def trusted(self) -> bool:
        return self.clock() < self.trusted_until

    @property
    def renew_every(self) -> float:
        return ASLEEP_RENEW if self.asleep else self.lease / 3

    def patience(self, body: dict) -> float:
        """How long an observer waits for a renewal of a member whose object is ``body``."""
        try:
            every = min(float(body.get("renew_every") or 0), ASLEEP_RENEW)
        except (TypeError, ValueError):
            every = ASLEEP_RENEW
        return max(self.lease, 3 * every)

    def set_asleep(self, asleep: bool) -> None:
        """The worker fell asleep on the doorbell, or woke: renew now with the new interval
        (awake: a whole tick, to see who joined)."""
        if asleep != self.asleep:
            self.asleep = asleep
            if not asleep:
                # Observers may take us for dead a lease after the ring that woke us (_alive),
                # which may be before now if this process was paused: nothing starts until a
                # renewal lands (If-Match: it fails if we were fenced meanwhile).
                self.trusted_until = min(self.trusted_until, self.clock())
            self.poke.set()

    def settled(self) -> bool:
        """Nothing for the fleet to do: the same live members for three ticks, every shard
        owned by one of them, nothing being handed over, and this member holding about its
        share (a member waiting for shards to be handed over must be awake to take them).
        Only then may the worker sleep."""
        with self.lock:
            if self.releasing or self.drained or self.changes.release:
                return False
        live = set(self._live(self.clock()))
        owners = self.table["owners"]
        # The fewest shards a member may end up with once _balance has nothing to do: the
        # others at their share ceil(shards / live), this one the rest.
        share = math.ceil(self.shards / len(live))
        need = max(self.shards - (len(live) - 1) * share, 1 if self.shards >= len(live) else 0)
        return self.stable >= 3 and len(self.owned) >= need and all(
            (owners.get(str(s)) or {}).get("mid") in live for s in range(self.shards))

    def take_changes(self) -> Changes:
        with self.lock:
            changes, self.changes = self.changes, Changes()
            return changes

    def foreign(self) -> set[int]:
        """Shards another index holds or held last (their rows here are stale), per the table
        as last read."""
        with self.lock:
            return {int(s) for s, o in self.table["owners"].items()
                    if o.get("node") not in (None, self.node)} - set(self.owned)

    def released(self, shard: int, handoff: bool = False) -> None:
        """The loop drained ``shard``: nothing of it runs or waits to be published here;
        ``handoff``: it wrote the shard's waiting retries to handoff_key(shard)."""
        with self.lock:
            self.drained[shard] = handoff

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Check that the server can coordinate workers (when others are members), read (or
        write) the fleet's config,
        join as a new member and take a first share, before the worker takes anything in.
        Then renew on a thread of its own, so a loop busy with S3 or SQLite never lets the
        lease lapse."""
        others = list(self.store.list_etags(MEMBERS))
        # Alone, a worker needs nothing of the server's conditional writes; joining others,
        # it must know they hold (else two workers would both own every shard).
        problems = probe(self.store) if others else []
        if problems:
            raise ConfigError(
                f"fleet: another worker runs on this bucket ({len(others)} member "
                f"object(s) in {MEMBERS}) but this S3 endpoint cannot coordinate workers: "
                f"{problems[0]}. Try: run one worker, or a server that enforces "
                "conditional writes (qlite doctor)")
        self._config()
        self._join()
        self.tick()
        if others:  # wake the sleeping members: they rebalance with us
            Bell(self.store).ring_if_asleep()
        self.thread = threading.Thread(target=self._run, name="qlite-fleet", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            self.poke.wait(self.renew_every)
            self.poke.clear()
            if self.stop_event.is_set():
                return
            try:
                if self.asleep:
                    self._renew()  # nobody is observed while asleep: the doorbell wakes us
                else:
                    self.tick()
            except Exception as e:  # S3 trouble: trust runs out on its own if it lasts
                log.warning("fleet tick failed: %s: %s", type(e).__name__, e)

    def leave(self, handoff: Callable[[set[int]], set[int]] = lambda shards: set()) -> None:
        """After the worker drained everything: give back every shard and delete the member
        object, so the others take over at once instead of after a lease. ``handoff`` writes
        the shards' coord/handoff/ objects and returns the shards that have one."""
        self.stop_event.set()
        self.poke.set()
        if self.thread is not None:
            self.thread.join(timeout=self.lease)
        try:
            if self.owned and self.trusted():
                handed = handoff(set(self.owned))
                self._release(set(self.owned), why="worker stopping", handoff=handed)
            self.store.delete(f"{MEMBERS}{self.mid}.json")
            log.info("left the fleet mid=%s", self.mid)
            if self.members:  # the sleeping members wake and take our shards now
                Bell(self.store).ring_if_asleep()
        except StorageError as e:
            log.warning("leaving the fleet: %s (the others take over after the lease)", e)

    def _config(self) -> None:
        body = json.dumps({"v": 1, "shards": self.shards, "lease": self.lease}).encode()
        self.store.put_cas(CONFIG, body, None)  # the first worker on the bucket decides
        found = self.store.get_etag(CONFIG)
        if found is None:
            raise ConfigError(f"fleet: {CONFIG} could not be read back after writing it. Try: "
                              "qlite doctor (this server may not keep conditional writes)")
        try:
            config = json.loads(found[0])
            shards, lease = int(config["shards"]), float(config["lease"])
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"fleet: {CONFIG} is malformed ({e}). Try: delete it while no "
                              "worker runs; the next worker writes it again") from e
        if (shards, lease) != (self.shards, self.lease):
            log.info("fleet: using the bucket's shards=%d lease=%.0fs from %s", shards, lease,
                     CONFIG)
        self.shards, self.lease = shards, lease

    def _member_body(self) -> bytes:
        self.seq += 1
        self.nonce = uuid.uuid4().hex
        self.sent_every = self.renew_every  # read once: the loop may wake meanwhile
        return json.dumps({"v": 1, "mid": self.mid, "node": self.node, "owner": self.owner,
                           "pid": os.getpid(), "seq": self.seq, "nonce": self.nonce,
                           "shards": len(self.owned),
                           "jobs": self.jobs(), "started_at": self.started_at,
                           "renew_every": self.sent_every,
                           "at": time.time(), "fenced_by": None}).encode()

    def _join(self) -> None:
        self.mid = uuid.uuid4().hex[:16]
        self.seq = 0
        sent = self.clock()
        etag = self.store.put_cas(f"{MEMBERS}{self.mid}.json", self._member_body(), None)
        if etag is None:  # a fresh random id cannot exist: the server ignores conditions
            raise ConfigError("fleet: a new member object was refused as existing. Try: "
                              "qlite doctor (conditional writes)")
        self.etag = etag
        self.trusted_until = sent + self.patience({"renew_every": self.sent_every}) \
            - self.margin
        log.info("joined the fleet mid=%s node=%s shards=%d lease=%.0fs", self.mid, self.node,
                 self.shards, self.lease)

    # -- one tick: observe, renew, rebalance ---------------------------------------------

    def tick(self) -> None:
        # Renew first: a worker woken by the doorbell starts nothing until its renewal lands
        # (set_asleep), so that must not wait for the LIST. Observing after it is as safe:
        # ``now`` is taken closer to the LIST, and a member's ETag first seen later is
        # declared dead later.
        self._renew()
        now = self.clock()
        listing = self.store.list_etags("coord/")
        self._observe(listing, now)
        self._bell(listing.get(BELL_KEY), now)
        if listing.get(TABLE) != self.table_etag or self.table_etag is None:
            self._read_table()
        self._reconcile()
        live = self._live(now)
        key = frozenset(live)
        self.stable = self.stable + 1 if key == self.live_before else 0
        self.live_before = key
        with self.lock:
            drained, self.drained = self.drained, {}
        if drained and not self._release(set(drained), why="handed over to balance the fleet",
                                          handoff={s for s, h in drained.items() if h}):
            with self.lock:
                self.drained.update(drained)  # the table was busy: again next tick
        self._acquire(live)
        self._balance(live)
        self._bury(now)

    def _renew(self) -> None:
        sent = self.clock()
        body = self._member_body()
        patience = self.patience({"renew_every": self.sent_every})  # what observers read
        etag = self.store.put_cas(f"{MEMBERS}{self.mid}.json", body, self.etag)
        if etag is None:
            found = self.store.get_etag(f"{MEMBERS}{self.mid}.json")
            body = json.loads(found[0]) if found else {}
            if found and body.get("nonce") == self.nonce:  # ours landed; its reply was lost
                etag = found[1]
            else:
                self._fenced(body.get("fenced_by") if found else None)
                return
        self.etag = etag
        self.trusted_until = sent + patience - self.margin

    def _fenced(self, by: str | None) -> None:
        """Another member declared us dead (we were paused or cut off past the lease): every
        shard is theirs now. Drop them and join again as a new member."""
        with self.lock:
            lost = set(self.owned)
            self.changes.lost |= lost
            for shard in lost:
                self.changes.acquired.pop(shard, None)
                self.changes.died.pop(shard, None)
            self.owned = frozenset()
            self.releasing.clear()
            self.drained.clear()
        log.warning("fenced by %s: this worker was taken for dead (paused or cut off past "
                    "the %.0fs lease); dropping %d shard(s) and joining again",
                    by or "another member", self.lease, len(lost))
        self.trusted_until = 0.0
        old = self.mid
        self._join()
        if by is None:  # our object is gone or unreadable: nothing of ours to clean
            return
        try:
            self.store.delete(f"{MEMBERS}{old}.json")
        except StorageError:
            pass  # the fencer deletes it too once it owns our shards

    def _observe(self, listing: dict[str, str], now: float) -> None:
        mids = {}
        for key, etag in listing.items():
            if key.startswith(MEMBERS) and key.endswith(".json"):
                mids[key[len(MEMBERS):-5]] = etag
        mids.pop(self.mid, None)
        for mid in list(self.members):
            if mid not in mids:
                del self.members[mid]  # it left (deleted its object)
        for mid, etag in mids.items():
            seen = self.members.get(mid)
            if seen is None:
                found = self.store.get_etag(f"{MEMBERS}{mid}.json")
                body = json.loads(found[0]) if found else {}
                self.members[mid] = Seen(etag, now, body)
            elif seen.etag != etag:
                # Read what it says now: how long to wait for its next renewal depends on it.
                found = self.store.get_etag(f"{MEMBERS}{mid}.json")
                seen.etag, seen.since = etag, now
                if found is not None:
                    seen.body = json.loads(found[0])

    def _bell(self, etag: str | None, now: float) -> None:
        """Note a new ring of the doorbell (one GET, only when its ETag changed)."""
        if etag is None or etag == self.bell_etag:
            return
        found = self.store.get_etag(BELL_KEY)
        try:
            ring = int(json.loads(found[0]).get("ring") or 0) if found else 0
        except (ValueError, TypeError, AttributeError):
            ring = 0
        if self.ring is not None and ring != self.ring:
            self.rang_at = now
        self.bell_etag, self.ring = etag, ring

    def _alive(self, mid: str, now: float) -> bool:
        seen = self.members.get(mid)
        if seen is None:
            return False
        owner = seen.body.get("owner") or ""
        if seen.body.get("fenced_by"):
            return False
        if owner and is_local(owner) and owner_is_dead(owner):
            return False  # its process on this host is gone: no need to wait a lease
        patience = self.patience(seen.body)
        if self.rang_at is not None and seen.since < self.rang_at and patience > self.lease:
            # Asleep when the bell rang: alive, it woke on the ring and renewed within a lease.
            patience = min(patience, self.rang_at - seen.since + self.lease)
        return now - seen.since < patience

    def _live(self, now: float) -> list[str]:
        """Members that count for the fair share: the live ones, me included."""
        return sorted([self.mid, *(m for m in self.members if self._alive(m, now))])

    def _read_table(self) -> None:
        found = self.store.get_etag(TABLE)
        if found is None:
            self.table, self.table_etag = {"gen": 0, "owners": {}}, None
            return
        self.table, self.table_etag = json.loads(found[0]), found[1]

    def _reconcile(self) -> None:
        """Align what we think we own with the table (another member may have taken a shard
        of ours after declaring us dead)."""
        mine = {int(s) for s, o in self.table["owners"].items() if o.get("mid") == self.mid}
        with self.lock:
            lost = set(self.owned) - mine
            if lost:
                self.changes.lost |= lost
                self.releasing -= lost
                log.warning("lost %d shard(s) to another member: %s", len(lost),
                            _ranges(lost))
            self.owned = frozenset(set(self.owned) & mine)

    def _cas_table(self, change: Callable[[dict], bool]) -> bool:
        """Apply ``change`` to a copy of the table and write it If-Match; on a conflict read
        the table again and retry (a few times: other members are taking shards too)."""
        for _ in range(4):
            table = json.loads(json.dumps(self.table))
            if not change(table):
                return False
            table["gen"] = int(table.get("gen", 0)) + 1
            etag = self.store.put_cas(TABLE, json.dumps(table).encode(), self.table_etag)
            if etag is not None:
                self.table, self.table_etag = table, etag
                return True
            self._read_table()
        return False

    def _acquire(self, live: list[str]) -> None:
        now = self.clock()
        share = math.ceil(self.shards / max(len(live), 1))
        owners = self.table["owners"]
        free = [s for s in range(self.shards)
                if str(s) not in owners or owners[str(s)].get("mid") in (None, "")
                or (owners[str(s)]["mid"] != self.mid
                    and not self._alive(owners[str(s)]["mid"], now))]
        want = share - len(self.owned)
        if want <= 0 or not free:
            return
        free.sort(key=lambda s: _score(s, self.mid), reverse=True)
        dead = {owners[str(s)]["mid"] for s in free if str(s) in owners
                and owners[str(s)].get("mid")}
        for mid in [m for m in dead if m not in self.members]:
            # An owner we have not seen: it may have joined after our LIST. Look it up.
            found = self.store.get_etag(f"{MEMBERS}{mid}.json")
            if found is not None:
                self.members[mid] = Seen(found[1], now, json.loads(found[0]))
        dead = {m for m in dead if not self._alive(m, now)}
        for mid in dead:
            self._fence(mid)
        # Fenced by anyone is dead for good (it joins again under a new id); the fencer may
        # itself have died before taking every shard, so others must be able to take the rest.
        dead = {m for m in dead if self.members.get(m) is None
                or self.members[m].body.get("fenced_by")}
        take = [s for s in free if str(s) not in owners or not owners[str(s)].get("mid")
                or owners[str(s)]["mid"] in dead][:want]
        if not take:
            return
        taken: dict[int, bool] = {}
        handed: set[int] = set()
        died: dict[int, str] = {}

        def change(table: dict) -> bool:
            taken.clear()
            handed.clear()
            died.clear()
            for s in take:
                cur = table["owners"].get(str(s)) or {}
                if cur.get("mid") and cur["mid"] not in dead:
                    continue  # someone else took it first
                # Another index ran it: rows here are stale, and its objects are checked
                # against results/ (ingest.took_over). A shard nobody ever owned has neither.
                taken[s] = bool(cur.get("node")) and cur.get("node") != self.node
                if cur.get("handoff"):
                    handed.add(s)
                elif cur.get("mid") and taken[s] and cur.get("node"):
                    died[s] = cur["node"]  # no handoff: its history is in that replica
                table["owners"][str(s)] = {"mid": self.mid, "node": self.node,
                                           "gen": int(cur.get("gen", 0)) + 1}
            return bool(taken)

        if self._cas_table(change) and taken:
            with self.lock:
                self.owned = frozenset(self.owned | set(taken))
                self.changes.acquired.update(taken)
                self.changes.handoff |= handed
                self.changes.died.update(died)
                self.changes.lost -= set(taken)
            from_dead = [s for s in taken if (owners.get(str(s)) or {}).get("mid")]
            log.info("took %d shard(s) %s (%d from a dead member); now own %d of %d",
                     len(taken), _ranges(taken), len(from_dead), len(self.owned), self.shards)
            self._forget(dead)

    def _forget(self, dead: set[str]) -> None:
        """Delete the objects of members we fenced once they own nothing, so qlite fleet
        does not list the dead for ever."""
        still = {o.get("mid") for o in self.table["owners"].values()}
        for mid in dead - still:
            seen = self.members.get(mid)
            if seen is not None and seen.body.get("fenced_by"):
                self.store.delete(f"{MEMBERS}{mid}.json")
                del self.members[mid]

    def _bury(self, now: float) -> None:
        """Fence and delete the objects of dead members that own no shard (killed before they
        took any): no takeover ever fences those, so qlite fleet would list them for ever."""
        owning = {o.get("mid") for o in self.table["owners"].values()}
        for mid in [m for m in self.members if m not in owning and not self._alive(m, now)]:
            self._fence(mid)
            if mid in self.members and self.members[mid].body.get("fenced_by"):
                self._forget({mid})
                log.info("deleted the object of dead member %s, which owned no shard", mid)

    def _fence(self, mid: str) -> None:
        """Mark a dead member's object fenced (If-Match the ETag we saw stay unchanged), so it
        cannot renew if it was only paused. A refused write means it renewed: it lives."""
        seen = self.members.get(mid)
        if seen is None or seen.body.get("fenced_by"):
            return
        body = {**seen.body, "fenced_by": self.mid}
        etag = self.store.put_cas(f"{MEMBERS}{mid}.json", json.dumps(body).encode(), seen.etag)
        if etag is None:
            seen.since = self.clock()  # it renewed after all
            return
        seen.etag, seen.body = etag, body
        log.warning("member %s (%s) stopped renewing for %.0fs: fenced; taking its shards",
                    mid, seen.body.get("owner"), self.lease)

    def _balance(self, live: list[str]) -> None:
        """Hand over our surplus when another live member holds less than its share; only
        once membership has been stable for two ticks, so a join or a restart moves shards
        once, not back and forth."""
        if self.stable < 2 or len(live) < 2 or self.releasing:
            return
        share = math.ceil(self.shards / len(live))
        counts = {m: 0 for m in live}
        for o in self.table["owners"].values():
            if o.get("mid") in counts:
                counts[o["mid"]] += 1
        if not any(counts[m] < share - 1 or counts[m] == 0 for m in live if m != self.mid):
            return
        surplus = len(self.owned) - share
        if surplus <= 0:
            return
        give = sorted(self.owned, key=lambda s: _score(s, self.mid))[:surplus]
        with self.lock:
            self.releasing |= set(give)
            self.changes.release |= set(give)
        log.info("handing over %d shard(s) %s to balance %d members", len(give), _ranges(give),
                 len(live))

    def _release(self, shards: set[int], why: str,
                 handoff: frozenset[int] | set[int] = frozenset()) -> bool:
        shards &= set(self.owned)
        if not shards:
            return True

        def change(table: dict) -> bool:
            for s in shards:
                cur = table["owners"].get(str(s)) or {}
                if cur.get("mid") == self.mid:
                    table["owners"][str(s)] = {"mid": None, "node": self.node,
                                               "gen": int(cur.get("gen", 0)) + 1,
                                               "handoff": s in handoff}
            return True

        if self._cas_table(change):
            with self.lock:
                self.owned = frozenset(set(self.owned) - shards)
                self.releasing -= shards
            log.info("released %d shard(s) %s: %s", len(shards), _ranges(shards), why)
            return True
        return False

    # -- qlite fleet ---------------------------------------------------------------------


def probe(store: Store) -> list[str]:
    """What the fleet's coordination needs of the server, tried on scratch keys under
    coord/probe/: concurrent creates give one winner, If-Match on a missing key and a stale
    ETag are refused, and LIST shows the ETag a PUT returned. Returns the problems found
    (empty: this endpoint can run several workers)."""
    from concurrent.futures import ThreadPoolExecutor

    base = f"coord/probe/{uuid.uuid4().hex}"
    problems = []
    try:
        racers = 8
        with ThreadPoolExecutor(racers) as pool:
            won = list(pool.map(lambda i: store.put_cas(f"{base}-race.json",
                                                        f'{{"racer": {i}}}'.encode(), None),
                                range(racers)))
        winners = sum(1 for etag in won if etag is not None)
        if winners != 1:
            problems.append(f"{racers} concurrent creates (If-None-Match: *) gave {winners} "
                            "winners, not 1")
        if store.put_cas(f"{base}-missing.json", b"{}", '"0123456789abcdef"') is not None:
            problems.append("a PUT with If-Match on a missing key succeeded")
        first = store.put_cas(f"{base}-cas.json", b'{"n": 1}', None)
        second = store.put_cas(f"{base}-cas.json", b'{"n": 2}', first) if first else None
        if first is None or second is None:
            problems.append("a PUT with If-Match and the current ETag was refused")
        elif store.put_cas(f"{base}-cas.json", b'{"n": 3}', first) is not None:
            problems.append("a PUT with If-Match and a stale ETag succeeded")
        elif store.list_etags(f"{base}-cas.json").get(f"{base}-cas.json") != second:
            problems.append("LIST shows another ETag than the PUT returned")
    except StorageError as e:
        problems.append(f"a conditional write failed: {e}")
    finally:
        for suffix in ("race", "missing", "cas"):
            try:
                store.delete(f"{base}-{suffix}.json")
            except StorageError:
                pass
    return problems


def _ranges(shards: Any) -> str:
    """1,2,3,7 -> '1-3,7' for log lines."""
    out: list[str] = []
    for s in sorted(shards):
        if out and "-" not in out[-1].split(",")[-1] and int(out[-1]) == s - 1:
            out[-1] = f"{out[-1]}-{s}"
        elif out and "-" in out[-1] and int(out[-1].split("-")[1]) == s - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        else:
            out.append(str(s))
    return ",".join(out) or "-"


def describe_or_why(store: Store | None) -> dict:
    """describe(), or ``{"error": why}`` when the bucket cannot be read (qlite stats and the
    dashboard read the index first; the fleet is extra)."""
    if store is None:
        return {"error": "QLITE_URL is not set: the fleet is read from the bucket"}
    try:
        return describe(store)
    except (StorageError, ConfigError, ValueError, KeyError) as e:
        return {"error": f"the fleet could not be read: {e}"}


def fleet_line(fleet: dict) -> str:
    """One line for qlite stats."""
    if "error" in fleet:
        return f"fleet: {fleet['error']}"
    members = fleet.get("members") or []
    if not members:
        return "fleet: no worker has joined"
    parts = [f"{m['mid'][:8]} {m['shards']} shards {m['jobs_per_min'] or 0}/min"
             + (" fenced" if m["fenced_by"] else "") for m in members]
    return (f"fleet: {len(members)} member(s), {fleet['unowned']} shard(s) unowned: "
            + "; ".join(parts))


def describe(store: Store) -> dict:
    """The fleet as the bucket shows it (qlite fleet): members, their shards, last renewal."""
    listing = store.list_etags("coord/")
    found = store.get_etag(TABLE)
    table: dict[str, Any] = json.loads(found[0]) if found else {"gen": 0, "owners": {}}
    config_found = store.get_etag(CONFIG)
    config = json.loads(config_found[0]) if config_found else {}
    members = []
    for key in sorted(k for k in listing if k.startswith(MEMBERS)):
        got = store.get_etag(key)
        if got is None:
            continue
        body = json.loads(got[0])
        owned = sorted(int(s) for s, o in table["owners"].items() if o.get("mid") == body["mid"])
        up = max((body.get("at") or 0) - (body.get("started_at") or 0), 1e-9)
        members.append({"mid": body["mid"], "node": body.get("node"), "owner": body.get("owner"),
                        "seq": body.get("seq"),
                        "fenced_by": body.get("fenced_by"), "shards": len(owned),
                        "shard_ranges": _ranges(owned), "jobs": body.get("jobs", 0),
                        "jobs_per_min": round(60 * body.get("jobs", 0) / up, 1)
                        if body.get("started_at") else None,
                        "renewed_ago": round(time.time() - body["at"], 1)
                        if body.get("at") else None})
    unowned = sorted(s for s in range(int(config.get("shards", 0)))
                     if not (table["owners"].get(str(s)) or {}).get("mid"))
    return {"shards": config.get("shards"), "lease": config.get("lease"),
            "table_gen": table.get("gen", 0), "members": members,
            "unowned": len(unowned), "unowned_ranges": _ranges(unowned)}
