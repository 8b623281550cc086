"""A real Airflow 3.3.2 with OpenTelemetry metrics (`[metrics] otel_on`, the OTEL_* variables)
pointed at the bridge's OTLP port, beside the same Airflow sending statsd with InfluxDB tags, on the
same DAG: the series a user scrapes are the same, timers in seconds in the same ranges. A real
Prometheus 2.42 with native histograms scrapes the OTLP bridge over protobuf.

The DAG `team.sales_daily` has a dot in its dag_id, a task in a task group (`extract.load`, succeeds)
and a task that fails (`boom`).
"""

from __future__ import annotations

import gzip
import time
import urllib.request

import pytest

from monitor import catalog
from testkit import expfmt
from testkit.airflow import Airflow, otel_env, pods_in, second_scheduler, statsd_env
from testkit.bridge import BridgeProcess
from tests.integration.tools import Prometheus

pytestmark = pytest.mark.integration
DAG = "team.sales_daily"
TASKS = ("extract.load", "boom")
# families a scheduler sends whenever it loops, whatever ran: which of them a 2-minute run sees
# depends on timing, not on the mode
TIMING = {"airflow_scheduler_tasks_starving", "airflow_scheduler_critical_section_query_duration",
          "airflow_scheduler_critical_section_duration", "airflow_dag_processing_processes",
          "airflow_dag_processing_file_path_queue_update_count", "airflow_scheduler_orphaned_tasks_cleared",
          "airflow_scheduler_orphaned_tasks_adopted", "airflow_api_server_dag_bag_cache_size",
          "airflow_api_server_dag_bag_cache_hit", "airflow_api_server_dag_bag_cache_miss",
          # sent with a sample rate (DBDagBag._on_cache_size) or on a cache event: one run may not send them
          "airflow_scheduler_dag_bag_cache_size", "airflow_scheduler_dag_bag_cache_hit",
          "airflow_scheduler_dag_bag_cache_miss"}


def run_airflow(tmp, venv, bridge: BridgeProcess, env: dict) -> tuple[dict, dict]:
    af = Airflow(home=tmp / "airflow", venv=venv, env_extra=env)
    try:
        af.start()
        run_id = af.trigger(DAG)
        assert af.wait_run(DAG, run_id) == "failed", "boom fails on purpose, so the run fails"
        # the task processes flush at exit; the scheduler exports every 2 s
        bridge.wait_for(lambda m: m.get("airflow_dagrun_duration_count")
                        and len(m.get("airflow_task_duration_count", {})) >= 2, timeout=60)
        time.sleep(5)
        m = bridge.scrape()
        # what Airflow observed: a task's duration as its runner timed it (one run, one observation)
        durations = {dict(k)["task_id"]: v for k, v in m["airflow_task_duration_sum"].items()
                     if dict(k).get("dag_id") == DAG}
        return m, durations
    except BaseException:
        print(af.log_tail(80))
        raise
    finally:
        af.stop()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, venv):
    tmp = tmp_path_factory.mktemp("airflow-otlp")
    statsd_bridge = BridgeProcess(tmp / "s")
    try:
        statsd, _ = run_airflow(tmp / "s", venv, statsd_bridge, statsd_env(statsd_bridge.udp, "influxdb"))
    finally:
        statsd_bridge.stop()
    bridge = BridgeProcess(tmp / "o")
    prom = Prometheus(tmp / "prometheus", f"127.0.0.1:{bridge.http}", flags=["--enable-feature=native-histograms"])
    try:
        otlp, durations = run_airflow(tmp / "o", venv, bridge, otel_env(bridge.otlp, "airflow-scheduler-0"))
        proto = scrape_proto(bridge)
        deadline = time.monotonic() + 30  # Prometheus scrapes every 2 s
        while time.monotonic() < deadline and not prom.query(
                f'airflow_task_duration{{dag_id="{DAG}",task_id="extract.load"}}')["data"]["result"]:
            time.sleep(1)
        yield statsd, otlp, durations, proto, prom, bridge
    finally:
        prom.stop()
        bridge.stop()


