"""``qlite put``: the producer's command. Standard library and boto3 only (no typer), so a
cron job or serverless function pays nothing for the worker's dependencies."""

from __future__ import annotations

import argparse
import sys

from qlite.envelope import loads_strict
from qlite.errors import ConfigError, EnvelopeError, QliteError

HELP = "Enqueue a job: prints its id alone on one line."
EPILOG = """PAYLOAD is JSON: an array becomes the args, an object the kwargs; '-' reads it from
stdin; omitted means no arguments.

examples:
  qlite put math.add '{"a": 1, "b": 2}'
  qlite put math.add '[1, 2]' --queue high --key order-42
  echo '{"to": "a@example.com"}' | qlite put email.send - --delay 60
  qlite put report.build '{"day": "2026-11-25"}' --ttl 3600 --priority 5"""


def parse_payload(text: str | None) -> tuple[list, dict]:
    """PAYLOAD text to (args, kwargs)."""
    if text is None:
        return [], {}
    if text == "-":
        text = sys.stdin.read()
    try:
        value = loads_strict(text.encode("utf-8", "surrogatepass"), "PAYLOAD")
    except EnvelopeError as e:
        raise ConfigError(f"{e}. Try: qlite put math.add '{{\"a\": 1, \"b\": 2}}'") from None
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    raise ConfigError(f"PAYLOAD: expected a JSON array (args) or object (kwargs), got "
                      f"{type(value).__name__} {text.strip()[:40]!r}")


def put(task: str, payload: str | None, *, queue: str = "default", key: str | None = None,
        delay: float | None = None, url: str | None = None, endpoint_url: str | None = None,
        max_payload: int | None = None, ttl: float | None = None,
        priority: int | None = None) -> str:
    """Parse the payload, enqueue, return the job id."""
    from qlite.producer import Client

    args, kwargs = parse_payload(payload)
    client = Client(url, endpoint_url=endpoint_url, max_payload=max_payload)
    return client.put(task, args, kwargs, queue=queue, key=key, delay=delay, ttl=ttl,
                      priority=priority).id


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qlite put", description=HELP, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", metavar="TASK", help="registered task name, e.g. math.add")
    p.add_argument("payload", metavar="PAYLOAD", nargs="?", default=None,
                   help="JSON array (args) or object (kwargs); '-' reads stdin")
    p.add_argument("--queue", default="default", help="queue name (default: default)")
    p.add_argument("--key", default=None, help="idempotency key: the same key is one job")
    p.add_argument("--delay", type=float, default=None, metavar="SECONDS",
                   help="run no sooner than SECONDS from now")
    p.add_argument("--ttl", type=float, default=None, metavar="SECONDS",
                   help="cancel it if it has not started within SECONDS")
    p.add_argument("--priority", type=int, default=None, metavar="N",
                   help="higher runs first within its queue (default 0)")
    p.add_argument("--url", default=None, help="s3://bucket[/prefix] (env QLITE_URL)")
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint (env AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL)")
    p.add_argument("--max-payload", type=int, default=None, metavar="BYTES",
                   help="largest envelope (env QLITE_MAX_PAYLOAD, default 262144)")
    return p


def main(argv: list[str]) -> int:
    ns = parser().parse_args(argv)
    try:
        job_id = put(ns.task, ns.payload, queue=ns.queue, key=ns.key, delay=ns.delay,
                     url=ns.url, endpoint_url=ns.endpoint_url, max_payload=ns.max_payload,
                     ttl=ns.ttl, priority=ns.priority)
    except QliteError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(job_id)
    return 0
