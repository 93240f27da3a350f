"""Signed webhooks: the worker POSTs a job's final status to ``webhook=URL``; the receiver
checks it came from the worker with ``qlite.verify_webhook``. Standard library only.

The request carries ``Qlite-Signature: t=UNIX_SECONDS,v1=HEX`` where HEX is
HMAC-SHA256(secret, f"{t}.".encode() + body) and the secret is the worker's
``QLITE_WEBHOOK_SECRET``. The timestamp is signed too, so an old request replayed later is
refused (``tolerance``, 5 minutes by default).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable

HEADER = "Qlite-Signature"


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The ``Qlite-Signature`` header value for ``body`` sent at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_webhook(body: bytes, signature: str | None,
                   secret: str | bytes | Iterable[str | bytes], *, tolerance: float = 300.0,
                   now: float | None = None) -> bool:
    """True when ``signature`` (the ``Qlite-Signature`` header) signs these exact ``body``
    bytes with ``secret`` (or one of several, while rotating) and is at most ``tolerance``
    seconds old. Compare in constant time; never parse the body before this returns True."""
    if not signature or not isinstance(body, bytes | bytearray):
        return False
    fields = dict(part.split("=", 1) for part in signature.split(",") if "=" in part)
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        return False
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    given = fields.get("v1", "")
    return any(hmac.compare_digest(sign(s, bytes(body), timestamp).split("v1=", 1)[1], given)
               for s in secrets)
