"""``upload.from_url`` and ``upload.copy``: move files into and within the bucket.

Destinations (and copy sources) are keys under ``uploads/`` of the queue's prefix: a
producer, who may only write to ``inbox/``, cannot use the worker to overwrite ``results/``,
``index/`` or anything else in the bucket. Other buckets are reachable only when the worker
lists them in ``QLITE_UPLOAD_BUCKETS``.

Objects stream through boto3's managed multipart transfer in ``CHUNK`` parts with
``CONCURRENCY`` parts in flight, so memory stays bounded whatever the size (measured with
tests/test_builtins.py: 120 MiB and 360 MiB downloads both peak at 142 MiB RSS, against
76 MiB for an idle worker).
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

from qlite.errors import Fail, Retry
from qlite.tasks import http

CHUNK = 5 << 20
CONCURRENCY = 2
# fullmatch, and \Z not $: '$' also matches before a final newline ('x.json\n').
KEY_RE = re.compile(r"(?!/)(?!.*(?:^|/)\.\.?(?:/|\Z))[A-Za-z0-9!_.*'()/=@+,:;$&-]{1,900}\Z")


def _key(field: str, key: Any) -> str:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise Fail(f"{field}: expected a relative key such as 'avatars/42.png' (letters, "
                   f"digits, '/', '-', '_', '.'; no '..') (got {key!r:.120})")
    return "uploads/" + key


def _bucket(field: str, bucket: str | None, store: Any) -> str:
    if bucket is None or bucket == store.bucket:
        return store.bucket
    if not isinstance(bucket, str) or not bucket:
        raise Fail(f"{field}: expected a bucket name (got {bucket!r:.80}). Try: leave it out "
                   "for the queue's own bucket")
    allowed = {b.strip() for b in os.environ.get("QLITE_UPLOAD_BUCKETS", "").split(",")} - {""}
    if bucket not in allowed:
        raise Fail(f"{field}: bucket {bucket!r} is not in QLITE_UPLOAD_BUCKETS on the worker")
    return bucket


def from_url(ctx: Any, url: str, key: str, content_type: str | None = None,
             headers: dict | None = None, timeout: float = 300.0) -> dict:
    """Download ``url`` (SSRF guard, redirects checked, as ``http.request``) into
    ``uploads/{key}``; returns the key, size and content type."""
    import urllib3

    store = ctx.client.store
    dest = _key("key", key)
    headers = http.check_headers(headers)
    if not isinstance(url, str):
        raise Fail(f"url: expected a string (got {type(url).__name__})")
    allow = http.allowed_networks()
    for _ in range(http.MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise http.Refused(f"url: expected http:// or https:// with a host "
                               f"(got {http.shown(url)!r})")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        ip = http.resolve(parts.hostname, port, allow)
        pool = http._pool(parts.scheme, parts.hostname, port, ip, float(timeout))
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        try:
            resp = pool.urlopen("GET", path, headers={**headers, "Host": host},
                                redirect=False, preload_content=False, retries=False)
        except urllib3.exceptions.HTTPError as e:
            raise Retry(f"GET {parts.scheme}://{host}: {type(e).__name__}: "
                        f"{e}") from None
        if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("location"):
            resp.release_conn()
            url, _, _, headers = http.follow(url, resp.headers["location"], resp.status, "GET",
                                             None, headers)
            continue
        break
    else:
        raise Fail(f"{http.shown(url)}: more than {http.MAX_REDIRECTS} redirects")
    try:
        if resp.status in http.RETRY_STATUS:
            raise Retry(f"GET {http.shown(url)}: HTTP {resp.status}",
                        after=http.retry_after(resp.headers.get("retry-after")))
        if resp.status >= 400:
            raise Fail(f"GET {http.shown(url)}: HTTP {resp.status} (not retried: a client "
                       "error)")
        kind = content_type or resp.headers.get("content-type") or "application/octet-stream"
        if not isinstance(kind, str) or any(ord(c) < 32 or ord(c) == 127 for c in kind):
            raise Fail(f"content_type: expected a MIME type such as image/png (got {kind!r:.80})")
        counted = _Counting(resp)
        store.upload(dest, counted, content_type=kind, chunk=CHUNK, concurrency=CONCURRENCY)
    finally:
        resp.release_conn()
    return {"key": dest, "size": counted.size, "content_type": kind}


def copy(ctx: Any, source: str, key: str, source_bucket: str | None = None,
         bucket: str | None = None) -> dict:
    """Copy ``uploads/{source}`` to ``uploads/{key}`` (server-side, multipart when large),
    across buckets listed in QLITE_UPLOAD_BUCKETS."""
    store = ctx.client.store
    src, dest = _key("source", source), _key("key", key)
    size = store.copy_managed(_bucket("source_bucket", source_bucket, store), src,
                              _bucket("bucket", bucket, store), dest, chunk=CHUNK,
                              concurrency=CONCURRENCY)
    return {"key": dest, "size": size}


class _Counting:
    """A read-only file over an HTTP response that counts the bytes passed on."""

    def __init__(self, raw: Any):
        self.raw = raw
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(None if n is None or n < 0 else n)
        self.size += len(data)
        return data
