"""Ingest: packets -> lines -> cached (parse + map + series) -> store update. The hot path.

Each distinct (name+embedded tags, type+rate+tags) is parsed and mapped once; the cache then
holds a ready action, so a known line costs a split, a dict lookup, float() and an add.

Tagged and legacy twins: Airflow sends every metric that has a legacy name twice, e.g.
`ti.finish.<dag>.<task>.<state>` and `ti.finish`. With plain statsd the second form carries no
ids; with DogStatsD/InfluxDB tags it carries the real ids (and the legacy form mangled ones).
Per catalog metric the bridge learns which form is authoritative and counts only that one:
  - a tagged form with its ids arrives   -> mode "tagged": legacy forms are dropped (legacy_twin)
  - a tagless form follows a legacy form  -> mode "plain": the tagless form is dropped (tagless_twin)
Until a metric's mode is known its first legacy sample is held back (Airflow sends the pair
back to back), so neither the first event is lost nor counted twice. `airflow_tags` pins it.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import Counter

from monitor.bridge.mapper import Mapper, Target
from monitor.bridge.parse import Key, ParseError, parse_key, parse_values
from monitor.bridge.store import Drop, Store

log = logging.getLogger(__name__)

# Cache entries are tuples, so that the hot path indexes instead of calling:
#   (COUNTER, series, 1/rate, None, None, statsd type)
#   (HIST,    series, unit scale, 1/rate (weight), buckets, statsd type)
#   (GAUGE,   series, None, None, None, statsd type)
#   (SET, series) | (DROP, reason) | (ERROR, reason) | (PENDING, target, key, metric name)
COUNTER, GAUGE, HIST, SET, DROP, ERROR, PENDING = range(7)
_KIND = {"counter": COUNTER, "gauge": GAUGE, "histogram": HIST}
PENDING_MAX_AGE = 1.0  # seconds a first legacy sample waits for its twin


class Stats:
    """The bridge's own counters; plain ints so that the hot path can bump them cheaply."""

    def __init__(self) -> None:
        self.packets: Counter[str] = Counter()  # by transport
        self.lines = 0
        self.samples: Counter[str] = Counter()  # by statsd type
        self.parse_errors: Counter[str] = Counter()  # by reason
        self.dropped: Counter[str] = Counter()  # by reason
        self.cache_misses = 0
        self.unmapped = 0
        self.series_expired = 0


