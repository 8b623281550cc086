"""Native histograms: Prometheus' exponential buckets, kept in the store's shared array.

Prometheus' native histogram of schema s (-4..8) has bucket k covering (2^((k-1)/2^s), 2^(k/2^s)]
for positive values (the same, mirrored, for negative ones) and a zero bucket for |v| <= its
threshold. OpenTelemetry's exponential histogram of scale s has bucket i covering
(2^(i/2^s), 2^((i+1)/2^s)]: the same grid, so Prometheus' key is OTel's index + 1. This module is
pure: bucket keys, changes of schema, changes of unit, and the native block of a series in the
store (monitor/bridge/store.py) with the ingest process writing it and the web process reading it.

The native block of a histogram series (doubles, after its classic buckets):
  [SEQ]     even when the block is consistent; odd while the writer rewrites the window
  [SCHEMA]  the schema the window is in (it only ever goes down, as in client_golang)
  [ZT]      zero threshold;   [ZC] zero count
  [POFF]    the key of the first positive slot;   [NOFF] the key of the first negative slot
  then W positive slots, then WN negative slots: counts (not cumulative)
A window holds the buckets from POFF to POFF+W-1. A value outside it moves the window; when the
populated range is wider than W, the schema goes down by one (two buckets become one) until it fits,
as client_golang does when a histogram reaches its maximum number of buckets. A reader (the web
process) reads a consistent block with the sequence number (a seqlock): the writer is one process,
and an 8-byte aligned double is written at once on the platforms we run on.
"""

from __future__ import annotations

import math
from bisect import bisect_left

MIN_SCHEMA, MAX_SCHEMA = -4, 8
SEQ, SCHEMA, ZT, ZC, POFF, NOFF, HEAD = 0, 1, 2, 3, 4, 5, 6  # offsets inside the native block
ZERO_THRESHOLD = 2.0**-128  # client_golang's default: only an exact zero (or a denormal) falls in it
LOG2_1000 = math.log2(1000.0)
# bounds of the buckets of one power of two, as fractions of frexp(): schema s > 0 has 2^s of them
_BOUNDS = {s: [math.ldexp(2.0 ** (j / 2**s), -1) for j in range(2**s)] for s in range(1, MAX_SCHEMA + 1)}


def key(v: float, schema: int) -> int:
    """Prometheus' bucket key of |v| > 0 at `schema`: the k with 2^((k-1)/2^s) < |v| <= 2^(k/2^s)."""
    frac, exp = math.frexp(abs(v))
    if schema > 0:
        return bisect_left(_BOUNDS[schema], frac) + (exp - 1) * (1 << schema)
    k = exp - 1 if frac == 0.5 else exp
    return (k + (1 << -schema) - 1) >> -schema


def down(k: int, d: int) -> int:
    """The key that bucket k becomes when the schema goes down by d (d >= 0)."""
    return (k + (1 << d) - 1) >> d if d else k


def upper(k: int, schema: int) -> float:
    return 2.0 ** (k / 2.0**schema)


def middle(k: int, schema: int) -> float:
    """The geometric middle of bucket k: where its count is put when it must go elsewhere."""
    return 2.0 ** ((k - 0.5) / 2.0**schema)


def unit_shift(schema: int, log2_factor: float) -> int:
    """Bucket k of a histogram in one unit becomes bucket k + shift in a unit `factor` times smaller
    values are multiplied by (1e-3 from milliseconds to seconds: log2 is -9.966). A factor that is
    not a power of two moves the grid by a fraction of a bucket: each bucket goes where its middle
    falls, so a quantile moves by at most one bucket width (exact for powers of two)."""
    return math.ceil(log2_factor * 2.0**schema - 0.5)


def downscale(counts: dict[int, float], d: int) -> dict[int, float]:
    """Buckets {key: count} with the schema d lower."""
    if not d:
        return counts
    out: dict[int, float] = {}
    for k, c in counts.items():
        k2 = down(k, d)
        out[k2] = out.get(k2, 0.0) + c
    return out


def otel_buckets(offset: int, counts, shift: int = 0) -> dict[int, float]:
    """OTel's (offset, bucket_counts) as Prometheus keys {key: count}, non-zero only."""
    return {offset + i + 1 + shift: float(c) for i, c in enumerate(counts) if c}


def classic_index(bounds: tuple[float, ...], k: int, schema: int) -> int:
    """The classic bucket (index into `bounds`, len(bounds) for +Inf) that native bucket k counts in:
    the one whose upper bound is at or above the bucket's middle."""
    return bisect_left(bounds, middle(k, schema))


def spans(offset: int, counts: list[float]) -> tuple[list[tuple[int, int]], list[int]]:
    """Prometheus' (spans, deltas) of a window of counts starting at key `offset`: spans of
    consecutive buckets (gaps of up to two empty buckets are kept as zeros inside a span, as
    client_golang does), and each bucket's count as a delta from the previous one."""
    out_spans: list[tuple[int, int]] = []
    deltas: list[int] = []
    prev_count = 0
    last = None  # key of the last bucket put in a span
    for i, c in enumerate(counts):
        if not c:
            continue
        k = offset + i
        if last is None:
            out_spans.append([k, 1])  # type: ignore[arg-type]
        elif k - last <= 3:  # fill the gap with zeros
            for _ in range(k - last - 1):
                deltas.append(-prev_count)
                prev_count = 0
            out_spans[-1][1] += k - last  # type: ignore[index]
        else:
            out_spans.append([k - last - 1, 1])  # type: ignore[arg-type]
        n = int(c)
        deltas.append(n - prev_count)
        prev_count = n
        last = k
    return [tuple(s) for s in out_spans], deltas  # type: ignore[misc]


