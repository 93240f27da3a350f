"""``http.request``: call a slow third-party API from the worker, safely.

- Retries: connection errors, timeouts, 408, 429 and 5xx raise ``qlite.Retry`` (the job's
  back-off, or the server's ``Retry-After`` when it gives one: the job is rescheduled, no slot
  sleeps). Other 4xx fail the job at once (``qlite.Fail``): sending it again will not help.
- ``Idempotency-Key``: the job id, unless the caller sets one, so every attempt of one job
  carries the same key and the API can drop a repeat.
- SSRF guard: the host is resolved once, every address is checked (loopback, private,
  link-local, cloud metadata, multicast, reserved are refused unless ``QLITE_HTTP_ALLOW``
  lists them), and the connection goes to the checked address (the name is kept for the Host
  header and TLS), so DNS cannot answer differently between the check and the connect.
  IPv6 addresses that embed an IPv4 one (``::ffff:a.b.c.d``, ``::ffff:0:a.b.c.d``,
  ``::a.b.c.d``, NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``, 6to4 ``2002::/16``, Teredo) are
  judged by the IPv4 address too.
  Redirects are followed by hand (at most 5) and each target is checked the same way.
- Credentials stay with their origin: on a redirect to another scheme, host or port,
  ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and any header whose name looks
  secret (``X-Api-Key``, ``*-Token``, ``*-Secret``, ...) are dropped, as browsers and curl do,
  and a 307/308 that would re-send the request body to another origin is refused.
- Secrets in the URL (``?api_key=...``, a password in ``user:password@``) are shown as
  ``[redacted]`` in the result's ``url`` and in error messages.
- The result: ``status``, selected ``headers``, ``body`` (text, or base64 when not text) cut
  at ``max_body`` bytes with ``truncated: true``.

Uses urllib3, which botocore already installs: no new dependency.
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import json as jsonlib
import os
import re
import socket
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from qlite.envelope import SECRET_NAMES
from qlite.errors import Fail, Retry

MAX_BODY = 1 << 20  # 1 MiB of response body kept in the result by default
MAX_REDIRECTS = 5
KEPT_HEADERS = ("content-type", "content-length", "etag", "last-modified", "location",
                "retry-after", "x-request-id")
SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "x-api-key")
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class Refused(Fail):
    """The URL is not allowed (scheme, or an address the SSRF guard refuses)."""


def allowed_networks(text: str | None = None) -> list[Any]:
    """``QLITE_HTTP_ALLOW``: comma-separated networks the guard lets through (e.g.
    ``127.0.0.1/32,10.1.0.0/16``)."""
    text = os.environ.get("QLITE_HTTP_ALLOW", "") if text is None else text
    nets = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise Fail(f"QLITE_HTTP_ALLOW: {part!r} is not a network such as 10.0.0.0/8 or "
                       "127.0.0.1/32") from None
    return nets


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


def embedded_ipv4(addr: Any) -> Any:
    """The IPv4 address an IPv6 transition address carries (mapped, translated, compatible,
    NAT64, 6to4, Teredo client), or None: the connection may end up there."""
    if addr.version != 6:
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    n = int(addr)
    if addr in _NAT64 or addr in _IPV4_COMPATIBLE or addr in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(n & 0xFFFFFFFF)
    if addr in _NAT64_LOCAL:  # RFC 6052 /48: bits 48-63 and 72-87 (bits 64-71 are zero)
        return ipaddress.IPv4Address(((n >> 64) & 0xFFFF) << 16 | (n >> 40) & 0xFFFF)
    return None


def check_address(ip: str, allow: list[Any]) -> None:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    inner = embedded_ipv4(addr)
    if any(addr in net or (inner is not None and inner in net) for net in allow):
        return
    if any(not target.is_global or target.is_multicast or str(target) == "169.254.169.254"
           for target in (addr, inner) if target is not None):
        via = f" (it embeds {inner})" if inner is not None else ""
        raise Refused(f"refused {ip}{via}: loopback, private, link-local, metadata and reserved "
                      "addresses are blocked (server-side request forgery guard). Try: allow "
                      "it with QLITE_HTTP_ALLOW=<network> on the worker")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_headers(headers: Any, field: str = "headers") -> dict[str, str]:
    """Request headers as strings; Fail (permanent) on a name that is not an HTTP token or a
    control character in a value (header injection)."""
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise Fail(f"{field}: expected a JSON object (got {type(headers).__name__})")
    out = {}
    for name, value in headers.items():
        name, value = str(name), str(value)
        if not _TOKEN.fullmatch(name):
            raise Fail(f"{field}: header name {name[:80]!r} is not an HTTP token (letters, "
                       "digits, '-'; header injection refused)")
        if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in value):
            raise Fail(f"{field}: {name}: CR, LF or another control character in the value "
                       "(header injection refused)")
        out[name] = value
    return out


def is_secret_header(name: str) -> bool:
    return name.lower() in SECRET_HEADERS or bool(SECRET_NAMES.search(name))


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return (parts.scheme, (parts.hostname or "").lower(),
            parts.port or (443 if parts.scheme == "https" else 80))


def follow(url: str, location: str, status: int, method: str, data: bytes | None,
           headers: dict[str, str]) -> tuple[str, str, bytes | None, dict[str, str]]:
    """The next hop of a redirect: (url, method, body, headers). Credentials never leave
    their origin: secret headers are dropped on a hop to another scheme, host or port, and a
    307/308 that would re-send a body there is refused."""
    target = urljoin(url, location)
    if status == 303 or (status in (301, 302) and method == "POST"):
        method, data = "GET", None
    if origin(target) != origin(url):
        if data is not None:
            raise Refused(f"{method} {shown(url)}: HTTP {status} redirects to another origin "
                          f"({shown(target)}) and would re-send the request body there; "
                          "refused. Try: url= the new location")
        headers = {k: v for k, v in headers.items() if not is_secret_header(k)}
    return target, method, data, headers


def shown(url: str) -> str:
    """``url`` for a result or an error message: the values of secret-looking query
    parameters and a password in the user info replaced by ``[redacted]``, cut at 200."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = netloc.replace(":" + parts.password + "@", ":[redacted]@", 1)
        query = parts.query
        if query and SECRET_NAMES.search(query):
            pairs = parse_qsl(query, keep_blank_values=True)
            query = "&".join(f"{k}=[redacted]" if SECRET_NAMES.search(k) else urlencode({k: v})
                             for k, v in pairs)
        url = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        pass
    return url[:200]


