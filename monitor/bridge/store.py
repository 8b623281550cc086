"""The series store: every series' numbers in one shared array of doubles, written only by ingest.

Values live in `Slots`, a memfd-backed array of float64 that the exposition process maps too, so
a scrape reads them without the ingest process doing any work (no GIL shared with it). A series
is a run of slots at `base`:
  counter / gauge:  [last_seen, value]
  histogram:        [last_seen, sum, count, bucket_0 .. bucket_n]   (per-bucket, last is +Inf)
                    then, for a native histogram, its native block (monitor/bridge/native.py)
8-byte aligned doubles are written atomically on the platforms we run on; a reader may see a
histogram mid-update (one bucket ahead of _count), so readers derive _count from the buckets.

Each family takes its slots from arenas of its own (ARENA slots, aligned), so that a family's
series sit together: the web process renders and caches a family arena by arena, and re-renders
only the arenas whose series changed (monitor/bridge/render.py).

What the series are (family, labels, where their slots start) is told to readers through a
journal: a list of records that the store appends and the bridge ships to the exposition
process, in order: ("family", name, kind, help, buckets) | ("series", family, base, labels) |
("drop", family, base) | ("forget", family): a family whose last series expired is freed, here
and in every reader. A freed run of slots is reused only after QUARANTINE seconds, by when every
reader has applied the "drop" that freed it.

Memory is bounded in bytes, not only in series: a series' label text (`name="value",` for each
label) may take at most max_series_label_bytes, and all series' label text together at most
max_label_bytes; a series beyond either is not created (dropped: labels_too_long, label_bytes_cap).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
from collections import deque
from dataclasses import dataclass, field
from itertools import islice

LAST_SEEN, VALUE, COUNT, BUCKETS = 0, 1, 2, 3  # offsets inside a series' run of slots
QUARANTINE = 30.0  # seconds a freed run waits before reuse
ARENA_BITS = 13
ARENA = 1 << ARENA_BITS  # slots of one arena (64 KiB); a family's series are allocated arena by arena
SMALL = 32  # series of a family allocated in the shared arenas before it gets arenas of its own
CLASH_LOG_EVERY = 60.0  # seconds between two warnings about clashing family names
log = logging.getLogger(__name__)


class Drop(Exception):
    def __init__(self, reason: str):
        self.reason = reason


class Slots:
    """A fixed-capacity array of doubles in shared memory (a memfd: no file system needed).

    Capacity is reserved, not committed: pages count against memory only once written. Runs of
    slots are handed out from per-family arenas (see the module's docstring).
    """

    def __init__(self, capacity: int):
        capacity = max(ARENA, -(-capacity // ARENA) * ARENA)
        self.capacity = capacity
        size = capacity * 8
        self.fd = os.memfd_create("airflow-monitor-series", 0)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self.vals = memoryview(self.map).cast("d")
        self.top = 0  # next never-used arena's first slot
        self.shared = Family("", "gauge", "")  # the owner of the arenas small families share
        self.shared_free: dict[int, deque[tuple[float, int]]] = {}  # run length -> freed runs of shared arenas
        self.free_arenas: deque[tuple[float, int]] = deque()  # (freed at, base) of arenas of freed families

    def alloc(self, n: int, now: float, owner: Family | None = None) -> int:
        """A run of n zeroed slots for `owner`'s next series; raises Drop("series_cap") when none is
        left. A family's first SMALL series come from arenas all small families share; from then
        on from arenas of its own (its freed runs after QUARANTINE, else its current arena, else a
        new one), so that a large family's series sit together."""
        if owner is None or len(owner.series) < SMALL:
            runs = self.shared_free.get(n)
            owner = self.shared
        else:
            runs = owner.free
        if runs and now - runs[0][0] >= QUARANTINE:
            base = runs.popleft()[1]
        elif owner.arena_top + n <= owner.arena_end:
            base = owner.arena_top
            owner.arena_top += n
        else:
            if n > ARENA:
                raise Drop("series_cap")
            start = self._arena(now)
            owner.arenas.append(start)
            base, owner.arena_top, owner.arena_end = start, start + n, start + ARENA
        self.vals[base : base + n] = memoryview(bytes(8 * n)).cast("d")
        return base

    def _arena(self, now: float) -> int:
        if self.free_arenas and now - self.free_arenas[0][0] >= QUARANTINE:
            return self.free_arenas.popleft()[1]
        if self.top + ARENA > self.capacity:
            raise Drop("series_cap")
        base, self.top = self.top, self.top + ARENA
        return base

    def release(self, base: int, n: int, now: float, owner: Family | None = None) -> None:
        if owner is not None and (base >> ARENA_BITS) << ARENA_BITS in owner.arenas:
            owner.free.append((now, base))
        else:
            self.shared_free.setdefault(n, deque()).append((now, base))

    def release_arenas(self, owner: Family, now: float) -> None:
        """A family freed with its last series: its arenas serve other families after QUARANTINE."""
        self.free_arenas.extend((now, base) for base in owner.arenas)
        owner.arenas = []
        owner.free.clear()
        owner.arena_top = owner.arena_end = 0


@dataclass(eq=False)
class Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    buckets: tuple[float, ...] = ()
    # a native histogram: (schema, positive slots, negative slots) of its native block; None: classic only
    native: tuple[int, int, int] | None = None
    series: dict[tuple[tuple[str, str], ...], int] = field(default_factory=dict)  # labels -> base
    ttl: dict[int, float] = field(default_factory=dict)  # base -> per-series TTL override
    # slots: the arenas it owns, where its current one ends, its freed runs (freed at, base)
    arenas: list[int] = field(default_factory=list)
    arena_top: int = 0
    arena_end: int = 0
    free: deque = field(default_factory=deque)

    @property
    def width(self) -> int:
        return width(self.kind, self.buckets, self.native)

    @property
    def native_at(self) -> int:
        """Where the native block starts, from the series' base."""
        return 3 + len(self.buckets) + 1


def width(kind: str, buckets: tuple, native: tuple[int, int, int] | None) -> int:
    if kind != "histogram":
        return 2
    return 3 + len(buckets) + 1 + (native_block_width(native) if native else 0)


def native_block_width(native: tuple[int, int, int]) -> int:
    from monitor.bridge.native import HEAD

    return HEAD + native[1] + native[2]




_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


def sample_name(name: str, kind: str) -> str:
    """A counter's sample (and, in the 0.0.4 format, its TYPE line) ends in `_total`, added once;
    a counter named `_total` itself becomes `_total_total` (its family name may not be empty)."""
    if kind != "counter" or (name.endswith("_total") and len(name) > 6):
        return name
    return name + "_total"


def exposed_names(name: str, kind: str) -> tuple[str, ...]:
    """The names a family takes on /metrics (TYPE line and samples); no two families may share one."""
    if kind == "counter":
        return (sample_name(name, kind),)
    if kind == "histogram":
        return (name, name + "_bucket", name + "_sum", name + "_count")
    return (name,)


def label_problem(labels: tuple, kind: str) -> str | None:
    for k, _ in labels:
        if k.startswith("__") or k == "quantile" or (k == "le" and kind == "histogram"):
            return "reserved_label"
    return None


def label_bytes(labels: tuple) -> int:
    """What a series' labels take as text on /metrics (`name="value",` each, UTF-8)."""
    return sum(len(k) + len(v.encode()) + 4 for k, v in labels)


class Store:
    def __init__(self, default_ttl: float = 86400.0, max_series_per_family: int = 10000,
                 max_series: int = 500_000, slots: Slots | None = None, max_label_bytes: int = 128 << 20,
                 max_series_label_bytes: int = 4096):
        self.default_ttl = default_ttl
        self.max_series = max_series_per_family
        self.max_total = max_series
        self.max_label_bytes = max_label_bytes
        self.max_series_label_bytes = max_series_label_bytes
        self.label_bytes = 0  # label text of every series, against max_label_bytes (given back on expiry)
        # room for max_series histograms of up to 28 buckets; reserved, not committed
        self.slots = slots or Slots(max_series * 32 + 1024 * ARENA)
        self.vals = self.slots.vals
        self.families: dict[str, Family] = {}
        self.sets: dict[int, set] = {}  # base -> members, for statsd sets (value = member count)
        self.pairs: dict[tuple[str, str], tuple[str, str]] = {}  # interned label pairs (a dag_id is in many series)
        self.total = 0
        self.journal: list[tuple] = []
        self.exposed: dict[str, str] = {}  # name on /metrics -> the family that owns it
        self.clashes = 0  # family clashes since the last warning (rate-limited: CLASH_LOG_EVERY)
        self.clash_logged = float("-inf")
        self.families_freed = 0
        self._scan = iter(())  # expiry walks the store a slice at a time
        self.warned: dict[tuple, float] = {}  # (cap, family or "") -> the last share of it said (see usage)

    def series(self, family: str, kind: str, labels: tuple, help: str, buckets: tuple, ttl, now: float,
               native: tuple[int, int, int] | None = None) -> int:
        """The base slot of (family, labels), created if new; raises Drop when it may not exist.
        Nothing is kept of a series that is refused, not even its family. `native`: a histogram's
        native block, (schema, positive slots, negative slots)."""
        fam = self.families.get(family)
        if kind != "histogram":
            native = None
        if fam is not None and (fam.kind != kind or (kind == "histogram" and (
                fam.buckets != tuple(buckets) or fam.native != native))):
            raise Drop("conflict")
        if any(not v for _, v in labels):  # an empty label value is no label in Prometheus
            labels = tuple(p for p in labels if p[1])
        problem = label_problem(labels, kind)
        if problem:
            raise Drop(problem)
        if fam is not None:
            base = fam.series.get(labels)
            if base is not None:
                return base
            if len(fam.series) >= self.max_series:
                raise Drop("cardinality_cap")
        if self.total >= self.max_total:
            raise Drop("series_cap")
        size = label_bytes(labels)
        if size > self.max_series_label_bytes:
            raise Drop("labels_too_long")
        if self.label_bytes + size > self.max_label_bytes:
            raise Drop("label_bytes_cap")
        new = fam is None
        if new:
            self._admit(family, kind, now)
            fam = Family(family, kind, help or family, tuple(buckets) if kind == "histogram" else (), native)
        try:
            base = self.slots.alloc(fam.width, now, fam)
        except Drop:
            if new:
                self._unadmit(fam)
            raise
        if new:
            self.families[family] = fam
            self.journal.append(("family", family, kind, fam.help, fam.buckets, fam.native))
        self.label_bytes += size
        self.vals[base] = now
        if fam.native:
            from monitor.bridge.native import init

            init(self.vals, base + fam.native_at, fam.native[0])
        if len(self.pairs) > 2 * self.total + 10_000:  # values of expired series: start afresh
            self.pairs.clear()
        labels = tuple([self.pairs.setdefault(p, p) for p in labels])  # one copy of each (name, value)
        fam.series[labels] = base
        self.total += 1
        if ttl is not None and ttl != self.default_ttl:
            fam.ttl[base] = ttl
        self.journal.append(("series", family, base, labels))
        return base

    def _admit(self, family: str, kind: str, now: float) -> None:
        """Refuse a family that would make /metrics invalid: a name outside Prometheus' grammar, or
        one whose exposed names another family already takes (timer `t` and gauge `t_sum`)."""
        if not _NAME.match(family):
            raise Drop("invalid_name")
        names = exposed_names(family, kind)
        owner = next((self.exposed[n] for n in names if n in self.exposed), None)
        if owner is not None:
            self.clashes += 1
            if now - self.clash_logged >= CLASH_LOG_EVERY:  # one line a minute, whatever arrives
                log.warning("statsd metric family %r (%s) clashes with %r on /metrics; its samples are dropped "
                            "as conflicts (%d clashes since the last such line; at most one line a minute)",
                            family[:200], kind, owner[:200], self.clashes)
                self.clash_logged, self.clashes = now, 0
            raise Drop("conflict")
        for n in names:
            self.exposed[n] = family

    def snapshot_journal(self) -> list[tuple]:
        """Records that rebuild every family and series from nothing (for a new reader)."""
        out: list[tuple] = []
        for fam in self.families.values():
            out.append(("family", fam.name, fam.kind, fam.help, fam.buckets, fam.native))
            out.extend(("series", fam.name, base, labels) for labels, base in fam.series.items())
        return out

    def take_journal(self) -> list[tuple]:
        j, self.journal = self.journal, []
        return j

    def _walk(self):
        """(family name, labels) of every series, a family's keys copied only when reached."""
        for name in list(self.families):
            fam = self.families.get(name)
            if fam is not None:
                for labels in list(fam.series):
                    yield name, labels

    def expire(self, now: float, budget: int = 1000) -> set[int]:
        """Remove series not updated within their TTL (0 = never), looking at up to `budget`
        series per call so that a large store never holds ingest up; returns the freed bases."""
        chunk = list(islice(self._scan, budget))
        if len(chunk) < budget:  # this round is over: the next starts here
            self._scan = self._walk()
            chunk += islice(self._scan, budget - len(chunk))
        vals, freed = self.vals, set()
        for name, labels in chunk:
            fam = self.families.get(name)
            base = fam.series.get(labels) if fam is not None else None
            if base is None:
                continue
            ttl = fam.ttl.get(base, self.default_ttl)
            if ttl and now - vals[base + LAST_SEEN] > ttl:
                del fam.series[labels]
                fam.ttl.pop(base, None)
                self.sets.pop(base, None)
                self.label_bytes -= label_bytes(labels)
                self.slots.release(base, fam.width, now, fam)
                self.total -= 1
                self.journal.append(("drop", fam.name, base))
                freed.add(base)
                if not fam.series:
                    self._forget(fam, now)
        return freed

    def _unadmit(self, fam: Family) -> None:
        for n in exposed_names(fam.name, fam.kind):
            if self.exposed.get(n) == fam.name:
                del self.exposed[n]

    def _forget(self, fam: Family, now: float) -> None:
        """Free a family whose last series expired: its names on /metrics, and the readers' view."""
        del self.families[fam.name]
        self.slots.release_arenas(fam, now)
        self._unadmit(fam)
        self.journal.append(("forget", fam.name))
        self.families_freed += 1

    def usage(self, extra: tuple = ()) -> list[str]:
        """Warnings, each said once, as a cap fills: at half, 80 % and 95 % of it (said again after it
        went back under half), naming the flag that raises it. extra: more (name, used, cap, flag)."""
        dropped = "new series are dropped (reason={})"
        caps = [("series", self.total, self.max_total, "--max-series", dropped.format("series_cap")),
                ("label bytes", self.label_bytes, self.max_label_bytes, "--max-label-bytes",
                 dropped.format("label_bytes_cap")), *extra]
        big = self.max_series // 2
        caps += [(f"series of family {f.name}", len(f.series), self.max_series, "--max-series-per-family",
                  dropped.format("cardinality_cap")) for f in list(self.families.values()) if len(f.series) >= big]
        out = []
        for name, used, cap, flag, then in caps:
            share = used / cap if cap else 0.0
            said = self.warned.get((name, flag), 0.0)
            if share < 0.5:
                self.warned.pop((name, flag), None)
                continue
            level = 0.95 if share >= 0.95 else 0.8 if share >= 0.8 else 0.5
            if level > said:
                self.warned[(name, flag)] = level
                env = "AIRFLOW_MONITOR_" + flag[2:].upper().replace("-", "_")
                out.append(f"{name}: {used:,} of the {cap:,} allowed ({share:.0%}); at the cap {then}: raise "
                           f"{flag} ({env})")
        return out

    def items(self):
        """(family, labels, base) for every series; for readers in this process (Datadog)."""
        for fam in list(self.families.values()):
            for labels, base in list(fam.series.items()):
                yield fam, labels, base

    def count(self) -> int:
        return self.total
