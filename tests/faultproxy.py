"""A real HTTP proxy in front of an S3 server that answers 503 SlowDown while told to, as an
overloaded S3 does. Used to test outages without mocking boto3."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")
DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
          b"<Message>Access Denied</Message></Error>")


class FaultProxy:
    def __init__(self, upstream: str, strip: tuple[str, ...] = ()):
        """``strip``: header names dropped from every request, as a proxy that does not know
        them would (the upstream must not check signatures: moto)."""
        target = urlsplit(upstream)
        dropped = {h.lower() for h in strip}
        self.failing = threading.Event()
        self.fail_next = 0  # answer this many requests with 503, then forward again
        self.seen_503 = 0
        # (method, path) -> True: answer 403 AccessDenied, as a bucket policy that does not
        # grant that request would
        self.refuse: Callable[[str, str], bool] | None = None
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.refuse is not None and proxy.refuse(self.command, self.path):
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(DENIED)))
                    self.end_headers()
                    self.wfile.write(DENIED)
                    return
                with lock:
                    fail = proxy.failing.is_set() or proxy.fail_next > 0
                    if fail:
                        proxy.fail_next = max(proxy.fail_next - 1, 0)
                        proxy.seen_503 += 1
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN)))
                    self.end_headers()
                    self.wfile.write(SLOWDOWN)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                # Headers go through unchanged: the client signed them, Host included.
                conn.request(self.command, self.path, body=body, headers={
                    k: v for k, v in self.headers.items() if k.lower() not in dropped})
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

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
