"""Native histograms (bucket maths, the native block), the protobuf exposition as Prometheus' Go
decoder reads it, and /metrics rendered arena by arena with its kept renderings."""

from __future__ import annotations

import gzip
import random
import zlib
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.bridge import native
from monitor.bridge.exposition import GROUP_BITS
from monitor.bridge.render import PROTO, TEXT, GzipStream, Renderer, choose, crc32_combine
from monitor.bridge.store import ARENA_BITS
from testkit import expfmt
from testkit.expfmt import check_text


@given(st.floats(1e-300, 1e300), st.integers(-4, 8))
def test_a_value_falls_in_the_bucket_its_key_names(v, schema):
    k = native.key(v, schema)
    lo, hi = 2.0 ** ((k - 1) / 2.0**schema), 2.0 ** (k / 2.0**schema)
    assert lo < v * (1 + 1e-12) and v <= hi * (1 + 1e-12)


@given(st.floats(1e-30, 1e30), st.integers(-3, 8), st.integers(0, 7))
def test_lowering_the_schema_merges_buckets_as_the_values_would_fall(v, schema, d):
    if schema - d < -4:
        return
    assert native.down(native.key(v, schema), d) == native.key(v, schema - d)


def test_powers_of_two_are_upper_bounds():
    for schema in range(-4, 9):
        for p in range(-20, 20):
            k = native.key(2.0**p, schema)
            assert 2.0 ** (k / 2.0**schema) == pytest.approx(2.0**p) or schema < 0


def block(w=20, wn=2, schema=3):
    V = memoryview(array("d", [0.0] * (native.HEAD + w + wn)))
    native.init(V, 0, schema)
    return V


def test_observations_fill_the_window_and_lower_the_schema_when_it_overflows():
    V = block(w=8)
    for v in (1.0, 1.05, 1.2):
        native.observe(V, 0, 8, 2, v, 1.0)
    s = native.read(V, 0, 8, 2)
    assert s.schema == 3 and s.total() == 3
    native.observe(V, 0, 8, 2, 100.0, 1.0)  # 6.6 powers of two away: 53 buckets at schema 3
    s = native.read(V, 0, 8, 2)
    assert s.total() == 4 and s.schema == 0 and int(V[native.SEQ]) % 2 == 0
    native.observe(V, 0, 8, 2, 0.0, 2.0)
    native.observe(V, 0, 8, 2, -3.0, 1.0)
    s = native.read(V, 0, 8, 2)
    assert s.zero_count == 2 and sum(s.neg) == 1 and s.total() == 7


def test_a_reader_waits_for_the_writer():
    V = block()
    native.observe(V, 0, 20, 2, 1.0, 1.0)
    V[native.SEQ] += 1  # a rewrite under way
    assert native.read(V, 0, 20, 2, tries=3) is None
    V[native.SEQ] += 1
    assert native.read(V, 0, 20, 2).total() == 1


def test_spans_and_deltas():
    spans, deltas = native.spans(-3, [0, 2, 1, 0, 0, 4, 0, 0, 0, 0, 1])
    assert spans == [(-2, 5), (4, 1)] and deltas == [2, -1, -1, 0, 4, -3]
    # the counts come back from the deltas, key by key
    keys, count, out = [], 0, {}
    k = 0
    i = 0
    for off, length in spans:
        k += off
        for _ in range(length):
            count += deltas[i]
            i += 1
            out[k] = count
            k += 1
        keys.append(k)
    assert {k: c for k, c in out.items() if c} == {-2: 2, -1: 1, 2: 4, 7: 1}


def test_milliseconds_to_seconds_moves_each_bucket_to_where_its_middle_falls():
    for schema in range(-4, 9):
        shift = native.unit_shift(schema, -native.LOG2_1000)
        for k in range(-50, 50):
            mid_s = native.middle(k, schema) / 1000
            assert native.key(mid_s, schema) == k + shift


@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_crc32_combine(a, b):
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_accept_headers():
    assert choose("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,"
                  "text/plain;version=0.0.4;q=0.3,*/*;q=0.2") == PROTO
    assert choose("text/plain;version=0.0.4;q=1,application/vnd.google.protobuf;proto=io.prometheus.client."
                  "MetricFamily;encoding=delimited;q=0.5") == TEXT
    assert choose("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text") == TEXT
    assert choose("") == TEXT and choose("*/*") == TEXT


