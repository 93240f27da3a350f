"""A bulk import split into chunks that run concurrently, then one step that sums them up.

    export QLITE_URL=s3://my-bucket/jobs
    qlite worker --app csv_import:app --concurrency 8      # on the worker VM
    python csv_import.py orders.csv                         # anywhere: prints the group id

Each chunk of 500 rows is one job (retried on its own if it fails); ``imports.finish`` runs
once with every chunk's result, in order, when all of them succeeded. If one chunk fails
for good, ``imports.failed`` gets every chunk's status instead (see docs/builtins.md).
"""

import csv
import sys

import qlite

app = qlite.App()
CHUNK = 500


@app.task(name="imports.chunk", max_attempts=5)
def import_chunk(rows: list[dict]) -> dict:
    total = 0.0
    for row in rows:
        total += float(row["amount"])  # a real import would write each row somewhere
    return {"rows": len(rows), "amount": round(total, 2)}


@app.task(name="imports.finish")
def finish(results: list[dict]) -> dict:
    return {"chunks": len(results), "rows": sum(r["rows"] for r in results),
            "amount": round(sum(r["amount"] for r in results), 2)}


@app.task(name="imports.failed")
def failed(statuses: list[dict]) -> list[str]:
    return [s["id"] for s in statuses if s["state"] != "succeeded"]


def start(path: str, chunk: int = CHUNK, key: str | None = None) -> qlite.Group:
    """Read the CSV, enqueue one job per chunk as a group; ``key`` makes a re-run of the same
    import the same group."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    chunks = [rows[i:i + chunk] for i in range(0, len(rows), chunk)]
    return qlite.group([{"task": import_chunk, "args": [c]} for c in chunks],
                       then=finish, on_failure=failed, key=key)


if __name__ == "__main__":
    group = start(sys.argv[1])
    print(group.id)
