"""``qlite put``: the producer's command. Standard library and boto3 only (no typer), so a
cron job or serverless function pays nothing for the worker's dependencies.

Its arguments and options are one table, ``ARGUMENTS`` and ``OPTIONS``: argparse reads it
here, and the typer CLI (qlite/cli/main.py) builds its ``put`` command from it, so both
``qlite put --help`` texts and parsers agree (``qlite --help`` lists ``put`` like any other
command). tests/test_imports.py keeps this path free of typer.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from qlite.envelope import loads_strict
from qlite.errors import ConfigError, EnvelopeError, QliteError
from qlite.settings import setting

HELP = "Enqueue a job: prints its id alone on one line."
EPILOG = """PAYLOAD is JSON: an array becomes the args, an object the kwargs; '-' reads it from
stdin; omitted means no arguments.

examples:
  qlite put math.add '{"a": 1, "b": 2}'
  qlite put math.add '[1, 2]' --queue high --key order-42
  echo '{"to": "a@example.com"}' | qlite put email.send - --delay 60
  qlite put report.build '{"day": "2026-11-25"}' --ttl 3600 --priority 5"""


@dataclass(frozen=True)
class Param:
    """One argument or option of ``qlite put``: ``name`` is the keyword of ``put()``."""

    name: str
    kind: type  # str, int or float
    default: Any
    metavar: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _setting(name: str, metavar: str, text: str) -> Param:
    """An option that is also a setting: its env var and default come from the table."""
    s = setting(name)
    return Param(name, int if s.kind == "int" else str, None, metavar, s.cli_help(text))


ARGUMENTS = (
    Param("task", str, ..., "TASK", "registered task name, e.g. math.add"),
    Param("payload", str, None, "PAYLOAD",
          "JSON array (args) or object (kwargs); '-' reads stdin"),
)
OPTIONS = (
    Param("queue", str, "default", "QUEUE", "queue name (default: default)"),
    Param("key", str, None, "KEY", "idempotency key: the same key is one job"),
    Param("delay", float, None, "SECONDS", "run no sooner than SECONDS from now"),
    Param("ttl", float, None, "SECONDS", "cancel it if it has not started within SECONDS"),
    Param("priority", int, None, "N", "higher runs first within its queue (default 0)"),
    _setting("url", "URL", "s3://bucket[/prefix]"),
    _setting("endpoint_url", "URL", "S3 endpoint of an S3-compatible server"),
    _setting("max_payload", "BYTES", "largest inline envelope"),
    _setting("inline", "on|off", "a small job's envelope in its object key too"),
)


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


def put(task: str, payload: str | None = None, **options: Any) -> str:
    """Parse the payload, enqueue, return the job id. ``options`` are OPTIONS by name."""
    from qlite.producer import Client

    args, kwargs = parse_payload(payload)
    client = Client(options.pop("url", None), endpoint_url=options.pop("endpoint_url", None),
                    max_payload=options.pop("max_payload", None),
                    inline=options.pop("inline", None))
    return client.put(task, args, kwargs, **options).id


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qlite put", description=HELP, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for a in ARGUMENTS:
        p.add_argument(a.name, metavar=a.metavar, help=a.help,
                       **({} if a.default is ... else {"nargs": "?", "default": a.default}))
    for o in OPTIONS:
        p.add_argument(o.flag, dest=o.name, type=o.kind, default=o.default, metavar=o.metavar,
                       help=o.help)
    return p


def main(argv: list[str]) -> int:
    ns = parser().parse_args(argv)
    try:
        job_id = put(**vars(ns))
    except QliteError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(job_id)
    return 0
