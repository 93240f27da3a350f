"""Run one peer's case in this (child) process: ``python -m bench.peers huey|rq|celery N [W]``.

Each enqueues N jobs one by one (the first and last are markers that record when they run),
then one worker drains them (Huey: with W worker threads, 1 by default). Prints
{"enqueue_jobs_s", "drain_jobs_s"} as JSON.
"""

from __future__ import annotations

import importlib
import json
import sys


def main() -> None:
    name, n = sys.argv[1], int(sys.argv[2])
    module = importlib.import_module(f"bench.peer_{name}")
    out = module.run(n, int(sys.argv[3])) if len(sys.argv) > 3 else module.run(n)
    # The drain clock starts when the first job runs: N - 1 jobs ran after it.
    print(json.dumps({"enqueue_jobs_s": n / out["enqueue_s"],
                      "drain_jobs_s": (n - 1) / out["drain_s"]}))


if __name__ == "__main__":
    main()
