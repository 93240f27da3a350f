"""A real HTTP proxy in front of an S3 server that counts the requests going through it, by
S3 operation, so the bench can price what a worker and its Litestream child send together
(neither counts the other's requests). Standard library only."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# AWS S3 list prices, dollars per request (Standard, us-east-1).
PRICE = {"put": 0.005e-3, "list": 0.005e-3, "post": 0.005e-3, "copy": 0.005e-3,
         "get": 0.0004e-3, "head": 0.0004e-3, "delete": 0.0}
MONTH = 2_592_000  # seconds in the month the cost figures use (30 days)


def operation(method: str, path: str) -> str:
    """The S3 operation of one request: list, get, head, put, copy, post, delete."""
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)
    if method == "GET":
        key = urlsplit(path).path.strip("/").partition("/")[2]
        return "list" if "list-type" in query or not key else "get"
    if method == "PUT":
        return "put"
    if method == "POST":
        return "post"  # DeleteObjects, multipart create/complete: priced as PUT
    return method.lower()


def area(path: str) -> str:
    """The first two path segments under the bucket a request is about (for a LIST: of its
    prefix), e.g. ``idle-1234/inbox``."""
    parts = urlsplit(path)
    prefix = parse_qs(parts.query).get("prefix", [""])[0]
    key = prefix or parts.path.strip("/").partition("/")[2]
    return "/".join(key.split("/")[:2])


def dollars_per_month(counts: dict[str, int], seconds: float) -> float:
    """What ``counts`` requests over ``seconds`` would cost in a month at AWS list prices."""
    return sum(PRICE.get(op, PRICE["put"]) * n for op, n in counts.items()) * MONTH / seconds


class CountingProxy:
    """Forward every request to ``upstream`` unchanged (the client signed the Host it
    sent, and SeaweedFS checks no signature) and count it, by operation and by the first path
    segment under the bucket (``which``)."""

    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        self.counts: Counter[tuple[str, str]] = Counter()
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                raw = b""  # relayed with its chunk framing, as the client signed it
                while True:
                    line = self.rfile.readline()
                    raw += line
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while True:
                            trailer = self.rfile.readline()
                            raw += trailer
                            if trailer in (b"\r\n", b"\n", b""):
                                return raw
                    raw += self.rfile.read(size + 2)

            def _handle(self) -> None:
                body = self._body()
                op = operation(self.command, self.path)
                with lock:
                    proxy.counts[(op, area(self.path))] += 1
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self._lock = lock

    def snapshot(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self.counts)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
