"""End-to-end encryption of a job's sensitive fields (docs/encryption.md).

With QLITE_ENCRYPTION_KEY set (``kid:KEY[,kid:KEY]``, each KEY 32 random bytes in URL-safe
base64, as ``qlite keygen`` prints), producers seal ``args``/``kwargs`` and the worker seals
results, so the bucket, its backups and the index replica hold ciphertext. The first key
seals; every key opens (rotation without downtime). AES-256-GCM from ``cryptography``,
imported only when a key is set; the associated data binds each ciphertext to its job id and
field, so one cannot be moved to another job or field.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from qlite.errors import ConfigError, DecryptError

ALG = "A256GCM"
SEALED = "qlite_sealed"  # the one key of a sealed result's JSON in the index
_KID = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")


@dataclass(frozen=True)
class Cipher:
    keys: tuple[tuple[str, bytes], ...]  # (kid, 32-byte key); the first seals

    def __repr__(self) -> str:  # never a key
        return f"Cipher(kids={[k for k, _ in self.keys]})"

    @property
    def kids(self) -> list[str]:
        return [k for k, _ in self.keys]


def keygen() -> str:
    """A new key in the QLITE_ENCRYPTION_KEY format: ``kid:KEY``."""
    return f"k{os.urandom(4).hex()}:" + base64.urlsafe_b64encode(os.urandom(32)).decode()


def parse(value: str, source: str = "QLITE_ENCRYPTION_KEY") -> Cipher:
    keys = []
    for item in (i.strip() for i in value.split(",") if i.strip()):
        kid, _, raw = item.partition(":")
        try:
            key = base64.urlsafe_b64decode(raw.encode()) if raw else b""
        except (binascii.Error, ValueError):
            key = b""
        if not _KID.match(kid) or len(key) != 32:
            raise ConfigError(f"{source}: expected kid:KEY pairs, KEY 32 bytes in URL-safe "
                              f"base64 (got an entry for key id {kid[:32]!r}). Try: qlite keygen")
        keys.append((kid, key))
    if not keys:
        raise ConfigError(f"{source}: expected at least one kid:KEY pair. Try: qlite keygen")
    if importlib.util.find_spec("cryptography") is None:  # found, not imported: no cost
        raise ConfigError(f"{source} is set but the cryptography package is not installed. "
                          "Try: pip install 'qlite[encryption]'")
    if len({k for k, _ in keys}) != len(keys):
        raise ConfigError(f"{source}: a key id is given twice")
    return Cipher(tuple(keys))


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and value.get("alg") == ALG and "ct" in value


def _aad(job_id: str, field: str) -> bytes:
    return f"qlite:{job_id}:{field}".encode()


def seal(cipher: Cipher, job_id: str, field: str, value: Any) -> dict:
    """``value`` (JSON) sealed for ``field`` of job ``job_id``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    kid, key = cipher.keys[0]
    nonce = os.urandom(12)
    plain = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    ct = AESGCM(key).encrypt(nonce, plain, _aad(job_id, field))
    return {"alg": ALG, "kid": kid, "ct": base64.b64encode(nonce + ct).decode()}


def open_sealed(cipher: Cipher | None, job_id: str, field: str, sealed: Any) -> Any:
    """The JSON value inside ``sealed``; DecryptError when it cannot be opened."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if cipher is None:
        raise DecryptError(f"job {job_id}: {field} is encrypted and QLITE_ENCRYPTION_KEY is not "
                           "set. Try: set it to the key the producer used")
    if not is_sealed(sealed):
        raise DecryptError(f"job {job_id}: {field} is not a sealed value")
    key = dict(cipher.keys).get(sealed.get("kid"))
    if key is None:
        raise DecryptError(f"job {job_id}: {field} was sealed with key id "
                           f"{str(sealed.get('kid'))[:32]!r}, which QLITE_ENCRYPTION_KEY does not "
                           f"hold (it holds {', '.join(cipher.kids)}). Try: add that key")
    try:
        raw = base64.b64decode(sealed["ct"], validate=True)
        plain = AESGCM(key).decrypt(raw[:12], raw[12:], _aad(job_id, field))
        return json.loads(plain)
    except (InvalidTag, binascii.Error, ValueError, TypeError):
        raise DecryptError(f"job {job_id}: {field} does not decrypt with key "
                           f"{sealed.get('kid')!r}: tampered with, or sealed for another job or "
                           "field") from None


def opened_result(cipher: Cipher | None, job_id: str, value: Any) -> Any:
    """A result as the index holds it (decoded), opened if sealed; a sealed one without a key
    reads ``"encrypted"``."""
    if not (isinstance(value, dict) and list(value) == [SEALED]):
        return value
    if cipher is None:
        return "encrypted (set QLITE_ENCRYPTION_KEY to read it)"
    return open_sealed(cipher, job_id, "result", value[SEALED])


def seal_error(cipher: Cipher, job_id: str, error: dict) -> dict:
    """An error raised by a handler with its message and traceback sealed; its type stays
    readable (qlite ls, metrics)."""
    sealed = seal(cipher, job_id, "error", {"message": error.get("message"),
                                            "traceback": error.get("traceback")})
    return {**error, "message": json.dumps({SEALED: sealed}), "traceback": None}


def opened_error(cipher: Cipher | None, job_id: str, error: Any) -> Any:
    """``error`` (a record's or the index's {type, message, traceback}) with a sealed message
    opened, or reading "encrypted" without the key."""
    if not isinstance(error, dict) or not isinstance(error.get("message"), str) \
            or not error["message"].startswith('{"' + SEALED):
        return error
    try:
        sealed = json.loads(error["message"])[SEALED]
    except (ValueError, KeyError, TypeError):
        return error
    if cipher is None:
        return {**error, "message": "encrypted (set QLITE_ENCRYPTION_KEY to read it)"}
    plain = open_sealed(cipher, job_id, "error", sealed)
    return {**error, "message": plain.get("message"), "traceback": plain.get("traceback")}
