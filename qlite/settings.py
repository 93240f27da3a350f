"""One table of settings: name, environment variable, CLI option, default, help.

The table drives the env vars, the CLI defaults and docs/settings.md (a test keeps them in
agreement). boto3 keeps reading the AWS settings it already reads (credentials, region,
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``); ``endpoint_url`` is listed here so that it
also has a CLI option.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from qlite.errors import ConfigError

if TYPE_CHECKING:  # imported when a key is set: a producer without keys does not load them
    from qlite.crypto import Cipher
    from qlite.signing import Keyring

# NamedTuples, not dataclasses: a frozen dataclass of 28 fields costs about 3 ms to define,
# paid by every cold producer (``import qlite``); immutable all the same.


class Setting(NamedTuple):
    name: str
    env: str
    option: str
    default: Any
    kind: str  # "str", "int", "float", "list", "url", "keyring", "cipher"
    help: str

    def cli_help(self, text: str) -> str:
        """An option's --help line: ``text``, then this setting's env var and default."""
        default = self.default
        if isinstance(default, tuple):
            default = ",".join(default)
        elif isinstance(default, float):
            default = f"{default:g}"
        return text + f" (env {self.env}" + ("" if default is None else f", default {default}") \
            + ")"


def setting(name: str) -> Setting:
    """The row of ``name`` in SETTINGS."""
    return next(s for s in SETTINGS if s.name == name)


SETTINGS: tuple[Setting, ...] = (
    Setting("url", "QLITE_URL", "--url", None, "url",
            "Where the queue lives: s3://bucket[/prefix]. Required."),
    Setting("endpoint_url", "AWS_ENDPOINT_URL_S3", "--endpoint-url", None, "str",
            "S3 endpoint for S3-compatible servers (boto3 also reads AWS_ENDPOINT_URL). "
            "Unset means AWS S3."),
    Setting("db", "QLITE_DB", "--db", None, "str",
            "The worker's SQLite index file. Default: "
            "$XDG_DATA_HOME/qlite/BUCKET[_PREFIX].db (~/.local/share/qlite/...)."),
    Setting("queues", "QLITE_QUEUES", "--queue", ("default",), "list",
            "Queues the worker serves, in strict priority order (comma-separated in the env "
            "var; repeat --queue on the CLI). NAME=WEIGHT on any of them switches to weighted "
            "order: high=3,default=1 puts high first three times as often as default. A "
            "queue no task of the app uses (nor App(queues=...)) is served, with a warning."),
    Setting("lifo", "QLITE_LIFO", "--lifo", None, "list",
            "Queues claimed newest first (LIFO, a stack) instead of oldest first, for work "
            "where the latest request matters most; higher priority still goes first "
            "(comma-separated in the env var; repeat --lifo on the CLI)."),
    Setting("replicate", "QLITE_REPLICATE", "--replicate", "auto", "str",
            "Replicate the index to index/ in the bucket with Litestream and restore it on a "
            "fresh disk: auto (when the litestream binary is installed), on, or off."),
    Setting("concurrency", "QLITE_CONCURRENCY", "--concurrency", 4, "int",
            "Jobs the worker runs at once."),
    Setting("pool", "QLITE_POOL", "--pool", "thread", "str",
            "thread: jobs run in worker threads (I/O-bound work). process: every job runs in "
            "its own child process (CPU-bound work; a crash cannot take the worker down). Tasks "
            "with a timeout always run in a child process."),
    Setting("max_attempts", "QLITE_MAX_ATTEMPTS", "--max-attempts", 3, "int",
            "Attempts a job gets before it fails, unless its task or envelope says otherwise."),
    Setting("lease", "QLITE_LEASE", "--lease", 60.0, "float",
            "Seconds a running job's lease lasts; renewed by heartbeat every third of it. A job "
            "whose worker died runs again once the lease expires (at once if the dead worker "
            "was on this machine)."),
    Setting("progress_every", "QLITE_PROGRESS_EVERY", "--progress-every", 5.0, "float",
            "Seconds between writes of a running job's ctx.progress to the bucket "
            "(results/ID.progress.json): at most one small PUT per job per interval; reports "
            "in between are coalesced, and the last one is written when the handler returns."),
    Setting("shards", "QLITE_SHARDS", "--shards", 128, "int",
            "Shards the inbox is split into for a fleet of workers on one bucket (each worker "
            "owns a share, leased through coord/ in the bucket). Fixed by the first worker "
            "that starts on the bucket (coord/config.json); later values are ignored."),
    Setting("fleet_lease", "QLITE_FLEET_LEASE", "--fleet-lease", 30.0, "float",
            "Seconds a worker's shard lease lasts; renewed every third of it. A worker on "
            "another machine that stops renewing loses its shards to the others after this "
            "long (a worker on this machine at once). Fixed by the first worker, as shards."),
    Setting("node", "QLITE_NODE", "--node", None, "str",
            "This worker's stable name in the fleet and its index replica's path "
            "(index/NODE-HASH/). Default: the host name. Set it where host names change at "
            "every deploy (a PaaS: e.g. worker-1), so a new container restores the replica."),
    Setting("grace", "QLITE_GRACE", "--grace", 30.0, "float",
            "Seconds running jobs get to finish after SIGTERM/SIGINT before the worker exits."),
    Setting("poll_min", "QLITE_POLL_MIN", "--poll-min", 0.5, "float",
            "Most seconds between inbox LISTs while jobs keep arriving (sooner when they "
            "come fast: about one LIST per 16 new jobs, at most 10 a second)."),
    Setting("poll_max", "QLITE_POLL_MAX", "--poll-max", 10.0, "float",
            "Cap in seconds of the idle back-off between inbox LISTs (one LIST per queue per "
            "poll): the worst-case pickup delay after a quiet spell when the doorbell is off "
            "(with it on, the worker sleeps after two empty LISTs)."),
    Setting("doorbell", "QLITE_DOORBELL", "--doorbell", "on", "str",
            "on: an idle worker sleeps on a GET of coord/doorbell.json every 0.85 s (a job put "
            "after a quiet spell starts within about a second) and producers ring it after a "
            "put when it says a worker sleeps (docs/costs.md). off: idle polls back off to "
            "QLITE_POLL_MAX and producers never read it. A worker with QLITE_POLL_MAX under "
            "0.85 s never sleeps (its LISTs are as fast)."),
    Setting("inline", "QLITE_INLINE", "--inline", "on", "str",
            "on: producers write a small job (no key=, no signing or encryption key, its "
            "envelope under about 160 bytes) with its envelope in the object key too, so the "
            "worker's LIST reads it without a GET: two requests per job instead of three, and "
            "sooner. Whoever may LIST inbox/ then sees those jobs' arguments (docs/costs.md). "
            "off: keys name the job id only. Producers (qlite put, Client(inline=...)) read "
            "it; so does the worker for the jobs its handlers put."),
    Setting("max_payload", "QLITE_MAX_PAYLOAD", "--max-payload", 262144, "int",
            "Largest inline envelope in bytes. Producers move larger arguments to their own "
            "object (claim check, up to 64 MiB), the worker does the same for results; the "
            "worker quarantines a larger inbox object."),
    Setting("log_level", "QLITE_LOG_LEVEL", "--log-level", "INFO", "str",
            "Log level of the worker: DEBUG, INFO, WARNING or ERROR."),
    Setting("dashboard_token", "QLITE_DASHBOARD_TOKEN", "--token", None, "str",
            "Lets qlite dashboard retry and cancel jobs: requests must carry it in the "
            "X-Qlite-Token header (the page asks for it). At least 16 characters. Unset: the "
            "dashboard is read-only."),
    Setting("log_format", "QLITE_LOG_FORMAT", "--log-format", "text", "str",
            "Worker log lines: text (a sentence, then key=value fields) or json (one object "
            "per line: ts, level, logger, msg, job_id, task, queue, attempt, exc)."),
    Setting("metrics_port", "QLITE_METRICS_PORT", "--metrics-port", None, "int",
            "Serve Prometheus metrics on this port (/metrics). Unset: no metrics server."),
    Setting("metrics_host", "QLITE_METRICS_HOST", "--metrics-host", "127.0.0.1", "str",
            "Address the metrics server binds; 0.0.0.0 exposes it to the network."),
    Setting("encryption_key", "QLITE_ENCRYPTION_KEY", "--encryption-key", None, "cipher",
            "Encrypt jobs' arguments (producers) and results (worker) end to end with "
            "AES-256-GCM: kid:KEY pairs, comma-separated, KEY 32 bytes in URL-safe base64 "
            "(qlite keygen prints one); the first seals, all open (docs/encryption.md). Prefer "
            "the environment variable: a command-line value is visible in ps."),
    Setting("signing_key", "QLITE_SIGNING_KEY", "--signing-key", None, "keyring",
            "Sign inbox objects (producers) and quarantine unsigned or badly signed ones "
            "(worker): kid:secret pairs, comma-separated, secrets of 16 bytes or more; the "
            "first signs, all verify (docs/signing.md). Prefer the environment variable: a "
            "command-line value is visible in ps."),
)

_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(?P<prefix>[^\s]*))?$")


class QueueURL(NamedTuple):
    bucket: str
    prefix: str  # "" or "some/prefix/" (always ends with a slash when not empty)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def parse_url(value: str | None) -> QueueURL:
    """Parse ``s3://bucket[/prefix]``."""
    if not value:
        raise ConfigError(
            "QLITE_URL is not set: expected s3://bucket[/prefix]. "
            "Try: export QLITE_URL=s3://my-bucket/jobs (or pass --url)"
        )
    m = _URL.match(value.strip())
    if not m:
        raise ConfigError(
            f"QLITE_URL: expected s3://bucket[/prefix] with a valid bucket name (got {value!r})"
        )
    prefix = (m.group("prefix") or "").strip("/")
    return QueueURL(m.group("bucket"), f"{prefix}/" if prefix else "")


