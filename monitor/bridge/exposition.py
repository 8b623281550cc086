"""Prometheus exposition of the store (StoreView) and of the bridge's own health (SelfCollector).

StoreView is the readers' side of the store: it applies the store's journal (which families and
series exist, where their slots are) and renders the text format straight from the shared
array of values. It runs in the web process (monitor/bridge/web.py), so rendering hundreds of
thousands of series never takes the GIL from the process that reads the sockets. Each series'
label text is prepared once, when the series is created; a histogram series renders by filling
the label and count slots of a per-family list of text pieces (slice assignments, no formatting)
that joins into its bucket, _sum and _count lines.
"""

from __future__ import annotations

from collections import Counter
from itertools import accumulate

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import protobuf, reasons
from .store import sample_name

# a family's series are rendered, kept and rendered again in groups of this many slots of the store's
# array (8 KiB: ~18 histograms, 512 counters, ~40 KB of text either way), inside a family's own arenas: at
# 10,000 DAGs x 10 tasks a scrape 15 s after the last renders 5 % of the groups again (the whole arenas of
# 8,192 slots were all touched), and the gzip'ed answer is 10 % larger (each group compressed alone)
GROUP_BITS = 10

SELF = "airflow_monitor_bridge_"
CHUNK = 2000  # series rendered per yielded piece


def escape_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def label_text(labels: tuple[tuple[str, str], ...]) -> str:
    """`a="x",b="y"` for a sorted labels tuple (no braces)."""
    return ",".join(f'{k}="{escape_value(v)}"' for k, v in labels)


class _Formatted(dict):
    """float -> its text, remembered: bucket counts repeat across series and scrapes, and a dict
    lookup is several times cheaper than repr() of a float. Bounded at 50,000 (~6 MiB): the values
    that repeat (bucket counts, counts) are few; sums and timestamps rarely repeat and only fill it."""

    def __missing__(self, v: float) -> str:
        if len(self) > 50_000:
            self.clear()
        s = self[v] = repr(v)
        return s


class _PairText(dict):
    """(name, value) -> `name="value"` (text) and its LabelPair (protobuf), each made once: a dag_id is in
    many series, and a series' label text is joined from its pairs' at render time."""

    def __init__(self):
        super().__init__()
        self.proto: dict[tuple[str, str], bytes] = {}

    def __missing__(self, p: tuple[str, str]) -> str:
        s = self[p] = f'{p[0]}="{escape_value(p[1])}"'
        return s

    def pb(self, p: tuple[str, str]) -> bytes:
        b = self.proto.get(p)
        if b is None:
            b = self.proto[p] = protobuf.label_pair(*p)
        return b

    def forget(self, keep) -> None:
        """Drop the text of pairs no series holds any more."""
        for p in [p for p in self if p not in keep]:
            del self[p]
        for p in [p for p in self.proto if p not in keep]:
            del self.proto[p]


