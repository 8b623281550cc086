"""The bridge's web process: serves /metrics and the lifecycle endpoints on the bridge's HTTP port.

It is its own interpreter (spawned by monitor/bridge/publisher.py), so a scrape that renders
hundreds of thousands of series uses another core and never takes the GIL from the process that
reads the statsd sockets. It gets, as inherited file descriptors:
  --slots-fd    the store's shared array of values (mapped read-only)
  --journal-fd  a pipe of length-prefixed pickled journal batches (which series exist, where)
  --control-fd  a socket to ask the bridge for what only it knows: its own metrics and the SLA
                watcher's (small), readiness, and a mapping reload
  --http-fd     the listening HTTP socket, bound by the bridge so that its errors are the bridge's
  --otlp-http-fd, --otlp-data-fd  the OTLP port's listening socket, and the channel that carries
                what it receives to the ingest process (monitor/bridge/otlp.py)
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
from collections import Counter

from monitor.bridge import protobuf
from monitor.bridge.exposition import StoreView
from monitor.bridge.fanout import Failed, Fanout
from monitor.bridge.render import PROTO, TEXT, Renderer, choose
from monitor.http import webconfig
from monitor.http.app import Service
from monitor.http.server import REFUSALS as HTTP_REASONS
from monitor.http.server import HttpServer, Request, Response, text

log = logging.getLogger("airflow_monitor.web")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEADER = struct.Struct(">I")
CONTROL = struct.Struct(">cI")  # op, sequence
REPLY = struct.Struct(">II")  # sequence, length
RENDER_WAIT = 60.0  # seconds a scrape waits for its next piece before it gives up
SYNCED = ("synced",)  # the journal record that ends the bridge's snapshot


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
        self.sock, self.timeout = sock, timeout
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


def releaser(m: mmap.mmap):
    """release(first slot, end slot) for StoreView: drop this process' mapping of the pages wholly inside
    those slots (MADV_DONTNEED on a shared mapping: the pages stay in the memfd, the next read maps them
    again, a minor fault). The ingest process, which writes them, keeps them resident; without this the
    web process, reading every series at each scrape, holds the whole array resident too and its RSS
    counts it a second time (110 MiB at 10,000 DAGs x 10 tasks)."""
    page = mmap.PAGESIZE

    def release(first: int, end: int) -> None:
        a = -(-first * 8 // page) * page
        b = min(end * 8, len(m)) // page * page
        if b > a:
            m.madvise(mmap.MADV_DONTNEED, a, b - a)

    return release


class Web:
    def __init__(self, vals: memoryview, journal_fd: int, control: Control, release=None):
        self.view = StoreView(vals, release)
        self.journal_fd = journal_fd
        self.control = control
        self.synced = threading.Event()  # the bridge's whole snapshot is applied (a partial one is no answer)
        self.scrapes = 0
        self.last_duration = 0.0
        self.last_bytes = 0
        # one renderer (and its kept renderings) and one fan-out per format: text, and protobuf for
        # scrapers that take native histograms
        self.renderers = {fmt: Renderer(self.view, fmt) for fmt in (TEXT, PROTO)}
        self.fanouts = {fmt: Fanout(lambda fmt=fmt: self.pieces(fmt), self._rendered) for fmt in (TEXT, PROTO)}
        self.fanout = self.fanouts[TEXT]
        self.server = None  # the HTTP server (monitor.http), for its refusal counts
        self.otlp = None  # the OTLP receiver (monitor/bridge/otlp.py), for its counts
        self.otlp_server = None  # the OTLP port's HTTP server
        self.web = None  # TLS and basic auth (monitor.http.webconfig.Watched)

    def _rendered(self, scrapes: int, seconds: float, sent: int) -> None:
        self.scrapes += scrapes
        self.last_duration, self.last_bytes = seconds, sent

    def follow_journal(self) -> None:
        """Apply journal batches as they come; exit the process when the bridge is gone."""
        try:
            while True:
                (n,) = HEADER.unpack(read_exact(self.journal_fd, HEADER.size))
                batch = pickle.loads(read_exact(self.journal_fd, n))
                if batch and batch[0] == ("reset",):
                    self.synced.clear()
                self.view.apply(batch)
                if batch and batch[-1] == SYNCED:
                    self.synced.set()
        except EOFError:
            log.info("the bridge closed the journal; exiting")
        except Exception:
            log.exception("cannot read the journal; exiting")
        os._exit(0)

    def own_metrics(self) -> str:
        p = "airflow_monitor_bridge_"
        refused = Counter(self.server.stats.refused) if self.server is not None else Counter()
        if self.otlp_server is not None:  # the OTLP port's, counted with the metrics port's
            refused.update(self.otlp_server.stats.refused)
        lines = [f"# HELP {p}scrape_duration_seconds Time the last rendering of /metrics took to send (one "
                 f"rendering serves every scrape waiting).",
                 f"# TYPE {p}scrape_duration_seconds gauge", f"{p}scrape_duration_seconds {self.last_duration!r}",
                 f"# HELP {p}scrape_bytes Bytes the last /metrics sent (after compression).",
                 f"# TYPE {p}scrape_bytes gauge", f"{p}scrape_bytes {self.last_bytes}",
                 f"# HELP {p}scrapes_total Scrapes of /metrics served.",
                 f"# TYPE {p}scrapes_total counter", f"{p}scrapes_total {self.scrapes}",
                 f"# HELP {p}renders_total Renderings of /metrics; each serves every scrape waiting for it.",
                 f"# TYPE {p}renders_total counter",
                 f"{p}renders_total {sum(f.renders for f in self.fanouts.values())}",
                 *http_refused_lines(f"{p}http_refused_total", refused),
                 f"# HELP {p}web_config_refused_total Changes of the web config file refused (invalid, or "
                 f"turning TLS or basic auth off); the last config stays.",
                 f"# TYPE {p}web_config_refused_total counter",
                 f"{p}web_config_refused_total {self.web.refused if self.web is not None else 0}",
                 f"# HELP {p}exposed_series Series the web process knows of.",
                 f"# TYPE {p}exposed_series gauge", f"{p}exposed_series {self.view.series_count()}",
                 *(self.otlp.metrics_lines(p) if self.otlp is not None else [])]
        return "\n".join(lines) + "\n"

    def pieces(self, fmt: str = TEXT):
        """The whole exposition as render.Piece's; raises (a 503, or a cut answer) rather than render a part."""
        if not self.synced.is_set():
            raise RuntimeError("the bridge's series are still being loaded (the web process just started)")
        extra = self.control.ask(b"m")
        if extra is None:
            raise RuntimeError(f"the bridge process did not answer within {self.control.timeout:.0f}s, so its "
                               "own series and the SLA watcher's and healer's cannot be served")
        extra += self.own_metrics().encode()
        if fmt == PROTO:
            extra = protobuf.from_text(extra.decode())
        yield from self.renderers[fmt].pieces(extra)

    # ------------------------------------------------------------------ HTTP
    def metrics(self, req: Request) -> Response:
        gz = "gzip" in req.header("accept-encoding")
        fmt = choose(req.header("accept"))
        scrape = self.fanouts[fmt].scrape(gz)  # served by the next rendering, with every scrape waiting
        first = _next(scrape)
        if isinstance(first, Failed):
            scrape.dead = True
            return text(503, f"/metrics cannot be served now: {first.why}")

        def body():
            try:
                data = first
                while data is not None:
                    if isinstance(data, Failed):
                        raise RuntimeError(data.why)
                    yield data if isinstance(data, bytes) else data.text()  # a render.Piece: its text now
                    data = _next(scrape)
            finally:
                scrape.dead = True

        return Response(200, body(), content_type=protobuf.CONTENT_TYPE if fmt == PROTO else CONTENT_TYPE,
                        headers=[("Content-Encoding", "gzip")] if gz else [])

    def ready(self) -> str:
        if not self.synced.is_set():
            return "the bridge's series are still being loaded"
        answer = self.control.ask(b"y")
        return "" if answer == b"1" else "the bridge is not ready" if answer is not None else \
            "the bridge process does not answer"

    def sla_ready(self, req: Request) -> Response:
        """Apart from /-/ready: a broken SLA watcher must not take the statsd Service's endpoint."""
        why = self.control.ask(b"s")
        if why == b"-":
            return text(404, "no SLA watcher in this process")
        if why is None:
            return text(503, "the bridge does not answer" if req.authed else "not ready")
        return text(503, why.decode() if req.authed else "not ready") if why else text(200, "OK")

    def dropped(self, req: Request) -> Response:
        """/-/dropped: the last lines refused or unmapped, by reason (kept by the bridge, bounded and rate
        limited); JSON with ?format=json."""
        import json
        from datetime import UTC, datetime

        answer = self.control.ask(b"d")
        if answer is None:
            return text(503, "the bridge process does not answer")
        groups = json.loads(answer)
        if "format=json" in req.query:
            return Response(200, answer, content_type="application/json")
        out = ["# The last statsd lines the bridge refused or did not map, by reason: at most 20 a reason, one a "
               "second. `airflow-monitor bridge explain 'LINE'` says how a line is read, mapped and exposed."]
        for g in groups:
            count = f", {g['count']:g} in all" if g["count"] is not None else ""
            out.append(f"\n{g['metric']} {g['reason']}{count}:")
            for x in g["lines"]:
                at = datetime.fromtimestamp(x["at"], UTC).strftime("%Y-%m-%d %H:%M:%SZ")
                out.append(f"  {at}  {x['line']}")
        if not groups:
            out.append("\nnothing refused or unmapped since the bridge started")
        return text(200, "\n".join(out))

    def reload(self) -> tuple[bool | None, str]:
        answer = self.control.ask(b"r")
        if answer is None:
            return None, "the bridge did not answer"
        return answer[:1] == b"1", answer[1:].decode(errors="replace")