def scrape_proto(bridge: BridgeProcess) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{bridge.http}/metrics", headers={
        "Accept": "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;"
                  "q=0.7,text/plain;version=0.0.4;q=0.3", "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("application/vnd.google.protobuf")
        return {f["name"]: f for f in expfmt.decode_proto(gzip.decompress(r.read()))}


def airflow_families(m: dict) -> set[str]:
    out = set()
    for name in m:
        if name.startswith("airflow_") and not name.startswith(("airflow_monitor_", "airflow_sla_")):
            for suffix in ("_bucket", "_sum", "_count", "_total"):
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            out.add(name)
    return out


def strip_pod(samples: dict) -> dict:
    return {tuple(kv for kv in k if kv[0] != "pod"): v for k, v in samples.items()}


def only(samples: dict, **labels) -> float:
    hits = [v for k, v in samples.items() if labels.items() <= dict(k).items()]
    assert len(hits) == 1, (labels, samples)
    return hits[0]


def test_the_same_families_as_statsd(runs):
    statsd, otlp, *_ = runs
    s, o = airflow_families(statsd) - TIMING, airflow_families(otlp) - TIMING
    assert s == o, f"only statsd: {sorted(s - o)}; only OTLP: {sorted(o - s)}"
    known = catalog.prometheus_series_names()
    stray = {n for n in otlp if n.startswith("airflow_") and not n.startswith("airflow_monitor_") and n not in known}
    assert not stray, f"series outside the catalog: {sorted(stray)}"


def test_task_and_run_series_have_the_same_labels_and_values(runs):
    statsd, otlp, *_ = runs
    for family in ("airflow_ti_finish_total", "airflow_ti_start_total", "airflow_task_duration_count",
                   "airflow_dagrun_duration_count", "airflow_operator_successes_total", "airflow_ti_successes_total"):
        assert strip_pod(otlp[family]) == statsd[family], family
    fin = otlp["airflow_ti_finish_total"]
    assert only(fin, dag_id=DAG, task_id="extract.load", state="success") == 1
    assert only(fin, dag_id=DAG, task_id="boom", state="failed") == 1
    assert not [k for k in fin if "__" in dict(k)["dag_id"]], "no second, mangled series"


def test_timers_are_seconds_in_the_same_ranges(runs):
    statsd, otlp, *_ = runs
    for family in ("airflow_task_duration", "airflow_dagrun_duration", "airflow_dagrun_dependency_check",
                   "airflow_scheduler_scheduler_loop_duration_seconds", "airflow_dag_processing_last_duration"):
        mean = {}
        for name, m in (("statsd", statsd), ("otlp", otlp)):
            count = sum(m[family + "_count"].values())
            assert count > 0, (name, family)
            mean[name] = sum(m[family + "_sum"].values()) / count
        # dag_processing.last_duration: Airflow times it in seconds and sends it as milliseconds, in
        # both modes alike (so it is tiny here); the others are real milliseconds
        assert 1e-6 < mean["otlp"] < 120, (family, mean)
        assert mean["otlp"] / 20 < mean["statsd"] < mean["otlp"] * 20, (family, mean)


def test_scheduler_gauges_carry_the_pod(runs):
    _, otlp, *_ = runs
    assert only(otlp["airflow_pool_open_slots"], pool="default_pool", pod="airflow-scheduler-0") > 0
    assert only(otlp["airflow_executor_open_slots"], executor="LocalExecutor", pod="airflow-scheduler-0") > 0
    assert otlp["airflow_scheduler_heartbeat_total"][(("pod", "airflow-scheduler-0"),)] >= 1


def test_legacy_twins_are_dropped_and_nothing_is_refused(runs):
    _, otlp, *_ = runs
    dropped = {dict(k)["reason"]: v for k, v in otlp["airflow_monitor_bridge_dropped_total"].items()}
    # negative_counter: dag_processing.processes' falls, refused as statsd refuses its decrements
    assert set(dropped) - {"negative_counter"} == {"legacy_twin"}, dropped
    requests = {dict(k)["outcome"]: v for k, v in otlp["airflow_monitor_bridge_otlp_requests_total"].items()}
    assert requests["ok"] > 0 and not any(v for k, v in requests.items() if k != "ok"), requests
    assert not otlp.get("airflow_monitor_bridge_otlp_rejected_points_total")


