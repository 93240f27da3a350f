"""`make run`: a local SeaweedFS, a worker on examples/tasks.py, a few demo jobs, then the
worker keeps running until Ctrl-C. No Docker, no cloud account.

    python scripts/demo.py [--once] [--data .qlite-dev]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qlite.testing.devserver import SeaweedFS  # noqa: E402

BUCKET = "qlite-demo"
QLITE = [sys.executable, "-m", "qlite"]


def qlite(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*QLITE, *args], env=env, capture_output=True, text=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after the demo jobs")
    parser.add_argument("--data", default=str(ROOT / ".qlite-dev"), help="data folder")
    opts = parser.parse_args()
    data = Path(opts.data)

    print(f"Starting SeaweedFS (data in {data}/seaweedfs, bound to 127.0.0.1) ...", flush=True)
    server = SeaweedFS(data / "seaweedfs")
    server.start()
    worker = None
    try:
        server.create_bucket(BUCKET)
        settings = {**server.env(), "QLITE_URL": f"s3://{BUCKET}/jobs",
                    "QLITE_DB": str(data / "index.db"), "QLITE_POLL_MAX": "2"}
        env = {**os.environ, **settings, "PYTHONPATH": str(ROOT / "examples")}
        print(f"SeaweedFS S3 at {server.endpoint}, bucket {BUCKET}", flush=True)

        worker = subprocess.Popen([*QLITE, "worker", "--app", "tasks:app"], env=env,
                                  cwd=ROOT / "examples")
        demo = [("math.add", '{"a": 2, "b": 3}'), ("demo.flaky", '{"fail_times": 1}'),
                ("demo.slow", '{"seconds": 0.5}'), ("demo.fail", '{"message": "shown as failed"}')]
        ids = []
        for task, payload in demo:
            put = qlite("put", task, payload, env=env)
            if put.returncode != 0:
                print(put.stderr, file=sys.stderr)
                return 1
            ids.append(put.stdout.strip())
            print(f"$ qlite put {task} '{payload}'\n{ids[-1]}", flush=True)
        failures = 0
        for (task, _), job_id in zip(demo, ids, strict=True):
            waited = qlite("wait", job_id, "--timeout", "60", env=env)
            status = json.loads(waited.stdout) if waited.stdout else {}
            state = status.get("state", "unknown")
            error = status.get("error") or {}
            detail = (json.dumps(status.get("result")) if state == "succeeded"
                      else f"{error.get('type')}: {error.get('message')}")
            print(f"{task:<12} {state:<10} attempts={status.get('attempts')}  {detail}",
                  flush=True)
            expected = "failed" if task == "demo.fail" else "succeeded"
            failures += state != expected

        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in settings.items()
                           if k != "QLITE_POLL_MAX")
        print(f"""
The worker is running. From another shell (in this folder):

  export {exports}
  .venv/bin/qlite put math.add '{{"a": 40, "b": 2}}'
  .venv/bin/qlite status ID --json
  .venv/bin/qlite wait ID
  .venv/bin/qlite ls
""", flush=True)
        if opts.once:
            return 1 if failures else 0
        print("Press Ctrl-C to stop.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        while worker.poll() is None:
            time.sleep(0.5)
        return worker.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(40)
            except subprocess.TimeoutExpired:
                worker.kill()
        server.stop()
        print("Stopped the worker and SeaweedFS.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