def _next(scrape):
    try:
        return scrape.q.get(timeout=RENDER_WAIT)
    except queue.Empty:
        return Failed(f"no rendering within {RENDER_WAIT:.0f}s")


def http_refused_lines(name: str, refused: dict) -> list[str]:
    """`<name>{reason}` for every reason the HTTP layer closes a connection unserved (0 when none yet)."""
    out = [f"# HELP {name} HTTP connections or requests refused or cut, by reason (too many connections, "
           f"per client, evicted idle, head or body timeout, TLS handshake, out of descriptors, slow reader...).",
           f"# TYPE {name} counter"]
    for reason in sorted(set(HTTP_REASONS) | set(refused)):
        out.append(f'{name}{{reason="{reason}"}} {refused.get(reason, 0)}')
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="airflow-monitor-web")
    for name in ("slots-fd", "slots-bytes", "journal-fd", "control-fd", "http-fd"):
        ap.add_argument("--" + name, type=int, required=True)
    for name in ("otlp-http-fd", "otlp-data-fd", "otlp-max-body", "otlp-max-points", "otlp-max-attributes"):
        ap.add_argument("--" + name, type=int)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--enable-lifecycle", action="store_true")
    ap.add_argument("--web-config-file", default="")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s web: %(message)s")
    shared = mmap.mmap(args.slots_fd, args.slots_bytes, prot=mmap.PROT_READ)
    vals = memoryview(shared).cast("d")
    web = Web(vals, args.journal_fd, Control(socket.socket(fileno=args.control_fd)), releaser(shared))
    threading.Thread(target=web.follow_journal, name="journal", daemon=True).start()
    if args.web_config_file:
        web.web = webconfig.Watched(args.web_config_file)
    service = Service(web.metrics, ready=web.ready, reload=web.reload, lifecycle=args.enable_lifecycle,
                      probes={"/-/ready/sla": web.sla_ready}, pages={"/-/dropped": web.dropped},
                      index="airflow-monitor bridge: /metrics /-/healthy /-/ready /-/ready/sla /-/dropped "
                            "POST /-/reload")
    web.server = HttpServer(socket.socket(fileno=args.http_fd), service, web=web.web, name="bridge-web",
                            probe_paths=service.probe_paths).start()
    if args.otlp_http_fd is not None:
        from monitor.bridge import otlp

        limits = otlp.Limits(max_body=args.otlp_max_body, max_points=args.otlp_max_points,
                             max_attributes=args.otlp_max_attributes)
        channel = otlp.Channel(socket.socket(fileno=args.otlp_data_fd), on_broken=lambda: os._exit(3))
        web.otlp = otlp.Receiver(channel.submit, limits)
        # the same TLS and basic auth as /metrics; no probe paths: every request needs credentials
        web.otlp_server = HttpServer(socket.socket(fileno=args.otlp_http_fd), web.otlp, web=web.web, name="otlp",
                                     probe_paths=frozenset(), max_body=limits.max_body,
                                     max_body_total=2 * limits.max_body, workers=4, per_client_busy=4).start()
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