def test_protobuf_carries_native_histograms(runs):
    _, otlp, durations, proto, *_ = runs
    fam = proto["airflow_task_duration"]
    assert fam["type"] == 4
    assert {x["value"] for m in fam["metric"] for x in m["label"] if x["name"] == "task_id"} == set(TASKS)
    for metric in fam["metric"]:
        labels = {x["name"]: x["value"] for x in metric["label"]}
        h = metric["histogram"]
        assert -4 <= h["schema"] <= 8 and h["positive_span"] and h["zero_threshold"] > 0, h
        assert sum(h["positive_delta"]) >= 1  # one observation: one bucket (deltas sum to the last count)
        assert len(h["bucket"]) == len(otlp["airflow_task_duration_bucket"]) // 2 - 1  # the classic ones beside
        assert h["sample_count"] == 1 and abs(h["sample_sum"] - durations[labels["task_id"]]) < 1e-9


def test_prometheus_histogram_quantile_agrees_with_the_durations(runs):
    *_, durations, _proto, prom, _bridge = runs
    for task in TASKS:
        got = prom.query(f'histogram_quantile(0.5, airflow_task_duration{{dag_id="{DAG}",task_id="{task}"}})')
        result = got["data"]["result"]
        assert result, got
        value = float(result[0]["value"][1])
        # one observation: within its native bucket (schema 3 or finer: 9 % wide), shifted by at most a
        # bucket from milliseconds to seconds
        assert abs(value - durations[task]) <= 0.2 * durations[task], (task, value, durations[task])
    # the classic buckets are not what Prometheus stored: it took the native histogram
    assert not prom.query(f'airflow_task_duration_bucket{{dag_id="{DAG}"}}')["data"]["result"]


def test_a_text_scraper_still_gets_valid_text(runs):
    *_, bridge = runs
    text = bridge.get("/metrics")[1]
    expfmt.check_text(text)
    expfmt.parse(text)


@pytest.fixture(scope="module")
def ha(tmp_path_factory, venv, postgres):
    """Two real schedulers on PostgreSQL, each with its own service.instance.id, as Airflow's docs set
    it (OTEL_RESOURCE_ATTRIBUTES=service.instance.id=$(hostname)); no statsd tag anywhere."""

    tmp = tmp_path_factory.mktemp("airflow-otlp-ha")
    url = postgres("airflow_otlp_ha").replace("postgresql://", "postgresql+psycopg2://")
    bridge = BridgeProcess(tmp)
    af = Airflow(home=tmp / "airflow", venv=venv, env_extra={
        **otel_env(bridge.otlp, "airflow-scheduler-0"), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url})
    try:
        af.start()
        with second_scheduler(af, otel_env(bridge.otlp, "airflow-scheduler-1"), tmp / "scheduler-1.log"):
            pods = {"airflow-scheduler-0", "airflow-scheduler-1"}
            yield bridge.wait_for(lambda m: pods_in(m, pods), timeout=120)
    except BaseException:
        print(af.log_tail(80))
        raise
    finally:
        af.stop()
        bridge.stop()


def test_two_schedulers_give_two_gauge_series(ha):
    slots = ha["airflow_executor_open_slots"]
    by_pod = {dict(k)["pod"]: v for k, v in slots.items()}
    assert set(by_pod) == {"airflow-scheduler-0", "airflow-scheduler-1"}, slots
    assert all(0 < v <= 4 for v in by_pod.values()), by_pod  # each LocalExecutor's parallelism
    assert sum(by_pod.values()) > 4, "the dashboards' sum across pods: both executors' capacity"
    for k in ha["airflow_scheduler_heartbeat_total"]:
        assert dict(k)["pod"].startswith("airflow-scheduler-"), "every heartbeat series says whose it is"
