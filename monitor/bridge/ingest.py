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

The mode follows what arrives: a tagged sample switches a metric to "tagged" at once; a tagless
sample in "tagged" mode (Airflow's tags were turned off) switches it to "plain" once the metric's
tagged series have not moved for RELEARN_AFTER seconds. Each switch is counted
(twin_mode_switches) and logged once per metric and direction.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import Counter, deque
from itertools import islice

from monitor.bridge.mapper import Mapper, Target
from monitor.bridge.parse import Key, ParseError, parse_key, parse_values
from monitor.bridge.store import Drop, Store

log = logging.getLogger(__name__)

# Cache entries are tuples, so that the hot path indexes instead of calling. `base` is where the
# series' slots start in the store's shared array (see store.py for the layout):
#   (COUNTER, base, scale/rate, None, None, statsd type)
#   (HIST,    base, unit scale x scale, 1/rate (weight), buckets, statsd type)
#   (GAUGE,   base, scale, None, None, statsd type)       (scale: a mapping rule's `scale`)
#   (SET, base) | (DROP, reason) | (ERROR, reason) | (PENDING, target, key, metric name)
#   (WATCH, entry, metric name, family, labels): a tagless sample in "tagged" mode, applied as
#   `entry`, and a sign that Airflow's tags may have been turned off
#   (LEGACY, metric name): a legacy sample in "tagged" mode, dropped (legacy_twin), its time noted
COUNTER, GAUGE, HIST, SET, DROP, ERROR, PENDING, WATCH, LEGACY = range(9)
_KIND = {"counter": COUNTER, "gauge": GAUGE, "histogram": HIST}
PENDING_MAX_AGE = 1.0  # seconds a first legacy or tagless sample waits for its twin
PENDING_MAX = 20_000  # samples of one metric held at most; then its mode is decided at once
RELEARN_AFTER = 60.0  # seconds without a tagged sample before a tagless one switches a metric to plain
MAX_SET_MEMBERS = 10_000  # distinct values a statsd set counts; more are dropped (set_cap)
WHOLE_MAX = 50_000  # whole lines remembered (~12 MiB); when full it starts afresh
ENTRY_BYTES = 160  # what a cache entry costs beside its key's bytes (dict slot, tuple, float), measured


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
        # InfluxDB clients send milliseconds. auto: seconds once an Airflow line with DogStatsD
        # tags (`|#`) has been seen; s / ms pin it.
        self.timer_unit = dogstatsd_timer_unit
        self.dogstatsd_seen = False
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
        self.relearn_checked: dict[str, float] = {}  # catalog metric -> when its tagged series were last looked at
        # raw line minus its value -> entry; a line's key is `name[tags]` + `|type...`
        self.cache: dict[bytes, tuple] = {}
        # whole counter and gauge lines -> (base, increment or value, is increment, type): Airflow
        # repeats them to the byte (`...open_slots:32|g`, `...:1|c`); cleared whenever `cache` is
        self.whole: dict[bytes, tuple] = {}

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
        samples = st.samples
        legacy_seen = self.legacy_seen
        timers = self.timer_samples
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
                continue
            key = line[:i] + line[j:]
            e = cache.get(key)
            vals = line[i + 1 : j]
            try:
                if e is None:
                    self._miss(line[:i], line[j + 1 :], key, vals, now)
                    continue
                kind = e[0]
                if kind is COUNTER:
                    v = float(vals)
                    if not 0.0 <= v < 1e300:  # negative, nan or inf: the slow path says which
                        raise ValueError
                    b = e[1]
                    V[b + 1] += v * e[2]
                    V[b] = now
                    if len(whole) >= WHOLE_MAX:
                        whole.clear()
                    whole[line] = (b, v * e[2], True, e[5])
                elif kind is HIST:
                    v = float(vals) * e[2]
                    if not -1e300 < v < 1e300:
                        raise ValueError
                    b = e[1]
                    w = e[3]
                    V[b + 1] += v * w
                    V[b + 2] += w
                    V[b + 3 + bisect_left(e[4], v)] += w
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
                        V[b + 1] += v
                    else:
                        V[b + 1] = v
                    V[b] = now
                    if len(whole) >= WHOLE_MAX:
                        whole.clear()
                    whole[line] = (b, v, delta, e[5])
                elif kind is DROP:
                    st.dropped[e[1]] += 1
                    continue
                elif kind is LEGACY:
                    st.dropped["legacy_twin"] += 1
                    legacy_seen[e[1]] = now
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
            except Exception as err:  # a bug must cost one line, never the process
                self._internal(err)
                continue
            samples[e[5]] += 1

    # ------------------------------------------------------------------ slow path
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
            return
        try:
            values = parse_values(vals, key.type) if key.type != "s" else None
        except ParseError as err:
            st.parse_errors[err.reason] += 1
            return
        if values is not None and key.type == "c" and any(v < 0 for v, _ in values):
            st.parse_errors["negative_counter"] += 1
            return
        if not self.dogstatsd_seen and b"#" in tail:
            self._dogstatsd(key)
        e = self._resolve(key, ckey, now)
        if e[0] is PENDING and values is None:  # a set under a legacy Airflow name: not Airflow's
            st.dropped["conflict"] += 1
        elif e[0] is PENDING:
            self._pend(e[3], e[1], e[2], values, now)
        elif e[0] is SET or e[0] is WATCH:
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
        if kind is WATCH:
            _, inner, mname, family, labels = e
            if inner[0] is DROP:
                st.dropped[inner[1]] += 1
            else:  # counted (its legacy twin, just before it, was dropped), then maybe the switch
                self._slow(inner, vals, now)
            if self._tags_stopped(mname, family, labels, now):
                self._set_mode(mname, "plain")  # clears the cache: the legacy form counts from now on
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
                V[b + 1] += v * e[2]
            elif kind is GAUGE:
                v *= e[2]
                V[b + 1] = V[b + 1] + v if delta else v
            elif kind is HIST:
                v *= e[2]
                V[b + 1] += v * e[3]
                V[b + 2] += e[3]
                V[b + 3 + bisect_left(e[4], v)] += e[3]
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
        if target.kind == "drop":
            return self._cache(ckey, _const(DROP, target.reason))
        m = target.metric
        if m is not None and target.form in ("modern", "legacy", "twin"):
            mode = self.pinned or self.mode.get(m.name)
            if target.form == "modern" and mode != "tagged":
                self._set_mode(m.name, "tagged")
            elif target.form == "legacy":
                if mode is None and self._held(m.name, "twin"):  # its tagless twin came first
                    self._set_mode(m.name, "plain")
                    mode = "plain"
                if mode == "tagged":
                    self.legacy_seen[m.name] = now
                    return self._cache(ckey, (LEGACY, m.name))
                if mode is None:
                    return (PENDING, target, key, m.name)  # not cached: decided by its twin
            elif target.form == "twin":
                if mode is None and self._held(m.name, "legacy"):
                    self._set_mode(m.name, "plain")
                    mode = "plain"
                if mode == "plain":
                    return self._cache(ckey, _const(DROP, "tagless_twin"))
                if mode is None:  # held too, in case its legacy twin follows (dependency-check does)
                    return (PENDING, target, key, m.name)
                if not self.pinned:  # "tagged", learned: watch for Airflow's tags being turned off
                    return self._cache(ckey, (WATCH, self._entry(target, key, now), m.name, target.family,
                                              target.labels))
        return self._cache(ckey, self._entry(target, key, now))

    def _tags_stopped(self, mname: str, family: str, labels: tuple, now: float) -> bool:
        """A tagless sample in "tagged" mode: is its legacy twin arriving too (the pair Airflow
        sends without tags), while the metric's tagged series have stopped moving? Looked at once
        in 5 s at most per metric (a family may hold thousands of series)."""
        if now - self.legacy_seen.get(mname, float("-inf")) > 10.0:
            return False  # the tagless form alone is how Airflow sends this metric
        if now - self.relearn_checked.get(mname, float("-inf")) < 5.0:
            return False
        self.relearn_checked[mname] = now
        fam = self.store.families.get(family)
        if fam is None:
            return True
        V = self.vals
        latest = max((V[b] for lab, b in fam.series.items() if lab != labels), default=float("-inf"))
        return now - latest >= RELEARN_AFTER

    @property
    def timers_in_seconds(self) -> bool:
        """Whether Airflow's timer() metrics arrive in seconds (see __init__)."""
        return self.timer_unit == "s" or (self.timer_unit == "auto" and self.dogstatsd_seen)

    def _dogstatsd(self, key: Key) -> None:
        """A line with DogStatsD tags: if it is Airflow's, Airflow uses its DogStatsD client."""
        t = self.mapper.airflow.map(key)
        if t is None or t.metric is None:
            return
        self.dogstatsd_seen = True
        if self.timer_unit == "auto":
            log.warning("Airflow sends DogStatsD: its timer() metrics (scheduler loop, critical section, "
                        "dependency check...) arrive in seconds labelled ms, and are read as seconds")
            self._clear_cache()  # entries made before now read them as milliseconds

    def _entry(self, target: Target, key: Key, now: float) -> tuple:
        try:
            base = self.store.series(target.family, target.kind, target.labels, target.help,
                                     target.buckets, target.ttl, now)
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
        if kind is COUNTER:
            return (COUNTER, base, target.mult / key.rate, None, None, tag)
        if kind is HIST:
            scale = target.scale
            if key.type == "ms" and target.metric is not None and target.metric.timer_call and self.timers_in_seconds:
                scale = 1.0
            return (HIST, base, scale * target.mult, 1.0 / key.rate, target.buckets, tag)
        return (GAUGE, base, target.mult, None, None, tag)

    def _cache(self, ckey: bytes, entry: tuple) -> tuple:
        """Cache an entry within the byte budget; when full, the oldest tenth goes."""
        self.cache_used += len(ckey) + ENTRY_BYTES
        if self.cache_used > self.cache_bytes and self.cache:
            cache = self.cache
            for k in list(islice(cache, max(1, len(cache) // 10))):
                del cache[k]
                self.cache_used -= len(k) + ENTRY_BYTES
            self.whole.clear()
        self.cache[ckey] = entry
        return entry

    def _clear_cache(self) -> None:
        self.cache.clear()
        self.whole.clear()
        self.cache_used = 0

    # ------------------------------------------------------------------ twin learning
    def _set_mode(self, mname: str, mode: str) -> None:
        if self.mode.get(mname) == mode:
            return
        before = self.mode.get(mname)
        if before is None:
            log.info("metric %s: %s form is authoritative", mname, "tagged" if mode == "tagged" else "legacy")
        else:
            self.stats.mode_switches[(mname, mode)] += 1
            if self.stats.mode_switches[(mname, mode)] == 1:
                log.warning("metric %s: now counting its %s (logged once per metric and direction)", mname,
                            "tagged form: Airflow sends tags again" if mode == "tagged" else
                            f"legacy form: no tagged sample for {RELEARN_AFTER:.0f}s while tagless ones "
                            "arrive (Airflow's statsd tags were turned off)")
        self.mode[mname] = mode
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

    def housekeeping(self, now: float | None = None) -> None:
        """Release held samples whose twin never came, and expire idle series."""
        if now is None:
            now = time.monotonic()
        for mname in list(self.pending):
            waiting = self.pending[mname]
            if waiting and now - waiting[0][3] > PENDING_MAX_AGE:
                self._settle(mname, waiting)
        freed = self.store.expire(now)
        if freed:
            self.stats.series_expired += len(freed)
            # entries that point at a freed series must go before its slots are reused
            dead = [k for k, e in self.cache.items()
                    if (e[0] <= SET and e[1] in freed) or (e[0] == WATCH and e[1][0] <= SET and e[1][1] in freed)]
            for k in dead:
                del self.cache[k]
                self.cache_used -= len(k) + ENTRY_BYTES
            self.whole.clear()

    def reload(self, mapper: Mapper) -> None:
        self.mapper = mapper
        self._clear_cache()
