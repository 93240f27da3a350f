"""``qlite dashboard``: one self-contained page and a small JSON API over the worker's index.

Standard library only (``http.server``). It reads the index read-only, one connection per
request. Retry and cancel write the same marker objects as ``qlite retry`` / ``qlite cancel``
(through :class:`qlite.Client`), and only when the dashboard was started with a token that the
request carries in the ``X-Qlite-Token`` header; otherwise a POST gets 403.

Everything shown is untrusted (job arguments, results, tracebacks): the page builds its DOM
with ``textContent`` only, and a Content-Security-Policy with a per-process nonce forbids any
script or style but its own. Requests whose Host header is not the address the dashboard
serves (DNS rebinding) are refused.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from qlite.crypto import opened_error, opened_result
from qlite.envelope import redacted
from qlite.errors import ConfigError, QliteError
from qlite.index.db import Index
from qlite.index.rows import LISTED
from qlite.ops.running import progress_text, running_for
from qlite.ops.stats import STATES, series, stats

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Qlite-Token"
MIN_TOKEN = 16
_JOB = re.compile(r"^/api/jobs/([A-Za-z0-9_.\-]{1,128})(?:/(retry|cancel))?$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class Dashboard:
    """What the handler needs: the index path, the token (None: read-only) and, for retry
    and cancel, a qlite.Client."""

    def __init__(self, db: str | Path, *, token: str | None = None, client: Any = None,
                 cipher: Any = None, url: Any = None, endpoint_url: str | None = None):
        if token is not None and len(token) < MIN_TOKEN:
            raise ConfigError(
                f"QLITE_DASHBOARD_TOKEN / --token: at least {MIN_TOKEN} characters (got "
                f"{len(token)}). Try: --token \"$(python3 -c 'import secrets; "
                "print(secrets.token_urlsafe())')\"")
        if token is not None and client is None:
            raise ConfigError("--token enables retry and cancel, which write to the bucket: "
                              "QLITE_URL is not set. Try: export QLITE_URL=s3://bucket/prefix "
                              "(or pass --url)")
        self.db = Path(db)
        self.url, self.endpoint_url = url, endpoint_url  # for the fleet panel (None: none)
        self.cipher = cipher  # QLITE_ENCRYPTION_KEY: sealed fields are opened for the page
        self.token = token
        self.client = client
        self.nonce = secrets.token_urlsafe(16)
        page = resources.files("qlite.ops").joinpath("dashboard.html").read_text()
        headers = "".join(f'<th class="n">{s}</th>' for s in STATES)
        self.page = (page.replace("{{nonce}}", self.nonce).replace("{{states}}", json.dumps(STATES))
                     .replace("{{state_headers}}", headers).encode())

    def index(self) -> Index:
        return Index(self.db, readonly=True)

    # -- the API ---------------------------------------------------------------------------

    def fleet(self) -> dict:
        from qlite.store import Store
        from qlite.worker.fleet import describe_or_why

        return describe_or_why(Store(self.url, self.endpoint_url) if self.url else None)

    def overview(self, query: dict) -> dict:
        index = self.index()
        try:
            s = stats(index, _window(query))
        finally:
            index.close()
        return {**s, "writable": self.token is not None, "db": str(self.db)}

    def series(self, query: dict) -> dict:
        index = self.index()
        try:
            return series(index, _window(query), _int(query, "buckets", 30, 1, 240))
        finally:
            index.close()

    def jobs(self, query: dict) -> list[dict]:
        state = _one(query, "state")
        if state is not None and state not in STATES:
            raise BadRequest(f"state: expected one of {', '.join(STATES)} (got {state!r})")
        index = self.index()
        try:
            rows = index.jobs(state, _one(query, "queue"), _int(query, "limit", 50, 1, 500))
        finally:
            index.close()
        out = []
        for r in rows:
            error = r.error if r.state != "succeeded" else None
            out.append({
                **{k: getattr(r, k) for k in LISTED},
                "error": {"type": error.get("type"), "message": error.get("message")}
                if error else None,
                "progress": r.progress,
                "progress_text": progress_text(r.progress, at=False) if r.progress else None,
                "running_for": running_for(r.started_at) if r.state == "running" else None})
        return out

    def job(self, job_id: str) -> dict | None:
        index = self.index()
        try:
            job = index.get(job_id)
        finally:
            index.close()
        if job is None:
            return None
        env = redacted(job.envelope)  # secrets in arguments are not shown
        # Sealed fields (docs/encryption.md): opened with the key, "encrypted" without.
        attempts = [{**vars(a), **opened_error(self.cipher, job_id, {
            "message": a.message, "traceback": a.traceback})} for a in job.attempt_log]
        if env.get("sealed") is not None:
            env["args"], env["kwargs"] = ["encrypted"], {}
        return {
            **{k: getattr(job, k) for k in ("id", "task", "queue", "state", "priority",
                                            "attempts", "max_attempts", "key", "enqueued_at",
                                            "started_at", "finished_at", "grp")},
            "args": env.get("args"), "kwargs": env.get("kwargs"), "meta": env.get("meta"),
            "result": opened_result(self.cipher, job_id, job.result),
            "error": opened_error(self.cipher, job_id, job.error) if job.error else None,
            "attempt_log": attempts,
            "progress": job.progress,
            "progress_text": progress_text(job.progress) if job.progress else None,
        }

    def act(self, job_id: str, action: str, token: str | None) -> dict:
        if self.token is None:
            raise Forbidden("read-only dashboard: start it with --token (or "
                            "QLITE_DASHBOARD_TOKEN) to allow retry and cancel")
        if not token or not hmac.compare_digest(token.encode(), self.token.encode()):
            raise Forbidden(f"missing or wrong {TOKEN_HEADER} header")
        status = getattr(self.client, action)(job_id)
        log.info("dashboard: %s requested job_id=%s", action, job_id)
        return {"id": job_id, "requested": action, "state": status.get("state")}


class BadRequest(QliteError):
    """The request is not valid."""


class Forbidden(QliteError):
    """Not allowed."""


def _one(query: dict, name: str) -> str | None:
    values = query.get(name)
    return values[0] if values and values[0] != "" else None


def _int(query: dict, name: str, default: int, low: int, high: int) -> int:
    raw = _one(query, name)
    try:
        value = default if raw is None else int(raw)
    except ValueError:
        raise BadRequest(f"{name}: expected a whole number (got {raw!r})") from None
    return min(max(value, low), high)


def _window(query: dict) -> float:
    return float(_int(query, "since", 3600, 60, 30 * 86400))


class Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = "qlite-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        d = self.dashboard
        try:
            if url.path == "/":
                self._send(HTTPStatus.OK, d.page, "text/html; charset=utf-8")
            elif url.path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            elif url.path == "/api/overview":
                self._json(HTTPStatus.OK, d.overview(query))
            elif url.path == "/api/fleet":
                self._json(HTTPStatus.OK, d.fleet())
            elif url.path == "/api/series":
                self._json(HTTPStatus.OK, d.series(query))
            elif url.path == "/api/jobs":
                self._json(HTTPStatus.OK, d.jobs(query))
            elif (m := _JOB.match(url.path)) and not m.group(2):
                job = d.job(m.group(1))
                if job is None:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"no job {m.group(1)}"})
                else:
                    self._json(HTTPStatus.OK, job)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})
        except BadRequest as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except QliteError as e:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)})

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        m = _JOB.match(urlsplit(self.path).path)
        if not m or not m.group(2):
            self._json(HTTPStatus.NOT_FOUND, {"error": "POST /api/jobs/ID/retry or /cancel"})
            return
        try:
            self._json(HTTPStatus.OK, self.dashboard.act(m.group(1), m.group(2),
                                                         self.headers.get(TOKEN_HEADER)))
        except Forbidden as e:
            self._json(HTTPStatus.FORBIDDEN, {"error": str(e)})
        except QliteError as e:  # not found, not retryable, bucket unreachable
            self._json(HTTPStatus.CONFLICT, {"error": str(e)})

    def _host_ok(self) -> bool:
        """A page on another site that rebinds its name to 127.0.0.1 must not read the API."""
        bound = str(self.server.server_address[0])  # type: ignore[index]
        if bound not in _LOOPBACK:
            return True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host in _LOOPBACK:
            return True
        self._json(HTTPStatus.MISDIRECTED_REQUEST, {"error": f"Host {host!r} is not served"})
        return False

    def _json(self, status: HTTPStatus, body: Any) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        nonce = self.dashboard.nonce
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy",
                         f"default-src 'none'; script-src 'nonce-{nonce}'; "
                         f"style-src 'nonce-{nonce}'; connect-src 'self'; img-src 'self'; "
                         "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(body)


def make_server(dashboard: Dashboard, host: str = "127.0.0.1",
                port: int = 8765) -> ThreadingHTTPServer:
    """A server for ``dashboard`` (port 0: a free one); call ``serve_forever()``."""
    handler = type("BoundHandler", (Handler,), {"dashboard": dashboard})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
