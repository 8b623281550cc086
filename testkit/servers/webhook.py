"""A local Slack-style incoming webhook: keeps every JSON body posted to it, answers 200 "ok".
With `hold()`, each request waits until `release()` (a slow chat service)."""

from __future__ import annotations

import json
import threading

from testkit.servers.base import JsonServer


class WebhookServer(JsonServer):
    def __init__(self):
        self.messages: list[dict] = []
        self.keys: list[str] = []  # the Idempotency-Key header of each
        self.entered = threading.Event()   # set once a request has arrived
        self._released = threading.Event()
        self._released.set()
        self._taken = 0
        super().__init__()

    @property
    def hook_url(self) -> str:
        return f"{self.url}/hook"

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def take(self) -> list[dict]:
        """The messages that arrived since the last take()."""
        with self.lock:
            new, self._taken = self.messages[self._taken:], len(self.messages)
        return new

    def handle(self, h, method: str) -> None:
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length") or 0)) or b"{}")
        with self.lock:
            self.messages.append(body)
            self.keys.append(h.headers.get("Idempotency-Key", ""))
        self.entered.set()
        self._released.wait(10)
        h.send_response(200)
        h.end_headers()
        h.wfile.write(b"ok")
