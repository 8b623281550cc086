"""One rendering of /metrics for every scraper waiting: concurrent scrapes cost one render.

A render thread takes every scrape that is waiting, renders the exposition once (monitor/bridge/
render.py: pieces, each with its text and its deflate block), and hands each piece to each of
them: the gzip'ed ones get the pieces' deflate blocks framed as one gzip member, the others their
text. A scrape that arrives while a rendering is under way waits for the next one, which serves
all that came meanwhile. So 50 Prometheus replicas or a scrape storm cost one render at a time,
not 50, and ingest (another process) keeps its core.

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
from collections.abc import Callable, Iterable

from monitor.bridge.render import GzipStream

log = logging.getLogger("airflow_monitor.web")


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


class Fanout:
    def __init__(self, pieces: Callable[[], Iterable], done: Callable[[int, float, int], None]):
        """pieces: the exposition (render.Piece), rendered afresh at each call; done(scrapes, seconds, bytes)."""
        self.pieces, self.done = pieces, done
        self.cond = threading.Condition()
        self.waiting: list[Scrape] = []
        self.renders = 0
        self.warned_at = float("-inf")
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
                now = time.monotonic()
                if now - self.warned_at >= 60:  # one line a minute: a scrape loop must not flood the log
                    log.warning("rendering /metrics failed: %s (said at most once a minute)", e)
                    self.warned_at = now
                for s in scrapes:
                    s.end(Failed(str(e) or type(e).__name__))

    def _render(self, scrapes: list[Scrape]) -> None:
        start = time.perf_counter()
        plain = [s for s in scrapes if not s.gz]
        zipped = [s for s in scrapes if s.gz]
        gz = GzipStream() if zipped else None
        sent = {True: 0, False: 0}  # bytes one scraper gets, gzip'ed or not

        def put(group: list[Scrape], data: bytes) -> None:
            if data:
                sent[group is zipped] += len(data)
                for s in group:
                    s.put(data)

        head = gz is not None  # the gzip header goes with the first piece: a rendering that fails before
        # any piece (the series still being loaded) is then a 503 for a gzip scraper too, not a 200 cut short
        for piece in self.pieces():
            if head:
                put(zipped, gz.head())
                head = False
            if plain and not all(s.dead for s in plain):
                # the piece itself: its text is made (inflated) as the scraper's writer takes it, so that a
                # slow plain scraper holds compressed pieces, not the text (576 MiB at 10,000 DAGs x 10 tasks)
                sent[False] += piece.n
                for s in plain:
                    s.put(piece)
            if gz is not None:
                put(zipped, gz.add(piece))
            if all(s.dead for s in scrapes):
                break
        if gz is not None:
            if head:
                put(zipped, gz.head())
            put(zipped, gz.tail())
        for s in scrapes:
            s.end(None)
        self.renders += 1
        self.done(len(scrapes), time.perf_counter() - start, sent[bool(zipped)])
