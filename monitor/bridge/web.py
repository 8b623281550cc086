"""The bridge's web process: serves /metrics and the lifecycle endpoints on the bridge's HTTP port.

It is its own interpreter (spawned by monitor/bridge/publisher.py), so a scrape that renders
hundreds of thousands of series uses another core and never takes the GIL from the process that
reads the statsd sockets. It gets, as inherited file descriptors:
  --slots-fd    the store's shared array of values (mapped read-only)
  --journal-fd  a pipe of length-prefixed pickled journal batches (which series exist, where)
  --control-fd  a socket to ask the bridge for what only it knows: its own metrics and the SLA
                watcher's (small), readiness, and a mapping reload
  --http-fd     the listening HTTP socket, bound by the bridge so that its errors are the bridge's
When the bridge goes away the journal pipe closes and this process exits.
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import pickle
import queue
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from monitor import webconfig
from monitor.bridge.exposition import StoreView
from monitor.bridge.fanout import FAILED, Fanout

log = logging.getLogger("airflow_monitor.web")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEADER = struct.Struct(">I")
CONTROL = struct.Struct(">cI")  # op, sequence
REPLY = struct.Struct(">II")  # sequence, length
RENDER_WAIT = 60.0  # seconds a scrape waits for its next piece before it gives up
IDLE_TIMEOUT = 30.0  # seconds an HTTP connection may sit idle


def read_exact(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("closed")
        buf += chunk
    return bytes(buf)


class Control:
    """Request/response to the bridge over a socket; one question at a time; never hangs a scrape."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.lock = threading.Lock()
        self.seq = 0

    def ask(self, op: bytes) -> bytes | None:
        with self.lock:
            self.seq = (self.seq + 1) & 0xFFFFFFFF
            try:
                self.sock.sendall(CONTROL.pack(op, self.seq))
                while True:  # skip answers to questions that timed out earlier
                    seq, n = REPLY.unpack(recv_exact(self.sock, REPLY.size))
                    body = recv_exact(self.sock, n)
                    if seq == self.seq:
                        return body
            except (OSError, EOFError) as e:
                log.warning("the bridge did not answer %r: %s", op, e)
                return None


class Web:
    def __init__(self, vals: memoryview, journal_fd: int, control: Control):
        self.view = StoreView(vals)
        self.journal_fd = journal_fd
        self.control = control
        self.synced = threading.Event()
        self.scrapes = 0
        self.last_duration = 0.0
        self.last_bytes = 0
        self.fanout = Fanout(self.pieces, self._rendered)
        self.server = None  # the HTTP server, for its refusal counts
        self.lifecycle = False  # POST /-/reload allowed
        self.webconfig = None  # TLS and basic auth (monitor.webconfig.Watched)

    def _rendered(self, scrapes: int, seconds: float, sent: int) -> None:
        self.scrapes += scrapes
        self.last_duration, self.last_bytes = seconds, sent

    def follow_journal(self) -> None:
        """Apply journal batches as they come; exit the process when the bridge is gone."""
        try:
            while True:
                (n,) = HEADER.unpack(read_exact(self.journal_fd, HEADER.size))
                self.view.apply(pickle.loads(read_exact(self.journal_fd, n)))
                self.synced.set()
        except EOFError:
            log.info("the bridge closed the journal; exiting")
        except Exception:
            log.exception("cannot read the journal; exiting")
        os._exit(0)

    def own_metrics(self) -> str:
        p = "airflow_monitor_bridge_"
        return (f"# HELP {p}scrape_duration_seconds Time the last rendering of /metrics took to send (one "
                f"rendering serves every scrape waiting).\n"
                f"# TYPE {p}scrape_duration_seconds gauge\n{p}scrape_duration_seconds {self.last_duration!r}\n"
                f"# HELP {p}scrape_bytes Bytes the last /metrics sent (after compression).\n"
                f"# TYPE {p}scrape_bytes gauge\n{p}scrape_bytes {self.last_bytes}\n"
                f"# HELP {p}scrapes Scrapes of /metrics served.\n"
                f"# TYPE {p}scrapes counter\n{p}scrapes_total {self.scrapes}\n"
                f"# HELP {p}renders Renderings of /metrics; each serves every scrape waiting for it.\n"
                f"# TYPE {p}renders counter\n{p}renders_total {self.fanout.renders}\n"
                f"# HELP {p}http_refused HTTP connections refused: over the connection limit, or accept() "
                f"failed (file descriptors exhausted).\n# TYPE {p}http_refused counter\n"
                f'{p}http_refused_total{{reason="too_many_connections"}} {getattr(self.server, "refused", 0)}\n'
                f'{p}http_refused_total{{reason="accept_error"}} {getattr(self.server, "accept_errors", 0)}\n'
                f'{p}http_refused_total{{reason="tls_handshake"}} {getattr(self.server, "tls_failures", 0)}\n'
                f"# HELP {p}exposed_series Series the web process knows of.\n"
                f"# TYPE {p}exposed_series gauge\n{p}exposed_series {self.view.series_count()}\n")

    def pieces(self):
        """The whole exposition as byte pieces."""
        extra = self.control.ask(b"m") or b""
        for text in self.view.render():
            yield text.encode()
        yield extra + self.own_metrics().encode()


