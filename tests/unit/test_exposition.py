"""The store's exposition as the web process renders it: valid text format for any store."""

from __future__ import annotations

import socket
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.bridge.exposition import StoreView
from monitor.bridge.ingest import Ingest
from monitor.bridge.mapper import Mapper
from monitor.bridge.mmsg import Receiver
from monitor.bridge.store import QUARANTINE, Store
from testkit import expfmt
from testkit.expfmt import check_text

NAMES = st.sampled_from(["airflow.ti.finish", "airflow.task.duration", "airflow.pool.open_slots", "app.jobs",
                         "app.latency", "app.queue_depth", "app.latency_sum", "app.latency_count", "app.jobs_total",
                         "app.latency_bucket", "airflow_ti_finish", "airflow_monitor_bridge_lines"])
VALUES = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=",|#:\n\x00"),
                 max_size=12)
LINE = st.tuples(NAMES, st.sampled_from(["c", "g", "ms", "h"]), st.floats(0, 1e6, allow_nan=False),
                 st.dictionaries(st.sampled_from(["dag_id", "task_id", "state", "pool_name", "team", "le",
                                                  "__name__", "quantile", "__x"]), VALUES, max_size=3))


def render(store: Store, view: StoreView | None = None) -> tuple[StoreView, str]:
    view = view or StoreView(store.vals)
    view.apply(store.take_journal())
    return view, view.text()


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, min_size=1, max_size=40))
def test_any_store_renders_valid_text(lines):
    store = Store()
    ingest = Ingest(Mapper(), store, airflow_tags="on")
    view = StoreView(store.vals)
    sent: Counter = Counter()
    for i, (name, kind, value, tags) in enumerate(lines):
        tag = ",".join(f"{k}:{v}" for k, v in tags.items())
        ingest.handle(f"{name}:{value!r}|{kind}{'|#' + tag if tag else ''}".encode(), "udp", 1000.0 + i)
        sent[kind] += 1
        if i % 7 == 0:  # the web process applies the journal while ingest goes on
            view.apply(store.take_journal())
    _, text = render(store, view)
    check_text(text)
    expfmt.parse(text)
    assert sum(ingest.stats.samples.values()) + sum(ingest.stats.dropped.values()) == len(lines)


SEGMENTS = st.sampled_from(["a", "b", "x1", "", "web--server", "\u00e9", "sum", "total", "9", "le", "count"])
STATSD_NAME = st.lists(SEGMENTS, min_size=1, max_size=4).map(".".join)
TEMPLATE = st.sampled_from(["${1}", "${1}_${2}", "t_${1}", "${2}", "x", "x_total", "${1}_sum", "${1}-y",
                            "${0}", "airflow_monitor_${1}", "airflow_ti_finish", "${1}.${2}", "9${1}",
                            # Go's template grammar (issue 23): one long name, a `$` kept, `$$`, a bare `$`
                            "$1_foo", "x_$1$2", "${1", "$$1", "a$", "$0_${1}", "${1}}"])
RULE = st.fixed_dictionaries(
    {"match": st.one_of(st.lists(st.sampled_from(["*", "a", "b", "x1", "sum"]), min_size=1, max_size=3).map(".".join),
                        st.sampled_from(["(.*)\\.(.*)", "^a\\.(.*)$", "(.*)", ".", "([^.]*)\\.?(.*)", "b"])),
     "name": TEMPLATE},
    optional={"labels": st.dictionaries(st.sampled_from(["k", "le", "__x", "quantile", "dag_id", "_k"]),
                                        st.sampled_from(["${1}", "${2}", "v", "", "${1}_${2}", "$1_x", "$$",
                                                         "${1"]), max_size=3),
              "match_metric_type": st.sampled_from(["counter", "gauge", "observer"]),
              "action": st.sampled_from(["map", "map", "drop"]),
              "honor_labels": st.booleans(),
              "scale": st.sampled_from([0.001, 2, -1, "1e-6"]),
              "buckets": st.sampled_from([[0.5, 1], [1]])})


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RULE, min_size=1, max_size=4), st.booleans(),
       st.lists(st.tuples(STATSD_NAME, st.sampled_from(["c", "g", "ms", "h", "s", "d"]),
                          st.sampled_from(["1", "-2", "0.5", "+3", "NaN", "x", "1e308"]),
                          st.dictionaries(st.sampled_from(["k", "le", "dag_id", "__name__", "v"]), VALUES,
                                          max_size=2)),
                min_size=1, max_size=30))
