"""Signed inbox objects: HMAC-SHA256 over an object's exact bytes, keyed by key id.

With ``QLITE_SIGNING_KEY`` set, producers sign every object they write (envelopes, payloads,
cancel/retry markers, packs) and the worker quarantines inbox objects that are unsigned or
whose signature does not verify. The signature travels in the object's user metadata,
``x-amz-meta-qlite-signature: kid=KID,v1=HEX`` (boto3: ``Metadata={"qlite-signature": ...}``),
so the bytes stay the plain envelope any producer writes (docs/signing.md). Standard library
only: the producer path imports it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from qlite.errors import ConfigError, SignatureError

METADATA = "qlite-signature"  # boto3 Metadata key; on the wire: x-amz-meta-qlite-signature
HEADER = "x-amz-meta-" + METADATA
MIN_SECRET = 16  # bytes
DEFAULT_KID = "default"
_KID = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
_HEX = re.compile(r"[0-9a-f]{64}")
# A signed envelope whose enqueued_at is older than this is refused, and `qlite purge` keeps
# at least this much with a key: captured signed bytes put back after their job was purged
# cannot run it again (docs/signing.md).
REPLAY_WINDOW = 7 * 86400  # seconds


@dataclass(frozen=True)
class Keyring:
    """Signing keys in order: the first signs, all verify. Its repr never shows a secret."""
    keys: tuple[tuple[str, bytes], ...]

    def __repr__(self) -> str:
        return f"Keyring(kids={[kid for kid, _ in self.keys]!r})"

    __str__ = __repr__

    @property
    def kids(self) -> list[str]:
        return [kid for kid, _ in self.keys]

    def secret(self, kid: str) -> bytes | None:
        return dict(self.keys).get(kid)


def parse(text: str, source: str = "QLITE_SIGNING_KEY") -> Keyring:
    """``kid:secret[,kid:secret...]`` (or one bare secret, key id ``default``) to a Keyring.
    Errors name the setting and the key id, never the secret."""
    example = f"Try: {source}=k1:$(openssl rand -hex 32)"
    keys: list[tuple[str, bytes]] = []
    for n, item in enumerate(str(text).split(","), 1):
        item = item.strip()
        if not item:
            raise ConfigError(f"{source}: key {n} is empty (expected kid:secret, "
                              f"comma-separated). {example}")
        kid, sep, secret = item.partition(":")
        if not sep:
            kid, secret = DEFAULT_KID, item
        if not _KID.fullmatch(kid):
            raise ConfigError(f"{source}: key {n} has key id {kid[:40]!r}: expected 1-32 "
                              f"letters, digits, '_', '-', '.'. {example}")
        if any(kid == k for k, _ in keys):
            raise ConfigError(f"{source}: key id {kid!r} is given twice. Try: one "
                              "kid:secret per key id, the signing key first")
        raw = secret.encode("utf-8")
        if len(raw) < MIN_SECRET:
            raise ConfigError(f"{source}: the secret of key {kid!r} is {len(raw)} bytes, "
                              f"shorter than {MIN_SECRET}. {example}")
        keys.append((kid, raw))
    return Keyring(tuple(keys))


def digest(body: bytes, secret: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of ``body``: what ``openssl dgst -sha256 -hmac`` prints."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def header(body: bytes, keyring: Keyring) -> str:
    """The signature of ``body`` with the keyring's first key: ``kid=KID,v1=HEX``."""
    kid, secret = keyring.keys[0]
    return f"kid={kid},v1={digest(body, secret)}"


def metadata(body: bytes, keyring: Keyring | None) -> dict[str, str] | None:
    """S3 user metadata carrying the signature of ``body``; None without a keyring."""
    return {METADATA: header(body, keyring)} if keyring is not None else None


def verify(body: bytes, value: str | None, keyring: Keyring) -> None:
    """Return if ``value`` is a valid signature of ``body`` by a key of ``keyring``; else
    raise SignatureError with the reason (worded for a quarantine record)."""
    if not value:
        raise SignatureError(
            "unsigned: QLITE_SIGNING_KEY is set on the worker, so every inbox object must "
            "carry a signature. Try: set the same QLITE_SIGNING_KEY on the producer")
    fields = {}
    for part in value.split(","):
        name, sep, val = part.strip().partition("=")
        if sep:
            fields[name.strip()] = val.strip()
    kid, mac = fields.get("kid"), fields.get("v1", "").lower()
    if not kid or not _HEX.fullmatch(mac):
        raise SignatureError(
            f"malformed signature {value[:120]!r}: expected kid=KID,v1=<64 hex digits> in "
            f"{HEADER}. Try: sign as docs/signing.md shows")
    secret = keyring.secret(kid)
    if secret is None:
        raise SignatureError(
            f"unknown signing key id {kid[:40]!r}: the worker's QLITE_SIGNING_KEY holds "
            f"{', '.join(keyring.kids)}. Try: add {kid[:40]}:SECRET to the worker's "
            "QLITE_SIGNING_KEY, or sign with a key it holds")
    if not hmac.compare_digest(digest(body, secret), mac):
        raise SignatureError(
            f"bad signature (key {kid!r}): the object's bytes are not the bytes that were "
            f"signed, or the producer's secret for {kid!r} differs from the worker's. Try: "
            "sign the exact bytes you upload, with the same secret")