def _convert(setting: Setting, raw: Any, source: str) -> Any:
    if raw is None:
        return None
    try:
        if setting.kind == "int":
            value = int(raw)
            if value < 1 or (setting.name == "metrics_port" and value > 65535):
                raise ValueError
            return value
        if setting.kind == "float":
            number = float(raw)
            if not number > 0 or number == float("inf"):
                raise ValueError
            return number
    except (TypeError, ValueError):
        expected = "a positive integer" if setting.kind == "int" else "a positive number"
        if setting.name == "metrics_port":
            expected = "a port number 1..65535"
        raise ConfigError(f"{source}: expected {expected} (got {raw!r})") from None
    if setting.kind == "list":
        items = [raw] if isinstance(raw, str) else list(raw)
        names = [q.strip() for item in items for q in item.split(",") if q.strip()]
        for q in names:
            name, _, weight = q.partition("=")
            if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
                raise ConfigError(
                    f"{source}: queue name {name!r} is not valid "
                    "(use letters, digits, '_', '-', '.'; at most 64)"
                )
            if "=" in q and setting.name == "lifo":
                raise ConfigError(f"{source}: expected queue names (got {q!r}). Try: "
                                  "--lifo latest")
            if "=" in q and not re.fullmatch(r"[1-9][0-9]{0,5}", weight):
                raise ConfigError(f"{source}: queue weight in {q!r} is not a whole number "
                                  "1..999999. Try: --queue high=3 --queue default=1")
        if not names:
            raise ConfigError(f"{source}: expected at least one queue name (got {raw!r})")
        if len({q.partition("=")[0] for q in names}) != len(names):
            raise ConfigError(f"{source}: a queue is named twice (got {raw!r})")
        return tuple(names)
    if setting.kind == "url":
        return parse_url(raw)
    if setting.kind == "keyring":
        from qlite import signing
        return raw if isinstance(raw, signing.Keyring) else signing.parse(raw, source)
    if setting.kind == "cipher":
        from qlite import crypto
        return raw if isinstance(raw, crypto.Cipher) else crypto.parse(raw, source)
    if setting.name == "replicate":
        if raw not in ("auto", "on", "off"):
            raise ConfigError(f"{source}: expected auto, on or off (got {raw!r})")
        return raw
    if setting.name in ("doorbell", "inline"):
        if raw not in ("on", "off"):
            raise ConfigError(f"{source}: expected on or off (got {raw!r})")
        return raw
    if setting.name == "pool":
        if raw not in ("thread", "process"):
            raise ConfigError(f"{source}: expected thread or process (got {raw!r})")
        return raw
    if setting.name == "log_format":
        if raw not in ("text", "json"):
            raise ConfigError(f"{source}: expected text or json (got {raw!r})")
        return raw
    if setting.name == "log_level":
        level = str(raw).upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"{source}: expected DEBUG, INFO, WARNING or ERROR (got {raw!r})")
        return level
    return str(raw)