def resolve(host: str, port: int, allow: list[Any]) -> str:
    """The first address of ``host`` after checking every address it resolves to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise Retry(f"cannot resolve {host!r}: {e}") from None
    addresses = [str(info[4][0]) for info in infos]
    for ip in addresses:
        check_address(ip, allow)
    return addresses[0]


def _pool(scheme: str, host: str, port: int, ip: str, timeout: float) -> Any:
    import urllib3

    t = urllib3.Timeout(connect=min(timeout, 10.0), read=timeout)
    if scheme == "https":
        return urllib3.HTTPSConnectionPool(ip, port, timeout=t, retries=False,
                                           server_hostname=host, assert_hostname=host)
    return urllib3.HTTPConnectionPool(ip, port, timeout=t, retries=False)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` (seconds or an HTTP date) to seconds from now, capped at a day."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), 86400.0)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(when - (time.time() if now is None else now), 0.0), 86400.0)


def request(ctx: Any, url: str, method: str = "GET", headers: dict | None = None,
            params: dict | None = None, json: Any = None, body: str | None = None,
            timeout: float = 30.0, max_body: int = MAX_BODY,
            follow_redirects: bool = True) -> dict:
    """Send one HTTP request; see the module docstring for retries and the guard."""
    method = str(method).upper()
    if method not in METHODS:
        raise Fail(f"method: expected one of {', '.join(METHODS)} (got {method!r})")
    if json is not None and body is not None:
        raise Fail("give json= or body=, not both")
    if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
        raise Fail(f"timeout: expected seconds in (0, 3600] (got {timeout!r})")
    if params is not None and not isinstance(params, dict):
        raise Fail(f"params: expected a JSON object (got {type(params).__name__})")
    if type(max_body) is not int or max_body < 0:
        raise Fail(f"max_body: expected a whole number of bytes >= 0 (got {max_body!r})")
    headers = check_headers(headers)
    lower = {k.lower() for k in headers}
    if "idempotency-key" not in lower:
        headers["Idempotency-Key"] = ctx.job_id
    data = None
    if json is not None:
        data = jsonlib.dumps(json).encode()
        if "content-type" not in lower:
            headers["Content-Type"] = "application/json"
    elif body is not None:
        data = str(body).encode()
    if params:
        url += ("&" if urlsplit(url).query else "?") + urlencode(params, doseq=True)
    allow = allowed_networks()
    import urllib3

    for hop in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused(f"url: expected http:// or https:// with a host "
                          f"(got {shown(url)!r})")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        ip = resolve(parts.hostname, port, allow)
        host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        pool = _pool(parts.scheme, parts.hostname, port, ip, float(timeout))
        try:
            resp = pool.urlopen(method, path, body=data, headers={**headers, "Host": host_header},
                                redirect=False, preload_content=False, retries=False)
        except urllib3.exceptions.HTTPError as e:
            raise Retry(f"{method} {parts.scheme}://{host_header}: {type(e).__name__}: "
                        f"{e}") from None
        try:
            if follow_redirects and resp.status in (301, 302, 303, 307, 308) \
                    and resp.headers.get("location") and hop < MAX_REDIRECTS:
                url, method, data, headers = follow(url, resp.headers["location"],
                                                    resp.status, method, data, headers)
                continue
            raw = resp.read(max_body + 1, decode_content=True) if method != "HEAD" else b""
        finally:
            resp.release_conn()
        status = resp.status
        if status in RETRY_STATUS:
            raise Retry(f"{method} {shown(url)}: HTTP {status}",
                        after=retry_after(resp.headers.get("retry-after")))
        if 400 <= status < 500:
            raise Fail(f"{method} {shown(url)}: HTTP {status} (not retried: a client error): "
                       f"{raw[:300].decode('utf-8', 'replace')}")
        truncated = len(raw) > max_body
        raw = raw[:max_body]
        try:
            text, encoding = raw.decode("utf-8"), "text"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode(), "base64"
        return {"status": status, "url": shown(url),
                "headers": {k: v for k, v in resp.headers.items() if k.lower() in KEPT_HEADERS},
                "body": text, "encoding": encoding, "truncated": truncated}
    raise Fail(f"{shown(url)}: more than {MAX_REDIRECTS} redirects")


def deliver_webhook(ctx: Any, url: str, status: dict) -> dict:
    """POST a finished job's status to its ``webhook=`` URL, signed with
    ``QLITE_WEBHOOK_SECRET`` (qlite.webhook); retried and guarded like ``request``."""
    from qlite.webhook import HEADER, sign

    secret = os.environ.get("QLITE_WEBHOOK_SECRET")
    if not secret:
        raise Fail("QLITE_WEBHOOK_SECRET is not set on the worker: webhooks are signed. Try: "
                   "QLITE_WEBHOOK_SECRET=$(openssl rand -hex 32)")
    body = jsonlib.dumps(status, separators=(",", ":"), ensure_ascii=False)
    signature = sign(secret, body.encode("utf-8"), int(time.time()))
    result = request(ctx, url, method="POST", body=body, max_body=4096, headers={
        "Content-Type": "application/json", HEADER: signature,
        "Qlite-Job-Id": str(status.get("id"))})
    return {"status": result["status"], "url": result["url"]}
