"""Packs: put_many writes many envelopes per object and the worker writes their results in
batches, against both real servers."""

import shutil

import qlite
from conftest import bucket_keys, drain_with
from qlite import envelope
from qlite.index.db import Index
from qlite.worker.loop import Worker

app = qlite.App(queues=["default", "other"])
seen: list[int] = []


@app.task(name="p.echo")
def echo(n):
    seen.append(n)
    return n * 2


@app.task(name="p.fail_odd", max_attempts=1)
def fail_odd(n):
    if n % 2:
        raise ValueError(f"odd {n}")
    return n


@app.task(name="p.switch", max_attempts=1)
def switch(path):
    with open(path) as f:
        if f.read() != "on":
            raise RuntimeError("switched off")
    return "ran"


def test_put_many_packs_jobs_and_the_worker_batches_their_results(s3):
    client = qlite.Client()
    jobs = client.put_many([("p.echo", [i]) for i in range(2500)]
                           + [{"task": "p.echo", "args": [-1], "queue": "other"}])
    assert len({j.id for j in jobs}) == 2501
    inbox = bucket_keys(s3, "inbox/")
    assert len(inbox) == 4 and all(k.endswith(".pack.jsonl") for k in inbox)  # 3 + 1 queue
    assert jobs[0].status()["state"] == "pending" and "pack" in jobs[0].status()

    statuses = drain_with(app, s3, jobs[:3] + jobs[-3:], settings={"queues": ("default",
                                                                               "other")})
    assert all(s["state"] == "succeeded" for s in statuses)
    assert [s["result"] for s in statuses] == [0, 2, 4, 4996, 4998, -2]
    assert bucket_keys(s3, "inbox/") == []
    results = bucket_keys(s3, "results/")
    assert len(results) == 4 and all(k.startswith("results/packs/") for k in results)
    assert qlite.Client().status(jobs[1234].id)["result"] == 2468  # by id alone


def test_a_drain_of_packed_jobs_costs_a_few_requests_per_thousand_jobs(s3):
    client = qlite.Client()
    jobs = client.put_many([("p.echo", [i]) for i in range(3000)])
    worker = Worker(app, s3.settings())
    worker.run(burst=True)
    assert jobs[-1].status()["state"] == "succeeded"
    used = sum(worker.store.requests.values()) + sum(client.store.requests.values())
    assert used / len(jobs) <= 0.05, dict(worker.store.requests)


def test_keyed_and_oversized_jobs_are_put_one_object_each(s3):
    client = qlite.Client()
    big = "x" * (client.settings.max_payload + 10)
    jobs = client.put_many([("p.echo", [1]), {"task": "p.echo", "args": [2], "key": "k2"},
                            ("p.echo", [big]), ("p.echo", [3])])
    inbox = sorted(bucket_keys(s3, "inbox/"))
    assert len([k for k in inbox if k.endswith(".pack.jsonl")]) == 1
    assert f"inbox/default/{jobs[1].id}.json" in inbox
    assert f"inbox/default/{jobs[2].id}.json" in inbox
    assert envelope.pack_of(jobs[0].id) == envelope.pack_of(jobs[3].id)
    assert len(inbox) == 3 and bucket_keys(s3, "payloads/") == [f"payloads/{jobs[2].id}.json"]
    assert client.put_many([{"task": "p.echo", "args": [2], "key": "k2"}])[0].id == jobs[1].id
    assert len(bucket_keys(s3, "inbox/")) == 3  # the key put again is the same object


def test_put_many_without_packing_writes_one_object_per_job(s3):
    jobs = qlite.Client().put_many([("p.echo", [i]) for i in range(5)], pack=False)
    assert sorted(envelope.parse_inbox_key(k) for k in bucket_keys(s3, "inbox/")) == sorted(
        ("default", j.id) for j in jobs)


def test_a_pack_with_one_bad_line_is_quarantined_whole(s3):
    pack_id, ids = envelope.pack_ids(3)
    lines = [envelope.encode(envelope.make("p.echo", [i], job_id=ids[i])) for i in range(3)]
    lines[1] = b'{"v": 1, "id": "not json'
    key = envelope.pack_key("default", pack_id)
    s3.server.client().put_object(Bucket=s3.bucket, Key=s3.prefix + key,
                                  Body=b"\n".join(lines) + b"\n")
    seen.clear()
    Worker(app, s3.settings()).run(burst=True)
    assert seen == []  # nothing of a bad pack runs
    assert bucket_keys(s3, "inbox/") == []
    quarantined = bucket_keys(s3, "quarantine/")
    assert quarantined == [envelope.quarantine_key(key)]
    head = s3.server.client().head_object(Bucket=s3.bucket, Key=s3.prefix + quarantined[0])
    assert "pack line 2" in head["Metadata"]["qlite-reason"]
    status = qlite.Client().status(ids[0])  # a waiting producer learns it failed
    assert (status["state"], status["error"]["type"]) == ("failed", "Quarantined")
    assert "pack line 2" in status["error"]["message"]