def load(h, dags=30, tasks=10):
    rnd = random.Random(1)
    for d in range(dags):
        for t in range(tasks):
            tags = f"dag_id:dag_{d},task_id:t{t}"
            h.send(f"airflow.task.duration:{rnd.lognormvariate(8, 0.3):.1f}|ms|#{tags}",
                   f"airflow.ti.finish:1|c|#{tags},state:success", f"airflow.pool.open_slots:{t}|g|#pool_name:p{t}")
    h.view.apply(h.store.take_journal())


def test_the_protobuf_exposition_as_prometheus_decodes_it(h):
    load(h, dags=5, tasks=4)
    h.send("airflow.task.duration:0|ms|#dag_id:dag_0,task_id:t0")
    r = Renderer(h.view, PROTO, clock=lambda: h.now)
    data = b"".join(p.text() for p in r.pieces())
    fams = {f["name"]: f for f in expfmt.decode_proto(data)}
    assert fams["airflow_ti_finish_total"]["type"] == 0 and len(fams["airflow_ti_finish_total"]["metric"]) == 20
    assert fams["airflow_pool_open_slots"]["type"] == 1
    hist = fams["airflow_task_duration"]
    assert hist["type"] == 4
    for m in hist["metric"]:
        labels = tuple(sorted((x["name"], x["value"]) for x in m["label"]))
        h_ = m["histogram"]
        assert h_["sample_count"] == h.value("airflow_task_duration_count", **dict(labels))
        assert h_["sample_sum"] == pytest.approx(h.value("airflow_task_duration_sum", **dict(labels)))
        assert [b["upper_bound"] for b in h_["bucket"]][:3] == [0.005, 0.01, 0.025]
        assert h_["schema"] == 3 and h_["zero_threshold"] == native.ZERO_THRESHOLD
        assert h_.get("zero_count", 0) + recount(h_) == h_["sample_count"]


def recount(h_: dict) -> int:
    total, count = 0, 0
    for d in h_.get("positive_delta", []):
        count += d
        total += count
    return total


def test_a_scrape_renders_again_only_the_arenas_that_changed(harness):
    h = harness()
    load(h, dags=300, tasks=10)  # at h.now: 1000
    now = [1020.0]  # (a series updated within MARGIN of a rendering is rendered again the next time)
    r = Renderer(h.view, TEXT, clock=lambda: now[0])
    first = b"".join(p.text() for p in r.pieces())
    assert first.decode() == h.view.text()
    check_text(first.decode())
    rendered = r.rendered
    assert rendered > 3
    now[0] += 60  # nothing changed: every arena is reused
    assert b"".join(p.text() for p in r.pieces()) == first and r.rendered == rendered
    h.now = now[0]
    h.send("airflow.task.duration:1|ms|#dag_id:dag_7,task_id:t1")  # one series in one arena
    now[0] += 1
    again = b"".join(p.text() for p in r.pieces())
    assert r.rendered == rendered + 1 and again.decode() == h.view.text()
    fam = h.view.families["airflow_task_duration"]
    assert len(fam.chunks) > 1, "a family that large has arenas of its own"


def test_the_web_side_drops_its_pages_after_reading_them_and_reads_right_again(harness):
    """The web process maps the shared array read-only and releases each group's pages once rendered
    (so the array is resident once, in ingest); what it renders next must still be the ingest's values."""
    import mmap

    from monitor.bridge.exposition import StoreView
    from monitor.bridge.web import releaser

    h = harness()
    load(h, dags=100, tasks=10)
    shared = mmap.mmap(h.store.slots.fd, h.store.slots.capacity * 8, prot=mmap.PROT_READ)
    released = []
    release = releaser(shared)
    web = StoreView(memoryview(shared).cast("d"), lambda a, b: (released.append((a, b)), release(a, b)))
    records = h.store.snapshot_journal()
    h.view.apply(h.store.take_journal())
    web.apply(records)
    now = [1100.0]
    for fmt in (TEXT, PROTO):
        r = Renderer(web, fmt, clock=lambda: now[0])
        plain = Renderer(h.view, fmt, clock=lambda: now[0])
        for round_ in range(3):
            assert b"".join(p.text() for p in r.pieces()) == b"".join(p.text() for p in plain.pieces())
            h.now = now[0]
            h.send(f"airflow.task.duration:{round_ + 2}|ms|#dag_id:dag_7,task_id:t1",
                   f"airflow.ti.finish:1|c|#dag_id:dag_{round_},task_id:t2,state:success")
            h.view.apply(recs := h.store.take_journal())
            web.apply(recs)
            now[0] += 60
    assert released and all(b - a == 1 << GROUP_BITS for a, b in released)


