"""/metrics in the web process: the store rendered arena by arena, each arena's rendering kept
compressed and reused until one of its series changes.

At 10,000 DAGs x 10 tasks the store holds ~670k series, and between two scrapes (15 s) only the
series that moved need new text: a task's histograms change when it runs, a DAG file's gauges when
it is parsed. So a family's series are grouped by the store's arena they live in (monitor/bridge/
store.py gives a large family arenas of its own), and each group's rendering is kept as a raw
deflate block (Z_FULL_FLUSH: byte-aligned, no reference to what precedes it), with its CRC-32 and
length. A group is rendered again when a series came or went (its version in the view) or when one
of its series was updated since the group was rendered (less a margin: ingest stamps a batch with
the time the batch began). A scrape then is: check every series' last update (one read each),
render and compress what changed, and send the kept blocks.

Blocks put side by side make one deflate stream; a gzip answer is its header, the blocks, an empty
final block, and the CRC-32 of the whole (combined from the blocks' CRCs, crc32_combine's algebra)
and its length. One gzip member, not one per block: curl (and other clients) read only a first
member. A scraper that does not take gzip gets the blocks inflated.

Both formats render this way: the text format (0.0.4) and the protobuf one (delimited
io.prometheus.client.MetricFamily, monitor/bridge/protobuf.py), which carries native histograms.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

try:  # Intel's ISA-L deflate: the same format, 3x faster at level 1, better compressed (`isal`)
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - the dependency is declared; this keeps a bare checkout going
    _deflate = zlib

from monitor.bridge import protobuf
from monitor.bridge.exposition import GROUP_BITS, FamilyView, StoreView

TEXT, PROTO = "text", "proto"
MARGIN = 10.0  # seconds: a series updated within this of a rendering makes its group be rendered again
GZIP_HEAD = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no mtime; OS unknown
FINAL = b"\x03\x00"  # an empty final deflate block (fixed Huffman)


class Piece:
    """One part of an exposition: its text (or None when only the compressed form is kept), its raw
    deflate block, and the CRC-32 and length of its text."""

    __slots__ = ("raw", "z", "crc", "n")

    def __init__(self, raw: bytes | None, z: bytes, crc: int, n: int):
        self.raw, self.z, self.crc, self.n = raw, z, crc, n

    @classmethod
    def of(cls, raw: bytes, level: int = 1) -> Piece:
        c = _deflate.compressobj(level, _deflate.DEFLATED, -15)
        return cls(raw, c.compress(raw) + c.flush(_deflate.Z_FULL_FLUSH), _deflate.crc32(raw), len(raw))

    def text(self) -> bytes:
        return self.raw if self.raw is not None else zlib.decompressobj(-15).decompress(self.z)


class _Cached:
    __slots__ = ("version", "at", "piece")

    def __init__(self, version: int, at: float, piece: Piece):
        self.version, self.at, self.piece = version, at, piece


class Renderer:
    """Renders a StoreView in one format, reusing what did not change since the last rendering. The
    groups rendered afresh are compressed in a thread of their own (deflate lets go of the GIL), so
    that compressing one overlaps rendering the next."""

    AHEAD = 8  # groups rendered and waiting for the compressor at most

    def __init__(self, view: StoreView, fmt: str = TEXT, clock=time.monotonic, margin: float = MARGIN):
        self.view, self.fmt, self.clock, self.margin = view, fmt, clock, margin
        self.rendered = 0  # groups rendered afresh (for the self-metrics and the tests)
        self.reused = 0
        self.compressor = ThreadPoolExecutor(1, thread_name_prefix=f"deflate-{fmt}")

    def pieces(self, extra: bytes = b"") -> Iterator[Piece]:
        """The store's families then `extra` (the bridge's own series, in this format)."""
        start = self.clock()
        for fam in list(self.view.families.values()):
            if not fam.count:
                continue
            if self.fmt == TEXT:
                head = fam.head
                if head is None:
                    head = fam.head = Piece.of(fam.header.encode())
                yield head
                yield from self._family(fam, start)
            else:  # a MetricFamily's length comes first: its groups wait, compressed only
                parts = [Piece(None, p.z, p.crc, p.n) for p in self._family(fam, start)]
                if parts:
                    head = protobuf.family_head(fam.sample, fam.help, fam.kind)
                    yield Piece.of(protobuf.delimited(head, sum(p.n for p in parts)))
                    yield from parts
        if extra:
            yield Piece.of(extra)

    def _family(self, fam: FamilyView, start: float) -> Iterator[Piece]:
        """The family's groups in order: kept pieces, and fresh ones as the compressor finishes them
        (up to AHEAD rendered ahead of it)."""
        waiting: deque = deque()
        for x in self._groups(fam, start):
            waiting.append(x)
            while waiting and (len(waiting) > self.AHEAD or not isinstance(waiting[0], Future) or waiting[0].done()):
                p = waiting.popleft()
                yield p.result() if isinstance(p, Future) else p
        for p in waiting:
            yield p.result() if isinstance(p, Future) else p

    def _groups(self, fam: FamilyView, start: float) -> Iterator[Piece | Future]:
        V = self.view.vals
        get = V.__getitem__
        release = self.view.release
        cache = fam.cache.setdefault(self.fmt, {})
        for arena, chunk in list(fam.chunks.items()):
            if not chunk:
                continue
            version = fam.versions.get(arena, 0)
            kept = cache.get(arena)
            bases = list(chunk)  # a copy: the journal thread changes the view meanwhile
            if not bases:
                continue
            if kept is not None and kept.version == version and max(map(get, bases)) < kept.at - self.margin:
                self.reused += 1
                if release is not None:
                    release(arena << GROUP_BITS, (arena + 1) << GROUP_BITS)
                yield kept.piece
                continue
            items = list(chunk.items())
            if self.fmt == TEXT:
                raw = self.view.render_text(fam, items).encode()
            else:
                raw = self.view.render_proto(fam, items)
            if release is not None:
                release(arena << GROUP_BITS, (arena + 1) << GROUP_BITS)
            self.rendered += 1
            yield self.compressor.submit(_keep, cache, arena, version, start, raw)


def _keep(cache: dict, arena: int, version: int, start: float, raw: bytes) -> Piece:
    """Compress a fresh group and keep it (compressed only: the text of 670k series would take ~600 MB)."""
    piece = Piece.of(raw)
    cache[arena] = _Cached(version, start, Piece(None, piece.z, piece.crc, piece.n))
    return piece


# ---------------------------------------------------------------- gzip framing
_POLY = 0xEDB88320  # CRC-32, bit-reflected


def _mult(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (bit-reflected: bit 31 is x^0)."""
    p, m = 0, 1 << 31
    while a:
        if a & m:
            p ^= b
            a ^= m
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _byte_tables(op: int) -> tuple[list[int], ...]:
    """Multiplying by `op` is linear in the other factor: four 256-entry tables, one per byte."""
    out = []
    for j in range(4):
        bits = [_mult(op, 1 << (8 * j + i)) for i in range(8)]
        t = [0] * 256
        for b in range(1, 256):
            low = b & -b
            t[b] = t[b ^ low] ^ bits[low.bit_length() - 1]
        out.append(t)
    return tuple(out)


