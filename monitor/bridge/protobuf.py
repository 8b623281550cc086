"""The Prometheus protobuf exposition (io.prometheus.client.MetricFamily, length-delimited), written
by hand: the messages are few and fixed (client_model's metrics.proto), and building them field by
field with the protobuf runtime would cost several times the text format's render.

Field numbers (metrics.proto, proto2):
  MetricFamily: name 1, help 2, type 3 (COUNTER 0, GAUGE 1, HISTOGRAM 4), metric 4
  Metric:       label 1 (LabelPair: name 1, value 2), gauge 2, counter 3, histogram 7 (value 1 each)
  Histogram:    sample_count 1, sample_sum 2, bucket 3 (cumulative_count 1, upper_bound 2),
                schema 5 (sint32), zero_threshold 6, zero_count 7, negative_span 9, negative_delta 10,
                positive_span 12, positive_delta 13 (BucketSpan: offset 1 sint32, length 2)
Repeated scalars are written packed; proto2 parsers take packed and unpacked alike.
"""

from __future__ import annotations

import math
import struct
from itertools import accumulate

CONTENT_TYPE = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
TYPES = {"counter": 0, "gauge": 1, "summary": 2, "untyped": 3, "histogram": 4, "gaugehistogram": 5}
_D = struct.Struct("<d")
_VARINT1 = [bytes([i]) for i in range(128)]


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = [_varint(i) for i in range(1 << 14)]  # lengths and counts are mostly small: a lookup


def varint(n: int) -> bytes:
    if 0 <= n < 16384:
        return _VARINTS[n]
    return _varint(n)


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63) if n < 0 else n << 1


