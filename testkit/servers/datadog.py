"""A local server implementing the parts of Datadog's v1 HTTP API the service uses:
POST /api/v1/series, /api/v1/events and /api/v1/check_run, authenticated by DD-API-KEY,
202 on success, 403 for a wrong key; `fail_next(n, status)` injects 429/5xx."""

from __future__ import annotations

import json
import zlib

from testkit.servers.base import JsonServer


class DatadogServer(JsonServer):
    def __init__(self, api_key: str = "test-dd-key"):
        self.api_key = api_key
        self.series: list[dict] = []
        self.events: list[dict] = []
        self.checks: list[dict] = []
        self.keys: list[str | None] = []
        super().__init__()

    def handle(self, h, method: str) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        if h.headers.get("Content-Encoding") == "deflate":
            raw = zlib.decompress(raw)
        path = h.path.split("?")[0]
        with self.lock:
            self.keys.append(h.headers.get("DD-API-KEY"))
            if (status := self.injected_failure()) is not None:
                return self.reply(h, status, {"errors": ["try later"]})
            if h.headers.get("DD-API-KEY") != self.api_key:
                return self.reply(h, 403, {"errors": ["Forbidden"]})
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                return self.reply(h, 400, {"errors": ["Payload is not in the expected format: invalid JSON"]})
            if path == "/api/v1/series":
                self.series.extend(body["series"])
                return self.reply(h, 202, {"status": "ok"})
            if path == "/api/v1/events":
                if not body.get("title") or not body.get("text"):
                    return self.reply(h, 400, {"errors": ["Event title and text are required"]})
                body["id"] = len(self.events) + 1
                self.events.append(body)
                return self.reply(h, 202, {"status": "ok", "event": body})
            if path == "/api/v1/check_run":
                items = body if isinstance(body, list) else [body]
                for c in items:
                    if c.get("status") not in (0, 1, 2, 3) or not c.get("check"):
                        return self.reply(h, 400, {"errors": ["status must be 0..3 and check is required"]})
                self.checks.extend(items)
                return self.reply(h, 202, {"status": "ok"})
            return self.reply(h, 404, {"errors": ["Not found"]})