class Ingest:
    def __init__(self, mapper: Mapper, store: Store, *, airflow_tags: str = "auto",
                 max_packet: int = 65535, cache_size: int = 200_000, relay=None) -> None:
        if airflow_tags not in ("auto", "on", "off"):
            raise ValueError("airflow_tags must be auto, on or off")
        self.mapper = mapper
        self.store = store
        self.stats = Stats()
        self.max_packet = max_packet
        self.cache_size = cache_size
        self.relay = relay
        self.pinned = {"on": "tagged", "off": "plain"}.get(airflow_tags)
        self.mode: dict[str, str] = {}  # catalog metric name -> tagged | plain
        self.pending: dict[str, list] = {}  # catalog metric name -> [(target, key, values, t)]
        self.cache: dict[tuple[bytes, bytes], tuple] = {}

    # ------------------------------------------------------------------ hot path
    def handle(self, data: bytes, transport: str = "udp", now: float | None = None) -> None:
        st = self.stats
        st.packets[transport] += 1
        if len(data) > self.max_packet and transport != "tcp":  # TCP is a stream, not packets
            st.parse_errors["oversized_packet"] += 1
            return
        if self.relay is not None:
            self.relay.send(data)
        if now is None:
            now = time.monotonic()
        cache = self.cache
        lines = data.split(b"\n") if b"\n" in data else (data,)
        for line in lines:
            if not line:
                continue
            st.lines += 1
            i = line.find(b":")
            j = line.find(b"|", i + 1)
            if i <= 0 or j < 0:
                if line.rstrip():
                    st.parse_errors["malformed_line"] += 1
                continue
            head = line[:i]
            tail = line[j + 1 :]
            e = cache.get((head, tail))
            if e is None:
                e = self._resolve(head, tail, now)
            kind = e[0]
            vals = line[i + 1 : j]
            try:
                if kind is COUNTER:
                    v = float(vals)
                    if not 0.0 <= v < 1e300:  # negative, nan or inf: the slow path says which
                        raise ValueError
                    s = e[1]
                    s[0] += v * e[2]
                    s[1] = now
                elif kind is HIST:
                    v = float(vals) * e[2]
                    if not -1e300 < v < 1e300:
                        raise ValueError
                    s = e[1]
                    w = e[3]
                    s[0] += v * w
                    s[2] += w
                    s[3][bisect_left(e[4], v)] += w
                    s[1] = now
                elif kind is GAUGE:
                    v = float(vals)
                    if not -1e300 < v < 1e300:
                        raise ValueError
                    s = e[1]
                    if vals[:1] in (b"+", b"-"):
                        s[0] += v
                    else:
                        s[0] = v
                    s[1] = now
                elif kind is DROP:
                    st.dropped[e[1]] += 1
                    continue
                elif kind is ERROR:
                    st.parse_errors[e[1]] += 1
                    continue
                else:
                    self._slow(e, vals, now)
                    continue
            except ValueError:  # multi-value, nan/inf or garbage: take the careful path
                self._slow(e, vals, now)
                continue
            st.samples[e[5]] += 1

    # ------------------------------------------------------------------ slow path
    def _slow(self, e: tuple, vals: bytes, now: float) -> None:
        st = self.stats
        kind = e[0]  # SET, PENDING, or a COUNTER/HIST/GAUGE line the hot path could not take
        if kind is SET:
            s = e[1]
            if len(s[2]) < 100_000:
                s[2].add(vals)
            s[0] = float(len(s[2]))
            s[1] = now
            st.samples["s"] += 1
            return
        if kind is PENDING:
            _, target, key, mname = e
            try:
                values = parse_values(vals, key.type)
            except ParseError as err:
                st.parse_errors[err.reason] += 1
                return
            self._pend(mname, target, key, values, now)
            return
        try:
            values = parse_values(vals, e[5])
        except ParseError as err:
            st.parse_errors[err.reason] += 1
            return
        self._apply(e, values, now)

    def _apply(self, e: tuple, values: list[tuple[float, bool]], now: float) -> None:
        st = self.stats
        kind, s = e[0], e[1]
        for v, delta in values:
            if kind is COUNTER:
                if v < 0:
                    st.parse_errors["negative_counter"] += 1
                    continue
                s[0] += v * e[2]
            elif kind is GAUGE:
                s[0] = s[0] + v if delta else v
            elif kind is HIST:
                v *= e[2]
                s[0] += v * e[3]
                s[2] += e[3]
                s[3][bisect_left(e[4], v)] += e[3]
            s[1] = now
            st.samples[e[5]] += 1

    def _resolve(self, head: bytes, tail: bytes, now: float) -> tuple:
        """Parse and map a line's key once; cache what to do with its values."""
        st = self.stats
        st.cache_misses += 1
        try:
            key = parse_key(head, tail)
        except ParseError as err:
            return self._cache(head, tail, (ERROR, err.reason))
        target = self.mapper.map(key)
        if target.form == "unmapped":
            st.unmapped += 1
        if target.kind == "drop":
            return self._cache(head, tail, (DROP, target.reason))
        m = target.metric
        if m is not None and target.form in ("modern", "legacy", "twin"):
            mode = self.pinned or self.mode.get(m.name)
            if target.form == "modern" and mode != "tagged":
                self._set_mode(m.name, "tagged")
            elif target.form == "legacy":
                if mode == "tagged":
                    return self._cache(head, tail, (DROP, "legacy_twin"))
                if mode is None:
                    return (PENDING, target, key, m.name)  # not cached: decided by its twin
            elif target.form == "twin":
                if mode is None and self.pending.get(m.name):
                    self._set_mode(m.name, "plain")
                    mode = "plain"
                if mode == "plain":
                    return self._cache(head, tail, (DROP, "tagless_twin"))
                if mode is None:
                    # no legacy twin seen (legacy names off): keep it, ids unknown; decide later
                    return self._entry(target, key, now)
        return self._cache(head, tail, self._entry(target, key, now))

    def _entry(self, target: Target, key: Key, now: float) -> tuple:
        try:
            s = self.store.series(target.family, target.kind, target.labels, target.help,
                                  target.buckets, target.ttl, now)
        except Drop as d:
            return (DROP, d.reason)
        if key.type == "s":
            if len(s) == 2:
                s.append(set())
            return (SET, s)
        kind = _KIND[target.kind]
        if kind is COUNTER:
            return (COUNTER, s, 1.0 / key.rate, None, None, key.type)
        if kind is HIST:
            return (HIST, s, target.scale, 1.0 / key.rate, target.buckets, key.type)
        return (GAUGE, s, None, None, None, key.type)

    def _cache(self, head: bytes, tail: bytes, entry: tuple) -> tuple:
        if len(self.cache) >= self.cache_size:
            self.cache.clear()
        self.cache[(head, tail)] = entry
        return entry

    # ------------------------------------------------------------------ twin learning
    def _set_mode(self, mname: str, mode: str) -> None:
        if self.mode.get(mname) == mode:
            return
        log.info("metric %s: %s form is authoritative", mname, "tagged" if mode == "tagged" else "legacy")
        self.mode[mname] = mode
        self.cache.clear()  # cached decisions for this metric's forms may change
        for target, key, values, t in self.pending.pop(mname, ()):
            if mode == "plain":
                self._apply(self._entry(target, key, t), values, t)
            else:
                self.stats.dropped["legacy_twin"] += len(values)

    def _pend(self, mname: str, target: Target, key: Key, values: list, now: float) -> None:
        self.pending.setdefault(mname, []).append((target, key, values, now))

    def housekeeping(self, now: float | None = None) -> None:
        """Release legacy samples whose twin never came, and expire idle series."""
        if now is None:
            now = time.monotonic()
        for mname in list(self.pending):
            waiting = self.pending[mname]
            while waiting and now - waiting[0][3] > PENDING_MAX_AGE:
                target, key, values, t = waiting.pop(0)
                self._apply(self._entry(target, key, t), values, t)
            if not waiting:
                self.pending.pop(mname, None)
        expired = self.store.expire(now)
        if expired:
            self.stats.series_expired += expired
            self.cache.clear()

    def reload(self, mapper: Mapper) -> None:
        self.mapper = mapper
        self.cache.clear()