class Block:
    """Where a series' native block sits in the shared array, and how wide it is."""

    __slots__ = ("at", "w", "wn", "schema")

    def __init__(self, at: int, w: int, wn: int, schema: int):
        self.at, self.w, self.wn, self.schema = at, w, wn, schema  # at: offset from the series' base


UNPLACED = -(2.0**52)  # the offset of a window that holds nothing yet: no key falls inside it


def init(V, n: int, schema: int, zero_threshold: float = ZERO_THRESHOLD) -> None:
    """A new series' native block at absolute slot n (the store zeroed it)."""
    V[n + SCHEMA] = schema
    V[n + ZT] = zero_threshold
    V[n + POFF] = V[n + NOFF] = UNPLACED


def observe(V, n: int, w: int, wn: int, v: float, weight: float) -> None:
    """One observation v (weight: 1/sample rate) into the native block at absolute slot n."""
    if -V[n + ZT] <= v <= V[n + ZT]:
        V[n + ZC] += weight
        return
    s = int(V[n + SCHEMA])
    k = key(v, s)
    if v > 0:
        i = k - int(V[n + POFF])
        if 0 <= i < w:
            V[n + HEAD + i] += weight
            return
        add(V, n, w, wn, s, {k: weight}, {})
    else:
        i = k - int(V[n + NOFF])
        if 0 <= i < wn:
            V[n + HEAD + w + i] += weight
            return
        add(V, n, w, wn, s, {}, {k: weight})


def add(V, n: int, w: int, wn: int, schema: int, pos: dict[int, float], neg: dict[int, float],
        zero: float = 0.0, zero_threshold: float = 0.0) -> None:
    """Add buckets {key: count} at `schema` (and a zero count) into the native block at slot n,
    moving the window or lowering the schema when they do not fit."""
    s = int(V[n + SCHEMA])
    if schema > s:
        pos, neg = downscale(pos, schema - s), downscale(neg, schema - s)
        schema = s
    if zero_threshold > V[n + ZT]:
        V[n + ZT] = zero_threshold
    if zero:
        V[n + ZC] += zero
    poff, noff = int(V[n + POFF]), int(V[n + NOFF])
    if schema == s and all(0 <= k - poff < w for k in pos) and all(0 <= k - noff < wn for k in neg):
        for k, c in pos.items():
            V[n + HEAD + k - poff] += c
        for k, c in neg.items():
            V[n + HEAD + w + k - noff] += c
        return
    merged_pos = _window(V, n + HEAD, w, poff)
    merged_neg = _window(V, n + HEAD + w, wn, noff)
    if schema < s:  # the incoming buckets are coarser: the window comes down to them
        merged_pos, merged_neg = downscale(merged_pos, s - schema), downscale(merged_neg, s - schema)
        s = schema
    for k, c in pos.items():
        merged_pos[k] = merged_pos.get(k, 0.0) + c
    for k, c in neg.items():
        merged_neg[k] = merged_neg.get(k, 0.0) + c
    while s > MIN_SCHEMA and (_span(merged_pos) > w or _span(merged_neg) > wn):
        merged_pos, merged_neg = downscale(merged_pos, 1), downscale(merged_neg, 1)
        s -= 1
    _rewrite(V, n, w, wn, s, merged_pos, merged_neg)


def _span(b: dict) -> int:
    return max(b) - min(b) + 1 if b else 0


def _window(V, at: int, width: int, offset: int) -> dict[int, float]:
    if offset == UNPLACED:
        return {}
    return {offset + i: c for i, c in enumerate(V[at : at + width].tolist()) if c}


def _place(b: dict, width: int) -> float:
    """The offset that centres the populated keys in a window of `width` slots."""
    if not b:
        return UNPLACED
    lo, hi = min(b), max(b)
    return lo - max(0, (width - (hi - lo + 1)) // 2)


def _rewrite(V, n: int, w: int, wn: int, s: int, pos: dict, neg: dict) -> None:
    """Rewrite the window under the sequence number (a reader retries meanwhile). Buckets that still
    cannot fit at the lowest schema are folded into the window's edge bucket."""
    V[n + SEQ] += 1  # odd: being rewritten
    V[n + SCHEMA] = s
    for at, width, b, off_slot in ((n + HEAD, w, pos, POFF), (n + HEAD + w, wn, neg, NOFF)):
        off = _place(b, width)
        V[n + off_slot] = off
        row = [0.0] * width
        for k, c in b.items():
            row[min(max(k - int(off), 0), width - 1)] += c
        V[at : at + width] = _as_doubles(row)
    V[n + SEQ] += 1


def _as_doubles(row: list[float]):
    from array import array

    return memoryview(array("d", row))


class Snapshot:
    """A consistent read of a native block (for the exposition)."""

    __slots__ = ("schema", "zero_threshold", "zero_count", "pos_offset", "pos", "neg_offset", "neg")

    def total(self) -> float:
        return self.zero_count + sum(self.pos) + sum(self.neg)


def read(V, n: int, w: int, wn: int, tries: int = 50) -> Snapshot | None:
    """Read the native block at slot n; None if the writer kept it busy over `tries` attempts."""
    for _ in range(tries):
        seq = V[n + SEQ]
        if int(seq) & 1:
            continue
        row = V[n : n + HEAD + w + wn].tolist()
        if V[n + SEQ] != seq:
            continue
        s = Snapshot()
        s.schema, s.zero_threshold, s.zero_count = int(row[SCHEMA]), row[ZT], row[ZC]
        s.pos_offset, s.neg_offset = int(row[POFF]), int(row[NOFF])
        s.pos, s.neg = row[HEAD : HEAD + w], row[HEAD + w :]
        return s
    return None