def test_any_mapping_file_renders_valid_text(tmp_path_factory, rules, unordered, lines):
    """Whatever a mapping file's templates make of whatever names arrive, /metrics stays valid."""
    import yaml

    from monitor.bridge.mapper import load_rules

    path = tmp_path_factory.mktemp("map") / "m.yml"
    doc = {"mappings": [{**r, **({"match_type": "regex"} if "\\" in r["match"] or r["match"] in
                                 ("(.*)", ".", "b") else {})} for r in rules]}
    if unordered:
        doc["defaults"] = {"glob_disable_ordering": True}
    path.write_text(yaml.safe_dump(doc))
    store = Store()
    ingest = Ingest(Mapper(load_rules(path)), store, airflow_tags="on")
    view = StoreView(store.vals)
    for i, (name, kind, value, tags) in enumerate(lines):
        tag = ",".join(f"{k}:{v}" for k, v in tags.items())
        ingest.handle(f"{name}:{value}|{kind}{'|#' + tag if tag else ''}".encode(), "udp", 1000.0 + i)
        if i % 5 == 0:
            view.apply(store.take_journal())
    _, text = render(store, view)
    check_text(text)
    expfmt.parse(text)


def test_clashing_names_are_counted_never_exposed_and_a_reserved_tag_drops_only_itself(harness, tmp_path):
    rules = tmp_path / "m.yml"
    rules.write_text('mappings:\n- match: "(.*)\\\\.empty"\n  match_type: regex\n  name: "${1}"\n')
    from monitor.bridge.mapper import load_rules

    h = harness(mapper=Mapper(load_rules(rules)))
    h.send("app.t:5|ms", "app.t_sum:1|g", "app.t_bucket:1|g",  # a timer's names are taken
           "app.x:1|c", "app.x_total:2|g",  # counter x is exposed as x_total
           "app.rows:1|c", "app.rows_total:2|c",  # two counters, one exposed name: never merged
           "_total:1|c",  # a counter's family name may not be empty (found by bench/fuzz_bridge.py)
           ".empty:1|c",  # the mapping makes an empty name
           "app.y:1|c|#__name__:evil", "app.z:1|ms|#le:0.5", "app.q:1|g|#quantile:0.9",
           "app.flag:1|c|#method:GET,flag", "app.flag:1|c|#method:GET", "app.flag:1|c|#method:GET,flag:")
    text = h.text()
    seen = check_text(text)
    expfmt.parse(text)
    assert h.ingest.stats.dropped["conflict"] == 4
    assert h.ingest.stats.dropped["invalid_name"] == 1
    # issue 23 item 11: a reserved tag goes, its sample stays
    assert h.ingest.stats.labels_dropped["reserved_label"] == 3 and not h.ingest.stats.dropped["reserved_label"]
    assert seen[("app_y_total", ())] == 1 and seen[("app_z_count", ())] == 1 and seen[("app_q", ())] == 1
    assert seen[("app_flag_total", (("method", "GET"),))] == 3
    assert seen[("app_x_total", ())] == 1 and seen[("app_t_count", ())] == 1
    assert seen[("app_rows_total", ())] == 1 and seen[("_total_total", ())] == 1


def test_memory_is_bounded_in_bytes_not_only_in_series(harness):
    """Hostile input N14: 64 tags of 1,024 characters made 60 KB of exposition a series. A series'
    label text is capped, and so is all label text together; expired series give their bytes back."""
    big = "|#" + ",".join(f"k{i}:" + "v" * 1000 for i in range(64))
    h = harness(max_label_bytes=20_000, default_ttl=60)
    h.send("app.huge:1|c" + big, "app.ok:1|c|#dag_id:" + "d" * 250 + ",task_id:" + "t" * 250)
    for i in range(30):  # 30 x 1 KiB of labels against a 20,000-byte budget
        h.send(f"app.kb:1|c|#k:{i:04d}" + "v" * 1000)
    assert h.ingest.stats.dropped["labels_too_long"] == 1
    assert h.ingest.stats.dropped["label_bytes_cap"] == 30 - 19
    assert h.value("app_ok_total", dag_id="d" * 250, task_id="t" * 250) == 1
    assert h.store.label_bytes <= 20_000 and len(h.text()) < 30_000
    h.now += 100
    for _ in range(3):
        h.ingest.housekeeping(h.now)
    assert h.store.label_bytes == 0
    h.send("app.kb:1|c|#k:late" + "v" * 1000)
    assert len(h.samples("app_kb_total")) == 1


def test_families_are_freed_when_their_last_series_expires(harness):
    """Hostile input N14: 20 rounds of 10,000 names that expire left 200,000 empty families, in the
    store and in the web process's view. They are freed, there and (through the journal) in the view."""
    h = harness(default_ttl=60)
    h.send("airflow.dagbag_size:3|g")
    for r in range(20):
        h.ingest.handle_many([f"junk{r}.n{i}:1|c".encode() for i in range(10_000)], "udp", h.now)
        h.text()
        h.now += 100
        h.send("airflow.dagbag_size:3|g")
        for _ in range(12):  # 1,000 series looked at per call
            h.ingest.housekeeping(h.now)
    h.text()
    assert set(h.store.families) == {"airflow_dagbag_size"}
    assert set(h.view.families) == {"airflow_dagbag_size"}
    assert len(h.store.exposed) == 1 and h.store.families_freed == 200_000
    h.send("junk0.n1:1|g")  # a freed name is free for another type
    assert h.value("junk0_n1") == 1


