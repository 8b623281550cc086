"""Ingest: packets -> lines -> cached (parse + map + series) -> store update. The hot path.

Each distinct (name+embedded tags, type+rate+tags) is parsed and mapped once; the cache then
holds a ready action, so a known line costs a split, a dict lookup, float() and an add.

Tagged and legacy twins: Airflow sends every metric that has a legacy name twice, e.g.
`ti.finish.<dag>.<task>.<state>` and `ti.finish`. With plain statsd the second form carries no
ids; with DogStatsD/InfluxDB tags it carries the real ids (and the legacy form mangled ones).
Per catalog metric the bridge learns which form is authoritative and counts only that one:
  - a tagged form with its ids arrives   -> mode "tagged": legacy forms are dropped (legacy_twin)
  - a tagless form follows a legacy form  -> mode "plain": the tagless form is dropped (tagless_twin)
Until a metric's mode is known its first samples are held back, legacy or tagless, whichever
Airflow sends first (it sends the pair back to back), so neither the first event is lost nor
counted twice. `airflow_tags` pins it.

The mode follows what arrives, on sustained evidence only (one spoofed line must not strip a
metric of its ids): in "plain" mode tagged samples are held and weighed after EVIDENCE_WINDOW
seconds; the metric switches to "tagged" if at least EVIDENCE_MIN came and fewer than EVIDENCE_MIN
tagless ones (Airflow's tags were turned on). In "tagged" mode, tagless samples arriving with their
legacy twins switch it to "plain" once fewer than EVIDENCE_MIN tagged samples came over
EVIDENCE_WINDOW seconds (Airflow's tags were turned off). Meanwhile each event is counted once, in
the form counted so far. Each switch is counted (twin_mode_switches) and logged once per metric and
direction.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import Counter, deque
from itertools import islice

from monitor.bridge.mapper import Mapper, Target
from monitor.bridge.native import observe
from monitor.bridge.parse import Key, ParseError, parse_key, parse_values
from monitor.bridge.store import Drop, Store, label_problem

log = logging.getLogger(__name__)

# Cache entries are tuples, so that the hot path indexes instead of calling. `base` is where the
# series' slots start in the store's shared array (see store.py for the layout):
#   (COUNTER, base, scale/rate, None, None, statsd type)
#   (HIST,    base, unit scale x scale, 1/rate (weight), buckets, statsd type, native)
#             native: None, or (slot of its native block, positive slots, negative slots)
#   (GAUGE,   base, scale, None, None, statsd type)       (scale: a mapping rule's `scale`)
#   (SET, base) | (DROP, reason) | (ERROR, reason) | (PENDING, target, key, metric name)
#   (WATCH, entry, metric name, family, labels): a tagless sample in "tagged" mode, applied as
#   `entry`, and a sign that Airflow's tags may have been turned off
#   (LEGACY, metric name): a legacy sample in "tagged" mode, dropped (legacy_twin), its time noted; such
#   keys are not in `cache` but in `legacy` (the key's 64-bit hash -> the metric's name), at a quarter of
#   the memory: at 10,000 DAGs x 10 tasks they are 600k keys of the 1.2M
#   (TAGLESS, metric name): a tagless sample in "plain" mode, dropped (tagless_twin), counted as evidence
#   (CANDIDATE, target, key, metric name): a tagged sample in "plain" mode, held as evidence (see _candidate)
#   (TIMER, HIST entry in milliseconds, HIST entry in seconds, DogStatsD-tagged): a line of an Airflow
#   metric timed with Stats.timer(), whose unit each line's value tells (see _timer_unit)
COUNTER, GAUGE, HIST, SET, DROP, ERROR, PENDING, WATCH, LEGACY, TAGLESS, CANDIDATE, TIMER = range(12)
_KIND = {"counter": COUNTER, "gauge": GAUGE, "histogram": HIST}
PENDING_MAX_AGE = 1.0  # seconds a first legacy or tagless sample waits for its twin
PENDING_MAX = 20_000  # samples of one metric held at most; then its mode is decided at once
EVIDENCE_HELD = 2_000  # tagged samples of one "plain" metric held as evidence at most; then weighed
# A known mode changes only on sustained evidence: over EVIDENCE_WINDOW seconds, at least
# EVIDENCE_MIN samples of the other form and fewer than EVIDENCE_MIN of the counted one. One spoofed
# line a minute cannot hold a metric in the wrong form.
EVIDENCE_WINDOW = 60.0
EVIDENCE_MIN = 5
MAX_SET_MEMBERS = 10_000  # distinct values a statsd set counts; more are dropped (set_cap)
# /-/dropped: the last lines refused or unmapped, kept per (self-metric, reason): at most NOTE_KEEP lines of
# NOTE_BYTES each, one a NOTE_EVERY seconds, so that a flood costs a dict lookup a line and no memory
NOTE_KEEP, NOTE_BYTES, NOTE_EVERY = 20, 300, 1.0
WHOLE_MAX = 50_000  # whole lines remembered (~12 MiB); when full it starts afresh
ENTRY_BYTES = 190  # what a cache entry costs (its key's hash, dict slot, tuple, float), measured
LEGACY_BYTES = 80  # what a legacy twin's key costs in `legacy` (an int and a dict slot)
INF = float("inf")
# Increments the whole-line cache repeats without a check: a series would need 2^971 of them to
# overflow, so only a first, checked add can make it non-finite (refused, reason "overflow")
WHOLE_MAX_STEP = float(2**53)


class Stats:
    """The bridge's own counters; plain ints so that the hot path can bump them cheaply."""

    def __init__(self) -> None:
        self.packets: Counter[str] = Counter()  # by transport
        self.lines = 0
        # by (statsd type, catalog family or ""); a plain dict whose keys are made before the hot
        # path bumps them (Ingest._entry), so that counting a line costs one dict store
        self.samples: dict[tuple[str, str], int] = {("s", ""): 0}
        self.parse_errors: Counter[str] = Counter()  # by reason
        self.dropped: Counter[str] = Counter()  # by reason
        self.cache_misses = 0
        self.unmapped = 0
        self.series_expired = 0
        self.internal_errors: Counter[str] = Counter()  # by exception type
        self.socket_errors: Counter[str] = Counter()  # by reason (emfile, too_many_connections...)
        self.mode_switches: Counter[tuple[str, str]] = Counter()  # (catalog metric, new mode)
        self.labels_dropped: Counter[str] = Counter()  # tags removed from a line that is kept, by reason


