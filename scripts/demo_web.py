"""`make demo-web`: the feeds example (examples/feeds, a Django site) with its worker on a local
SeaweedFS, until Ctrl-C. No Docker, no cloud account.

    python scripts/demo_web.py [--port 8000] [--data .qlite-dev]

The worker may fetch from 127.0.0.1 (QLITE_HTTP_ALLOW), so the site's own /sample.rss works
offline; every other private address stays refused.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "examples" / "feeds"
sys.path.insert(0, str(ROOT))

from qlite.testing.devserver import SeaweedFS  # noqa: E402

BUCKET = "qlite-demo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="the site's port (0: any free)")
    parser.add_argument("--data", default=str(ROOT / ".qlite-dev"), help="data folder")
    opts = parser.parse_args()
    data = Path(opts.data)

    print(f"Starting SeaweedFS (data in {data}/seaweedfs, bound to 127.0.0.1) ...", flush=True)
    server = SeaweedFS(data / "seaweedfs")
    server.start()
    procs: list[subprocess.Popen] = []
    try:
        server.create_bucket(BUCKET)
        env = {**os.environ, **server.env(), "QLITE_URL": f"s3://{BUCKET}/feeds",
               "QLITE_DB": str(data / "feeds-index.db"), "QLITE_HTTP_ALLOW": "127.0.0.1/32",
               "QLITE_POLL_MAX": "1", "PYTHONUNBUFFERED": "1"}
        manage = [sys.executable, "manage.py"]
        procs.append(subprocess.Popen([*manage, "qlite_worker"], cwd=SITE, env=env))
        web = subprocess.Popen([*manage, "runserver", f"127.0.0.1:{opts.port}", "--noreload"],
                               cwd=SITE, env=env, stdout=subprocess.PIPE, text=True)
        procs.append(web)
        for line in web.stdout:  # runserver prints its address once it listens
            if line.startswith("Starting development server at "):
                url = line.split(" at ", 1)[1].strip()
                break
        else:
            print("Error: the site did not start (see above)", file=sys.stderr)
            return 1
        print(f"""
The feeds site is at {url} with a worker (manage.py qlite_worker) on {server.endpoint}.
Add {url}sample.rss, or any RSS/Atom feed on the internet. Press Ctrl-C to stop.
""", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        for line in web.stdout:  # runserver's output until it ends
            print(line, end="", flush=True)
        return web.wait() or 0
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()
        print("Stopped the site, the worker and SeaweedFS.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
