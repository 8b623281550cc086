"""One rendering of /metrics for every scraper waiting: concurrent scrapes cost one render.

A render thread takes every scrape that is waiting, renders the exposition once, and hands each
piece to each of them; the gzip'ed ones share one compressor, in a thread of its own (zlib lets go
of the GIL, so compression overlaps rendering). A scrape that arrives while a rendering is under
way waits for the next one, which serves all that came meanwhile. So 50 Prometheus replicas or a
scrape storm cost one render at a time, not 50, and ingest (another process) keeps its core.

Each scraper has a short queue; one that does not take its pieces for SLOW_CLIENT seconds (a
stalled or hostile client) is dropped, so it cannot hold back the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable

log = logging.getLogger("airflow_monitor.web")

QUEUE = 4  # pieces waiting per scraper (a piece is shared between scrapers, not copied)
SLOW_CLIENT = 5.0  # seconds a scraper may leave its queue full before it is dropped
FAILED = object()  # the rendering failed: the scraper closes its connection without ending the body


class Scrape:
    """One waiting scraper: its pieces arrive on `q`, then None (done) or FAILED."""

    def __init__(self, gz: bool):
        self.gz = gz
        self.q: queue.Queue = queue.Queue(maxsize=QUEUE)
        self.dead = False  # the client went away or was too slow: no more pieces for it

    def put(self, data) -> None:
        if self.dead:
            return
        try:
            self.q.put(data, timeout=SLOW_CLIENT)
        except queue.Full:
            self.dead = True

    def end(self, data) -> None:
        """The last item (None or FAILED); a dead scraper's queue may be full: then it is dropped."""
        if not self.dead:
            self.put(data)
            return
        try:
            self.q.put_nowait(data)
        except queue.Full:
            pass


class _Gzip:
    """One compressor for all gzip scrapers of a rendering, in its own thread."""

    def __init__(self, scrapes: list[Scrape]):
        self.scrapes = scrapes
        self.q: queue.Queue = queue.Queue(maxsize=QUEUE)
        self.sent = 0
        self.thread = threading.Thread(target=self._run, name="gzip", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        z = zlib.compressobj(1, zlib.DEFLATED, 31)
        while (data := self.q.get()) is not None:
            self._out(z.compress(data))
        self._out(z.flush())

    def _out(self, data: bytes) -> None:
        if data:
            self.sent += len(data)
            for s in self.scrapes:
                s.put(data)

    def write(self, data: bytes) -> None:
        self.q.put(data)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()


class Fanout:
    def __init__(self, pieces: Callable[[], Iterable[bytes]], done: Callable[[int, float, int], None]):
        """pieces: the exposition, rendered afresh at each call; done(scrapes, seconds, bytes)."""
        self.pieces, self.done = pieces, done
        self.cond = threading.Condition()
        self.waiting: list[Scrape] = []
        self.renders = 0
        threading.Thread(target=self._run, name="render", daemon=True).start()

    def scrape(self, gz: bool) -> Scrape:
        s = Scrape(gz)
        with self.cond:
            self.waiting.append(s)
            self.cond.notify()
        return s

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.waiting:
                    self.cond.wait()
                scrapes, self.waiting = self.waiting, []
            try:
                self._render(scrapes)
            except Exception:
                log.exception("rendering /metrics failed")
                for s in scrapes:
                    s.end(FAILED)

    def _render(self, scrapes: list[Scrape]) -> None:
        start = time.perf_counter()
        plain = [s for s in scrapes if not s.gz]
        zipped = [s for s in scrapes if s.gz]
        gz = _Gzip(zipped) if zipped else None
        sent = 0
        try:
            for data in self.pieces():
                sent += len(data)
                for s in plain:
                    s.put(data)
                if gz is not None:
                    gz.write(data)
                if all(s.dead for s in scrapes):
                    break
        finally:
            if gz is not None:
                gz.close()
        for s in scrapes:
            s.end(None)
        self.renders += 1
        self.done(len(scrapes), time.perf_counter() - start, gz.sent if gz is not None else sent)