def _base(e: tuple) -> int | None:
    """Where the series an entry writes lives (None: it writes none)."""
    while e[0] is WATCH or e[0] is TIMER:
        e = e[1]
    return e[1] if e[0] <= SET else None


def _const(kind: int, reason: str, _memo: dict = {}) -> tuple:  # noqa: B006 - a deliberate memo
    """One shared tuple per (DROP|ERROR, reason): the cache holds many of them."""
    return _memo.setdefault((kind, reason), (kind, reason))


class Ingest:
    def __init__(self, mapper: Mapper, store: Store, *, airflow_tags: str = "auto",
                 max_packet: int = 65535, cache_bytes: int = 96 << 20, relay=None,
                 dogstatsd_timer_unit: str = "auto") -> None:
        if airflow_tags not in ("auto", "on", "off"):
            raise ValueError("airflow_tags must be auto, on or off")
        if dogstatsd_timer_unit not in ("auto", "s", "ms"):
            raise ValueError("dogstatsd_timer_unit must be auto, s or ms")
        # Airflow 3.x's DogStatsD client sends what it times with Stats.timer() in seconds while
        # labelling it |ms (datadog's `timed` without use_ms; Airflow issue 72110); the plain and
        # InfluxDB clients (the `statsd` package) send milliseconds. auto: each line says which (see
        # _timer_unit), so an Airflow switched between modes is read right at once; s / ms pin it.
        self.timer_unit = dogstatsd_timer_unit
        self.timer_seconds: bool | None = None  # the unit of the last timer() line: None before the first
        self.timer_told: set[bool] = set()  # changes of unit logged (once each way)
        self.mapper = mapper
        self.store = store
        self.vals = store.vals
        self.stats = Stats()
        self.max_packet = max_packet
        self.cache_bytes = cache_bytes
        self.cache_used = 0
        self.relay = relay
        self.pinned = {"on": "tagged", "off": "plain"}.get(airflow_tags)
        self.mode: dict[str, str] = {}  # catalog metric name -> tagged | plain
        self.pending: dict[str, deque] = {}  # catalog metric name -> [(target, key, values, t)]
        self._sample_tags: dict[tuple[str, str], tuple[str, str]] = {}  # one tuple per (type, family)
        self.held_forms: dict[str, set[str]] = {}  # catalog metric name -> forms in `pending` (O(1) _held)
        # (base, seconds, weight) of each timer sample, for a Datadog sink that sends real
        # percentiles; None unless one asked for them (monitor/bridge/datadog.py)
        self.timer_samples: deque | None = None
        self.legacy_seen: dict[str, float] = {}  # catalog metric -> last legacy sample dropped in "tagged" mode
        # evidence for a change of form (see EVIDENCE_WINDOW): tagless samples dropped in "plain" mode
        # and tagless samples counted in "tagged" mode (by sample tag), per catalog metric
        self.tagless_seen: Counter[str] = Counter()
        self.watched: Counter = Counter()
        self.relearn: dict[str, tuple[float, int]] = {}  # metric -> (since, tagged samples then): to plain
        self.gain: dict[str, tuple] = {}  # metric -> (since, tagless then, held samples, family): to tagged
        # the 64-bit hash of a line's key (the raw line minus its value: `name[tags]` + `|type...`) -> entry.
        # A hash and not the key: the key's bytes were two thirds of the cache's memory (10,000 DAGs x 10
        # tasks make 670k keys). Two keys alike in their hash are not to be met: the hash is Python's
        # SipHash of the bytes under the process' random seed, so a sender cannot aim for a collision, and
        # 1.24M keys collide with a chance of 1 in 10 million
        self.cache: dict[int, tuple] = {}
        # hash of the key of a legacy twin dropped in "tagged" mode -> its catalog metric's name (the same
        # hash: a line whose hash were a legacy twin's would be dropped as one)
        self.legacy: dict[int, str] = {}
        self._shared: dict = {}  # one copy of the numbers and tuples many entries hold
        # whole counter and gauge lines -> (base, increment or value, is increment, type): Airflow
        # repeats them to the byte (`...open_slots:32|g`, `...:1|c`); cleared whenever `cache` is
        self.whole: dict[bytes, tuple] = {}
        # the last lines refused or unmapped (see NOTE_KEEP): (metric, reason) -> deque of (unix time, line)
        self.recent: dict[tuple[str, str], deque] = {}
        self.noted_at: dict[tuple[str, str], float] = {}  # (metric, reason) -> when a line may be kept next

    # ------------------------------------------------------------------ hot path
    def handle(self, data: bytes, transport: str = "udp", now: float | None = None) -> None:
        self.handle_many((data,), transport, now)

    def handle_many(self, packets, transport: str = "udp", now: float | None = None) -> None:
        """Ingest datagrams (or TCP chunks of whole lines) received together."""
        st = self.stats
        st.packets[transport] += len(packets)
        if now is None:
            now = time.monotonic()
        cache = self.cache
        V = self.vals
        if transport != "tcp" and packets and max(map(len, packets)) > self.max_packet:  # TCP is a stream, not packets
            kept = [p for p in packets if len(p) <= self.max_packet]
            st.parse_errors["oversized_packet"] += len(packets) - len(kept)
            packets = kept
        if self.relay is not None:
            for data in packets:
                self.relay.send(data)
        # one split for the whole batch: datagrams end lines as newlines do
        lines = (b"\n".join(packets) if len(packets) > 1 else packets[0] if packets else b"").split(b"\n")
        st.lines += len(lines)
        whole = self.whole
        legacy = self.legacy
        samples = st.samples
        legacy_seen = self.legacy_seen
        tagless_seen = self.tagless_seen
        timers = self.timer_samples
        noted_at = self.noted_at
        # Airflow's twins are half its traffic: whether one may be kept for /-/dropped is decided per batch
        # (`now` is the batch's), so that a dropped twin costs no lookup
        note_legacy = now >= noted_at.get(("dropped", "legacy_twin"), 0.0)
        note_tagless = now >= noted_at.get(("dropped", "tagless_twin"), 0.0)
        for line in lines:
            w = whole.get(line)
            if w is not None:  # a counter or gauge line seen before, to the byte: no parsing at all
                b = w[0]
                if w[2]:
                    V[b + 1] += w[1]
                else:
                    V[b + 1] = w[1]
                V[b] = now
                samples[w[3]] += 1
                continue
            if not line:
                st.lines -= 1
                continue
            i = line.find(b":")
            j = line.find(b"|", i + 1)
            if i <= 0 or j < 0:
                if line.rstrip():
                    st.parse_errors["malformed_line"] += 1
                    self.note("parse_errors", "malformed_line", line, now)
                continue
            key = line[:i] + line[j:]
            h = hash(key)
            e = cache.get(h)
            vals = line[i + 1 : j]
            if e is None:
                m = legacy.get(h)
                if m is not None:  # a legacy twin in "tagged" mode
                    st.dropped["legacy_twin"] += 1
                    legacy_seen[m] = now
                    continue
                try:
                    self._miss(line[:i], line[j + 1 :], key, vals, now)
                except Exception as err:  # a bug must cost one line, never the process
                    self._internal(err)
                continue
            try:
                kind = e[0]
                if kind is COUNTER:
                    v = float(vals)
                    if not 0.0 <= v < 1e300:  # negative, nan or inf: the slow path says which
                        raise ValueError
                    b = e[1]
                    x = V[b + 1] + v * e[2]
                    if not x < INF:  # +Inf or NaN: refused (overflow), never stored
                        raise ValueError
                    V[b + 1] = x
                    V[b] = now
                    if v * e[2] <= WHOLE_MAX_STEP:
                        if len(whole) >= WHOLE_MAX:
                            whole.clear()
                        whole[line] = (b, v * e[2], True, e[5])
                elif kind is HIST:
                    v = float(vals) * e[2]
                    b = e[1]
                    w = e[3]
                    x = V[b + 1] + v * w
                    if not (-INF < x < INF and V[b + 2] + w < INF):  # nan, inf, or an overflow
                        raise ValueError
                    V[b + 1] = x
                    V[b + 2] += w
                    V[b + 3 + bisect_left(e[4], v)] += w
                    if e[6] is not None:
                        n = e[6]
                        observe(V, b + n[0], n[1], n[2], v, w)
                    V[b] = now
                    if timers is not None:
                        timers.append((b, v, w))
                elif kind is GAUGE:
                    v = float(vals) * e[2]
                    if not -1e300 < v < 1e300:
                        raise ValueError
                    b = e[1]
                    delta = vals[:1] in (b"+", b"-")
                    if delta:
                        x = V[b + 1] + v
                        if not -INF < x < INF:
                            raise ValueError
                        V[b + 1] = x
                    else:
                        V[b + 1] = v
                    V[b] = now
                    if not delta or -WHOLE_MAX_STEP <= v <= WHOLE_MAX_STEP:
                        if len(whole) >= WHOLE_MAX:
                            whole.clear()
                        whole[line] = (b, v, delta, e[5])
                elif kind is DROP:
                    st.dropped[e[1]] += 1
                    if now >= noted_at.get(("dropped", e[1]), 0.0):
                        self.note("dropped", e[1], line, now)
                    continue
                elif kind is TAGLESS:
                    st.dropped["tagless_twin"] += 1
                    tagless_seen[e[1]] += 1
                    if note_tagless:
                        self.note("dropped", "tagless_twin", line, now)
                        note_tagless = False
                    continue
                elif kind is LEGACY:
                    st.dropped["legacy_twin"] += 1
                    legacy_seen[e[1]] = now
                    if note_legacy:
                        self.note("dropped", "legacy_twin", line, now)
                        note_legacy = False
                    continue
                elif kind is ERROR:
                    st.parse_errors[e[1]] += 1
                    if now >= noted_at.get(("parse_errors", e[1]), 0.0):
                        self.note("parse_errors", e[1], line, now)
                    continue
                else:
                    self._slow(e, vals, now)
                    continue
            except ValueError:  # multi-value, nan/inf, overflow or garbage: the careful path says which
                try:
                    self._slow(e, vals, now)
                except Exception as err:
                    self._internal(err)
                continue
            except Exception as err:  # a bug must cost one line, never the process
                self._internal(err)
                continue
            samples[e[5]] += 1

    # ------------------------------------------------------------------ slow path
    def note(self, metric: str, reason: str, line: bytes, now: float) -> None:
        """Keep a line refused or unmapped for /-/dropped, at most one a NOTE_EVERY seconds per reason."""
        k = (metric, reason)
        if now < self.noted_at.get(k, 0.0):
            return
        if len(self.noted_at) > 1000:  # reasons are few; `unmapped` is per family: bounded all the same
            self.noted_at.clear()
            self.recent.clear()
        self.noted_at[k] = now + NOTE_EVERY
        ring = self.recent.get(k)
        if ring is None:
            ring = self.recent[k] = deque(maxlen=NOTE_KEEP)
        ring.append((time.time(), line[:NOTE_BYTES].decode("utf-8", "replace")))

    def recent_dropped(self) -> list[dict]:
        """What /-/dropped shows: per (self-metric, reason), how many in all and the last lines kept."""
        st = self.stats
        totals = {"dropped": st.dropped, "parse_errors": st.parse_errors, "unmapped": None}
        out = []
        for (metric, reason), ring in sorted(self.recent.items()):
            counter = totals.get(metric)
            out.append({"metric": metric, "reason": reason,
                        "count": counter.get(reason, 0) if counter is not None else None,
                        "lines": [{"at": t, "line": text} for t, text in list(ring)]})
        return out

    def _internal(self, err: Exception) -> None:
        kind = type(err).__name__
        if not self.stats.internal_errors[kind]:
            log.exception("unexpected error handling a statsd line (logged once per kind): %s", err)
        self.stats.internal_errors[kind] += 1

    def _miss(self, head: bytes, tail: bytes, ckey: bytes, vals: bytes, now: float) -> None:
        """A line whose key is not cached: check its value(s) before anything is created for it,
        so that a rejected sample leaves no series behind; then resolve, cache and apply."""
        st = self.stats
        st.cache_misses += 1
        try:
            key = parse_key(head, tail)
        except ParseError as err:
            self._cache(ckey, _const(ERROR, err.reason))
            st.parse_errors[err.reason] += 1
            self.note("parse_errors", err.reason, head + b":" + vals + b"|" + tail, now)
            return
        try:
            values = parse_values(vals, key.type) if key.type != "s" else None
        except ParseError as err:
            st.parse_errors[err.reason] += 1
            self.note("parse_errors", err.reason, head + b":" + vals + b"|" + tail, now)
            return
        if values is not None and key.type == "c" and any(v < 0 for v, _ in values):
            st.parse_errors["negative_counter"] += 1
            self.note("parse_errors", "negative_counter", head + b":" + vals + b"|" + tail, now)
            return
        e = self._resolve(key, ckey, now)
        if e[0] is DROP or e[0] is LEGACY or e[0] is TAGLESS:
            self.note("dropped", e[1] if e[0] is DROP else "legacy_twin" if e[0] is LEGACY else "tagless_twin",
                      head + b":" + vals + b"|" + tail, now)
        if e[0] is PENDING and values is None:  # a set under a legacy Airflow name: not Airflow's
            st.dropped["conflict"] += 1
        elif e[0] is PENDING:
            self._pend(e[3], e[1], e[2], self._held_values(e[1], e[2], vals, values), now)
        elif e[0] is SET or e[0] is WATCH or e[0] is CANDIDATE or e[0] is TAGLESS or e[0] is TIMER:
            self._slow(e, vals, now)
        else:
            self._apply(e, values, now)

    def _slow(self, e: tuple, vals: bytes, now: float) -> None:
        st = self.stats
        kind = e[0]  # SET, PENDING, or a COUNTER/HIST/GAUGE line the hot path could not take
        if kind is SET:
            members = self.store.sets.setdefault(e[1], set())
            if len(members) < MAX_SET_MEMBERS and len(vals) <= 256:
                members.add(vals)
            elif vals not in members:
                st.dropped["set_cap"] += 1
            self.vals[e[1] + 1] = float(len(members))
            self.vals[e[1]] = now
            st.samples["s", ""] += 1
            return
        if kind is TIMER:
            seconds = self._timer_unit(vals, e[3])
            try:
                values = parse_values(vals, "ms")
            except ParseError as err:
                st.parse_errors[err.reason] += 1
                return
            self._apply(e[2] if seconds else e[1], values, now)
            return
        if kind is WATCH:
            _, inner, mname, family, labels = e
            counted = inner[1] if inner[0] is TIMER else inner  # a timer's entries share their sample tag
            tag = counted[5] if len(counted) > 5 else None
            if inner[0] is DROP:
                st.dropped[inner[1]] += 1
            else:  # counted (its legacy twin, just before it, was dropped), then maybe the switch
                before = st.samples.get(tag, 0)
                self._slow(inner, vals, now)
                self.watched[tag] += st.samples.get(tag, 0) - before
            if self._tags_stopped(mname, tag, now):
                self._set_mode(mname, "plain")  # clears the cache: the legacy form counts from now on
            return
        if kind is TAGLESS:
            st.dropped["tagless_twin"] += 1
            self.tagless_seen[e[1]] += 1
            return
        if kind is CANDIDATE:
            _, target, key, mname = e
            try:
                values = parse_values(vals, key.type)
            except ParseError as err:
                st.parse_errors[err.reason] += 1
                return
            self._candidate(mname, target, key, self._held_values(target, key, vals, values), now)
            return
        if kind is PENDING:
            _, target, key, mname = e
            try:
                values = parse_values(vals, key.type)
            except ParseError as err:
                st.parse_errors[err.reason] += 1
                return
            self._pend(mname, target, key, self._held_values(target, key, vals, values), now)
            return
        try:
            values = parse_values(vals, e[5][0])
        except ParseError as err:
            st.parse_errors[err.reason] += 1
            return
        self._apply(e, values, now)

    def _apply(self, e: tuple, values: list[tuple[float, bool]], now: float) -> None:
        st = self.stats
        kind = e[0]
        if kind is DROP or kind is ERROR:
            (st.dropped if kind is DROP else st.parse_errors)[e[1]] += len(values or ()) or 1
            return
        if kind is TIMER:  # held back (a twin's first sample): its values were made milliseconds (_held_values)
            e = e[1]
            kind = e[0]
        if kind is LEGACY:
            st.dropped["legacy_twin"] += len(values or ()) or 1
            return
        V, b = self.vals, e[1]
        if kind is SET:  # a held-back legacy sample whose series turned out to be a set
            st.dropped["conflict"] += 1
            return
        for v, delta in values:
            if kind is COUNTER:
                if v < 0:
                    st.parse_errors["negative_counter"] += 1
                    continue
                x = V[b + 1] + v * e[2]
                if not x < INF:
                    st.dropped["overflow"] += 1
                    continue
                V[b + 1] = x
            elif kind is GAUGE:
                v *= e[2]
                x = V[b + 1] + v if delta else v
                if not -INF < x < INF:
                    st.dropped["overflow"] += 1
                    continue
                V[b + 1] = x
            elif kind is HIST:
                v *= e[2]
                x = V[b + 1] + v * e[3]
                if not (-INF < x < INF and V[b + 2] + e[3] < INF):
                    st.dropped["overflow"] += 1
                    continue
                V[b + 1] = x
                V[b + 2] += e[3]
                V[b + 3 + bisect_left(e[4], v)] += e[3]
                if e[6] is not None:
                    observe(V, b + e[6][0], e[6][1], e[6][2], v, e[3])
                if self.timer_samples is not None:
                    self.timer_samples.append((b, v, e[3]))
            V[b] = now
            st.samples[e[5]] += 1

    def _resolve(self, key: Key, ckey: bytes, now: float) -> tuple:
        """Map a parsed key once; cache what to do with its values."""
        st = self.stats
        target = self.mapper.map(key)
        if target.form == "unmapped":
            st.unmapped += 1
            if target.kind != "drop":  # exported: a user's metric that "does not show up" may be under this name
                self.note("unmapped", f"exported as {target.family}", ckey, now)
        if target.kind == "drop":
            return self._cache(ckey, _const(DROP, target.reason))
        m = target.metric
        if m is not None and target.form in ("modern", "legacy", "twin"):
            mode = self.pinned or self.mode.get(m.name)
            if target.form == "modern" and mode is None:  # a first sample: learnt at once
                self._set_mode(m.name, "tagged")
            elif target.form == "modern" and mode == "plain":
                if self.pinned:
                    return self._cache(ckey, _const(DROP, "tagged_twin"))
                return self._cache(ckey, (CANDIDATE, target, key, m.name))  # evidence, see _candidate
            elif target.form == "legacy":
                if mode is None and self._held(m.name, "twin"):  # its tagless twin came first
                    self._set_mode(m.name, "plain")
                    mode = "plain"
                if mode == "tagged":
                    self.legacy_seen[m.name] = now
                    return self._cache_legacy(ckey, m.name)
                if mode is None:
                    return (PENDING, target, key, m.name)  # not cached: decided by its twin
            elif target.form == "twin":
                if mode is None and self._held(m.name, "legacy"):
                    self._set_mode(m.name, "plain")
                    mode = "plain"
                if mode == "plain":
                    return self._cache(ckey, _const(DROP, "tagless_twin") if self.pinned else (TAGLESS, m.name))
                if mode is None:  # held too, in case its legacy twin follows (dependency-check does)
                    return (PENDING, target, key, m.name)
                if not self.pinned:  # "tagged", learned: watch for Airflow's tags being turned off
                    return self._cache(ckey, (WATCH, self._entry(target, key, now), m.name, target.family,
                                              target.labels))
        return self._cache(ckey, self._entry(target, key, now))

    def _tags_stopped(self, mname: str, tag, now: float) -> bool:
        """A tagless sample in "tagged" mode: is its legacy twin arriving too (the pair Airflow sends
        without tags), while the tagged samples have stopped? True once fewer than EVIDENCE_MIN tagged
        samples (the family's accepted samples less the tagless ones) arrived over EVIDENCE_WINDOW
        seconds since the first such tagless sample; a tagged line now and then does not hold it."""
        if tag is None or now - self.legacy_seen.get(mname, float("-inf")) > 10.0:
            return False  # the tagless form alone is how Airflow sends this metric
        tagged = self.stats.samples.get(tag, 0) - self.watched[tag]
        ev = self.relearn.get(mname)
        if ev is None or now - ev[0] >= EVIDENCE_WINDOW and tagged - ev[1] >= EVIDENCE_MIN:
            self.relearn[mname] = (now, tagged)  # the evidence starts (again) here
            return False
        return now - ev[0] >= EVIDENCE_WINDOW

    def _candidate(self, mname: str, target: Target, key: Key, values: list, now: float) -> None:
        """A tagged sample of a metric counted in its legacy form ("plain"): evidence that Airflow's
        tags were turned on, held until the evidence is weighed (_weigh)."""
        ev = self.gain.get(mname)
        if ev is None:
            ev = self.gain[mname] = (now, self.tagless_seen[mname], deque(), target.family)
        ev[2].append((target, key, values, now))
        self._weigh(mname, now)

    def _weigh(self, mname: str, now: float) -> None:
        """After EVIDENCE_WINDOW seconds (or EVIDENCE_HELD samples), switch a "plain" metric to its
        tagged form if at least EVIDENCE_MIN tagged samples came and fewer than EVIDENCE_MIN tagless
        ones (Airflow sends one or the other). The held samples are then dropped if the legacy form
        moved meanwhile (their twins counted the events), else counted (legacy names are off)."""
        ev = self.gain.get(mname)
        if ev is None or (now - ev[0] < EVIDENCE_WINDOW and len(ev[2]) < EVIDENCE_HELD):
            return
        del self.gain[mname]
        start, tagless, held, family = ev
        # the legacy twin of the first held sample came just before it (Airflow sends the legacy form first)
        twins = self._moved(family, start - PENDING_MAX_AGE)
        if len(held) >= EVIDENCE_MIN and self.tagless_seen[mname] - tagless < EVIDENCE_MIN:
            self._set_mode(mname, "tagged")
        for target, key, values, t in held:
            if twins:
                self.stats.dropped["tagged_twin"] += len(values)
            else:
                self._apply(self._entry(target, key, t), values, t)

    def _moved(self, family: str, since: float) -> bool:
        """Has any series of the family been updated since `since`?"""
        fam = self.store.families.get(family)
        V = self.vals
        return fam is not None and any(V[b] >= since for b in list(fam.series.values()))

    @property
    def timers_in_seconds(self) -> bool:
        """Whether the last of Airflow's timer() lines was read as seconds (see __init__)."""
        return self.timer_unit == "s" or (self.timer_unit == "auto" and bool(self.timer_seconds))

    def _held_values(self, target: Target, key: Key, vals: bytes, values: list) -> list:
        """Values of a sample held back (a twin's first, or evidence), in the unit its entry will read:
        a timer() line that came in seconds is held in milliseconds, since its raw text is not kept."""
        m = target.metric
        if (key.type == "ms" and m is not None and m.timer_call and not m.sent_in_seconds and self.timer_unit == "auto"
                and key.style in ("", "dogstatsd") and self._timer_unit(vals, key.style == "dogstatsd")):
            return [(v * 1000.0, d) for v, d in values]
        return values

    def _timer_unit(self, vals: bytes, dogstatsd: bool) -> bool:
        """Is this line of a Stats.timer() metric in seconds? Airflow's two clients write it differently:
        the `statsd` package (plain and InfluxDB modes) sends milliseconds as `%0.6f` (`31.234567|ms`), the
        DogStatsD client sends seconds as Python writes a float (`0.031234567000000002|ms`), with `|#` when
        the line has tags. A whole number is milliseconds (a DogStatsD client with use_ms, an Airflow
        that fixed it). A change of what arrives is logged once each way."""
        v = vals.split(b":", 1)[0].lstrip(b"+-")
        whole, dot, frac = v.partition(b".")
        if not dot and whole.isdigit():
            seconds = False
        elif dogstatsd:
            seconds = True
        else:
            seconds = not (whole.isdigit() and len(frac) == 6 and frac.isdigit())
        if seconds is not self.timer_seconds:
            if self.timer_seconds is not None and seconds not in self.timer_told:
                self.timer_told.add(seconds)
                log.warning("Airflow's timer() metrics (scheduler loop, critical section, dependency check...) now "
                            "arrive %s, and are read so (logged once each way)",
                            "in seconds labelled ms, as Airflow's DogStatsD client sends them" if seconds else
                            "in milliseconds, as Airflow's statsd client (plain or InfluxDB) sends them")
            elif self.timer_seconds is None:
                log.info("Airflow's timer() metrics arrive in %s", "seconds labelled ms (DogStatsD)" if seconds
                         else "milliseconds (statsd)")
            self.timer_seconds = seconds
        return seconds

    def _entry(self, target: Target, key: Key, now: float) -> tuple:
        labels = target.labels
        if label_problem(labels, target.kind):  # a reserved tag goes, the sample stays
            labels = tuple(p for p in labels if not label_problem((p,), target.kind))
            self.stats.labels_dropped["reserved_label"] += 1
        try:
            base = self.store.series(target.family, target.kind, labels, target.help,
                                     target.buckets, target.ttl, now, target.native)
        except Drop as d:
            return _const(DROP, d.reason)
        if key.type == "s":
            return (SET, base)
        # what the line counts as: its type and, for Airflow's metrics, the catalog family, so that
        # a metric that stops arriving shows (airflow_monitor_bridge_metric_samples_total)
        tag = (key.type, target.metric.prometheus if target.metric is not None else "")
        tag = self._sample_tags.setdefault(tag, tag)
        self.stats.samples.setdefault(tag, 0)
        kind = _KIND[target.kind]
        one = self._shared.setdefault
        if kind is COUNTER:
            x = target.mult / key.rate
            return (COUNTER, base, one(x, x), None, None, tag)
        if kind is HIST:
            m = target.metric
            nat = target.native
            if nat is not None:
                nat = (3 + len(target.buckets) + 1, nat[1], nat[2])
                nat = one(nat, nat)
            w = 1.0 / key.rate
            w = one(w, w)

            def hist(scale: float) -> tuple:
                x = scale * target.mult
                return (HIST, base, one(x, x), w, target.buckets, tag, nat)

            if key.type != "ms" or m is None or not (m.timer_call or m.sent_in_seconds):
                return hist(target.scale)
            ms, s = hist(0.001), hist(1.0)
            if m.sent_in_seconds or (self.timer_unit == "s"):  # Stats.timing() of seconds: every mode
                return s
            if self.timer_unit == "ms" or key.style not in ("", "dogstatsd"):  # InfluxDB: the statsd client
                return ms
            return (TIMER, ms, s, key.style == "dogstatsd")
        return (GAUGE, base, target.mult, None, None, tag)

    def _cache(self, ckey: bytes, entry: tuple) -> tuple:
        """Cache an entry within the byte budget; when full, the oldest tenth goes."""
        self.cache_used += ENTRY_BYTES
        if self.cache_used > self.cache_bytes:
            self._evict()
        self.cache[hash(ckey)] = entry
        return entry

    def _cache_legacy(self, ckey: bytes, mname: str, _memo: dict = {}) -> tuple:  # noqa: B006 - a memo
        """A legacy twin's key, remembered by its hash (see `legacy`)."""
        self.cache_used += LEGACY_BYTES
        if self.cache_used > self.cache_bytes:
            self._evict()
        self.legacy[hash(ckey)] = mname
        return _memo.setdefault(mname, (LEGACY, mname))

    def _evict(self) -> None:
        """The budget is spent: the oldest tenth of the cache (and of the legacy keys) goes."""
        cache = self.cache
        for k in list(islice(cache, max(1, len(cache) // 10))):
            del cache[k]
            self.cache_used -= ENTRY_BYTES
        legacy = self.legacy
        for h in list(islice(legacy, len(legacy) // 10)):
            del legacy[h]
            self.cache_used -= LEGACY_BYTES
        self.whole.clear()

    def _clear_cache(self) -> None:
        self.cache.clear()
        self.legacy.clear()
        self.whole.clear()
        self.cache_used = 0

    # ------------------------------------------------------------------ twin learning
    def _set_mode(self, mname: str, mode: str) -> None:
        if self.mode.get(mname) == mode:
            return
        before = self.mode.get(mname)
        if before is None:  # the usual first decision: not news at the default level
            log.debug("metric %s: its %s counts", mname, "legacy form" if mode == "plain" else
                      "tagged (or lone tagless) form")
        else:
            self.stats.mode_switches[(mname, mode)] += 1
            if self.stats.mode_switches[(mname, mode)] == 1:
                log.warning("metric %s: now counting its %s (logged once per metric and direction)", mname,
                            f"tagged form: Airflow sends tags again (tagged samples over {EVIDENCE_WINDOW:.0f}s, "
                            "its tagless form stopped)" if mode == "tagged" else
                            f"legacy form: fewer than {EVIDENCE_MIN} tagged samples in {EVIDENCE_WINDOW:.0f}s "
                            "while tagless ones arrive with their legacy twins (Airflow's statsd tags were "
                            "turned off)")
        self.mode[mname] = mode
        self.relearn.pop(mname, None)
        # while a metric's mode is unknown none of its forms is cached (see _resolve), so only a
        # change of a known mode invalidates cached decisions
        if before is not None:
            self._clear_cache()
        self.held_forms.pop(mname, None)
        for target, key, values, t in self.pending.pop(mname, ()):
            keep = (target.form == "legacy") == (mode == "plain")
            if keep:
                self._apply(self._entry(target, key, t), values, t)
            else:
                self.stats.dropped["legacy_twin" if target.form == "legacy" else "tagless_twin"] += len(values)

    def _held(self, mname: str, form: str) -> bool:
        return form in self.held_forms.get(mname, ())

    def _pend(self, mname: str, target: Target, key: Key, values: list, now: float) -> None:
        waiting = self.pending.setdefault(mname, deque())
        waiting.append((target, key, values, now))
        self.held_forms.setdefault(mname, set()).add(target.form)
        if len(waiting) >= PENDING_MAX:  # a flood of one form and no twin: decide now, as in a second
            self._settle(mname, waiting)

    def _settle(self, mname: str, waiting: deque) -> None:
        """Its twin never came within the pair's time: the form that came alone is the one Airflow
        sends (legacy names off, or an allow list), and holds its samples."""
        try:
            self._set_mode(mname, "plain" if waiting[0][0].form == "legacy" else "tagged")
        except Exception as err:
            self._internal(err)
            self.pending.pop(mname, None)
            self.held_forms.pop(mname, None)

    def housekeeping(self, now: float | None = None) -> set[int]:
        """Release held samples whose twin never came, and expire idle series; returns the bases
        of the series freed (for other caches that point at them: OTLP's)."""
        if now is None:
            now = time.monotonic()
        for mname in list(self.pending):
            waiting = self.pending[mname]
            if waiting and now - waiting[0][3] > PENDING_MAX_AGE:
                self._settle(mname, waiting)
        for mname in list(self.gain):
            try:
                self._weigh(mname, now)
            except Exception as err:
                self.gain.pop(mname, None)
                self._internal(err)
        for line in self.store.usage((("mapper cache bytes", self.cache_used, self.cache_bytes, "--cache-bytes",
                                        "its oldest tenth is forgotten, and parsed again as it comes (CPU)"),)):
            log.warning("%s", line)
        freed = self.store.expire(now)
        if freed:
            self.stats.series_expired += len(freed)
            # entries that point at a freed series must go before its slots are reused
            dead = [k for k, e in self.cache.items() if _base(e) in freed]
            for k in dead:
                del self.cache[k]
                self.cache_used -= ENTRY_BYTES
            self.whole.clear()
        return freed

    def reload(self, mapper: Mapper) -> None:
        self.mapper = mapper
        self._clear_cache()
