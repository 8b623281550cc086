"""The series store: one value per (family, labels), written by ingest, read by the exporters.

Series are plain lists so that the ingest hot path updates them without a method call:
  counter / gauge:  [value, last_seen]
  histogram:        [sum, last_seen, count, bucket_counts]   (bucket_counts[i]: le buckets[i]; last: +Inf)
Readers take snapshots with list(), which is atomic under the GIL; only ingest's thread writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

VALUE, LAST_SEEN, COUNT, BUCKETS = 0, 1, 2, 3


class Drop(Exception):
    def __init__(self, reason: str):
        self.reason = reason


@dataclass
class Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    buckets: tuple[float, ...] = ()
    series: dict[tuple[tuple[str, str], ...], list] = field(default_factory=dict)
    ttl: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)  # per-series override


class Store:
    def __init__(self, default_ttl: float = 86400.0, max_series_per_family: int = 10000):
        self.default_ttl = default_ttl
        self.max_series = max_series_per_family
        self.families: dict[str, Family] = {}

    def series(self, family: str, kind: str, labels: tuple, help: str, buckets: tuple, ttl, now: float):
        """The series list for (family, labels), created if new; raises Drop when it may not exist."""
        fam = self.families.get(family)
        if fam is None:
            fam = self.families[family] = Family(family, kind, help or family, tuple(buckets))
        elif fam.kind != kind or (kind == "histogram" and fam.buckets != tuple(buckets)):
            raise Drop("conflict")
        s = fam.series.get(labels)
        if s is None:
            if len(fam.series) >= self.max_series:
                raise Drop("cardinality_cap")
            if kind == "histogram":
                s = [0.0, now, 0.0, [0.0] * (len(fam.buckets) + 1)]
            else:
                s = [0.0, now]
            fam.series[labels] = s
            if ttl is not None and ttl != self.default_ttl:
                fam.ttl[labels] = ttl
        return s

    def expire(self, now: float) -> int:
        """Remove series not updated within their TTL (0 = never); returns how many."""
        removed = 0
        for fam in list(self.families.values()):
            for labels, s in list(fam.series.items()):
                ttl = fam.ttl.get(labels, self.default_ttl)
                if ttl and now - s[LAST_SEEN] > ttl:
                    del fam.series[labels]
                    fam.ttl.pop(labels, None)
                    removed += 1
        return removed

    def count(self) -> int:
        return sum(len(f.series) for f in list(self.families.values()))