def test_failed_packed_jobs_are_recorded_and_one_can_be_retried(s3, tmp_path):
    switch_file = tmp_path / "switch"
    switch_file.write_text("off")
    client = qlite.Client()
    jobs = client.put_many([("p.fail_odd", [i]) for i in range(4)]
                           + [("p.switch", [str(switch_file)])])
    statuses = drain_with(app, s3, jobs)
    assert [s["state"] for s in statuses] == ["succeeded", "failed", "succeeded", "failed",
                                              "failed"]
    assert statuses[1]["error"]["message"] == "odd 1"
    switch_file.write_text("on")
    client.retry(jobs[4].id)
    assert drain_with(app, s3, [jobs[4]])[0]["result"] == "ran"
    assert client.status(jobs[4].id)["state"] == "succeeded"  # its own record now
    assert client.status(jobs[3].id)["state"] == "failed"
    assert bucket_keys(s3, "inbox/") == []


def test_a_packed_job_can_be_cancelled_before_it_runs(s3):
    client = qlite.Client()
    jobs = client.put_many([("p.echo", [i]) for i in range(3)])
    client.cancel(jobs[1].id)
    statuses = drain_with(app, s3, jobs)
    assert [s["state"] for s in statuses] == ["succeeded", "cancelled", "succeeded"]
    assert bucket_keys(s3, "inbox/") == []


def test_packed_results_come_back_when_the_index_is_lost(s3):
    client = qlite.Client()
    jobs = client.put_many([("p.echo", [i]) for i in range(10)])
    drain_with(app, s3, jobs)
    s3.db.unlink()
    for extra in ("-wal", "-shm"):
        s3.db.with_name(s3.db.name + extra).unlink(missing_ok=True)
    shutil.rmtree(s3.db.parent / "nothing", ignore_errors=True)
    seen.clear()
    Worker(app, s3.settings()).run(burst=True)  # rebuilds the index from results/
    assert seen == []  # nothing ran twice
    index = Index(s3.db, readonly=True)
    rows = [index.get(j.id) for j in jobs]
    assert all(r.state == "succeeded" and r.published for r in rows)
    assert rows[3].result == 6
    assert client.status(jobs[3].id)["result"] == 6


def test_a_half_done_pack_survives_the_loss_of_the_index(s3):
    client = qlite.Client()
    jobs = client.put_many([("p.echo", [1]), {"task": "p.echo", "args": [2], "delay": 3600}])
    seen.clear()
    Worker(app, s3.settings()).run(burst=True)
    assert seen == [1] and jobs[0].status()["state"] == "succeeded"
    assert len(bucket_keys(s3, "inbox/")) == 1  # the pack stays until its last job is done
    for path in (s3.db, s3.db.with_name(s3.db.name + "-wal"),
                 s3.db.with_name(s3.db.name + "-shm")):
        path.unlink(missing_ok=True)
    Worker(app, s3.settings()).run(burst=True)  # rebuilt from results/, then the inbox
    assert seen == [1]  # the finished job did not run again
    assert len(bucket_keys(s3, "inbox/")) == 1  # and the pack was not taken for done
    index = Index(s3.db, readonly=True)
    assert index.get(jobs[1].id).state == "scheduled"
    assert index.get(jobs[0].id).state == "succeeded"


def test_a_pack_whose_members_all_have_their_records_is_deleted_not_left_behind(s3):
    # An index rebuilt from results/ publishes a pack's members from their records before it
    # takes the pack in again (the chaos suite's lost disk): the pack object must still go.
    jobs = qlite.Client().put_many([("p.echo", [i]) for i in range(5)])
    (key,) = bucket_keys(s3, "inbox/")
    client = s3.server.client()
    raw = client.get_object(Bucket=s3.bucket, Key=s3.prefix + key)["Body"].read()
    drain_with(app, s3, jobs)
    assert bucket_keys(s3, "inbox/") == []
    before = len(seen)
    client.put_object(Bucket=s3.bucket, Key=s3.prefix + key, Body=raw)  # left behind
    Worker(app, s3.settings()).run(burst=True)
    assert bucket_keys(s3, "inbox/") == []
    assert len(seen) == before  # nothing ran again
    assert [j.status()["result"] for j in jobs] == [0, 2, 4, 6, 8]