class FamilyView:
    """A family as the web process sees it: its series grouped by the store's arena they live in (a
    render caches each group and renders it again only when it changed; monitor/bridge/render.py)."""

    __slots__ = ("name", "kind", "help", "header", "chunks", "versions", "pieces", "nb", "line", "buckets",
                 "native", "native_at", "count", "cache", "sample", "encoder", "head")

    def __init__(self, name: str, kind: str, help: str, buckets: tuple[float, ...], native=None):
        self.name, self.kind, self.help, self.buckets, self.native = name, kind, help, tuple(buckets), native
        self.sample = sample = sample_name(name, kind)  # 0.0.4 names a counter by its sample
        self.header = f"# HELP {sample} {escape_help(help)}\n# TYPE {sample} {kind}\n"
        self.chunks: dict[int, dict[int, tuple]] = {}  # arena -> {base: labels}
        self.versions: dict[int, int] = {}  # arena -> bumped whenever its series come or go
        self.count = 0
        self.cache: dict = {}  # format -> {arena: cached rendering} (render.py)
        self.encoder = None  # protobuf.HistogramEncoder, made at the first protobuf rendering
        self.head = None  # the text format's HELP and TYPE lines as a render.Piece, made at the first rendering
        self.nb = len(buckets) + 1
        self.native_at = 3 + self.nb
        if kind == "histogram":
            # per bucket: name{ <labels,> le="x"} <count>\n ; then _sum and _count lines
            self.pieces = []
            for b in buckets:
                self.pieces += [name + "_bucket{", "", f'le="{floatToGoString(b)}"}} ', "", "\n"]
            self.pieces += [name + "_bucket{", "", 'le="+Inf"} ', "", "\n",
                            name + "_sum", "", " ", "", "\n" + name + "_count", "", " ", "", "\n"]
        self.line = sample + "%s %r\n"

    @property
    def series(self) -> dict[int, tuple]:
        """base -> labels, every arena's (for tests and tools; renders go arena by arena)."""
        out: dict[int, tuple] = {}
        for c in self.chunks.values():
            out.update(c)
        return out

    def add(self, base: int, labels: tuple) -> None:
        a = base >> GROUP_BITS
        chunk = self.chunks.get(a)
        if chunk is None:
            chunk = self.chunks[a] = {}
        if base not in chunk:
            self.count += 1
        chunk[base] = labels
        self.versions[a] = self.versions.get(a, 0) + 1

    def drop(self, base: int) -> None:
        a = base >> GROUP_BITS
        chunk = self.chunks.get(a)
        if chunk is not None and chunk.pop(base, None) is not None:
            self.count -= 1
            self.versions[a] = self.versions.get(a, 0) + 1
            if not chunk:
                del self.chunks[a]
                for c in self.cache.values():
                    c.pop(a, None)


class StoreView:
    def __init__(self, vals: memoryview, release=None):
        self.vals = vals
        # release(first slot, end slot): the renderer is done reading those slots for now. The web
        # process drops its own mapping of their pages (the ingest process keeps them), so that the
        # shared array is resident in one process and not counted twice; None: nothing to do
        self.release = release
        self.families: dict[str, FamilyView] = {}
        self.formatted = _Formatted()
        self.pairs = _PairText()
        self.interned: dict[tuple[str, str], tuple[str, str]] = {}  # one copy of each label pair

    def apply(self, records) -> None:
        fams = self.families
        interned = self.interned
        for r in records:
            op = r[0]
            if op == "series":
                fam = fams.get(r[1])
                if fam is not None:
                    fam.add(r[2], tuple([interned.setdefault(p, p) for p in r[3]]))
            elif op == "drop":
                fam = fams.get(r[1])
                if fam is not None:
                    fam.drop(r[2])
            elif op == "forget":  # the store freed the family (its last series expired)
                fams.pop(r[1], None)
            elif op == "family":
                if r[1] not in fams:
                    fams[r[1]] = FamilyView(r[1], r[2], r[3], r[4], r[5] if len(r) > 5 else None)
            elif op == "reset":
                fams.clear()
                interned.clear()
                self.pairs = _PairText()
        if len(interned) > 2 * self.series_count() + 10_000:  # pairs of series gone: start afresh
            self._compact()

    def _compact(self) -> None:
        keep: dict = {}
        for fam in list(self.families.values()):
            for chunk in fam.chunks.values():
                for labels in chunk.values():
                    for p in labels:
                        keep.setdefault(p, p)
        self.interned = keep
        self.pairs.forget(keep)

    def series_count(self) -> int:
        return sum(f.count for f in list(self.families.values()))

    def text_of(self, labels: tuple) -> str:
        return ",".join(map(self.pairs.__getitem__, labels))

    def render_text(self, fam: FamilyView, items) -> str:
        """The text of some of a family's series: items are (base, labels)."""
        V = self.vals
        text = self.formatted.__getitem__
        lab_of = self.text_of
        out = []
        if fam.kind == "histogram":
            pieces, nb = fam.pieces, fam.nb
            n5 = 5 * nb
            for b, labels in items:
                lab = lab_of(labels)
                cum = list(map(text, accumulate(V[b + 3 : b + 3 + nb].tolist())))
                pieces[1:n5:5] = [lab + "," if lab else ""] * nb
                pieces[3:n5:5] = cum
                pieces[n5 + 1] = pieces[n5 + 5] = "{" + lab + "}" if lab else ""
                pieces[n5 + 3] = repr(V[b + 1])
                pieces[n5 + 7] = cum[-1]  # _count is the +Inf bucket: equal even mid-update
                out += pieces
        else:
            line = fam.line
            for b, labels in items:
                lab = lab_of(labels)
                out.append(line % ("{" + lab + "}" if lab else "", V[b + 1]))
        return "".join(out)

    def render_proto(self, fam: FamilyView, items) -> bytes:
        """The Metric fields of some of a family's series (protobuf): items are (base, labels)."""
        V = self.vals
        pb = self.pairs.pb
        if fam.kind == "histogram":
            enc = fam.encoder
            if enc is None:
                nat = fam.native
                enc = fam.encoder = protobuf.HistogramEncoder(fam.buckets, fam.native_at if nat else None,
                                                              *(nat[1:] if nat else (0, 0)))
            # the count is the +Inf bucket's: ingest writes a classic bucket before the native one, so it
            # is never below the native buckets' sum, even mid-update
            return b"".join([enc.encode(V, b, b"".join(map(pb, labels))) for b, labels in items])
        kind = fam.kind
        return b"".join([protobuf.scalar_metric(b"".join(map(pb, labels)), kind, V[b + 1]) for b, labels in items])

    def render(self):
        """The store as text format, in str pieces of up to CHUNK series (uncached: tests and tools;
        the web process renders through monitor/bridge/render.py)."""
        for fam in list(self.families.values()):
            items = [(b, labels) for c in list(fam.chunks.values()) for b, labels in list(c.items())]
            if not items:
                continue
            yield fam.header
            for i in range(0, len(items), CHUNK):
                yield self.render_text(fam, items[i : i + CHUNK])

    def text(self) -> str:
        return "".join(self.render())


