"""A local server implementing the parts of Datadog's v1 HTTP API the service uses:
POST /api/v1/series, /api/v1/events and /api/v1/check_run, authenticated by DD-API-KEY,
202 on success, 403 for a wrong key; `fail_next(n, status)` injects 429/5xx."""

from __future__ import annotations

import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DatadogServer:
    def __init__(self, api_key: str = "test-dd-key"):
        self.api_key = api_key
        self.lock = threading.Lock()
        self.series: list[dict] = []
        self.events: list[dict] = []
        self.checks: list[dict] = []
        self.keys: list[str | None] = []
        self._fail: list[int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail_next(self, n: int, status: int = 429) -> None:
        with self.lock:
            self._fail.extend([status] * n)

    def _reply(self, h, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        if h.headers.get("Content-Encoding") == "deflate":
            raw = zlib.decompress(raw)
        path = h.path.split("?")[0]
        with self.lock:
            self.keys.append(h.headers.get("DD-API-KEY"))
            if self._fail:
                return self._reply(h, self._fail.pop(0), {"errors": ["try later"]})
            if h.headers.get("DD-API-KEY") != self.api_key:
                return self._reply(h, 403, {"errors": ["Forbidden"]})
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                return self._reply(h, 400, {"errors": ["Payload is not in the expected format: invalid JSON"]})
            if path == "/api/v1/series":
                self.series.extend(body["series"])
                return self._reply(h, 202, {"status": "ok"})
            if path == "/api/v1/events":
                if not body.get("title") or not body.get("text"):
                    return self._reply(h, 400, {"errors": ["Event title and text are required"]})
                body["id"] = len(self.events) + 1
                self.events.append(body)
                return self._reply(h, 202, {"status": "ok", "event": body})
            if path == "/api/v1/check_run":
                items = body if isinstance(body, list) else [body]
                for c in items:
                    if c.get("status") not in (0, 1, 2, 3) or not c.get("check"):
                        return self._reply(h, 400, {"errors": ["status must be 0..3 and check is required"]})
                self.checks.extend(items)
                return self._reply(h, 202, {"status": "ok"})
            return self._reply(h, 404, {"errors": ["Not found"]})
