"""Prometheus exposition of the store and of the bridge's own health, in prometheus-client's format."""

from __future__ import annotations

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from monitor.bridge.store import BUCKETS, COUNT, VALUE, Store

SELF = "airflow_monitor_bridge_"


def _labels(labels: tuple) -> dict[str, str]:
    return dict(labels)


class StoreCollector(Collector):
    """Yields every family in the store at scrape time."""

    def __init__(self, store: Store):
        self.store = store

    def collect(self):
        for fam in list(self.store.families.values()):
            series = list(fam.series.items())
            if fam.kind == "counter":
                m = Metric(fam.name, fam.help, "counter")
                for labels, s in series:
                    m.add_sample(fam.name + "_total", _labels(labels), s[VALUE])
            elif fam.kind == "gauge":
                m = Metric(fam.name, fam.help, "gauge")
                for labels, s in series:
                    m.add_sample(fam.name, _labels(labels), s[VALUE])
            else:
                m = Metric(fam.name, fam.help, "histogram")
                bounds = [floatToGoString(b) for b in fam.buckets] + ["+Inf"]
                for labels, s in series:
                    lab = _labels(labels)
                    acc = 0.0
                    for le, c in zip(bounds, list(s[BUCKETS]), strict=True):
                        acc += c
                        m.add_sample(fam.name + "_bucket", {**lab, "le": le}, acc)
                    m.add_sample(fam.name + "_count", lab, s[COUNT])
                    m.add_sample(fam.name + "_sum", lab, s[VALUE])
            yield m


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
        yield f("samples", "counter", "Samples accepted into the store, by statsd type.",
                [({"type": t}, v) for t, v in list(st.samples.items())])
        yield f("parse_errors", "counter", "Lines or packets rejected, by reason.",
                [({"reason": r}, v) for r, v in list(st.parse_errors.items())])
        yield f("dropped", "counter",
                "Samples parsed but not stored, by reason (legacy_twin, tagless_twin, cardinality_cap, "
                "conflict, drop_rule, unmapped).",
                [({"reason": r}, v) for r, v in list(st.dropped.items())])
        yield f("conflicts", "counter", "Samples dropped because their family exists with another type.",
                [({}, st.dropped.get("conflict", 0))])
        yield f("unmapped_keys", "counter",
                "Distinct statsd names that matched no mapping rule and no catalog metric.", [({}, st.unmapped)])
        yield f("mapper_cache_lookups", "counter", "Mapper cache lookups (one per well-formed line).",
                [({}, st.lines - st.parse_errors.get("malformed_line", 0))])
        yield f("mapper_cache_misses", "counter", "Mapper cache misses (line keys parsed and mapped).",
                [({}, st.cache_misses)])
        yield f("mapper_cache_length", "gauge", "Entries in the mapper cache.", [({}, len(b.ingest.cache))])
        yield f("series", "gauge", "Series in the store.", [({}, b.store.count())])
        yield f("series_expired", "counter", "Series removed after their TTL.", [({}, st.series_expired)])
        yield f("mapping_rules", "gauge", "User mapping rules loaded.", [({}, len(b.ingest.mapper.rules))])
        yield f("mapping_reloads", "counter", "Mapping reloads, by outcome.",
                [({"outcome": o}, v) for o, v in list(b.reloads.items())])
        for sink in b.sinks:
            yield from sink.self_metrics(f)
