"""What a fleet shard's next owner gets from the index that held it (worker/carry.py): jobs
waiting for a retry with their attempts and errors, jobs running when that worker died (the
attempt given back, the death counted), schedules' last ticks. Real SQLite files, no bucket:
the fleet tests (tests/test_fleet.py) run the same through a replica and a handoff."""

import time

from qlite import envelope
from qlite.index.db import MAX_LOST, Index
from qlite.worker import carry

SHARDS = 4


def row(job_id: str) -> dict:
    return {"id": job_id, "task": "t", "queue": "default", "priority": 0, "max_attempts": 3,
            "run_at": 0.0, "envelope": "{}", "inbox_key": f"inbox/default/{job_id}.json",
            "key": None, "enqueued_at": "2026-01-01T00:00:00Z"}


def ids_in(shard: int, n: int) -> list[str]:
    out = []
    while len(out) < n:
        job_id = envelope.new_id()
        if envelope.shard_of(job_id, SHARDS) == shard:
            out.append(job_id)
    return out


def test_a_dead_index_carries_its_waiting_retries_its_running_jobs_and_its_ticks(tmp_path):
    now = time.time()
    dead = Index(tmp_path / "dead.db")
    waiting, running, done = ids_in(1, 3)
    other, = ids_in(2, 1)
    dead.insert_jobs([row(i) for i in (waiting, running, done, other)], now)
    dead.claim(("default",), 4, "vm-a:1:1", 60.0, now)
    dead.finish(waiting, 1, "vm-a:1:1", "retry", run_at=now + 20, now=now,
                error={"type": "RuntimeError", "message": "first attempt fails",
                       "traceback": None})
    dead.finish(done, 1, "vm-a:1:1", "succeeded", result="1", now=now)
    names = {carry.schedule_shard(f"s{i}", SHARDS): f"s{i}" for i in range(40)}
    dead.schedule_last(names[1], now - 300)
    dead.schedule_fired(names[1], now - 60, now)
    dead.schedule_last(names[2], now - 300)

    got = carry.read(dead, {1}, SHARDS, died=True)
    assert set(got.jobs) == {waiting, running}  # not the finished one, nor shard 2's
    assert got.schedules == {names[1]: now - 60}
    assert got.of(2, SHARDS).jobs == {} and got.of(1, SHARDS).jobs.keys() == got.jobs.keys()
    dead.close()

    # The next owner takes the jobs in from the inbox again, then applies what they carry.
    taker = Index(tmp_path / "taker.db")
    taker.insert_jobs([row(waiting), row(running)], now)
    assert taker.carry([{"id": i, **j} for i, j in got.jobs.items()], now) == 2
    taker.carry_schedules(got.schedules, now)
    w, r = taker.get(waiting), taker.get(running)
    assert (w.state, w.attempts, w.run_at) == ("scheduled", 1, now + 20)
    assert [a.message for a in w.attempt_log] == ["first attempt fails"]
    # The attempt the death cut short is given back: lost counts it, as reap does.
    assert (r.state, r.attempts, r.lost) == ("queued", 1, 1)
    assert r.attempt_log[0].outcome == "lost"
    assert taker.schedule_last(names[1], now) == now - 60
    claimed = {c.id: c for c in taker.claim(("default",), 4, "vm-b:2:2", 60.0, now + 30)}
    assert claimed[waiting].attempts == 2 and claimed[running].attempts == 2
    assert claimed[running].max_attempts == 3 + 1  # the lost attempt is not charged
    taker.close()


def test_a_job_carried_past_the_cap_of_worker_deaths_fails(tmp_path):
    index = Index(tmp_path / "i.db")
    job_id, = ids_in(0, 1)
    index.insert_jobs([row(job_id)])
    index.carry([{"id": job_id, "attempts": 5, "run_at": 0.0, "error": None,
                  "lost": MAX_LOST, "crashes": 0}])
    assert index.get(job_id).state == "failed"
    index.close()