def test_a_gzip_scrape_is_one_gzip_member_of_the_kept_blocks(h):
    load(h, dags=50)
    r = Renderer(h.view, TEXT, clock=lambda: h.now)
    g = GzipStream()
    pieces = list(r.pieces(b"# extra\n"))
    body = g.head() + b"".join(g.add(p) for p in pieces) + g.tail()
    assert gzip.decompress(body) == b"".join(p.text() for p in pieces)
    d = zlib.decompressobj(31)
    assert d.decompress(body) and d.eof and not d.unused_data, "one member: curl reads only the first"


def test_arena_chunks_follow_the_store(h):
    load(h, dags=100)
    for fam in h.view.families.values():
        for arena, chunk in fam.chunks.items():
            assert all(b >> GROUP_BITS == arena for b in chunk)
    assert h.store.slots.top % (1 << ARENA_BITS) == 0



def test_mapping_files_take_statsd_exporters_native_histogram_options(tmp_path, harness):
    from monitor.bridge.mapper import Mapper, load_rules

    p = tmp_path / "m.yml"
    p.write_text("""
mappings:
- match: app.fine.*
  name: fine_seconds
  histogram_options: {native_histogram_bucket_factor: 1.1, native_histogram_max_buckets: 40}
- match: app.coarse.*
  name: coarse_seconds
  histogram_options: {native_histogram_bucket_factor: 2.0}
- match: app.classic.*
  name: classic_seconds
  histogram_options: {native_histogram_bucket_factor: 1}
""")
    rules = load_rules(p)
    assert [r.native for r in rules] == [(3, 40, 5), (0, 20, 2), None]
    h = harness(mapper=Mapper(rules))
    h.send("app.fine.x:1500|ms", "app.coarse.x:1500|ms", "app.classic.x:1500|ms")
    assert h.store.families["fine_seconds"].native == (3, 40, 5)
    assert h.store.families["classic_seconds"].native is None


def test_series_that_go_and_families_that_go_while_rendered_in_both_formats(harness):
    """The web process applies the journal while it renders: drops and forgotten families meanwhile."""
    h = harness(default_ttl=5)
    load(h, dags=50)
    renderers = [Renderer(h.view, fmt, clock=lambda: h.now) for fmt in (TEXT, PROTO)]
    for r in renderers:
        assert list(r.pieces())
    h.now += 100
    h.send("airflow.pool.open_slots:1|g|#pool_name:kept")
    for _ in range(200):
        h.ingest.housekeeping(h.now)
    h.view.apply(h.store.take_journal())
    for r in renderers:
        body = b"".join(p.text() for p in r.pieces())
        assert b"dag_1" not in body and (b"kept" in body)


def test_a_rendering_that_fails_before_any_piece_fails_a_gzip_scrape_first_too():
    """The web process answers 503 when the first thing a scrape gets is a failure (its series still being
    loaded); a gzip scrape got the gzip header first, and so a 200 cut short after 10 bytes."""
    from monitor.bridge.fanout import Failed, Fanout

    def pieces():
        raise RuntimeError("the bridge's series are still being loaded")
        yield  # a generator, as the renderer's

    f = Fanout(pieces, lambda *a: None)
    for gz in (False, True):
        s = f.scrape(gz)
        first = s.q.get(timeout=30)
        assert isinstance(first, Failed) and "still being loaded" in first.why