class SelfCollector(Collector):
    """The bridge's own metrics, named like statsd_exporter's with an airflow_monitor_bridge_ prefix."""

    def __init__(self, bridge):
        self.bridge = bridge

    def _family(self, name: str, kind: str, help: str, samples) -> Metric:
        m = Metric(SELF + name, help, kind)
        suffix = "_total" if kind == "counter" else ""
        for labels, v in samples:
            m.add_sample(SELF + name + suffix, labels, v)
        return m

    def collect(self):
        b = self.bridge
        st = b.ingest.stats
        f = self._family
        yield f("packets", "counter", "Packets (datagrams or TCP reads) received, by transport.",
                [({"transport": t}, v) for t, v in list(st.packets.items())])
        yield f("lines", "counter", "Statsd lines received.", [({}, st.lines)])
        by_type: Counter[str] = Counter()
        by_metric: Counter[str] = Counter()
        for (t, metric), v in list(st.samples.items()):
            by_type[t] += v
            if metric:
                by_metric[metric] += v
        yield f("samples", "counter", "Samples accepted into the store, by statsd type.",
                [({"type": t}, v) for t, v in by_type.items()])
        yield f("metric_samples", "counter", "Samples of each Airflow metric accepted, by its Prometheus family "
                "(the alert AirflowMetricStoppedArriving watches these).",
                [({"metric": m}, v) for m, v in by_metric.items()])
        yield f("parse_errors", "counter", reasons.help_text("Lines or packets rejected", reasons.PARSE_ERRORS),
                [({"reason": r}, v) for r, v in list(st.parse_errors.items())])
        yield f("dropped", "counter", reasons.help_text("Samples parsed but not stored", reasons.DROPPED),
                [({"reason": r}, v) for r, v in list(st.dropped.items())])
        yield f("labels_dropped", "counter",
                reasons.help_text("Tags removed from a line whose sample is kept (once per distinct line)",
                                  reasons.LABELS_DROPPED),
                [({"reason": r}, v) for r, v in list(st.labels_dropped.items())])
        yield f("conflicts", "counter", "Samples dropped because their family exists with another type.",
                [({}, st.dropped.get("conflict", 0))])
        yield f("unmapped_keys", "counter",
                "Distinct statsd names that matched no mapping rule and no catalog metric.", [({}, st.unmapped)])
        yield f("mapper_cache_lookups", "counter", "Mapper cache lookups (one per well-formed line).",
                [({}, st.lines - st.parse_errors.get("malformed_line", 0))])
        yield f("mapper_cache_misses", "counter", "Mapper cache misses (line keys parsed and mapped).",
                [({}, st.cache_misses)])
        yield f("mapper_cache_length", "gauge", "Entries in the mapper cache.",
                [({}, len(b.ingest.cache) + len(b.ingest.legacy))])
        yield f("mapper_cache_bytes", "gauge", "Estimated bytes held by the mapper cache (bounded by cache_bytes).",
                [({}, b.ingest.cache_used)])
        yield f("socket_errors", "counter", "Statsd connections refused or not accepted, by reason.",
                [({"reason": r}, v) for r, v in list(st.socket_errors.items())])
        yield f("internal_errors", "counter", "Lines whose handling raised an unexpected error, by exception type.",
                [({"type": t}, v) for t, v in list(st.internal_errors.items())])
        yield f("twin_mode_switches", "counter",
                "Switches of an Airflow metric between its tagged and its legacy form (Airflow's statsd tags "
                "turned on or off), by catalog metric and the form counted since.",
                [({"metric": m, "to": to}, v) for (m, to), v in list(st.mode_switches.items())])
        yield f("dogstatsd_timers_in_seconds", "gauge",
                "1 while Airflow's timer() metrics are read as seconds: the last such line came from Airflow's "
                "DogStatsD client (seconds labelled ms; each line is read in its own unit), by how it was decided "
                "(auto, or pinned by dogstatsd_timer_unit).",
                [({"decided": "auto" if b.ingest.timer_unit == "auto" else "pinned"},
                  1.0 if b.ingest.timers_in_seconds else 0.0)])
        yield f("web_restarts", "counter", "Times the web process (HTTP, /metrics) died and was started again.",
                [({}, b.web.restarts if b.web is not None else 0)])
        yield f("web_start_failures", "counter", "Failed starts of the web process, by reason (emfile: no file "
                "descriptor left); each is tried again a second later.",
                [({"reason": r}, v) for r, v in list(b.web.start_failures.items())] if b.web is not None else [])
        yield f("series", "gauge", "Series in the store.", [({}, b.store.count())])
        yield f("cap", "gauge", "The caps in force (series, series per family, label bytes, mapper cache bytes): "
                "what is new beyond one is dropped, or for the cache parsed again; a warning is logged at half.",
                [({"cap": "series"}, b.store.max_total), ({"cap": "series_per_family"}, b.store.max_series),
                 ({"cap": "label_bytes"}, b.store.max_label_bytes),
                 ({"cap": "mapper_cache_bytes"}, b.ingest.cache_bytes)])
        yield f("families", "gauge", "Metric families in the store (a family goes when its last series expires).",
                [({}, len(b.store.families))])
        yield f("label_bytes", "gauge", "Label text of all series in the store, bytes (bounded by max_label_bytes).",
                [({}, b.store.label_bytes)])
        yield f("series_expired", "counter", "Series removed after their TTL.", [({}, st.series_expired)])
        yield f("mapping_rules", "gauge", "User mapping rules loaded.", [({}, len(b.ingest.mapper.rules))])
        yield f("mapping_reloads", "counter", "Mapping reloads, by outcome.",
                [({"outcome": o}, v) for o, v in list(b.reloads.items())])
        for sink in b.sinks:
            yield from sink.self_metrics(f)
