"""The OTLP receiver and its mapping, on messages built with opentelemetry-proto: temporality
(cumulative streams, restarts, resets, deltas), the catalog's series and labels, legacy twins,
names outside the catalog, bad bodies, limits and partial successes."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from monitor.bridge import native
from monitor.bridge.otlp import JSON, PROTOBUF, Limits, Receiver
from monitor.bridge.otlpmap import OtlpIngest, otlp_label, otlp_name
from monitor.http.server import Request
from testkit.expfmt import check_text

CUMULATIVE, DELTA = 2, 1


def kv(d: dict) -> list[KeyValue]:
    out = []
    for k, v in d.items():
        av = AnyValue(int_value=v) if isinstance(v, int) and not isinstance(v, bool) else AnyValue(string_value=v)
        out.append(KeyValue(key=k, value=av))
    return out


def number(value, attrs=None, start=1, t=2) -> pb.NumberDataPoint:
    dp = pb.NumberDataPoint(attributes=kv(attrs or {}), start_time_unix_nano=start, time_unix_nano=t)
    if isinstance(value, int):
        dp.as_int = value
    else:
        dp.as_double = value
    return dp


def sum_metric(name, points, temporality=CUMULATIVE, monotonic=True, unit="") -> pb.Metric:
    return pb.Metric(name=name, unit=unit, sum=pb.Sum(data_points=points, aggregation_temporality=temporality,
                                                       is_monotonic=monotonic))


def gauge_metric(name, points, unit="") -> pb.Metric:
    return pb.Metric(name=name, unit=unit, gauge=pb.Gauge(data_points=points))


def exp_point(values_ms: list[float], attrs=None, scale=3, start=1) -> pb.ExponentialHistogramDataPoint:
    """An exponential histogram point holding these values (OTel's bucket i: (2^(i/2^s), 2^((i+1)/2^s)])."""
    idx = [native.key(v, scale) - 1 for v in values_ms if v > 0]
    zero = sum(1 for v in values_ms if v == 0)
    lo = min(idx) if idx else 0
    counts = [0] * ((max(idx) - lo + 1) if idx else 0)
    for i in idx:
        counts[i - lo] += 1
    return pb.ExponentialHistogramDataPoint(
        attributes=kv(attrs or {}), start_time_unix_nano=start, time_unix_nano=start + 1, count=len(values_ms),
        sum=sum(values_ms), scale=scale, zero_count=zero,
        positive=pb.ExponentialHistogramDataPoint.Buckets(offset=lo, bucket_counts=counts))


def exp_metric(name, points, temporality=CUMULATIVE, unit="ms") -> pb.Metric:
    return pb.Metric(name=name, unit=unit, exponential_histogram=pb.ExponentialHistogram(
        data_points=points, aggregation_temporality=temporality))


def request(*metrics, resource=None) -> ExportMetricsServiceRequest:
    res = {"service.name": "airflow", **(resource or {})}
    return ExportMetricsServiceRequest(resource_metrics=[pb.ResourceMetrics(
        resource={"attributes": kv(res)}, scope_metrics=[pb.ScopeMetrics(metrics=list(metrics))])])


class Otlp:
    """The receiver's HTTP application wired to the ingest side in one process (the bridge puts a
    channel between them), over the unit tests' harness."""

    def __init__(self, h, limits: Limits | None = None):
        self.h = h
        self.otlp = OtlpIngest(h.ingest)

        def submit(frames, names) -> Counter:
            out: Counter = Counter()
            for f in frames:
                out.update(self.otlp.apply(f, names, now=h.now))
            return out

        self.receiver = Receiver(submit, limits)

    def post(self, body, content_type=PROTOBUF, encoding="", method="POST", path="/v1/metrics"):
        if not isinstance(body, bytes):
            body = body.SerializeToString()
        headers = {"content-type": content_type}
        if encoding:
            headers["content-encoding"] = encoding
        return self.receiver(Request(method, path, "", "HTTP/1.1", headers, body, "127.0.0.1"))

    def send(self, *metrics, **kw):
        r = self.post(metrics[0] if isinstance(metrics[0], ExportMetricsServiceRequest) else request(*metrics, **kw))
        assert r.status == 200, r.body
        return r


@pytest.fixture
def o(h):
    return Otlp(h)


FIN = {"dag_id": "team.sales", "task_id": "extract.load", "state": "success"}
FIN_LABELS = {"dag_id": "team.sales", "task_id": "extract.load", "state": "success"}


def test_cumulative_sums_count_what_each_stream_grew_by(o, h):
    for v in (3, 5, 5, 9):
        o.send(sum_metric("airflow.ti.finish", [number(v, FIN)]))
    assert h.value("airflow_ti_finish_total", **FIN_LABELS) == 9


def test_a_restarted_stream_counts_from_zero_and_the_old_one_is_not_counted_again(o, h):
    o.send(sum_metric("airflow.ti.finish", [number(9, FIN, start=100)]))
    o.send(sum_metric("airflow.ti.finish", [number(2, FIN, start=200)]))  # the process restarted
    o.send(sum_metric("airflow.ti.finish", [number(3, FIN, start=200)]))
    assert h.value("airflow_ti_finish_total", **FIN_LABELS) == 12


def test_a_cumulative_value_that_goes_down_is_a_reset(o, h):
    for v in (9, 4, 6):
        o.send(sum_metric("airflow.ti.finish", [number(v, FIN, start=100)]))
    assert h.value("airflow_ti_finish_total", **FIN_LABELS) == 9 + 4 + 2


def test_two_processes_with_the_same_resource_are_two_streams(o, h):
    """Short-lived task processes on one host share every resource attribute; their start time
    tells their streams apart, and each one's growth adds up in the one series."""
    for a, b in ((5, 3), (6, 4)):
        o.send(sum_metric("airflow.ti.finish", [number(a, FIN, start=100), number(b, FIN, start=101)]))
    assert h.value("airflow_ti_finish_total", **FIN_LABELS) == 10


def test_a_live_streams_total_is_not_counted_again_after_many_other_resources(o, h):
    """Each forked task process is a resource of its own (its service.instance.id). A stream is known by
    its resource's attributes, not by an id from a map of resources: a clear of that map at 100,000 gave
    a scheduler's streams new ids, and each one's whole total was added again."""
    sched = {"service.name": "airflow", "service.instance.id": "sched-A"}
    o.send(sum_metric("airflow.ti.finish", [number(100, FIN)]), resource=sched)
    fill = sum_metric("airflow.ti.finish", [number(1, {**FIN, "dag_id": "other"})])
    for base in range(0, 100_500, 10_000):
        o.send(ExportMetricsServiceRequest(resource_metrics=[pb.ResourceMetrics(
            resource={"attributes": kv({"service.name": "airflow", "service.instance.id": f"task-{i}"})},
            scope_metrics=[pb.ScopeMetrics(metrics=[fill])]) for i in range(base, min(base + 10_000, 100_500))]))
    o.send(sum_metric("airflow.ti.finish", [number(110, FIN)]), resource=sched)
    assert h.value("airflow_ti_finish_total", **FIN_LABELS, pod="sched-A") == 110


def test_a_repeated_cumulative_export_counts_nothing_twice(o, h):
    """A client that retries an export it thinks failed sends the same cumulative values again."""
    m = sum_metric("airflow.ti.finish", [number(4, FIN)])
    o.send(m)
    o.send(m)
    assert h.value("airflow_ti_finish_total", **FIN_LABELS) == 4


def test_delta_sums_add_gauges_set_updown_counters_set_or_add(o, h):
    o.send(sum_metric("airflow.ti.finish", [number(2, FIN)], temporality=DELTA))
    o.send(sum_metric("airflow.ti.finish", [number(3, FIN)], temporality=DELTA))
    assert h.value("airflow_ti_finish_total", **FIN_LABELS) == 5
    o.send(gauge_metric("airflow.pool.open_slots", [number(7.0, {"pool_name": "p"})]))
    o.send(gauge_metric("airflow.pool.open_slots", [number(4.0, {"pool_name": "p"})]))
    assert h.value("airflow_pool_open_slots", pool="p") == 4
    o.send(sum_metric("app.queue.depth", [number(8)], monotonic=False))
    o.send(sum_metric("app.queue.depth", [number(6)], monotonic=False))
    assert h.value("app_queue_depth") == 6
    o.send(sum_metric("app.inflight", [number(3)], temporality=DELTA, monotonic=False))
    o.send(sum_metric("app.inflight", [number(-1)], temporality=DELTA, monotonic=False))
    assert h.value("app_inflight") == 2


def test_an_updown_counter_the_catalog_calls_a_counter_counts_its_rises(o, h):
    """dag_processing.processes: Airflow's only up-down counter, +1 per started processor (action=start),
    -1 per stopped one; statsd refuses the decrements, and so does this."""
    start = {"file_path": "a.py", "action": "start"}
    stop = {"file_path": "a.py", "action": "stop"}
    o.send(sum_metric("airflow.dag_processing.processes", [number(2, start), number(-1, stop)], monotonic=False))
    o.send(sum_metric("airflow.dag_processing.processes", [number(3, start), number(-2, stop)], monotonic=False))
    assert h.value("airflow_dag_processing_processes_total", file_path="a.py", action="start") == 3
    assert h.value("airflow_dag_processing_processes_total", file_path="a.py", action="stop") is None
    assert h.ingest.stats.dropped["negative_counter"] == 2


def test_exponential_histograms_are_native_in_seconds_and_counted_in_the_classic_buckets(o, h):
    values = [1500.0, 2500.0, 900.0, 40.0, 0.0]
    attrs = {"dag_id": "d", "task_id": "t"}
    o.send(exp_metric("airflow.task.duration", [exp_point(values, attrs)]))
    assert h.value("airflow_task_duration_count", dag_id="d", task_id="t") == 5
    assert h.value("airflow_task_duration_sum", dag_id="d", task_id="t") == pytest.approx(4.94)
    assert h.value("airflow_task_duration_bucket", dag_id="d", task_id="t", le="0.05") == 2  # 0 and 40 ms
    assert h.value("airflow_task_duration_bucket", dag_id="d", task_id="t", le="1.0") == 3
    assert h.value("airflow_task_duration_bucket", dag_id="d", task_id="t", le="2.5") == 5
    snap = native_of(h, "airflow_task_duration", (("dag_id", "d"), ("task_id", "t")))
    # 40 ms to 2.5 s is six powers of two: 48 buckets at schema 3, over the 20 a series keeps; the
    # schema went down (each step halves the resolution) until they fit
    assert snap.schema == 1 and snap.zero_count == 1 and snap.total() == 5
    assert keys(snap) == sorted(native.key(v / 1000, 1) for v in values if v)
    # within the window, the schema stays
    o.send(exp_metric("airflow.task.duration", [exp_point([1500.0, 1200.0, 1700.0], {"dag_id": "d", "task_id": "u"})]))
    snap = native_of(h, "airflow_task_duration", (("dag_id", "d"), ("task_id", "u")))
    assert snap.schema == 3
    # each value's bucket in seconds: within one bucket of its own (a millisecond bucket moves by a fraction)
    assert all(abs(a - b) <= 1 for a, b in zip(keys(snap), [native.key(v, 3) for v in (1.2, 1.5, 1.7)],
                                                strict=True))
    check_text(h.text())


def test_a_timer_airflow_passes_in_seconds_stays_in_seconds(o, h):
    """dag_processing.last_duration (3.2+): Stats.timing() of a float of seconds, which Airflow's OTel logger
    records as it is, in a histogram whose unit says ms; as its statsd line, it is seconds already."""
    attrs = {"bundle_name": "dags-folder", "file_name": "a.py"}
    o.send(exp_metric("airflow.dag_processing.last_duration", [exp_point([1.5, 0.25], attrs)]))
    labels = {"bundle": "dags-folder", "dag_file": "a.py"}
    assert h.value("airflow_dag_processing_last_duration_count", **labels) == 2
    assert h.value("airflow_dag_processing_last_duration_sum", **labels) == pytest.approx(1.75)


def keys(snap: native.Snapshot) -> list[int]:
    return sorted(k for k, c in zip(range(snap.pos_offset, snap.pos_offset + len(snap.pos)), snap.pos, strict=True)
                  for _ in range(int(c)))


def native_of(h, family: str, labels: tuple) -> native.Snapshot:
    fam = h.store.families[family]
    base = fam.series[labels]
    return native.read(h.store.vals, base + fam.native_at, fam.native[1], fam.native[2])


def test_cumulative_exponential_histograms_through_a_change_of_scale(o, h):
    """The SDK lowers a cumulative histogram's scale as its range grows; the delta is taken at the lower."""
    attrs = {"dag_id": "d", "task_id": "t"}
    first = [100.0, 110.0]
    o.send(exp_metric("airflow.task.duration", [exp_point(first, attrs, scale=6)]))
    second = first + [5000.0, 120.0]
    o.send(exp_metric("airflow.task.duration", [exp_point(second, attrs, scale=2)]))
    assert h.value("airflow_task_duration_count", dag_id="d", task_id="t") == 4
    assert h.value("airflow_task_duration_bucket", dag_id="d", task_id="t", le="0.25") == 3
    snap = native_of(h, "airflow_task_duration", (("dag_id", "d"), ("task_id", "t")))
    assert snap.total() == 4 and snap.schema <= 2
    o.send(exp_metric("airflow.task.duration", [exp_point([7.0], attrs, scale=2)]))  # shrank: a reset
    assert h.value("airflow_task_duration_count", dag_id="d", task_id="t") == 5


def test_delta_exponential_histograms_add(o, h):
    attrs = {"dag_id": "d", "task_id": "t"}
    for vs in ([100.0], [200.0, 300.0]):
        o.send(exp_metric("airflow.task.duration", [exp_point(vs, attrs)], temporality=DELTA))
    assert h.value("airflow_task_duration_count", dag_id="d", task_id="t") == 3


def test_the_pod_label_comes_from_service_instance_id_or_host_name(o, h):
    o.send(gauge_metric("airflow.executor.open_slots", [number(3, {"executor": "LocalExecutor"})]),
           resource={"service.instance.id": "airflow-scheduler-0", "host.name": "node-1"})
    o.send(gauge_metric("airflow.executor.open_slots", [number(4, {"executor": "LocalExecutor"})]),
           resource={"host.name": "airflow-scheduler-1"})
    got = h.samples("airflow_executor_open_slots")
    assert got == {(("executor", "LocalExecutor"), ("pod", "airflow-scheduler-0")): 3,
                   (("executor", "LocalExecutor"), ("pod", "airflow-scheduler-1")): 4}


def test_a_legacy_twin_is_dropped_when_its_tagged_form_comes_in_the_request(o, h):
    legacy = sum_metric("airflow.ti.finish.team__sales.extract__load.success", [number(1)])
    # Airflow creates the legacy instrument first: it comes first in the export
    o.send(legacy, sum_metric("airflow.ti.finish", [number(1, FIN)]))
    assert h.samples("airflow_ti_finish_total") == {tuple(sorted(FIN_LABELS.items())): 1}
    o.send(sum_metric("airflow.ti.finish.team__sales.extract__load.success", [number(2)]))  # tagged form seen lately
    assert h.samples("airflow_ti_finish_total") == {tuple(sorted(FIN_LABELS.items())): 1}
    assert h.ingest.stats.dropped["legacy_twin"] == 2


def test_a_legacy_form_alone_is_counted(o, h):
    """An Airflow line that sends a metric only under its legacy name (ids in the name)."""
    o.send(gauge_metric("airflow.dag_processing.last_run.seconds_ago.team_sales", [number(12.0)]))
    assert h.value("airflow_dag_processing_last_run_seconds_ago", dag_file="team_sales") == 12


def test_names_outside_the_catalog_are_named_as_prometheus_otlp_translation_does(o, h):
    assert otlp_name("http.server.request.duration", "s", "exph_c") == "http_server_request_duration_seconds"
    assert otlp_name("requests.total.count", "", "sum_c") == "requests_count"  # the store adds _total
    assert otlp_name("cpu.utilization", "1", "gauge") == "cpu_utilization_ratio"
    assert otlp_name("io.rate", "By/s", "gauge") == "io_rate_bytes_per_second"
    assert otlp_name("9lives__x", "{items}", "gauge") == "_9lives_x"
    assert otlp_label("http.method") == "http_method" and otlp_label("0x") == "key_0x" and otlp_label("_a") == "key_a"
    o.send(sum_metric("app.jobs.done", [number(4, {"http.method": "GET"})], unit="{jobs}"))
    o.send(exp_metric("app.latency", [exp_point([12.0])], unit="ms"))
    assert h.value("app_jobs_done_total", http_method="GET") == 4
    assert h.value("app_latency_milliseconds_count") == 1
    assert h.value("app_latency_milliseconds_sum") == 12  # its own unit, as its name says


def test_unmapped_drop_and_reserved_names(harness):
    from monitor.bridge.mapper import Mapper

    h = harness(mapper=Mapper(unmapped="drop"))
    o = Otlp(h)
    r = o.send(sum_metric("app.jobs", [number(1)]), sum_metric("airflow.ti.finish", [number(1, FIN)]))
    assert h.value("airflow_ti_finish_total", **FIN_LABELS) == 1 and h.ingest.stats.dropped["unmapped"] == 1
    assert r.body == b""  # not a rejection: a policy
    o2 = Otlp(harness())
    r = o2.post(request(gauge_metric("airflow_monitor_bridge_series", [number(1)])))
    assert partial(r)[0] == 1 and "reserved" in partial(r)[1]


def partial(r) -> tuple[int, str]:
    msg = ExportMetricsServiceResponse.FromString(r.body)
    return msg.partial_success.rejected_data_points, msg.partial_success.error_message


# ---------------------------------------------------------------- bodies and answers
def status_message(r) -> str:
    """google.rpc.Status{code=1, message=2}: read its message field."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(name="status_test.proto", package="t")
    m = fd.message_type.add(name="Status")
    m.field.add(name="code", number=1, type=5, label=1)
    m.field.add(name="message", number=2, type=9, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Status"))
    return cls.FromString(r.body).message


def test_bad_bodies_get_otlp_error_statuses_and_are_counted(o):
    r = o.post(b"\xff\xff\xff garbage")
    assert r.status == 400 and r.content_type == PROTOBUF and "cannot be decoded" in status_message(r)
    r = o.post(b"{not json", content_type=JSON)
    assert r.status == 400 and json.loads(r.body)["message"].startswith("the JSON body cannot be decoded")
    assert o.post(b"x", content_type="text/plain").status == 415
    assert o.post(request(), encoding="br").status == 415
    assert o.post(b"not gzip", encoding="gzip").status == 400
    assert o.post(request(), method="GET").status == 405
    assert o.post(request(), path="/v1/traces").status == 404
    assert o.receiver.requests == Counter({"decode_error": 2, "unsupported_media_type": 1,
                                           "unsupported_encoding": 1, "bad_gzip": 1, "method_not_allowed": 1,
                                           "not_found": 1})


def test_bodies_are_bounded_before_and_after_decompression(h):
    o = Otlp(h, Limits(max_body=10_000))
    assert o.post(b"\0" * 10_001).status == 413
    bomb = gzip.compress(b"\0" * 5_000_000)  # 5 KB that inflate to 5 MB
    assert len(bomb) < 10_000
    r = o.post(bomb, encoding="gzip")
    assert r.status == 413 and "once decompressed" in status_message(r)
    ok = o.post(gzip.compress(request(sum_metric("airflow.ti.finish", [number(2, FIN)])).SerializeToString()),
                encoding="gzip")
    assert ok.status == 200 and h.value("airflow_ti_finish_total", **FIN_LABELS) == 2


def test_json_bodies_as_otlp_writes_them(o, h):
    doc = json_format.MessageToDict(request(sum_metric("airflow.ti.finish", [number(3, FIN)])))
    # OTLP/JSON: exemplars' ids in hex (not protobuf JSON's base64), which the bridge does not use
    doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"]["dataPoints"][0]["exemplars"] = [
        {"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174", "asDouble": 1.0,
         "timeUnixNano": "1"}]
    doc["unknownField"] = 1  # a newer OTLP's field: ignored
    r = o.post(json.dumps(doc).encode(), content_type=JSON)
    assert r.status == 200 and r.content_type == JSON and json.loads(r.body) == {}
    assert h.value("airflow_ti_finish_total", **FIN_LABELS) == 3


def test_limits_reject_points_with_a_partial_success(h):
    o = Otlp(h, Limits(max_points=3, max_attributes=4))
    many = {f"k{i}": "v" for i in range(5)}
    r = o.post(request(
        sum_metric("app.a", [number(1), number(1, {"x": "1"}), number(1, many)]),
        sum_metric("app.b", [number(1), number(1, {"y": "2"})]),  # over max_points from the 4th point on
    ))
    assert r.status == 200 and partial(r)[0] == 3
    msg = partial(r)[1]
    assert "2 more data points in one request than --otlp-max-points" in msg and "attributes" in msg
    r = o.post(request(sum_metric("app.c", [number(float("nan")), number(-1)]),
                       gauge_metric("app.d", [number(1.0, {"k": "v" * 2000})]),
                       pb.Metric(name="app.s", summary=pb.Summary(data_points=[pb.SummaryDataPoint(count=1)]))))
    assert partial(r)[0] == 4
    assert o.receiver.rejected == Counter({"too_many_points": 2, "too_many_attributes": 1, "invalid_value": 2,
                                           "label_value_too_long": 1, "unsupported_type": 1})


def test_a_point_the_store_refuses_is_reported(harness):
    h = harness(max_series=2)
    o = Otlp(h)
    r = o.post(request(gauge_metric("app.g", [number(1.0, {"i": str(i)}) for i in range(4)])))
    assert r.status == 200 and partial(r)[0] == 2 and "series_cap" in partial(r)[1]


def test_a_full_success_has_no_partial_success(o):
    r = o.send(sum_metric("airflow.ti.finish", [number(1, FIN)]))
    assert r.body == b"" and not ExportMetricsServiceResponse.FromString(r.body).HasField("partial_success")


def test_histogram_samples_reach_the_datadog_sink(o, h):
    from collections import deque

    h.ingest.timer_samples = deque()
    o.send(exp_metric("airflow.task.duration", [exp_point([1500.0, 1500.0, 3.0], {"dag_id": "d", "task_id": "t"})]))
    got = sorted(h.ingest.timer_samples, key=lambda x: x[1])
    assert [w for _, _, w in got] == [1.0, 2.0]
    assert got[0][1] == pytest.approx(0.003, rel=0.1) and got[1][1] == pytest.approx(1.5, rel=0.1)


def test_past_the_sdks_cardinality_limit_the_legacy_twins_fill_in(o, h, caplog):
    """The OTel SDK keeps 2,000 attribute sets per instrument; the rest become one point with
    otel.metric.overflow=true and no ids. Airflow's legacy names (one instrument each) still carry
    them: those the tagged form lost are counted from there, the others stay twins."""
    tagged = [number(1, {"dag_id": "team.a", "task_id": "t", "state": "success"}),
              number(2, {"dag_id": "b", "task_id": "t", "state": "success"})]
    overflow = pb.NumberDataPoint(attributes=[KeyValue(key="otel.metric.overflow", value=AnyValue(bool_value=True))],
                                  as_int=3, start_time_unix_nano=1)
    legacy = [sum_metric(f"airflow.ti.finish.{d}.t.success", [number(n)]) for d, n in
              (("team__a", 1), ("b", 2), ("c", 3))]
    with caplog.at_level("WARNING"):
        o.send(*legacy, sum_metric("airflow.ti.finish", [*tagged, overflow]))
    assert h.samples("airflow_ti_finish_total") == {
        (("dag_id", "team.a"), ("state", "success"), ("task_id", "t")): 1,
        (("dag_id", "b"), ("state", "success"), ("task_id", "t")): 2,
        (("dag_id", "c"), ("state", "success"), ("task_id", "t")): 3}  # from its legacy name
    assert h.ingest.stats.dropped["legacy_twin"] == 2 and h.ingest.stats.dropped["otel_overflow"] == 1
    assert any("cardinality limit" in r.getMessage() for r in caplog.records)


def test_the_sdks_random_instance_id_is_no_pod(o, h):
    """The SDK sets service.instance.id to a random UUID per process (and again after a fork) when the
    user does not: a label of it would make a new series of each task run."""
    o.send(sum_metric("airflow.ti.finish", [number(1, FIN)]),
           resource={"service.instance.id": "e692a885-8e97-4ef6-a9a0-f391a943c3df"})
    o.send(sum_metric("airflow.ti.finish", [number(1, FIN)]),
           resource={"service.instance.id": "0b1e3c55-1f0a-4d6e-9a43-7d2b1c9e8f10"})
    assert h.samples("airflow_ti_finish_total") == {tuple(sorted(FIN_LABELS.items())): 2}