def field(num: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def label_pair(name: str, value: str) -> bytes:
    return field(1, field(1, name.encode()) + field(2, value.encode()))


def family_head(name: str, help: str, kind: str) -> bytes:
    """MetricFamily's fields before its metrics."""
    return field(1, name.encode()) + field(2, help.encode()) + b"\x18" + varint(TYPES[kind])


def delimited(head: bytes, metrics_len: int) -> bytes:
    """The length prefix and head of a MetricFamily whose metrics (already encoded) take metrics_len."""
    return varint(len(head) + metrics_len) + head


def scalar_metric(labels: bytes, kind: str, value: float) -> bytes:
    """A counter's or gauge's Metric field (tag 4 of the family included)."""
    inner = labels + (b"\x1a\x09\x09" if kind == "counter" else b"\x12\x09\x09") + _D.pack(value)
    return b"\x22" + varint(len(inner)) + inner


def histogram_metric(labels: bytes, count: int, total: float, classic: list[tuple[float, int]],
                     native=None) -> bytes:
    """A histogram's Metric field: classic buckets [(upper bound, cumulative count)] (no +Inf) and,
    if given, a native.Snapshot turned into schema, zero bucket, spans and deltas."""
    h = bytearray(b"\x08")
    h += varint(int(count))
    h += b"\x11"
    h += _D.pack(total)
    for ub, cum in classic:
        b = b"\x08" + varint(int(cum)) + b"\x11" + _D.pack(ub)
        h += b"\x1a"
        h += varint(len(b))
        h += b
    if native is not None:
        h += native_fields(native)
    inner = labels + b"\x3a" + varint(len(h)) + bytes(h)
    return b"\x22" + varint(len(inner)) + inner


class HistogramEncoder:
    """A family's histogram series as Metric fields, fast: a series' run of slots is read in one call,
    and the encodings of its classic buckets (by their cumulative counts) and of its native block (by
    its contents) are remembered, for many series share them (a task run once, in one bucket)."""

    def __init__(self, bounds: tuple[float, ...], native_at: int | None, w: int = 0, wn: int = 0):
        self.bounds = bounds
        self.nb = len(bounds) + 1
        self.native_at, self.w, self.wn = native_at, w, wn
        self.width = 3 + self.nb + (6 + w + wn if native_at is not None else 0)
        self.tails = [b"\x11" + _D.pack(ub) for ub in bounds]  # each bucket's upper bound field
        self.classic: dict[tuple, bytes] = {}
        self.natives: dict[tuple, bytes] = {}

    KEEP = 4096  # encodings remembered per family and kind, at most (~1 KB each)

    def _classic(self, cum: tuple) -> bytes:
        b = self.classic.get(cum)
        if b is None:
            if len(self.classic) >= self.KEEP:
                self.classic.clear()
            parts = []
            for c, tail in zip(cum, self.tails, strict=False):
                v = varint(int(c))
                parts.append(b"\x1a" + _VARINTS[10 + len(v)] + b"\x08" + v + tail)
            b = self.classic[cum] = b"".join(parts)
        return b

    def _native(self, block: tuple) -> bytes:
        b = self.natives.get(block)
        if b is None:
            from monitor.bridge.native import HEAD, Snapshot

            if len(self.natives) >= self.KEEP:
                self.natives.clear()
            s = Snapshot()
            s.schema, s.zero_threshold, s.zero_count = int(block[1]), block[2], block[3]
            s.pos_offset, s.neg_offset = int(block[4]), int(block[5])
            s.pos, s.neg = block[HEAD : HEAD + self.w], block[HEAD + self.w :]
            b = self.natives[block] = native_fields(s)
        return b

    def encode(self, V, b: int, labels: bytes) -> bytes:
        row = V[b : b + self.width].tolist()
        nb = self.nb
        cum = tuple(accumulate(row[3 : 3 + nb]))
        h = b"\x08" + varint(int(cum[-1])) + b"\x11" + _D.pack(row[1]) + self._classic(cum[:-1])
        n0 = self.native_at
        if n0 is not None:
            block = tuple(row[n0:])
            if int(block[0]) & 1 or V[b + n0] != block[0]:  # the writer was rewriting it: read it again
                from monitor.bridge.native import read

                snap = read(V, b + n0, self.w, self.wn)
                h += native_fields(snap) if snap is not None else b""
            else:
                h += self._native(block)
        inner = labels + b"\x3a" + varint(len(h)) + h
        return b"\x22" + varint(len(inner)) + inner


def native_fields(native) -> bytes:
    """A native.Snapshot as the Histogram's native fields: schema, zero bucket, spans and deltas."""
    from monitor.bridge.native import spans

    h = bytearray()
    h += b"\x28" + varint(zigzag(native.schema))
    h += b"\x31" + _D.pack(native.zero_threshold)
    h += b"\x38" + varint(int(native.zero_count))
    pos_spans, pos_deltas = spans(native.pos_offset, native.pos)
    neg_spans, neg_deltas = spans(native.neg_offset, native.neg)
    if not pos_spans and not neg_spans and not native.zero_count and not native.zero_threshold:
        pos_spans = [(0, 0)]  # an empty native histogram: a no-op span says it is one (as client_golang)
    for tag_span, tag_delta, sp, deltas in ((b"\x4a", b"\x52", neg_spans, neg_deltas),
                                             (b"\x62", b"\x6a", pos_spans, pos_deltas)):
        for off, length in sp:
            s = b"\x08" + varint(zigzag(off)) + b"\x10" + varint(length)
            h += tag_span + varint(len(s)) + s
        if deltas:
            packed = b"".join(varint(zigzag(d)) for d in deltas)
            h += tag_delta + varint(len(packed)) + packed
    return bytes(h)


def from_text(text: str) -> bytes:
    """Families in the text format (the bridge's own, the SLA watcher's and the healer's, a few hundred
    series) as delimited MetricFamily messages."""
    from prometheus_client.parser import text_string_to_metric_families

    out = bytearray()
    for fam in text_string_to_metric_families(text):
        kind = fam.type if fam.type in TYPES else "untyped"
        body = bytearray()
        if kind == "histogram":
            groups: dict[tuple, dict] = {}
            for s in fam.samples:
                labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                g = groups.setdefault(labels, {"buckets": []})
                if s.name.endswith("_bucket"):
                    g["buckets"].append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_sum"):
                    g["sum"] = s.value
                elif s.name.endswith("_count"):
                    g["count"] = s.value
            for labels, g in groups.items():
                lab = b"".join(label_pair(k, v) for k, v in labels)
                classic = sorted((ub, c) for ub, c in g["buckets"] if not math.isinf(ub))
                body += histogram_metric(lab, int(g.get("count", 0)), g.get("sum", 0.0), classic)
        else:
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                lab = b"".join(label_pair(k, v) for k, v in sorted(s.labels.items()))
                if kind in ("counter", "gauge"):
                    body += scalar_metric(lab, kind, s.value)
                else:  # untyped, summaries: untyped values (we serve none, but never fail on them)
                    inner = lab + b"\x2a\x09\x09" + _D.pack(s.value)
                    body += b"\x22" + varint(len(inner)) + inner
                    kind = "untyped"
        name = fam.name + "_total" if fam.type == "counter" and not fam.name.endswith("_total") else fam.name
        head = family_head(name, fam.documentation, kind)
        out += delimited(head, len(body)) + body
    return bytes(out)