def _handler(web: Web):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = IDLE_TIMEOUT

        def log_message(self, *args):  # no access log on stderr
            pass

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _allowed(self) -> bool | None:
            """Basic auth of the web config, on every endpoint as exporter-toolkit does: True when
            allowed, None when refused (401 sent); False for a health probe without credentials,
            answered without its reason (webconfig.PROBE_PATHS)."""
            cfg = web.webconfig.get() if web.webconfig else None
            if cfg is None or cfg.allows(self.headers.get("Authorization")):
                return True
            if self.command == "GET" and self.path.split("?", 1)[0] in webconfig.PROBE_PATHS:
                return False
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="airflow-monitor"')
            self.send_header("Content-Length", "13")
            self.end_headers()
            self.wfile.write(b"Unauthorized\n")
            return None

        def do_GET(self):
            authed = self._allowed()
            if authed is None:
                return
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._metrics()
            elif path == "/-/healthy":
                self._send(200, b"OK\n")
            elif path == "/-/ready":
                ok = web.synced.is_set() and web.control.ask(b"y") == b"1"
                self._send(200 if ok else 503, b"OK\n" if ok else b"not ready\n")
            elif path == "/-/ready/sla":  # apart: a broken watcher must not take the statsd Service's endpoint
                why = web.control.ask(b"s")
                if why == b"-":
                    self._send(404, b"no SLA watcher in this process\n")
                elif why is None:
                    self._send(503, b"the bridge does not answer\n")
                else:
                    self._send(503 if why else 200, (why if why and authed else b"not ready" if why else b"OK") + b"\n")
            elif path == "/":
                self._send(200, b"airflow-monitor bridge: /metrics /-/healthy /-/ready /-/ready/sla "
                                b"POST /-/reload\n")
            else:
                self._send(404, b"not found\n")

        def _metrics(self):
            gz = "gzip" in self.headers.get("Accept-Encoding", "")
            scrape = web.fanout.scrape(gz)  # served by the next rendering, with every scrape waiting
            try:
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                if gz:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                out = _Chunked(self.wfile)
                while True:
                    try:
                        data = scrape.q.get(timeout=RENDER_WAIT)
                    except queue.Empty:
                        data = FAILED
                    if data is None:
                        out.close()
                        return
                    if data is FAILED:  # no final chunk: the client sees a broken scrape, not a short one
                        self.close_connection = True
                        return
                    out.write(data)
            except BaseException:
                scrape.dead = True
                raise

        def do_POST(self):
            if not self._allowed():
                return
            if self.path.split("?", 1)[0] != "/-/reload":
                self._send(404, b"not found\n")
            elif not web.lifecycle:
                self._send(403, b"Lifecycle API is not enabled (--web-enable-lifecycle); SIGHUP reloads\n")
            else:
                answer = web.control.ask(b"r")
                if answer is None:
                    self._send(503, b"the bridge did not answer\n")
                else:
                    self._send(200 if answer[:1] == b"1" else 500, answer[1:] + b"\n")

        do_PUT = do_POST

    return Handler


class _Chunked:
    """HTTP/1.1 chunked transfer encoding onto a socket file."""

    def __init__(self, wfile):
        self.wfile = wfile
        self.sent = 0

    def write(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
            self.sent += len(data)

    def close(self) -> None:
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS at once (more are closed at once)."""

    daemon_threads = True
    slots = threading.BoundedSemaphore(64)
    refused = 0
    accept_errors = 0
    tls_failures = 0
    webconfig = None  # monitor.webconfig.Watched, when --web-config-file

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def get_request(self):
        try:
            sock, addr = super().get_request()
        except OSError:  # EMFILE, ENFILE, ENOBUFS: the listener stays readable; pause, do not spin
            self.accept_errors += 1
            time.sleep(0.2)
            raise
        return webconfig.wrap(self.webconfig, sock), addr

    def finish_request(self, request, client_address):
        if not webconfig.handshake(request, IDLE_TIMEOUT):
            self.tls_failures += 1
            return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):  # a client that went away is not news
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="airflow-monitor-web")
    for name in ("slots-fd", "slots-bytes", "journal-fd", "control-fd", "http-fd"):
        ap.add_argument("--" + name, type=int, required=True)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--enable-lifecycle", action="store_true")
    ap.add_argument("--web-config-file", default="")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s web: %(message)s")
    vals = memoryview(mmap.mmap(args.slots_fd, args.slots_bytes, prot=mmap.PROT_READ)).cast("d")
    web = Web(vals, args.journal_fd, Control(socket.socket(fileno=args.control_fd)))
    threading.Thread(target=web.follow_journal, name="journal", daemon=True).start()
    server = _Server(("127.0.0.1", 0), _handler(web), bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=args.http_fd)
    server.server_address = server.socket.getsockname()
    web.server = server
    web.lifecycle = args.enable_lifecycle
    if args.web_config_file:
        web.webconfig = server.webconfig = webconfig.Watched(args.web_config_file)
    server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