def test_the_clash_warning_is_rate_limited(h, caplog):
    """Hostile input N14: one warning per clashing family was a log line per datagram (3,000 lines)."""
    with caplog.at_level("WARNING"):
        h.send(*(f"app.t{i}:1|ms" for i in range(3000)))
        h.send(*(f"app.t{i}_sum:1|g" for i in range(3000)))
        h.now += 61
        h.send("app.t0_count:1|g")
    lines = [r.getMessage() for r in caplog.records if "clashes" in r.getMessage()]
    assert len(lines) == 2 and "(3000 clashes since the last" in lines[1], lines
    assert h.ingest.stats.dropped["conflict"] == 3001


def test_counts_and_values_match_what_was_sent(h):
    for v in (0.003, 0.2, 1.5, 2.5, 400):
        h.send(f"airflow.task.duration:{v * 1000}|ms|#dag_id:d,task_id:t")
    h.send("airflow.ti.finish:3|c|#dag_id:d,task_id:t,state:success", "airflow.pool.open_slots:-1|g|#pool_name:p")
    seen = check_text(h.text())
    k = (("dag_id", "d"), ("task_id", "t"))
    assert seen[("airflow_task_duration_count", k)] == 5
    assert abs(seen[("airflow_task_duration_sum", k)] - 404.203) < 1e-9
    assert seen[("airflow_task_duration_bucket", (("dag_id", "d"), ("le", "2.5"), ("task_id", "t")))] == 4
    assert seen[("airflow_ti_finish_total", (("dag_id", "d"), ("state", "success"), ("task_id", "t")))] == 3
    assert seen[("airflow_pool_open_slots", (("pool", "p"),))] == -1


def test_expired_slots_are_reused_only_after_the_quarantine(harness):
    h = harness(default_ttl=10)
    h.send("app.jobs:5|c|#team:a")
    base_a = h.store.families["app_jobs"].series[(("team", "a"),)]
    h.text()
    h.ingest.housekeeping(h.now + 11)  # expired: its slots wait out the quarantine
    assert h.samples("app_jobs_total") == {}
    h.now += 12
    h.send("app.jobs:7|c|#team:b")
    assert h.store.families["app_jobs"].series[(("team", "b"),)] != base_a
    h.now += QUARANTINE + 1
    h.send("app.jobs:2|c|#team:c")  # a slot past its quarantine is reused, and starts from zero
    assert h.store.families["app_jobs"].series[(("team", "c"),)] == base_a
    assert h.samples("app_jobs_total") == {(("team", "b"),): 7, (("team", "c"),): 2}


def test_global_series_cap_is_counted(harness):
    h = harness(max_series=3)
    h.send(*(f"app.jobs:1|c|#n:{i}" for i in range(5)))
    assert len(h.samples("app_jobs_total")) == 3
    assert h.ingest.stats.dropped["series_cap"] == 2


def test_a_rejected_value_leaves_no_series(h):
    h.send("app.jobs:-1|c", "app.depth:nan|g", "app.lat:abc|ms")
    assert "app_" not in h.text()
    assert h.ingest.stats.parse_errors["negative_counter"] == 1
    assert h.ingest.stats.parse_errors["invalid_value"] == 2


def test_web_restart_snapshot_rebuilds_the_same_text(h):
    h.send("airflow.ti.finish:1|c|#dag_id:d,task_id:t,state:success", "app.lat:20|ms", "app.depth:3|g")
    text = h.text()
    fresh = StoreView(h.store.vals)
    fresh.apply([("reset",)] + h.store.snapshot_journal())
    assert fresh.text() == text


def test_receiver_reads_batches_without_truncating():
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    r.bind(("127.0.0.1", 0))
    r.setblocking(False)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = [b"a:1|c", b"x" * 60000, b"b:2|g\nc:3|ms"] + [b"n:%d|c" % i for i in range(150)]
    for batched in (True, False):  # recvmmsg, and the recv() fallback: the same datagrams
        for d in sent:
            s.sendto(d, r.getsockname())
        rc = Receiver(r, vlen=64)
        rc.batched = rc.batched and batched
        got = []
        while batch := rc.read():
            assert len(batch) <= 64
            got += batch
        assert got == sent
    r.close()
    s.close()


def test_prometheus_go_parser_refuses_what_prometheus_refuses():
    """The Go checker is not vacuous: two TYPE lines for one name fail a real scrape."""
    assert "1 families" in expfmt.parse('# TYPE x_total counter\nx_total{a="b"} 1\n')
    with pytest.raises(AssertionError, match="second TYPE line"):
        expfmt.parse("# TYPE x_total counter\nx_total 1\n# TYPE x_total gauge\nx_total 2\n")
