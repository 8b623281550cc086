"""Statsd listeners: UDP, TCP and Unix datagram sockets, served by one selector loop.

One thread reads every socket and feeds ingest directly: no queue, no lock on the hot path.
UDP sockets get a large receive buffer (SO_RCVBUFFORCE when permitted; in a pod without
CAP_NET_ADMIN the node's net.core.rmem_max caps it) and are drained in batches of up to 256
datagrams per system call (recvmmsg, mmsg.py), each batch handed to ingest at once.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import selectors
import socket
import stat
import time

from monitor.bridge.mmsg import Receiver

log = logging.getLogger(__name__)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
MAX_TCP_LINE = 65535
BURST = 16  # batches read per wakeup before the other sockets get a turn
COALESCE_BELOW, COALESCE_SECONDS = 32, 0.0005
MAX_CONNECTIONS = 1024
FD_RESERVE = 64  # file descriptors statsd TCP connections leave to the rest (web process restart, sinks)
EVICT_IDLE_AFTER = 1.0  # seconds: when full, a connection silent this long makes way for a new one


def connection_cap(wanted: int = MAX_CONNECTIONS) -> int:
    """Statsd TCP connections at most: what RLIMIT_NOFILE leaves after FD_RESERVE, so that idle
    connections can never take the descriptors the bridge needs to go on (EMFILE)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - min(FD_RESERVE, soft // 2)))


def parse_address(addr: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be [host]:port, not {addr!r}")
    return (host.strip("[]") or default_host), int(port)


def bind(kind: int, addr: str, what: str | None = None) -> socket.socket:
    """A socket bound to [host]:port; an error is one line naming the address and `what` it is for."""
    what = what or ("udp" if kind == socket.SOCK_DGRAM else "tcp")
    host, port = parse_address(addr)
    try:
        info = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
        s = socket.socket(info[0], kind)
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on {addr} ({what}): {e.strerror}") from None
    if kind == socket.SOCK_STREAM:
        # TCP: lets a restart bind past TIME_WAIT, never beside a live listener. UDP: never, since on
        # Linux it lets a second bridge bind the same port and take the traffic the first one counts
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(info[4])
    except OSError as e:
        s.close()
        raise OSError(e.errno, f"cannot listen on {addr} ({what}): {e.strerror}") from None
    return s


def _alive(path: str) -> bool:
    """Does a process still read the Unix datagram socket at `path`? (A stale one refuses a connect.)"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def set_rcvbuf(s: socket.socket, size: int) -> int:
    for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, size)
            break
        except OSError:
            continue
    return s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


class Listeners:
    def __init__(self, ingest, *, udp: str | None = ":9125", tcp: str | None = ":9125",
                 unix: str | None = None, rcvbuf: int = 8 << 20, max_connections: int = MAX_CONNECTIONS,
                 unix_mode: int = 0o755, idle_timeout: float = 300.0):
        self.ingest = ingest
        self.sel = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        self.tcp_buffers: dict[socket.socket, bytearray] = {}
        self.tcp_seen: dict[socket.socket, float] = {}  # connection -> last read; oldest first
        self.idle_timeout = idle_timeout
        self.swept = 0.0
        self.unix_path = unix
        self.addresses: dict[str, tuple] = {}
        self.receivers: dict[socket.socket, Receiver] = {}
        self.discarding: set[socket.socket] = set()  # TCP connections inside an over-long line
        self.max_connections = connection_cap(max_connections)
        self.paused: tuple[socket.socket, float] | None = None  # accept paused after an error
        if udp:
            s = bind(socket.SOCK_DGRAM, udp)
            self.rcvbuf = set_rcvbuf(s, rcvbuf)
            self._add(s, "udp")
        if tcp:
            s = bind(socket.SOCK_STREAM, tcp)
            s.listen(128)
            self._add(s, "tcp-listen")
        if unix:
            try:
                if stat.S_ISSOCK(os.stat(unix).st_mode):
                    if _alive(unix):  # another bridge reads it: taking it over would steal its traffic
                        raise OSError(errno.EADDRINUSE, f"cannot listen on unix socket {unix}: "
                                      f"{os.strerror(errno.EADDRINUSE)} (another process reads it)")
                    os.unlink(unix)  # a stale socket from an earlier run
            except FileNotFoundError:
                pass
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            umask = os.umask(0o777)  # no one may send before its mode is set (at start: no other thread yet)
            try:
                s.bind(unix)
                os.chmod(unix, unix_mode)
            except OSError as e:
                s.close()
                raise OSError(e.errno, f"cannot listen on unix socket {unix}: {e.strerror}") from None
            finally:
                os.umask(umask)
            set_rcvbuf(s, rcvbuf)
            self._add(s, "unix")

    def _add(self, s: socket.socket, kind: str) -> None:
        s.setblocking(False)
        if kind in ("udp", "unix"):
            self.receivers[s] = Receiver(s)
        self.sel.register(s, selectors.EVENT_READ, kind)
        self.sockets.append(s)
        self.addresses[kind] = s.getsockname()

    def watch(self, fd: int, ready) -> None:
        """Also wake for another descriptor (the OTLP channel from the web process): `ready()` is called
        when it is readable; None stops watching it (by number: it may be closed already)."""
        if ready is None:
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
            return
        self.sel.register(fd, selectors.EVENT_READ, ready)

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` and handle whatever arrived."""
        handle = self.ingest.handle_many
        for key, _ in self.sel.select(timeout):
            kind, s = key.data, key.fileobj
            if callable(kind):  # a watched socket (see watch)
                kind()
                continue
            now = time.monotonic()
            if kind == "udp" or kind == "unix":
                read = self.receivers[s].read
                got = 0
                for _ in range(BURST):
                    batch = read()
                    if not batch:
                        break
                    got += len(batch)
                    handle(batch, kind, now)
                if 0 < got < COALESCE_BELOW:
                    # traffic is arriving a few datagrams at a time: let a batch gather rather than
                    # pay a wakeup for each few (a pod's default buffer holds ~4 ms at 100k lines/s)
                    time.sleep(COALESCE_SECONDS)
            elif kind == "tcp-listen":
                self._accept(s, now)
            else:
                self._tcp_read(s, now)
        now = time.monotonic()
        if self.paused and now >= self.paused[1]:
            self.sel.register(self.paused[0], selectors.EVENT_READ, "tcp-listen")
            self.paused = None
        if self.idle_timeout and now - self.swept >= 1.0:
            self.swept = now
            self._sweep(now - self.idle_timeout, "idle_timeout")

    def _sweep(self, before: float, reason: str, at_most: int | None = None) -> int:
        """Close connections not read from since `before`, oldest first; returns how many."""
        closed = 0
        for conn, seen in list(self.tcp_seen.items()):
            if seen >= before or (at_most is not None and closed >= at_most):
                break
            self._close(conn)
            self.ingest.stats.socket_errors[reason] += 1
            closed += 1
        return closed

    def _accept(self, s: socket.socket, now: float) -> None:
        errors = self.ingest.stats.socket_errors
        try:
            conn, _ = s.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # EMFILE, ENFILE, ENOBUFS...: stop accepting for a second, keep serving
            reason = errno.errorcode.get(e.errno, "accept").lower()
            if not errors[reason]:
                log.error("statsd TCP: cannot accept connections (%s); pausing accept for 1s", e.strerror)
            errors[reason] += 1
            self.sel.unregister(s)
            self.paused = (s, now + 1.0)
            return
        if len(self.tcp_buffers) >= self.max_connections and not self._sweep(now - EVICT_IDLE_AFTER, "evicted_idle", 1):
            errors["too_many_connections"] += 1  # every connection is busy: the newcomer waits its turn
            conn.close()
            return
        conn.setblocking(False)
        self.tcp_buffers[conn] = bytearray()
        self.tcp_seen[conn] = now
        self.sel.register(conn, selectors.EVENT_READ, "tcp")
        self.ingest.stats.packets["tcp_connection"] += 1

    def _tcp_read(self, conn: socket.socket, now: float) -> None:
        buf = self.tcp_buffers[conn]
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # closed: a last line without newline still counts
            if buf:
                self.ingest.handle(bytes(buf), "tcp", now)
            self._close(conn)
            return
        del self.tcp_seen[conn]  # to the end: the dict stays ordered by last read
        self.tcp_seen[conn] = now
        buf += data
        if conn in self.discarding:  # the rest of an over-long line: not a line of its own
            nl = buf.find(b"\n")
            if nl < 0:
                buf.clear()
                return
            del buf[: nl + 1]
            self.discarding.discard(conn)
        cut = buf.rfind(b"\n")
        if cut >= 0:
            chunk = bytes(buf[:cut])
            del buf[: cut + 1]
            if len(chunk) > MAX_TCP_LINE:  # rare: look for whole lines over the limit
                lines = chunk.split(b"\n")
                keep = [x for x in lines if len(x) <= MAX_TCP_LINE]
                self.ingest.stats.parse_errors["oversized_line"] += len(lines) - len(keep)
                chunk = b"\n".join(keep)
            self.ingest.handle(chunk, "tcp", now)
        if len(buf) > MAX_TCP_LINE:
            self.ingest.stats.parse_errors["oversized_line"] += 1
            buf.clear()
            self.discarding.add(conn)

    def _close(self, conn: socket.socket) -> None:
        """Close a statsd TCP connection (its unfinished last line, if any, is not a line)."""
        self.sel.unregister(conn)
        del self.tcp_buffers[conn]
        self.tcp_seen.pop(conn, None)
        self.discarding.discard(conn)
        conn.close()

    def close(self) -> None:
        for conn in list(self.tcp_buffers):
            conn.close()
        for s in self.sockets:
            s.close()
        self.sel.close()
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass
