"""OTLP points into the store (the ingest process): the catalog decides the series, in every mode.

The receiver (monitor/bridge/otlp.py, in the web process) hands over records: per metric, its
resource, the resource's per-pod value, name, kind, unit and points. Here each point becomes what
its statsd twin becomes:

- **Series.** `airflow.<stat>` with its attributes is mapped as a statsd line `airflow.<stat>` with
  those tags would be (user mapping rules, then the catalog): `airflow.ti.finish{dag_id,task_id,
  state}` is `airflow_ti_finish_total{dag_id,task_id,state}`, a timer in milliseconds is a histogram
  in seconds. The resource's `service.instance.id` (else `host.name`) is the label `pod`, as the
  DogStatsD tag `pod:<name>` is, so HA schedulers' gauges are told apart. A metric outside the
  catalog follows `--unmapped`, named as Prometheus' OTLP translation names it (unit suffix,
  `_total` for monotonic sums, characters outside [a-zA-Z0-9:] folded to one `_`).
- **Legacy twins.** Airflow also sends each metric that has a legacy name under it
  (`airflow.ti.finish.<dag>.<task>.<state>`); it is dropped (`legacy_twin`) when the request, or one
  in the last ten minutes, carries the metric's tagged form, else counted (Airflow lines that send
  only the legacy form).
- **The SDK's cardinality limit.** The OpenTelemetry SDK keeps at most 2,000 attribute sets per
  instrument in a process (Airflow does not raise it); past that, it folds the rest into one point
  with `otel.metric.overflow=true` and no ids. Such a point is dropped (`otel_overflow`, said once
  an hour per metric), and the ids it lost are counted from the legacy twins: a legacy point whose
  ids no tagged point of the request carries is counted (Airflow's legacy names each have their
  own instrument, never over the limit; `[metrics] legacy_names_on` is on by default).
- **Temporality.** A cumulative sum is a stream, per resource, name, attributes and start time:
  each point adds what it grew by since the stream's last point, so a stream that restarts (a new
  start time) counts from zero and the old one is never counted again; a cumulative value below the
  last one, with the same start time, is a reset (counted from zero). A stream's first point
  counts whole: after a restart of the bridge a long-lived scheduler's counter goes on from its
  total. Delta sums add; gauges (and up-down counters) set; a cumulative up-down counter sets.
- **Histograms.** An exponential histogram is kept as a Prometheus native histogram, bucket for
  bucket (same schema, up to Prometheus' maximum of 8; zero bucket; positive and negative buckets),
  in seconds for the catalog's timers (a bucket of milliseconds goes where its middle falls in
  seconds), and counted into the classic buckets beside it by each bucket's middle. Cumulative
  ones are turned into deltas per stream as sums are, through changes of scale.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections import Counter
from itertools import islice

from monitor.bridge import native
from monitor.bridge.mapper import Target
from monitor.bridge.otlp import (
    EXPHIST_CUMULATIVE,
    EXPHIST_DELTA,
    GAUGE,
    HIST_CUMULATIVE,
    HIST_DELTA,
    SUM_CUMULATIVE,
    SUM_DELTA,
    UPDOWN_CUMULATIVE,
    UPDOWN_DELTA,
)
from monitor.bridge.parse import Key, label_name
from monitor.bridge.store import Drop

log = logging.getLogger(__name__)
POD = "pod"  # the per-pod label, as the DogStatsD tag pod:<name> (helm/airflow-values.yaml)
MODERN_WINDOW = 600.0  # seconds a metric's tagged form, once seen, makes its legacy form a twin
STREAM_TTL = 900.0  # seconds a stream of a cumulative metric is remembered without a point
# points of these refusals are reported to the client as rejected (a partial success); twins and
# deliberate drops (a mapping rule's drop, --unmapped drop) are not rejections
NOT_REJECTED = {"legacy_twin", "drop_rule", "unmapped", "negative_counter", "otel_overflow"}
OVERFLOW = ("otel.metric.overflow", "true")
STATSD_TYPE = {SUM_CUMULATIVE: "c", SUM_DELTA: "c", GAUGE: "g", UPDOWN_CUMULATIVE: "g", UPDOWN_DELTA: "g",
               EXPHIST_CUMULATIVE: "ms", EXPHIST_DELTA: "ms", HIST_CUMULATIVE: "ms", HIST_DELTA: "ms"}
STORE_KIND = {"c": "counter", "g": "gauge", "ms": "histogram"}
UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
# Prometheus' OTLP translation (prometheus/otlptranslator): unit -> name suffix
UNIT_NAMES = {"d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
              "us": "microseconds", "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes",
              "GiBy": "gibibytes", "TiBy": "tibibytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes",
              "TBy": "terabytes", "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts",
              "g": "grams", "Cel": "celsius", "Hz": "hertz", "1": "", "%": "percent"}
PER_UNIT_NAMES = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
_TOKEN = re.compile(r"[a-zA-Z0-9:]+")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")

# cache entries (tuples, indexed on the hot path); LAZY: an up-down counter counted as a counter, whose
# series is made with its first rise (a fall alone leaves nothing behind, as a refused statsd line)
DROP, LEGACY, SCALAR, EXPHIST, HIST, LAZY = range(6)


def otlp_name(name: str, unit: str, kind: str) -> str:
    """A metric outside the catalog, named as Prometheus' OTLP translation names it (underscore
    escaping with suffixes), less the `_total` the store adds to a counter's samples."""
    tokens = _TOKEN.findall(name)
    main, _, per = unit.partition("/")
    main, per = main.strip(), per.strip()
    suffix = UNIT_NAMES.get(main, main) if main and "{" not in main and "}" not in main else ""
    per_suffix = PER_UNIT_NAMES.get(per, per) if per and "{" not in per and "}" not in per else ""
    suffix = "_".join(_TOKEN.findall(suffix))
    per_suffix = "_".join(_TOKEN.findall(per_suffix))
    if suffix and suffix not in tokens:
        tokens.append(suffix)
    if per_suffix and per_suffix not in tokens:
        tokens += ["per", per_suffix]
    if kind in (SUM_CUMULATIVE, SUM_DELTA):
        tokens = [t for t in tokens if t != "total"]  # the store writes the counter's `_total`
    if unit == "1" and kind == GAUGE:
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    out = "_".join(tokens)
    return "_" + out if out[:1].isdigit() else out


def otlp_label(key: str) -> str:
    """An attribute key as Prometheus' OTLP translation makes it a label name."""
    key = _LABEL_BAD.sub("_", key)
    if key[:1].isdigit():
        return "key_" + key
    if key.startswith("_") and not key.startswith("__"):
        return "key" + key
    return key


class OtlpIngest:
    """Applies the receiver's records to the store; one per Ingest (it shares its mapper, store,
    stats and Datadog timer samples)."""

    def __init__(self, ingest, stream_ttl: float = STREAM_TTL):
        self.ingest = ingest
        self.stream_ttl = stream_ttl
        self.mapper = ingest.mapper
        self.cache: dict[tuple, tuple] = {}  # (name, kind, unit, pod, attributes) -> entry
        self.streams: dict[int, list] = {}  # stream_key(resource's hash, name, attributes, start) -> [seen, last...]
        self.pairs: dict[tuple, tuple] = {}  # one copy of each attribute (key, value) the cache keeps
        self.shared: dict[tuple, tuple] = {}  # one copy of each entry part many entries hold (buckets...)
        self.modern_seen: dict[str, float] = {}  # catalog metric -> when its tagged form last came
        self.overflow_logged: dict[str, float] = {}  # metric -> when its overflow was last said
        self._covered: tuple = (None, {})  # (the request's overflow map, {metric: ids its tagged points carry})
        self._scan = iter(())

    # ------------------------------------------------------------------ records
    def apply(self, frame: list[tuple], names=(frozenset(), {}), now: float | None = None) -> Counter:
        """Apply one frame of records; returns the points refused, by reason (those the client hears of).
        names: (the request's metric names, {metric with an overflow point: its other attribute sets})."""
        if isinstance(names, frozenset):
            names = (names, {})
        if self.ingest.mapper is not self.mapper:  # a mapping reload: decide every series again
            self.mapper = self.ingest.mapper
            self.cache.clear()
        refused: Counter[str] = Counter()
        for resource, pod, name, kind, unit, points in frame:
            t = time.monotonic() if now is None else now
            # a stream's resource is its attributes' hash: no map of resources to fill, clear and number
            # again (ids given again made a live scheduler's streams look new, and a new cumulative
            # stream's first point counts whole: its total was added a second time)
            rid = hash(resource)
            try:
                self._group(rid, pod, name, kind, unit, points, names, t, refused)
            except Exception as err:  # a defect costs its group, never the process
                self.ingest._internal(err)
                refused["internal_error"] += len(points)
        return refused

    def _group(self, rid, pod, name, kind, unit, points, names, now, refused) -> None:
        st = self.ingest.stats
        V = self.ingest.vals
        cache = self.cache
        streams = self.streams
        for p in points:
            attrs = p[0]
            ck = (name, kind, unit, pod, attrs)
            e = cache.get(ck)
            if e is None:
                e = self._resolve(name, kind, unit, pod, attrs, now, p)
            tag = e[0]
            if tag is DROP:
                st.dropped[e[1]] += 1
                if e[1] not in NOT_REJECTED:
                    refused[e[1]] += 1
                continue
            if tag is LAZY:
                rise = self._rise(rid, name, kind, p, e[1][4], now)
                if rise < 0:
                    st.dropped["negative_counter"] += 1
                if rise <= 0:
                    continue
                e = cache[ck] = self._entry(*e[1], now)
                if e[0] is DROP:
                    st.dropped[e[1]] += 1
                    refused[e[1]] += 1
                    continue
                self._add(e, rise, now)
                continue
            if tag is LEGACY:
                seen = self.modern_seen.get(e[1], -math.inf)
                if (e[2] in names[0] or now - seen < MODERN_WINDOW) and not self._lost(e, names[1]):
                    st.dropped["legacy_twin"] += 1
                    continue
                if e[3] is None:  # the first point this form counts: its series is made now
                    inner = self._resolve(name, kind, unit, pod, attrs, now, p, legacy=True)
                    e = cache[ck] = (LEGACY, e[1], e[2], inner, e[4])
                e = e[3]
                tag = e[0]
                if tag is DROP:
                    st.dropped[e[1]] += 1
                    refused[e[1]] += 1
                    continue
            elif e[-1] is not None:  # the tagged form of a metric that has a legacy twin
                self.modern_seen[e[-1]] = now
            b = e[1]
            if tag is SCALAR:
                v = p[2] * e[3]
                if e[4]:  # an up-down counter counted as a counter: only what it rose by
                    rise = self._rise(rid, name, kind, p, e[3], now)
                    if rise < 0:
                        st.dropped["negative_counter"] += 1
                    elif rise:
                        self._add(e, rise, now)
                    continue
                if kind == SUM_CUMULATIVE:
                    sk = stream_key(rid, name, attrs, p[1])
                    s = streams.get(sk)
                    if s is None:
                        streams[sk] = [now, v]
                        d = v
                    else:
                        s[0] = now
                        d = v - s[1] if v >= s[1] else v  # below the last: a reset, counted from zero
                        s[1] = v
                    if d:
                        x = V[b + 1] + d
                        if not x < math.inf:
                            st.dropped["overflow"] += 1
                            refused["overflow"] += 1
                            continue
                        V[b + 1] = x
                        st.samples[e[2]] += 1
                elif kind == SUM_DELTA or kind == UPDOWN_DELTA:
                    x = V[b + 1] + v
                    if not -math.inf < x < math.inf:
                        st.dropped["overflow"] += 1
                        refused["overflow"] += 1
                        continue
                    V[b + 1] = x
                    st.samples[e[2]] += 1
                else:  # a gauge, or a cumulative up-down counter: its value
                    V[b + 1] = v
                    st.samples[e[2]] += 1
                V[b] = now
            elif tag is EXPHIST:
                self._exphist(e, rid, name, kind, p, now, refused)
            else:
                self._hist(e, rid, name, kind, p, now, refused)

    def _lost(self, e: tuple, overflow: dict) -> bool:
        """A legacy point whose tagged twin the SDK folded into its overflow point (its ids are in no
        tagged point of the request)."""
        tagged = overflow.get(e[2])
        if tagged is None:
            return False
        if self._covered[0] is not overflow:
            self._covered = (overflow, {})
        covered = self._covered[1]
        t = e[4][0]
        m = t.metric
        ids = covered.get(m.name)
        if ids is None:  # the tagged points' ids, spelled as Airflow spells them in legacy names
            names = set(m.labels)
            ids = covered[m.name] = {tuple(sorted((m.prom_label(k), v.replace(".", "__")) for k, v in attrs
                                                  if m.prom_label(k) in names)) for attrs in tagged}
        return tuple(sorted(p for p in t.labels if p[0] in m.labels)) not in ids

    def _overflowed(self, name: str, now: float) -> None:
        """Say once an hour per metric that its overflow point is dropped."""
        if now - self.overflow_logged.get(name, -math.inf) >= 3600:
            self.overflow_logged[name] = now
            log.warning("OTLP metric %s: the sender's OpenTelemetry SDK folded the attribute sets over its "
                        "cardinality limit (2,000 per instrument and process) into one otel.metric.overflow point, "
                        "which carries no ids; it is dropped, and what it folded is counted from Airflow's legacy "
                        "names where they are on ([metrics] legacy_names_on; at most one line an hour per metric)",
                        name[:200])

    def _rise(self, rid, name, kind, p, factor: float, now: float) -> float:
        """What an up-down counter's point rose by (negative: it fell)."""
        v = p[2] * factor
        if kind == UPDOWN_CUMULATIVE:
            sk = stream_key(rid, name, p[0], p[1])
            s = self.streams.get(sk)
            self.streams[sk] = [now, v]
            return v - s[1] if s is not None else v
        return v

    def _add(self, e: tuple, v: float, now: float) -> None:
        V = self.ingest.vals
        b = e[1]
        x = V[b + 1] + v
        if x < math.inf:
            V[b + 1] = x
            V[b] = now
            self.ingest.stats.samples[e[2]] += 1
        else:
            self.ingest.stats.dropped["overflow"] += 1

    # ------------------------------------------------------------------ histograms
    def _exphist(self, e, rid, name, kind, p, now, refused) -> None:
        attrs, start, count, total, scale, zc, zt, poff, pos, noff, neg = p
        if kind == EXPHIST_CUMULATIVE:
            sk = stream_key(rid, name, attrs, start)
            s = self.streams.get(sk)
            if s is not None and s[1] == count and s[2] == total:  # nothing observed since: most points
                s[0] = now
                return
            cur = [now, count, total, scale, zc, poff, pos, noff, neg]
            self.streams[sk] = cur
            if s is not None:
                d = _exp_delta(s, cur)
                if d is not None:  # else a reset: counted from zero
                    count, total, scale, zc, poff, pos, noff, neg = d
        if not count and not zc and not any(pos) and not any(neg):
            return
        self._observe_exp(e, count, total, scale, zc, zt, poff, pos, noff, neg, now)

    def _observe_exp(self, e, count, total, scale, zc, zt, poff, pos, noff, neg, now) -> None:
        """Add a delta exponential histogram (OTel indexes at `scale`) to the series of entry e."""
        st = self.ingest.stats
        V = self.ingest.vals
        _, b, tag, factor, log2f, bounds, nat, _m = e
        nb = len(bounds) + 1
        s = min(scale, native.MAX_SCHEMA)
        d = scale - s
        shift = native.unit_shift(s, log2f) if log2f else 0
        pos_k = _prom_keys(poff, pos, d, shift)
        neg_k = _prom_keys(noff, neg, d, shift)
        if not _sum_count(V, b, total * factor, count):
            st.dropped["overflow"] += 1
            return
        placed = zc
        V[b + 3] += zc + sum(neg_k.values())  # zero and negative values: at or below the first bound
        placed += sum(neg_k.values())
        for k, c in pos_k.items():
            V[b + 3 + native.classic_index(bounds, k, s)] += c
            placed += c
        if count > placed:  # observations in no bucket (NaN...): above every bound
            V[b + 3 + nb - 1] += count - placed
        if nat is not None and s >= native.MIN_SCHEMA:
            native.add(V, b + nat[0], nat[1], nat[2], s, pos_k, neg_k, float(zc), zt * factor)
        V[b] = now
        st.samples[tag] += 1
        timers = self.ingest.timer_samples
        if timers is not None:
            if zc:
                timers.append((b, 0.0, float(zc)))
            for k, c in pos_k.items():
                timers.append((b, native.middle(k, s), c))
            for k, c in neg_k.items():
                timers.append((b, -native.middle(k, s), c))

    def _hist(self, e, rid, name, kind, p, now, refused) -> None:
        """An explicit-bucket histogram: its counts go to the classic bucket holding each bucket's
        upper bound (the family's own bounds when it is not the catalog's)."""
        st = self.ingest.stats
        V = self.ingest.vals
        attrs, start, count, total, bounds, counts = p
        if kind == HIST_CUMULATIVE:
            sk = stream_key(rid, name, attrs, start)
            s = self.streams.get(sk)
            self.streams[sk] = [now, count, total, bounds, counts]
            if s is not None and s[3] == bounds and count >= s[1] and \
                    all(a >= b_ for a, b_ in zip(counts, s[4], strict=False)):
                count, total = count - s[1], total - s[2]
                counts = tuple(a - b_ for a, b_ in zip(counts, s[4], strict=False))
        if not count:
            return
        _, b, tag, factor, _log2f, fam_bounds, _nat, _m = e
        nb = len(fam_bounds) + 1
        if not _sum_count(V, b, total * factor, count):
            st.dropped["overflow"] += 1
            return
        placed = 0
        for i, c in enumerate(counts):
            if c:
                ub = bounds[i] * factor if i < len(bounds) else math.inf
                V[b + 3 + min(nb - 1, _bisect(fam_bounds, ub))] += c
                placed += c
        if count > placed:
            V[b + 3 + nb - 1] += count - placed
        V[b] = now
        st.samples[tag] += 1

    # ------------------------------------------------------------------ mapping
    def _resolve(self, name: str, kind: str, unit: str, pod: str, attrs: tuple, now: float, point: tuple,
                 legacy: bool = False) -> tuple:
        """Map one (metric, attributes) once and cache what to do with its points. A legacy twin is
        cached as such, light (most are dropped); `legacy`: the entry of one that is counted."""
        ing = self.ingest
        st = ing.stats
        if OVERFLOW in attrs:
            self._overflowed(name, now)
            return self._cache(name, kind, unit, pod, attrs, (DROP, "otel_overflow"))
        stype = STATSD_TYPE[kind]
        tags = tuple(sorted((label_name(k), v) for k, v in attrs))
        t = ing.mapper.map(Key(name, stype, 1.0, tags))
        updown = False
        if kind in (UPDOWN_CUMULATIVE, UPDOWN_DELTA) and t.metric is not None and t.metric.type != "gauge":
            # an up-down counter the catalog calls a counter (dag_processing.processes: +1 as a DAG file
            # processor starts, -1 as it stops): counted as statsd counts it, its rises only
            stype, updown = "c", True
            t = ing.mapper.map(Key(name, stype, 1.0, tags))
        if t.form == "unmapped":
            st.unmapped += 1
        if t.kind == "drop":
            return self._cache(name, kind, unit, pod, attrs, (DROP, t.reason))
        store_kind = STORE_KIND[stype]
        m = t.metric
        if t.form == "unmapped":
            family = otlp_name(name, unit, kind)
            if not family or ing.mapper.reserved(family, store_kind):
                return self._cache(name, kind, unit, pod, attrs, (DROP, "reserved" if family else "invalid_name"))
            labels = tuple(sorted((otlp_label(k), v) for k, v in attrs if k))
            buckets = ing.mapper.airflow.buckets
            native_spec = ing.mapper.airflow.native if store_kind == "histogram" else None
            if kind in (HIST_CUMULATIVE, HIST_DELTA):  # its own explicit buckets (the first point's)
                native_spec = None
            t = Target(family=family, kind=store_kind, labels=labels, help=f"OTLP metric {name} (not in the "
                       "Airflow catalog)", buckets=buckets, native=native_spec, form="unmapped")
            factor = 1.0  # its own unit, said in its name
        elif store_kind == "histogram" and m is not None and m.sent_in_seconds:
            # Stats.timing() of seconds: Airflow's OTel logger records the float as it is, under unit "ms"
            factor = t.mult
        elif store_kind == "histogram":
            # a catalog timer: the mapping's unit scale is for statsd's milliseconds; OTLP says its unit
            factor = t.scale * t.mult * (UNITS[unit] / 1e-3 if unit in UNITS else 1.0)
        else:
            factor = t.mult
        labels = t.labels
        if pod and not any(k == POD for k, _ in labels):
            labels = tuple(sorted((*labels, (POD, pod))))
        twin_of = m.name if m is not None and m.legacy and t.form != "legacy" else None
        bounds = point[4] if kind in (HIST_CUMULATIVE, HIST_DELTA) else None  # not the point: cached entries keep it
        args = (t, labels, store_kind, kind, factor, twin_of, bounds, updown)
        if m is not None and t.form == "legacy" and not legacy:  # its series is made only if counted (_group)
            return self._cache(name, kind, unit, pod, attrs, (LEGACY, m.name, self._modern_name(m), None, (t,)))
        if legacy:
            return self._entry(*args, now)
        if updown:
            return self._cache(name, kind, unit, pod, attrs, (LAZY, args))
        return self._cache(name, kind, unit, pod, attrs, self._entry(*args, now))

    def _entry(self, t: Target, labels, store_kind: str, kind: str, factor: float, twin_of, bounds, updown: bool,
               now: float) -> tuple:
        ing = self.ingest
        buckets = t.buckets
        if t.form == "unmapped" and bounds is not None:
            buckets = bounds  # a histogram of its own: its first point's bounds
        try:
            base = ing.store.series(t.family, store_kind, labels, t.help, buckets, t.ttl, now, t.native)
        except Drop as d:
            return (DROP, d.reason)
        tag = ("otlp", t.metric.prometheus if t.metric is not None else "")
        tag = ing._sample_tags.setdefault(tag, tag)
        ing.stats.samples.setdefault(tag, 0)
        if store_kind != "histogram":
            return (SCALAR, base, tag, factor, updown, twin_of)
        nat = None
        if t.native is not None:
            nat = (3 + len(buckets) + 1, t.native[1], t.native[2])
            nat = self.shared.setdefault(nat, nat)
        log2f = math.log2(factor) if factor > 0 and factor != 1.0 else 0.0
        buckets = self.shared.setdefault(tuple(buckets), tuple(buckets))
        return (EXPHIST if kind in (EXPHIST_CUMULATIVE, EXPHIST_DELTA) else HIST, base, tag, factor, log2f,
                buckets, nat, twin_of)

    def _modern_name(self, m) -> str:
        prefix = self.ingest.mapper.airflow.prefix
        return prefix + m.name

    def _cache(self, name, kind, unit, pod, attrs, e: tuple) -> tuple:
        if len(self.cache) >= 2_000_000:  # bounded: a flood of distinct attributes starts it afresh
            self.cache.clear()
            self.pairs.clear()
        # the key keeps one copy of each attribute (a dag_id is in each of a task's metrics)
        pairs = self.pairs
        attrs = tuple([pairs.setdefault(p, p) for p in attrs])
        self.cache[(sys.intern(name), kind, unit, pod, attrs)] = e
        return e

    # ------------------------------------------------------------------ housekeeping
    def housekeeping(self, now: float, freed: set[int] | None = None, budget: int = 5000) -> None:
        """Forget streams without a point for stream_ttl (a slice at a time), and cache entries whose
        series the store freed."""
        if freed:
            dead = [k for k, e in self.cache.items() if (e[0] in (SCALAR, EXPHIST, HIST) and e[1] in freed) or
                    (e[0] is LEGACY and e[3] is not None and e[3][0] is not DROP and e[3][1] in freed)]
            for k in dead:
                del self.cache[k]
        chunk = list(islice(self._scan, budget))
        if len(chunk) < budget:
            self._scan = iter(list(self.streams))
        streams = self.streams
        for k in chunk:
            s = streams.get(k)
            if s is not None and now - s[0] > self.stream_ttl:
                del streams[k]
        for m in [m for m, t in self.modern_seen.items() if now - t > MODERN_WINDOW]:
            del self.modern_seen[m]


def _sum_count(V, b: int, total: float, count: float) -> bool:
    """Add to a histogram series' _sum and _count; False (nothing added) if the sum would overflow."""
    x = V[b + 1] + total
    if not -math.inf < x < math.inf:
        return False
    V[b + 1] = x
    V[b + 2] += count
    return True


def stream_key(rid: int, name: str, attrs: tuple, start: int) -> int:
    """A stream (resource, metric, attributes, start time) as one int: its identity's 64-bit hash
    beside its start time in nanoseconds. Keeping the tuple would keep the request's strings of each
    short-lived task process's streams (~700 bytes a stream, against ~200); two streams alike in both
    the hash and the start nanosecond are not to be met."""
    return (hash((rid, name, attrs)) & 0xFFFFFFFFFFFFFFFF) << 64 | (start & 0xFFFFFFFFFFFFFFFF)


def _bisect(bounds: tuple, v: float) -> int:
    from bisect import bisect_left

    return bisect_left(bounds, v)


def _prom_keys(offset: int, counts, d: int, shift: int) -> dict[int, float]:
    """OTel buckets (offset, counts) as Prometheus keys {key: count}, d schemas lower and moved by shift."""
    out: dict[int, float] = {}
    for i, c in enumerate(counts):
        if c:
            k = native.down(offset + i + 1, d) + shift
            out[k] = out.get(k, 0.0) + c
    return out


def _otel_down(offset: int, counts, d: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for i, c in enumerate(counts):
        if c:
            j = (offset + i) >> d
            out[j] = out.get(j, 0) + c
    return out


def _exp_delta(prev: list, cur: list):
    """What a cumulative exponential histogram grew by since its last point, at the lower of the two
    scales (OTel indexes, as (offset, counts)); None when it shrank (a reset)."""
    _, pc, ps, pscale, pz, ppoff, ppos, pnoff, pneg = prev
    _, cc, cs, cscale, cz, cpoff, cpos, cnoff, cneg = cur
    if cc < pc or cz < pz:
        return None
    s = min(pscale, cscale)
    out = []
    for (po, pb), (co, cb) in (((ppoff, ppos), (cpoff, cpos)), ((pnoff, pneg), (cnoff, cneg))):
        p = _otel_down(po, pb, pscale - s)
        c = _otel_down(co, cb, cscale - s)
        delta = {}
        for i, n in c.items():
            x = n - p.get(i, 0)
            if x < 0:
                return None
            if x:
                delta[i] = x
        if any(i not in c for i in p):
            return None
        if delta:
            lo = min(delta)
            row = [0] * (max(delta) - lo + 1)
            for i, x in delta.items():
                row[i - lo] = x
            out.append((lo, row))
        else:
            out.append((0, []))
    (poff, pos), (noff, neg) = out
    return cc - pc, cs - ps, s, cz - pz, poff, pos, noff, neg


class Pump:
    """The ingest process's end of the OTLP channel (monitor/bridge/otlp.py's Channel): reads frames
    without ever blocking, applies one per call (so the statsd sockets are read between two frames),
    and answers the web process once a request's last frame is in."""

    def __init__(self, sock, otlp: OtlpIngest, max_read: int = 8 << 20):
        sock.setblocking(False)
        self.sock, self.otlp, self.max_read = sock, otlp, max_read
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.out = bytearray()
        self.refused: dict[int, Counter] = {}  # request seq -> points refused so far
        self.names: dict[int, frozenset] = {}
        self.closed = False

    def step(self) -> bool:
        """Read what is there, apply one frame, send answers; True when another frame is waiting."""
        import pickle

        from monitor.bridge.web import HEADER

        if self.closed:
            return False
        read = 0
        while read < self.max_read:
            try:
                chunk = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self.buf += chunk
            read += len(chunk)
        if len(self.buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self.buf)
            if len(self.buf) >= HEADER.size + n:
                data = bytes(self.buf[HEADER.size : HEADER.size + n])
                del self.buf[: HEADER.size + n]
                seq, i, total, names, frame = pickle.loads(data)
                if names is not None:
                    self.names[seq] = names
                refused = self.refused.setdefault(seq, Counter())
                refused.update(self.otlp.apply(frame, self.names.get(seq, (frozenset(), {}))))
                if i == total - 1:
                    reply = pickle.dumps((seq, dict(self.refused.pop(seq))), protocol=pickle.HIGHEST_PROTOCOL)
                    self.names.pop(seq, None)
                    self.out += HEADER.pack(len(reply)) + reply
        if self.out:
            try:
                sent = self.sock.send(self.out)
                del self.out[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.closed = True
        if len(self.buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self.buf)
            return len(self.buf) >= HEADER.size + n
        return False
