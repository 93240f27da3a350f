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
import re
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
    # Whatever the header holds (any text, any length), the answer is True or False: a
    # receiver must be able to call this on untrusted input without a try.
    if not isinstance(signature, str) or not isinstance(body, bytes | bytearray):
        return False
    fields = dict(part.split("=", 1) for part in signature.split(",") if "=" in part)
    t, given = fields.get("t", ""), fields.get("v1", "")
    if not _SECONDS.fullmatch(t) or not _HEX.fullmatch(given):
        return False
    timestamp = int(t)
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        return False
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    return any(hmac.compare_digest(sign(s, bytes(body), timestamp).split("v1=", 1)[1], given)
               for s in secrets)


_SECONDS = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit and int() take more
_HEX = re.compile(r"[0-9a-f]{64}")
