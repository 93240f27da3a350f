"""Presigned uploads: enqueue from a browser or any language without credentials.

``presign_put`` signs one PUT of one new job object, ``inbox/{queue}/{id}.json``, with
``If-None-Match: *`` and ``Content-Type: application/json`` among the signed headers, so the
URL can create that one job and never overwrite it. ``presign_post`` signs an HTML-form POST
policy: any key under ``inbox/{queue}/``, at most ``max_bytes``; S3 POST has no
``If-None-Match``, so its holder could overwrite a pending job whose id it knows (see
docs/deploy.md). Either is signed with the credentials of whoever runs it (the producer's), and
the signature is checked by the S3 server when the upload arrives. Signing happens in
``Store`` (the only module that speaks boto3); this module decides what to sign.
"""

from __future__ import annotations

import time

from qlite import envelope
from qlite.errors import ConfigError
from qlite.settings import Settings
from qlite.store import Store

MAX_EXPIRES = 7 * 24 * 3600  # SigV4 presigned requests cannot live longer than 7 days
PUT_HEADERS = {"Content-Type": "application/json", "If-None-Match": "*"}


def _check(queue: str, expires: int) -> None:
    if not isinstance(queue, str) or not envelope.QUEUE_RE.match(queue):
        raise ConfigError(f"queue: expected letters, digits, '_', '-', '.' (at most 64) "
                          f"(got {queue!r})")
    if type(expires) is not int or not 1 <= expires <= MAX_EXPIRES:
        raise ConfigError(f"expires: expected whole seconds 1..{MAX_EXPIRES} (7 days, the "
                          f"SigV4 limit) (got {expires!r})")


def _store(url: str | None, endpoint_url: str | None, store: Store | None) -> tuple[Store,
                                                                                    Settings]:
    settings = Settings.load(url=url, endpoint_url=endpoint_url)
    return store or Store(settings.require_url(), settings.endpoint_url), settings


def presign_put(url: str | None = None, *, queue: str = "default", job_id: str | None = None,
                key: str | None = None, expires: int = 3600, endpoint_url: str | None = None,
                store: Store | None = None, now: float | None = None) -> dict:
    """A presigned PUT for one new job: ``{"id", "key", "method", "url", "headers",
    "expires_at"}``. The uploader sends the envelope (docs/envelope.md) with exactly
    ``headers``; its ``id`` and ``queue`` must be the ones given here. ``key=`` derives the id
    from an idempotency key, as ``put(key=...)`` does."""
    _check(queue, expires)
    if job_id is not None and key is not None:
        raise ConfigError("presign: give a job id or an idempotency key, not both")
    s, settings = _store(url, endpoint_url, store)
    if key is not None:  # as put(key=...): keyed by the signing key when there is one
        ring = settings.signing_key
        job_id = envelope.key_id(key, ring.keys[0][1] if ring else None)
    job_id = job_id or envelope.new_id(now)
    if not envelope.ID_RE.match(job_id):
        raise ConfigError(f"id: expected a UUIDv7/v8 like 0192f1c4-8f3e-7abc-9def-0123456789ab "
                          f"(got {job_id!r})")
    object_key = envelope.inbox_key(queue, job_id)
    signed = s.presign_put(object_key, expires=expires,
                           content_type=PUT_HEADERS["Content-Type"], if_none_match=True)
    return {"id": job_id, "queue": queue, "key": object_key, "method": "PUT", "url": signed,
            "headers": dict(PUT_HEADERS), "expires_at": _expiry(expires, now)}


def presign_post(url: str | None = None, *, queue: str = "default", expires: int = 3600,
                 max_bytes: int | None = None, endpoint_url: str | None = None,
                 store: Store | None = None, now: float | None = None) -> dict:
    """A presigned POST policy for uploads under ``inbox/{queue}/`` of at most ``max_bytes``
    (default: QLITE_MAX_PAYLOAD): ``{"url", "fields", "key_prefix", "max_bytes",
    "expires_at"}``. Send a multipart/form-data POST to ``url`` with every field, ``key`` set
    to ``{key_prefix}{id}.json`` (the envelope's own id) and the envelope as the ``file``
    field, last."""
    _check(queue, expires)
    s, settings = _store(url, endpoint_url, store)
    limit = settings.max_payload if max_bytes is None else max_bytes
    if type(limit) is not int or limit < 1:
        raise ConfigError(f"max_bytes: expected a positive whole number of bytes "
                          f"(got {limit!r})")
    post = s.presign_post(f"inbox/{queue}/", expires=expires, max_bytes=limit,
                          content_type=PUT_HEADERS["Content-Type"])
    return {**post, "max_bytes": limit, "expires_at": _expiry(expires, now)}


def _expiry(expires: int, now: float | None) -> str:
    return envelope.now_rfc3339((time.time() if now is None else now) + expires)