class Settings(NamedTuple):
    url: QueueURL | None = None
    endpoint_url: str | None = None
    db: str | None = None
    queues: tuple[str, ...] = ("default",)
    weights: tuple[int, ...] = ()  # empty: strict order of queues; else one weight per queue
    lifo: tuple[str, ...] = ()  # queues claimed newest first
    replicate: str = "auto"
    concurrency: int = 4
    pool: str = "thread"
    max_attempts: int = 3
    lease: float = 60.0
    progress_every: float = 5.0
    shards: int = 128
    fleet_lease: float = 30.0
    node: str | None = None
    grace: float = 30.0
    poll_min: float = 0.5
    poll_max: float = 10.0
    doorbell: str = "on"
    inline: str = "on"
    max_payload: int = 262144
    log_level: str = "INFO"
    dashboard_token: str | None = None
    log_format: str = "text"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    signing_key: Keyring | None = None  # its repr shows key ids, never a secret
    encryption_key: Cipher | None = None  # its repr shows key ids, never a key

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``overrides`` (CLI options, arguments), else the environment, else
        the defaults. ``url`` stays None when unset; ``require_url`` reports it."""
        env = os.environ if env is None else env
        assert env is not None
        values: dict[str, Any] = {}
        for s in SETTINGS:
            given = overrides.get(s.name)
            if given is not None and given != ():
                source = s.option
                raw = given
            elif env.get(s.env):
                source, raw = s.env, env[s.env]
            elif s.name == "endpoint_url" and env.get("AWS_ENDPOINT_URL"):
                source, raw = "AWS_ENDPOINT_URL", env["AWS_ENDPOINT_URL"]
            else:
                values[s.name] = s.default
                continue
            if s.kind == "url" and isinstance(raw, QueueURL):
                values[s.name] = raw
            else:
                values[s.name] = _convert(s, raw, source)
        if values["endpoint_url"] and not re.match(r"^https?://[^\s/]+", values["endpoint_url"]):
            raise ConfigError(
                f"endpoint URL: expected http://host:port or https://host "
                f"(got {values['endpoint_url']!r})"
            )
        # "high=3,default": weights, the odds that a queue goes first when slots free up.
        weighted = any("=" in q for q in values["queues"])
        values["weights"] = tuple(int(q.partition("=")[2] or 1)
                                  for q in values["queues"]) if weighted else ()
        values["queues"] = tuple(q.partition("=")[0] for q in values["queues"])
        values["lifo"] = values["lifo"] or ()  # none: every queue is FIFO
        if values["poll_min"] > values["poll_max"]:
            values["poll_min"] = values["poll_max"]
        return cls(**values)

    def require_url(self) -> QueueURL:
        if self.url is None:
            parse_url(None)  # raises the standard message
        return self.url  # type: ignore[return-value]

    def db_path(self) -> Path:
        if self.db:
            return Path(self.db).expanduser()
        url = self.require_url()
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        name = url.bucket + ("_" + url.prefix.strip("/").replace("/", "_") if url.prefix else "")
        return base / "qlite" / f"{name}.db"