def _powers() -> list:
    x2n = [1 << 30]  # x^1; then x^2, x^4, ... x^(2^k)
    for _ in range(63):
        x2n.append(_mult(x2n[-1], x2n[-1]))
    return [_byte_tables(x2n[k]) for k in range(3, 3 + 40)]  # x^(8 * 2^i): appending 2^i bytes


_SHIFT = _powers()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A+B from crc(A), crc(B) and len(B): crc(A) carried over len(B) zero bytes, xor crc(B)."""
    i = 0
    while len2:
        if len2 & 1:
            t0, t1, t2, t3 = _SHIFT[i]
            crc1 = t0[crc1 & 255] ^ t1[(crc1 >> 8) & 255] ^ t2[(crc1 >> 16) & 255] ^ t3[crc1 >> 24]
        len2 >>= 1
        i += 1
    return crc1 ^ crc2


class GzipStream:
    """One gzip member made of deflate blocks: header, blocks, final block, CRC and length."""

    def __init__(self):
        self.crc = 0
        self.n = 0

    def head(self) -> bytes:
        return GZIP_HEAD

    def add(self, piece: Piece) -> bytes:
        self.crc = crc32_combine(self.crc, piece.crc, piece.n)
        self.n += piece.n
        return piece.z

    def tail(self) -> bytes:
        return FINAL + struct.pack("<II", self.crc, self.n & 0xFFFFFFFF)


def choose(accept: str) -> str:
    """PROTO when the scraper prefers Prometheus' delimited protobuf (Prometheus with native histograms
    asks for it first), else TEXT."""
    best_q, best = -1.0, TEXT
    for part in accept.split(","):
        media, *params = [x.strip() for x in part.split(";")]
        opts = dict(p.partition("=")[::2] for p in params)
        try:
            q = float(opts.get("q", "1") or 1)
        except ValueError:
            q = 0.0
        if media == "application/vnd.google.protobuf":
            if opts.get("proto") == "io.prometheus.client.MetricFamily" and opts.get("encoding") == "delimited" \
                    and q > best_q:
                best_q, best = q, PROTO
        elif media in ("text/plain", "*/*", "text/*", "application/openmetrics-text") and q > best_q:
            best_q, best = q, TEXT
    return best if best_q > 0 else TEXT
