"""A JSON HTTP server on a free local port, in a thread, with failure injection: the common
part of the contract servers that stand in for SaaS APIs in the tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def dispatching_handler(server, methods, protocol: str = "HTTP/1.0") -> type[BaseHTTPRequestHandler]:
    """A request handler class that hands each request of `methods` to server.handle(handler, method), quietly."""

    def method(verb):
        return lambda handler: server.handle(handler, verb)

    attrs = {"protocol_version": protocol, "log_message": lambda handler, *a: None}
    attrs.update({f"do_{verb}": method(verb) for verb in methods})
    return type("Handler", (BaseHTTPRequestHandler,), attrs)


class JsonServer:
    """Subclasses implement handle(handler, method); `self.lock` guards their state."""

    def __init__(self):
        self.lock = threading.RLock()  # reentrant: a wait predicate may call a locking helper
        self._fail: list[int] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), dispatching_handler(self, ("GET", "POST")))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait(self, pred, timeout: float = 60.0, every: float = 0.1):
        """pred(server)'s first truthy value, evaluated under the lock; TimeoutError with the last requests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = pred(self)
            if got:
                return got
            time.sleep(every)
        raise TimeoutError(f"{type(self).__name__}: condition not met in {timeout}s; requests: "
                           f"{getattr(self, 'requests', [])[-10:]}")

    def fail_next(self, n: int, status: int = 429) -> None:
        """The next n requests get this status (429 or 5xx), like rate limiting or an outage."""
        with self.lock:
            self._fail.extend([status] * n)

    def injected_failure(self) -> int | None:
        """Call with the lock held: the status to fail this request with, if any."""
        return self._fail.pop(0) if self._fail else None

    def handle(self, h, method: str) -> None:
        raise NotImplementedError

    @staticmethod
    def reply(h, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
