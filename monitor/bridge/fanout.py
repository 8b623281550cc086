"""One rendering of /metrics for every scraper waiting: concurrent scrapes cost one render.

A render thread takes every scrape that is waiting, renders the exposition once, and hands each
piece to each of them; the gzip'ed ones share one compressor, in a thread of its own (zlib lets go
of the GIL, so compression overlaps rendering). A scrape that arrives while a rendering is under
way waits for the next one, which serves all that came meanwhile. So 50 Prometheus replicas or a
scrape storm cost one render at a time, not 50, and ingest (another process) keeps its core.

The renderer never waits for a scraper: each has its own queue of the (shared) pieces, and the
HTTP layer writes them out under its own deadline, so a client that stops reading costs only
itself (and, until its deadline, the pieces of one rendering). A rendering that fails ends every
scrape waiting on it with Failed(why): before any piece, the scraper answers 503 with the reason;
after, it ends the connection without the final chunk, so a short exposition is never a 200.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable

log = logging.getLogger("airflow_monitor.web")

QUEUE = 4  # pieces waiting for the gzip thread


class Failed:
    """The rendering failed (the last item of a scrape's queue, instead of None)."""

    def __init__(self, why: str):
        self.why = why


class Scrape:
    """One waiting scraper: its pieces arrive on `q`, then None (done) or a Failed."""

    def __init__(self, gz: bool):
        self.gz = gz
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.dead = False  # the client went away: no more pieces for it

    def put(self, data) -> None:
        if not self.dead:
            self.q.put(data)

    def end(self, data) -> None:
        """The last item: None (done) or a Failed."""
        self.q.put(data)


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
            except Exception as e:
                log.warning("rendering /metrics failed: %s", e)
                for s in scrapes:
                    s.end(Failed(str(e) or type(e).__name__))

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
