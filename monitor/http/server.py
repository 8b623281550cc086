"""The one HTTP/1.1 server of the three services (the bridge's web process, `sla run`, `heal run`).

What an exporter's port must survive on a shared network, built once:

- **One reactor thread** accepts, completes TLS handshakes and reads request heads (and small
  bodies) without blocking, for any number of connections, under deadlines: the whole head (and the
  handshake) within HEAD_TIMEOUT, a keep-alive connection idle for at most IDLE_TIMEOUT. A client
  that trickles a header line every few seconds holds nothing for long, and holds no thread at all.
- **Caps.** At most `max_connections` connections, at most `per_client` of them from one address;
  at the cap the oldest connection that is only waiting (for its head, or idle between keep-alive
  requests) is closed to make room, so a flood of idle sockets cannot lock the kubelet out.
- **Workers.** A complete request goes to a pool: the health and readiness paths to a small pool of
  their own (answered even while every scrape is busy), the rest to the main pool, at most
  `per_client_busy` at once from one address (the rest wait their turn in the reactor). Writing the
  answer happens in the worker under a deadline (WRITE_TIMEOUT for the whole answer), so a client
  that stops reading costs its own worker only, until the deadline.
- **Descriptors.** Running out of file descriptors (EMFILE, ENFILE) at accept is counted and never
  fatal: one reserved descriptor is given up to take the waiting connection off the queue and close
  it, and accepting pauses briefly instead of spinning.
- **TLS and basic auth** from the web config (monitor.http.webconfig); the probe paths answer
  without credentials, with their status and one word.

An application is a function (Request) -> Response; a Response body is bytes or an iterator of
bytes (sent chunked; an iterator that raises ends the connection without the final chunk, so the
client sees a failed answer, never a short one).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from monitor.http import webconfig

log = logging.getLogger("airflow_monitor.http")

HEAD_TIMEOUT = 5.0  # seconds for a TLS handshake and a whole request head
BODY_TIMEOUT = 30.0  # seconds for a request body (after its head)
IDLE_TIMEOUT = 120.0  # a keep-alive connection waiting for its next request (Prometheus scrapes every 15-60 s)
WRITE_TIMEOUT = 60.0  # seconds for a whole answer to be taken by the client
MAX_HEAD = 16 << 10
FD_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# why a connection is closed unserved (or cut), as counted in Stats.refused
REFUSALS = ("too_many_connections", "per_client", "evicted", "head_timeout", "body_timeout", "tls_handshake",
            "out_of_descriptors", "accept_error", "bad_request", "too_large", "busy", "slow_reader", "client_gone")
REASONS = {200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
           429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


def parse_address(addr: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be [host]:port, not {addr!r}")
    return (host.strip("[]") or default_host), int(port)


def listen(addr: str, what: str = "http") -> socket.socket:
    """A listening TCP socket on [host]:port; an error is one OSError line naming the address."""
    host, port = parse_address(addr)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        s = socket.socket(info[0], socket.SOCK_STREAM)
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on {addr} ({what}): {e.strerror}") from None
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TCP: lets a restart bind past TIME_WAIT only
    try:
        s.bind(info[4])
        s.listen(128)
    except OSError as e:
        s.close()
        raise OSError(e.errno, f"cannot listen on {addr} ({what}): {e.strerror}") from None
    return s


@dataclass
class Request:
    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    client: str
    authed: bool = True  # False: basic auth is on and this request has no valid credentials (probe paths only)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int
    body: bytes | Iterable[bytes] = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False  # close the connection after it


def text(status: int, body: str, **kw) -> Response:
    return Response(status, (body.rstrip("\n") + "\n").encode(), **kw)


class _Conn:
    __slots__ = ("sock", "client", "buf", "deadline", "phase", "since", "need", "head", "events", "held", "eof")

    def __init__(self, sock, client: str, deadline: float):
        self.sock, self.client, self.deadline = sock, client, deadline
        self.buf = bytearray()
        self.phase = "handshake" if isinstance(sock, ssl.SSLSocket) else "head"
        self.since = time.monotonic()
        self.need = 0  # body bytes still to read
        self.held = 0  # body bytes counted against the server's max_body_total until served
        self.head: tuple | None = None
        self.events = selectors.EVENT_READ
        self.eof = False  # the client has shut its side (a half-close): answer what it sent, then close


class Stats:
    def __init__(self):
        self.refused: collections.Counter[str] = collections.Counter()  # reason -> connections closed unserved
        self.requests = 0


class HttpServer:
    def __init__(self, sock: socket.socket, app: Callable[[Request], Response], *, web: webconfig.Watched | None = None,
                 probe_paths: frozenset[str] = webconfig.PROBE_PATHS, name: str = "http", max_connections: int = 512,
                 per_client: int = 64, workers: int = 48, per_client_busy: int = 24, max_body: int = 0,
                 max_body_total: int = 0):
        """max_body: bytes of one request body; max_body_total (0: no bound): of all bodies being read or
        served at once, so that many large bodies together cannot take the memory (503, Retry-After)."""
        self.sock, self.app, self.web, self.name = sock, app, web, name
        self.probe_paths = probe_paths
        self.max_connections, self.per_client, self.per_client_busy = max_connections, per_client, per_client_busy
        self.max_body = max_body
        self.max_body_total = max_body_total
        self._bodies = 0  # bytes of the bodies held (see _Conn.held)
        self.stats = Stats()
        self.sock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}  # fileno -> connection the reactor holds
        self._by_client: collections.Counter[str] = collections.Counter()  # all connections, held or busy
        self._busy: collections.Counter[str] = collections.Counter()  # requests in the main pool per client
        self._waiting: dict[str, collections.deque] = {}  # per client: complete requests waiting their turn
        self._back: queue.SimpleQueue = queue.SimpleQueue()  # connections handed back by workers (keep-alive)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paused_until = 0.0
        self._reserve: int | None = self._reserve_fd()
        self._main: queue.SimpleQueue = queue.SimpleQueue()
        self._probes: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, args=(self._main,), name=f"{name}-worker", daemon=True)
                         for _ in range(workers)]
        self._threads += [threading.Thread(target=self._work, args=(self._probes,), name=f"{name}-probe", daemon=True)
                          for _ in range(2)]
        self._reactor = threading.Thread(target=self._run, name=f"{name}-reactor", daemon=True)

    @staticmethod
    def _reserve_fd() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY)
        except OSError:
            return None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> HttpServer:
        for t in self._threads:
            t.start()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._reactor.start()
        return self

    def shutdown(self) -> None:
        self._stop.set()
        self._wake()
        self._reactor.join(timeout=5)
        for _ in self._threads:
            self._main.put(None)
            self._probes.put(None)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # ------------------------------------------------------------------ the reactor
    def _run(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            try:
                events = self._sel.select(timeout=0.25)
            except OSError:
                events = []
            for key, mask in events:
                if key.data is None:
                    self._accept()
                elif key.data == "wake":
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                else:
                    self._io(key.data, mask)
            self._returns()
            now = time.monotonic()
            if self._paused_until and now >= self._paused_until:
                self._paused_until = 0.0
                self._sel.register(self.sock, selectors.EVENT_READ, None)
            if now >= next_sweep:
                next_sweep = now + 0.5
                self._sweep(now)
        for c in list(self._conns.values()):
            self._close(c)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in FD_ERRORS:
                    self._out_of_descriptors()
                    return
                self.stats.refused["accept_error"] += 1
                return
            self._admit(sock, str(addr[0]) if isinstance(addr, tuple) else "local")

    def _out_of_descriptors(self) -> None:
        """No descriptor left for a new connection: shed the one waiting (so its client hears at once)
        with the reserved descriptor, and pause accepting for a moment instead of spinning."""
        self.stats.refused["out_of_descriptors"] += 1
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
            try:
                s, _ = self.sock.accept()
                s.close()
            except OSError:
                pass
            self._reserve = self._reserve_fd()
        if not self._paused_until:
            self._paused_until = time.monotonic() + 0.1
            try:
                self._sel.unregister(self.sock)  # the listener stays readable: not watched while paused
            except (KeyError, ValueError, OSError):
                pass
        log.warning("%s: out of file descriptors; a connection was refused", self.name)

    def _admit(self, sock: socket.socket, client: str) -> None:
        with self._lock:
            total = sum(self._by_client.values())
            mine = self._by_client[client]
        if mine >= self.per_client:
            self.stats.refused["per_client"] += 1
            sock.close()
            return
        if total >= self.max_connections and not self._evict_one():
            self.stats.refused["too_many_connections"] += 1
            sock.close()
            return
        sock.setblocking(False)
        cfg = self.web.get() if self.web is not None else None
        if cfg is not None and cfg.context is not None:
            try:
                sock = cfg.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ssl.SSLError):
                self.stats.refused["tls_handshake"] += 1
                sock.close()
                return
        c = _Conn(sock, client, time.monotonic() + HEAD_TIMEOUT)
        with self._lock:
            self._by_client[client] += 1
        self._hold(c)
        if c.phase == "handshake":
            self._handshake(c)

    def _evict_one(self) -> bool:
        """At the cap: close the oldest connection that is only waiting (for a head, or idle)."""
        waiting = [c for c in self._conns.values() if c.phase in ("handshake", "head", "idle")]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.since)
        self.stats.refused["evicted"] += 1
        self._close(oldest)
        return True

    def _hold(self, c: _Conn) -> None:
        self._conns[c.sock.fileno()] = c
        self._sel.register(c.sock, c.events, c)

    def _release(self, c: _Conn) -> None:
        """Stop watching a connection (it goes to a worker)."""
        self._conns.pop(c.sock.fileno(), None)
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _unhold(self, c: _Conn) -> None:
        if c.held:
            with self._lock:
                self._bodies -= c.held
            c.held = 0

    def _close(self, c: _Conn, reason: str = "") -> None:
        self._unhold(c)
        if reason:
            self.stats.refused[reason] += 1
        self._release(c)
        with self._lock:
            self._by_client[c.client] -= 1
            if self._by_client[c.client] <= 0:
                del self._by_client[c.client]
        try:
            c.sock.close()
        except OSError:
            pass

    def _sweep(self, now: float) -> None:
        for c in [c for c in self._conns.values() if now >= c.deadline]:
            why = {"handshake": "tls_handshake", "head": "head_timeout", "body": "body_timeout",
                   "idle": ""}.get(c.phase, "head_timeout")
            if c.phase in ("head", "body") and c.buf:
                self._reply_now(c, 408, "request timeout")
            self._close(c, why)

    def _want(self, c: _Conn, events: int) -> None:
        if events != c.events:
            c.events = events
            self._sel.modify(c.sock, events, c)

    def _handshake(self, c: _Conn) -> None:
        try:
            c.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(c, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(c, selectors.EVENT_WRITE)
            return
        except (OSError, ssl.SSLError, ValueError):
            self._close(c, "tls_handshake")
            return
        c.phase = "head"
        self._want(c, selectors.EVENT_READ)
        self._read(c)  # TLS may already hold application data

    def _io(self, c: _Conn, mask: int) -> None:
        if c.sock.fileno() not in self._conns:
            return
        if c.phase == "handshake":
            self._handshake(c)
        else:
            self._read(c)

    def _read(self, c: _Conn) -> None:
        while True:
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                self._want(c, selectors.EVENT_WRITE)
                return
            except (OSError, ssl.SSLError):
                self._close(c)
                return
            if not data:
                if c.buf and c.phase in ("head", "body"):  # a request, then the client's half-close
                    c.eof = True  # (`printf 'GET ...' | nc -N`): it is answered, then the connection closed
                    self._progress(c)
                    if c.phase != "busy" and c.sock.fileno() >= 0:  # an incomplete request: nothing to answer
                        self._close(c)
                else:
                    self._close(c)
                return
            if c.phase == "idle":
                c.phase, c.deadline, c.since = "head", time.monotonic() + HEAD_TIMEOUT, time.monotonic()
            c.buf += data
            if len(c.buf) > MAX_HEAD + self.max_body + 65536:
                break
        self._progress(c)

    def _progress(self, c: _Conn) -> None:
        if c.phase == "head":
            end = c.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(c.buf) > MAX_HEAD:
                    self._reply_now(c, 431, "request head too large")
                    self._close(c, "bad_request")
                return
            head = bytes(c.buf[:end]).decode("latin-1")
            del c.buf[: end + 4]
            parsed = _parse_head(head)
            if isinstance(parsed, str):
                self._reply_now(c, 400, parsed)
                self._close(c, "bad_request")
                return
            method, target, version, headers = parsed
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._reply_now(c, 411, "chunked request bodies are not taken; send Content-Length")
                self._close(c, "bad_request")
                return
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self._reply_now(c, 400, "bad Content-Length")
                self._close(c, "bad_request")
                return
            if length > self.max_body:
                self._reply_now(c, 413, f"request body over {self.max_body} bytes")
                self._close(c, "too_large")
                return
            if self.max_body_total and length:
                with self._lock:
                    if self._bodies + length > self.max_body_total:
                        busy = True
                    else:
                        busy = False
                        self._bodies += length
                        c.held = length
                if busy:
                    self._reply_now(c, 503, "too many request bodies at once; retry later", retry_after=1)
                    self._close(c, "busy")
                    return
            c.head, c.need = (method, target, version, headers), length
            c.phase, c.deadline = "body", time.monotonic() + BODY_TIMEOUT
        if c.phase == "body":
            if len(c.buf) < c.need:
                return
            body = bytes(c.buf[: c.need])
            del c.buf[: c.need]
            self._dispatch(c, body)

    def _dispatch(self, c: _Conn, body: bytes) -> None:
        method, target, version, headers = c.head
        path, _, query = target.partition("?")
        req = Request(method, path, query, version, headers, body, c.client)
        c.phase = "busy"
        self._release(c)
        self.stats.requests += 1
        if method == "GET" and path in self.probe_paths:
            self._probes.put((c, req))
            return
        with self._lock:
            if self._busy[c.client] >= self.per_client_busy:
                self._waiting.setdefault(c.client, collections.deque()).append((c, req))
                return
            self._busy[c.client] += 1
        self._main.put((c, req))

    def _reply_now(self, c: _Conn, status: int, message: str, retry_after: int = 0) -> None:
        """A small answer from the reactor (best effort: never waits on the client)."""
        body = (message + "\n").encode()
        extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
        data = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"{extra}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        try:
            c.sock.send(data)
        except (OSError, ssl.SSLError, ValueError):
            pass

    def _returns(self) -> None:
        """Connections the workers are done with: back to reading (keep-alive) or closed."""
        while True:
            try:
                c, keep, main = self._back.get_nowait()
            except queue.Empty:
                return
            nxt = None
            if main:
                with self._lock:
                    self._busy[c.client] -= 1
                    waiting = self._waiting.get(c.client)
                    if waiting:
                        nxt = waiting.popleft()
                        if not waiting:
                            del self._waiting[c.client]
                        self._busy[c.client] += 1
                    elif self._busy[c.client] <= 0:
                        del self._busy[c.client]
            if nxt is not None:
                self._main.put(nxt)
            if not keep or self._stop.is_set() or (c.eof and not c.buf):
                self._close(c)
                continue
            try:
                c.sock.setblocking(False)
            except OSError:
                self._close(c)
                continue
            c.phase, c.head, c.need = "idle", None, 0
            c.since, c.deadline, c.events = time.monotonic(), time.monotonic() + IDLE_TIMEOUT, selectors.EVENT_READ
            self._hold(c)
            if c.buf or (isinstance(c.sock, ssl.SSLSocket) and c.sock.pending()):
                c.phase, c.deadline = "head", time.monotonic() + HEAD_TIMEOUT
                self._read(c)

    # ------------------------------------------------------------------ workers
    def _work(self, jobs: queue.SimpleQueue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            c, req = job
            keep = False
            try:
                keep = self._serve(c, req)
            except Exception:  # a bug answers 500 where it can, never kills the worker
                log.exception("%s: %s %s failed", self.name, req.method, req.path)
            self._unhold(c)
            self._back.put((c, keep, jobs is self._main))
            self._wake()

    def _serve(self, c: _Conn, req: Request) -> bool:
        c.sock.setblocking(True)
        deadline = time.monotonic() + WRITE_TIMEOUT
        cfg = self.web.get() if self.web is not None else None
        if cfg is not None and not cfg.allows(req.header("authorization") or None):
            if req.method == "GET" and req.path in self.probe_paths:
                req.authed = False
            else:
                return self._write(c, req, Response(401, b"Unauthorized\n", headers=[
                    ("WWW-Authenticate", 'Basic realm="airflow-monitor"')]), deadline)
        try:
            resp = self.app(req)
        except Exception:
            log.exception("%s: %s %s failed", self.name, req.method, req.path)
            resp = text(500, "internal error (logged)", close=True)
        return self._write(c, req, resp, deadline)

    def _write(self, c: _Conn, req: Request, resp: Response, deadline: float) -> bool:
        keep = (req.version == "HTTP/1.1" and req.header("connection").lower() != "close"
                or req.header("connection").lower() == "keep-alive") and not resp.close
        head = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Unknown')}", f"Content-Type: {resp.content_type}"]
        head += [f"{k}: {v}" for k, v in resp.headers]
        chunked = not isinstance(resp.body, bytes | bytearray)
        if chunked:
            head.append("Transfer-Encoding: chunked")
        else:
            head.append(f"Content-Length: {len(resp.body)}")
        if not keep:
            head.append("Connection: close")
        out = _Writer(c.sock, deadline)
        try:
            if not chunked:
                out.send(("\r\n".join(head) + "\r\n\r\n").encode() + (b"" if req.method == "HEAD" else resp.body))
                return keep
            out.send(("\r\n".join(head) + "\r\n\r\n").encode())
            try:
                for piece in resp.body:
                    if piece:
                        out.send(b"%x\r\n%b\r\n" % (len(piece), piece))
            except _ClientGone:
                raise
            except Exception as e:  # the answer failed midway: no final chunk, so the client sees a failure
                log.warning("%s: %s %s failed while sending: %s", self.name, req.method, req.path, e)
                return False
            finally:
                close = getattr(resp.body, "close", None)
                if close is not None:
                    close()
            out.send(b"0\r\n\r\n")
            return keep
        except _ClientGone as e:
            self.stats.refused[e.why] += 1
            return False


class _ClientGone(Exception):
    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


class _Writer:
    """sendall() under one deadline for the whole answer: a client that stops reading is dropped."""

    def __init__(self, sock, deadline: float):
        self.sock, self.deadline = sock, deadline

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _ClientGone("slow_reader")
            self.sock.settimeout(min(left, 5.0))
            try:
                n = self.sock.send(view)
            except (TimeoutError, ssl.SSLWantWriteError):
                continue
            except (OSError, ssl.SSLError, ValueError):
                raise _ClientGone("client_gone") from None
            view = view[n:]


def _parse_head(head: str) -> tuple | str:
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return "bad request line"
    method, target, version = parts
    if not target.startswith("/"):
        return "bad request target"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return "bad header line"
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return method, target, version, headers


def serve(listen_addr: str | socket.socket, app: Callable[[Request], Response], web_config: str | None = None,
          **kw) -> HttpServer:
    """Start a server on an address (or a bound, listening socket) in background threads."""
    sock = listen(listen_addr) if isinstance(listen_addr, str) else listen_addr
    web = webconfig.Watched(web_config) if web_config else None
    return HttpServer(sock, app, web=web, **kw).start()
