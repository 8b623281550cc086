import math
import os

import pytest


def test_counter_gauge_histogram_basics(h):
    h.send("airflow.scheduler_heartbeat:1|c", "airflow.scheduler_heartbeat:1|c",
           "airflow.dagbag_size:5|g", "airflow.dagbag_size:+2|g", "airflow.dagbag_size:-1|g",
           "airflow.scheduler.scheduler_loop_duration:250|ms")
    assert h.value("airflow_scheduler_heartbeat_total") == 2
    assert h.value("airflow_dagbag_size") == 6
    assert h.value("airflow_scheduler_scheduler_loop_duration_seconds_count") == 1
    assert h.value("airflow_scheduler_scheduler_loop_duration_seconds_sum") == pytest.approx(0.25)
    assert h.value("airflow_scheduler_scheduler_loop_duration_seconds_bucket", le="0.25") == 1
    assert h.value("airflow_scheduler_scheduler_loop_duration_seconds_bucket", le="0.1") == 0


def test_sample_rate_multi_value_and_multiline(h):
    h.send("airflow.ti_successes:1|c|@0.5", "airflow.ti_successes:1:1:1|c",
           "airflow.dagbag_size:1|g\nairflow.dagbag_size:7|g\n")
    assert h.value("airflow_ti_successes_total") == 5
    assert h.value("airflow_dagbag_size") == 7
    assert h.ingest.stats.lines == 4


def test_bad_input_is_counted_and_loses_nothing(h):
    h.send("airflow.ti_successes:1|c")
    h.send(b"airflow.ti_successes:\xff|c", b"\xff\xfe:1|c", "airflow.ti_successes:-1|c",
           "airflow.ti_successes:nan|c", "garbage", "x:1|q", "airflow.dagbag_size:inf|g", b"x" * 70000)
    h.send("airflow.ti_successes:2|c")
    assert h.value("airflow_ti_successes_total") == 3
    errs = h.ingest.stats.parse_errors
    assert errs["invalid_value"] == 3 and errs["invalid_utf8"] == 1 and errs["negative_counter"] == 1
    assert errs["malformed_line"] == 1 and errs["unknown_type"] == 1 and errs["oversized_packet"] == 1
    for s in h.samples("airflow_dagbag_size").values():
        assert math.isfinite(s)


def test_tcp_is_not_limited_by_packet_size(h):
    h.send(b"airflow.ti_successes:1|c\n" * 5000, transport="tcp")
    assert h.value("airflow_ti_successes_total") == 5000


PLAIN = [  # what plain statsd sends for one task end (legacy first, then the tagless twin)
    "airflow.ti.finish.team__sales.extract__load.success:1|c", "airflow.ti.finish:1|c",
    "airflow.pool.open_slots.default_pool:120|g", "airflow.pool.open_slots:120|g",
    "airflow.pool.open_slots.etl:3|g", "airflow.pool.open_slots:3|g",
    "airflow.dag.team__sales.extract__load.duration:1500|ms", "airflow.task.duration:1500|ms",
]
TAGGED = [  # statsd_datadog_enabled: legacy (mangled ids) then tagged with the real ids
    "airflow.ti.finish.team__sales.extract__load.success:1|c",
    "airflow.ti.finish:1|c|#dag_id:team.sales,task_id:extract.load,state:success",
    "airflow.pool.open_slots.default_pool:120|g", "airflow.pool.open_slots:120|g|#pool_name:default_pool",
    "airflow.pool.open_slots.etl:3|g", "airflow.pool.open_slots:3|g|#pool_name:etl",
    "airflow.dag.team__sales.extract__load.duration:1500|ms",
    "airflow.task.duration:1500|ms|#dag_id:team.sales,task_id:extract.load",
]
INFLUX = [
    "airflow.ti.finish.team__sales.extract__load.success:1|c",
    "airflow.ti.finish,dag_id=team.sales,task_id=extract.load,state=success:1|c",
    "airflow.pool.open_slots.default_pool:120|g", "airflow.pool.open_slots,pool_name=default_pool:120|g",
    "airflow.pool.open_slots.etl:3|g", "airflow.pool.open_slots,pool_name=etl:3|g",
    "airflow.dag.team__sales.extract__load.duration:1500|ms",
    "airflow.task.duration,dag_id=team.sales,task_id=extract.load:1500|ms",
]


def test_plain_twins_count_once_and_gauges_do_not_flap(h):
    for _ in range(3):
        h.send(*PLAIN)
    assert h.samples("airflow_ti_finish_total") == {
        (("dag_id", "team__sales"), ("state", "success"), ("task_id", "extract__load")): 3}
    assert h.samples("airflow_pool_open_slots") == {(("pool", "default_pool"),): 120, (("pool", "etl"),): 3}
    assert h.value("airflow_task_duration_count", dag_id="team__sales", task_id="extract__load") == 3
    assert h.ingest.stats.dropped["tagless_twin"] == 12


@pytest.mark.parametrize("lines", [TAGGED, INFLUX], ids=["dogstatsd", "influxdb"])
def test_tagged_twins_use_real_ids_and_count_once(h, lines):
    for _ in range(3):
        h.send(*lines)
    assert h.samples("airflow_ti_finish_total") == {
        (("dag_id", "team.sales"), ("state", "success"), ("task_id", "extract.load")): 3}
    assert h.samples("airflow_pool_open_slots") == {(("pool", "default_pool"),): 120, (("pool", "etl"),): 3}
    assert h.samples("airflow_task_duration_count") == {(("dag_id", "team.sales"), ("task_id", "extract.load")): 3}
    assert h.ingest.stats.dropped["legacy_twin"] == 12


def test_pinned_mode_skips_learning(harness):
    h = harness(airflow_tags="on")
    h.send(*TAGGED)
    assert h.value("airflow_ti_finish_total", dag_id="team.sales", task_id="extract.load", state="success") == 1
    h = harness(airflow_tags="off")
    h.send(*PLAIN)
    assert h.value("airflow_ti_finish_total", dag_id="team__sales", task_id="extract__load", state="success") == 1


def test_lone_legacy_sample_is_released_not_lost(h):
    h.send("airflow.ti.start.d.t:1|c")  # the twin never comes (e.g. filtered by an allow list)
    assert h.samples("airflow_ti_start_total") == {}
    h.ingest.housekeeping(h.now + 2)
    assert h.value("airflow_ti_start_total", dag_id="d", task_id="t") == 1
    h.send("airflow.ti.start.d.t:1|c")  # from now on the legacy form is the one: counted at once
    assert h.value("airflow_ti_start_total", dag_id="d", task_id="t") == 2


def test_legacy_names_off_in_plain_mode_the_tagless_names_alone_are_counted(h):
    """Airflow 3.2+ with `[metrics] legacy_names_on = False` and no tags: only the tagless names come."""
    h.send("airflow.ti.finish:1|c", "airflow.pool.open_slots:120|g")
    h.ingest.housekeeping(h.now + 2)  # no legacy twin within the pair's time: the tagless form is the one
    h.send("airflow.ti.finish:1|c", "airflow.ti.finish:1|c", "airflow.pool.open_slots:118|g")
    assert h.samples("airflow_ti_finish_total") == {(): 3}
    assert h.samples("airflow_pool_open_slots") == {(): 118}
    assert not h.ingest.stats.dropped


def test_samples_are_counted_per_airflow_metric(h):
    for _ in range(3):
        h.send(*TAGGED)
    h.send("app.jobs:1|c", "app.jobs:1|c")
    s = h.ingest.stats.samples
    assert s["c", "airflow_ti_finish"] == 3 and s["g", "airflow_pool_open_slots"] == 6
    assert s["ms", "airflow_task_duration"] == 3
    assert s["c", ""] == 2, "what is not Airflow's is counted by type only, so the label stays bounded"


def test_a_flood_of_lone_legacy_samples_is_decided_bounded_and_never_crashes(harness):
    from monitor.bridge.ingest import PENDING_MAX

    h = harness(max_series_per_family=10_000)
    n = PENDING_MAX + 5_000  # distinct legacy names, no twin: the crash was 10,050 over the cap
    h.ingest.handle_many([f"airflow.ti.finish.dag{i}.t.success:1|c".encode() for i in range(n)])
    assert h.ingest.mode["ti.finish"] == "plain", "decided at the cap, not a second later"
    assert sum(len(w) for w in h.ingest.pending.values()) == 0
    assert len(h.samples("airflow_ti_finish_total")) == 10_000
    assert h.ingest.stats.dropped["cardinality_cap"] == n - 10_000
    assert not h.ingest.stats.internal_errors
    # a held sample whose series is a set, or another type, is counted, not a crash
    h2 = harness()
    h2.send("airflow.pool.starving_tasks.default_pool:0|s", "airflow.pool.open_slots.p1:1|g",
            "airflow.pool.open_slots.p1:1|ms")
    h2.ingest.housekeeping(h2.now + 2)
    assert not h2.ingest.stats.internal_errors and h2.value("airflow_pool_open_slots", pool="p1") == 1


def test_the_twin_mode_follows_airflow_when_its_tags_are_turned_off_and_on(h):
    """DogStatsD first; then Airflow's tags are turned off (legacy + tagless pairs); then on again."""
    from monitor.bridge.ingest import EVIDENCE_WINDOW

    def tagged():
        h.send("airflow.ti.finish.etl.load.success:1|c", "airflow.ti.finish:1|c|#dag_id:etl,task_id:load,state:success")

    def plain():
        h.send("airflow.ti.finish.etl.load.success:1|c", "airflow.ti.finish:1|c")

    for _ in range(3):
        tagged()
    h.ingest.housekeeping(h.now + 2)
    ids = (("dag_id", "etl"), ("state", "success"), ("task_id", "load"))
    assert h.samples("airflow_ti_finish_total") == {ids: 3}
    h.now += 10
    plain()  # tags just turned off: the tagged series moved 10 s ago, so not yet
    h.now += EVIDENCE_WINDOW
    for _ in range(4):
        plain()
        h.now += 6
    assert h.ingest.mode["ti.finish"] == "plain"
    assert h.ingest.stats.mode_switches[("ti.finish", "plain")] == 1
    # the per-DAG series move again, from the legacy form; the tagless samples that arrived until
    # the switch are counted label-less: no event lost, none counted twice
    after = h.samples("airflow_ti_finish_total")
    assert after == {ids: 3 + 3, (): 2}, after
    # tags back on (legacy + tagged pairs): the switch waits for a window of tagged samples with no
    # tagless ones; meanwhile the legacy form goes on counting each event once
    for _ in range(5):
        tagged()
        assert h.ingest.mode["ti.finish"] == "plain"
        h.now += 12
    tagged()  # 60 s after the first
    assert h.ingest.mode["ti.finish"] == "tagged"
    assert h.ingest.stats.mode_switches[("ti.finish", "tagged")] == 1
    assert h.ingest.stats.dropped["tagged_twin"] == 6
    tagged()
    assert h.samples("airflow_ti_finish_total") == {ids: 6 + 6 + 1, (): 2}


MANGLED = (("dag_id", "team__sales"), ("state", "success"), ("task_id", "extract__load"))
REAL = (("dag_id", "team.sales"), ("state", "success"), ("task_id", "extract.load"))
SPOOF = "airflow.ti.finish:1|c|#dag_id:spoof,task_id:spoof,state:spoof"


def test_one_spoofed_tagged_line_a_minute_does_not_strip_a_plain_airflow_of_its_ids(h):
    """Hostile input N20: plain statsd Airflow (legacy + tagless pairs) and a tagged line every 50 s
    from someone else: the metric stays in its legacy form, every event counted once with its ids."""
    events = 0
    for i in range(120):  # 10 minutes, a task end every 5 s
        h.send(*PLAIN[:2])
        events += 1
        if i % 10 == 0:
            h.send(SPOOF)
        h.now += 5
        h.ingest.housekeeping(h.now)
    assert h.ingest.mode["ti.finish"] == "plain" and not h.ingest.stats.mode_switches
    assert h.samples("airflow_ti_finish_total") == {MANGLED: events}
    assert h.ingest.stats.dropped["tagged_twin"] == 12


def test_a_spoofed_first_sample_does_not_hold_a_plain_airflow_in_the_tagged_form(h):
    """The spoofer comes first (the metric learns "tagged" from it) and keeps sending a line every
    50 s: Airflow's plain pairs take the metric back within a window; no event lost or doubled."""
    h.send(SPOOF)
    events = 0
    for i in range(60):
        h.send(*PLAIN[:2])
        events += 1
        if i % 10 == 9:
            h.send(SPOOF)
        h.now += 5
        h.ingest.housekeeping(h.now)
    assert h.ingest.mode["ti.finish"] == "plain"
    got = h.samples("airflow_ti_finish_total")
    spoofed = got.pop((("dag_id", "spoof"), ("state", "spoof"), ("task_id", "spoof")), 0)
    assert set(got) == {MANGLED, ()} and got[MANGLED] + got[()] == events, got
    assert got[()] <= 14, "counted label-less for one window at most"
    assert spoofed >= 1


def test_tags_on_with_legacy_names_off_loses_nothing_while_the_evidence_gathers(h):
    """Plain statsd, then Airflow 3.2+ restarted with tags on and legacy names off: only tagged
    samples come. They are held while the evidence gathers, then counted: none lost."""
    for _ in range(3):
        h.send(*PLAIN[:2])
    h.now += 30
    for _ in range(8):
        h.send(TAGGED[1])
        h.now += 10
        h.ingest.housekeeping(h.now)
    assert h.ingest.mode["ti.finish"] == "tagged"
    assert h.samples("airflow_ti_finish_total") == {MANGLED: 3, REAL: 8}


def test_a_tagless_twin_that_comes_first_is_not_counted_twice(h):
    for _ in range(3):  # Airflow sends dagrun.dependency-check's tagless form before its legacy one
        h.send("airflow.dagrun.dependency-check:20|ms", "airflow.dagrun.dependency-check.etl:20|ms")
    h.ingest.housekeeping(h.now + 2)
    assert h.samples("airflow_dagrun_dependency_check_count") == {(("dag_id", "etl"),): 3}
    assert h.ingest.stats.dropped["tagless_twin"] == 3


def test_the_official_chart_mapping_on_a_real_capture_counts_each_event_once(harness):
    """Airflow's chart maps the legacy names; with its file each event still counts once (plain statsd,
    as that chart sends), under the labels the file names."""
    from pathlib import Path

    from monitor.bridge.mapper import Mapper, load_rules

    root = Path(__file__).resolve().parents[2]
    fixture = root.parent / "shared/fixtures/airflow-chart-statsd-mappings.yml"  # shared/ sits beside the repo
    if not fixture.exists():
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{fixture} is missing (the project's shared/)")
    h = harness(mapper=Mapper(load_rules(fixture)))
    for line in (root / "bench/data/airflow-3.3.2-plain.statsd").read_text().splitlines():
        h.send(line)
    h.ingest.housekeeping(h.now + 2)
    dag = (("dag_id", "team__sales_daily"),)
    assert h.samples("airflow_task_duration_count") == {(*dag, ("task_id", "boom")): 1,
                                                       (*dag, ("task_id", "extract__load")): 1}
    assert h.samples("airflow_ti_finish_total") == {(*dag, ("state", "failed"), ("task_id", "boom")): 1,
                                                   (*dag, ("state", "success"), ("task_id", "extract__load")): 1}
    assert h.samples("airflow_dagrun_dependency_check_count") == {dag: 8}
    assert h.samples("airflow_pool_open_slots") == {(("pool", "default_pool"),): 128}
    assert h.samples("airflow_operator_successes_total") == {(("operator", "_PythonDecoratedOperator"),): 1}
    assert h.samples("airflow_scheduler_heartbeat_total") == {(("type", "counter"),): 6}


def test_cardinality_cap_drops_new_series_only(harness):
    h = harness(max_series_per_family=2)
    h.send(*(f"airflow.ti.start:1|c|#dag_id:d{i},task_id:t" for i in range(5)))
    h.send("airflow.ti.start:1|c|#dag_id:d0,task_id:t")
    assert len(h.samples("airflow_ti_start_total")) == 2
    assert h.value("airflow_ti_start_total", dag_id="d0", task_id="t") == 2
    assert h.ingest.stats.dropped["cardinality_cap"] == 3


def test_ttl_expires_idle_series(harness):
    h = harness(default_ttl=60)
    h.send("airflow.pool.open_slots:3|g|#pool_name:old")
    h.now += 30
    h.send("airflow.pool.open_slots:4|g|#pool_name:new")
    h.ingest.housekeeping(h.now + 40)
    assert h.samples("airflow_pool_open_slots") == {(("pool", "new"),): 4}
    h.send("airflow.pool.open_slots:5|g|#pool_name:old")  # comes back after expiry
    assert h.value("airflow_pool_open_slots", pool="old") == 5


def test_label_values_are_escaped(h):
    h.send('airflow.ti.start:1|c|#dag_id:quote"back\\slash,task_id:t')
    text = h.text()
    assert 'dag_id="quote\\"back\\\\slash"' in text
    assert h.value("airflow_ti_start_total", dag_id='quote"back\\slash', task_id="t") == 1


def test_unmapped_metrics_are_exported_with_sanitized_names(h):
    h.send("myapp.jobs-done:4|c|#team:data")
    assert h.value("myapp_jobs_done_total", team="data") == 4
    assert h.ingest.stats.unmapped == 1


def test_type_conflict_is_counted(h):
    h.send("airflow.dagbag_size:5|g", "airflow.dagbag_size:1|c")
    assert h.value("airflow_dagbag_size") == 5
    assert h.ingest.stats.dropped["conflict"] == 1


def test_sets_count_distinct_values(h):
    h.send("myapp.users:alice|s", "myapp.users:bob|s", "myapp.users:alice|s")
    assert h.value("myapp_users") == 2


def test_repeated_whole_lines_stay_right_across_expiry_reload_and_deltas(harness, tmp_path):
    from monitor.bridge.mapper import Mapper, load_rules

    h = harness(default_ttl=60)
    h.send(*["airflow.executor.open_slots:32|g"] * 3, *["app.depth:+2|g"] * 3, *["app.jobs:1|c|@0.5"] * 3)
    h.ingest.housekeeping(h.now + 1.5)  # the tagless form came alone: it is the one Airflow sends
    h.send("airflow.executor.open_slots:32|g")
    assert h.value("airflow_executor_open_slots") == 32
    assert h.value("app_depth") == 6 and h.value("app_jobs_total") == 6
    h.ingest.housekeeping(h.now + 61)  # all expire; the same lines must make new series
    h.now += 61
    h.send("app.jobs:1|c|@0.5", "airflow.executor.open_slots:32|g")
    assert h.value("app_jobs_total") == 2 and h.value("airflow_executor_open_slots") == 32
    rules = tmp_path / "m.yml"
    rules.write_text("mappings:\n- match: app.jobs\n  name: renamed_jobs\n")
    h.ingest.reload(Mapper(load_rules(rules)))
    h.send("app.jobs:1|c|@0.5")
    assert h.value("renamed_jobs_total") == 2 and h.value("app_jobs_total") == 2
    assert sum(v for (t, _), v in h.ingest.stats.samples.items() if t == "c") == 5 and h.ingest.stats.lines == 13


def test_statsd_input_cannot_create_or_shadow_our_own_series(h):
    h.send("airflow_sla_breached:0|g|#dag_id:x,rule:max_age", "airflow_monitor_bridge_parse_errors:0|c",
           "airflow_ti_finish:1|g", "airflow.ti.finish:1|c|#dag_id:d,task_id:t,state:success",
           "airflow_ti_finish:1|c|#dag_id:d,task_id:t,state:success")  # same type: allowed, same series
    text = h.text()
    assert "airflow_sla_" not in text and "airflow_monitor_" not in text
    assert "# TYPE airflow_ti_finish_total counter" in text
    assert h.value("airflow_ti_finish_total", dag_id="d", task_id="t", state="success") == 2
    assert h.ingest.stats.dropped["reserved"] == 3


def test_statsd_input_cannot_squat_a_name_an_airflow_family_exposes(h):
    """Hostile input N2: a name that an Airflow family takes on /metrics (`_total`, `_bucket`, `_sum`,
    `_count`, `_created`), sent before Airflow's first sample, is refused; Airflow's samples count."""
    h.send("airflow_ti_finish_total:0|g", "airflow_dagrun_duration_count:0|g", "airflow_ti_finish_created:1|g",
           "airflow_task_duration_bucket:1|c", "airflow_ti_finish_total:0|ms", "airflow_dagrun_duration_sum:1|ms",
           "airflow_dagbag_size_created:3|g")  # a gauge has no _created: that one is no Airflow name
    h.send("airflow.ti.finish:1|c|#dag_id:d,task_id:t,state:success",
           "airflow.dagrun.duration.success:1000|ms|#dag_id:d", "airflow.dagbag_size:4|g")
    assert h.value("airflow_ti_finish_total", dag_id="d", task_id="t", state="success") == 1
    assert h.value("airflow_dagrun_duration_count", dag_id="d", state="success") == 1
    assert h.value("airflow_dagbag_size") == 4 and h.value("airflow_dagbag_size_created") == 3
    assert h.ingest.stats.dropped["reserved"] == 6 and not h.ingest.stats.dropped["conflict"]
    # the counter `airflow_ti_finish_total` is the catalog family under the name it has on /metrics
    # (as statsd_exporter files often spell it): the same series, as `airflow_ti_finish` is
    h.send("airflow_ti_finish_total:2|c|#dag_id:d,task_id:t,state:success")
    assert h.value("airflow_ti_finish_total", dag_id="d", task_id="t", state="success") == 3
    assert "airflow_ti_finish_total_total" not in h.text()


def test_a_sample_rate_or_value_that_would_make_a_series_non_finite_is_refused(h):
    """Hostile input N1: 1/rate and the scaled value are checked, and an increment that would make a
    series +Inf or NaN is refused and counted; the series stays right and keeps counting."""
    ids = "#dag_id:d,task_id:t,state:success"
    h.send(f"airflow.ti.finish:1|c|{ids}", "airflow.task.duration:1000|ms|#dag_id:d,task_id:t")
    h.send(f"airflow.ti.finish:0|c|@1e-320|{ids}", "airflow.task.duration:1|ms|@1e-320|#dag_id:d,task_id:t",
           f"airflow.ti.finish:1|c|@nan|{ids}", f"airflow.ti.finish:1|c|@inf|{ids}")
    for _ in range(3):  # 9e307 a sample: the second would be +Inf
        h.send("app.big:9e299|c|@1e-8", "app.hist:9e299|h|@1e-8", "app.gauge:+1e308|g")
    h.send(f"airflow.ti.finish:2|c|{ids}", "airflow.task.duration:1000|ms|#dag_id:d,task_id:t")
    text = h.text()
    assert "inf" not in text.lower().replace('le="+inf"', "") and "nan" not in text.lower(), text
    assert h.value("airflow_ti_finish_total", dag_id="d", task_id="t", state="success") == 3
    assert h.value("airflow_task_duration_count", dag_id="d", task_id="t") == 2
    assert h.value("airflow_task_duration_sum", dag_id="d", task_id="t") == 2
    assert h.value("app_big_total") == 9e307 and h.value("app_hist_count") == 1e8
    assert h.ingest.stats.parse_errors["invalid_sample_rate"] == 4
    assert h.value("app_gauge") == 1e308
    assert h.ingest.stats.dropped["overflow"] == 2 + 2 + 2, h.ingest.stats.dropped


def test_bounds_on_names_tags_values_and_sets(h):
    dag, task = "d" * 250, "t" * 250  # Airflow's longest ids still fit in a legacy name
    h.send(f"airflow.ti.start.{dag}.{task}:1|c", f"airflow.ti.start:1|c|#dag_id:{dag},task_id:{task}")
    h.ingest.housekeeping(h.now + 2)
    h.send("x" * 60000 + ":1|ms", "app.t:1|c|#" + ",".join(f"k{i}:v" for i in range(1000)),
           "app.v:1|c|#k:" + "v" * 2000)
    h.send(*(f"app.users:u{i}|s" for i in range(10_050)), "app.users:" + "x" * 300 + "|s")
    errs = h.ingest.stats.parse_errors
    assert errs["name_too_long"] == 1 and errs["too_many_tags"] == 1 and errs["label_value_too_long"] == 1
    assert h.value("airflow_ti_start_total", dag_id=dag, task_id=task) == 1
    assert h.value("app_users") == 10_000 and h.ingest.stats.dropped["set_cap"] == 51
    assert len(h.text()) < 200_000


def test_help_is_written_for_what_is_exposed(h):
    """Timers are histograms in seconds; a family folding two Airflow metrics says so."""
    from monitor import catalog

    h.send("airflow.dagrun.duration.failed:1500|ms|#dag_id:d", "airflow.dagrun.duration.success:900|ms|#dag_id:d",
           "airflow.scheduler.scheduler_loop_duration:40|ms", "airflow.task.duration:5|ms|#dag_id:d,task_id:t")
    helps = {line.split()[2]: line.split(None, 3)[3] for line in h.text().splitlines() if line.startswith("# HELP")}
    assert helps["airflow_dagrun_duration"].startswith("Seconds taken for a DagRun to reach its final state")
    assert helps["airflow_scheduler_scheduler_loop_duration_seconds"] == "Seconds spent running one scheduler loop"
    assert all("illisecond" not in m.exposed_help for m in catalog.load() if m.type == "timer")
    folded: dict = {}
    for m in catalog.load():
        folded.setdefault(m.prometheus, set()).add(m.exposed_help)
    assert all(len(v) == 1 for v in folded.values()), {k: v for k, v in folded.items() if len(v) > 1}



@pytest.mark.parametrize("unit, dogstatsd, want", [
    ("auto", True, 0.04), ("auto", False, 0.04), ("s", True, 0.04), ("ms", True, 0.00004)])
def test_timer_metrics_have_the_same_magnitude_in_every_mode(harness, unit, dogstatsd, want):
    """Airflow 3.x's DogStatsD client sends Stats.timer() durations in seconds labelled ms; task and
    DAG-run durations (Stats.timing) are milliseconds in every mode."""
    h = harness(dogstatsd_timer_unit=unit)
    if dogstatsd:  # a 40 ms scheduler loop, as each client sends it
        h.send("airflow.ti.finish:1|c|#dag_id:d,task_id:t,state:success",
               "airflow.scheduler.scheduler_loop_duration:0.04|ms", "airflow.dagrun.dependency-check:0.04|ms|#dag_id:d",
               "airflow.task.duration:40|ms|#dag_id:d,task_id:t")
    else:
        h.send("airflow.scheduler.scheduler_loop_duration:40|ms", "airflow.task.duration:40|ms|#dag_id:d,task_id:t")
    assert h.value("airflow_scheduler_scheduler_loop_duration_seconds_sum") == pytest.approx(want)
    assert h.value("airflow_task_duration_sum", dag_id="d", task_id="t") == pytest.approx(0.04)
    if dogstatsd:
        assert h.value("airflow_dagrun_dependency_check_sum", dag_id="d") == pytest.approx(want)


def test_a_legacy_line_and_its_first_tagged_twin_count_one_event(h):
    """Issue 23 item 4: a metric counted in its legacy form ("plain"); Airflow's tags are turned on and one
    event comes as the pair Airflow sends, legacy first, its tagged twin right after. One event, one count."""
    for _ in range(3):
        h.send(*PLAIN[:2])
    assert h.ingest.mode["ti.finish"] == "plain"
    h.now += 30
    h.send("airflow.ti.finish.dd__dag.t.success:1|c")
    h.now += 0.002  # the tagged twin, a moment later
    h.send("airflow.ti.finish:1|c|#dag_id:dd.dag,task_id:t,state:success")
    from monitor.bridge.ingest import EVIDENCE_WINDOW

    h.now += EVIDENCE_WINDOW + 1
    h.ingest.housekeeping(h.now)
    got = h.samples("airflow_ti_finish_total")
    assert got.get((("dag_id", "dd__dag"), ("state", "success"), ("task_id", "t"))) == 1
    assert (("dag_id", "dd.dag"), ("state", "success"), ("task_id", "t")) not in got, got
    assert h.ingest.stats.dropped["tagged_twin"] == 1


SCHED_LOOP = "airflow_scheduler_scheduler_loop_duration_seconds"


def loop_mean(h) -> float:
    return h.value(SCHED_LOOP + "_sum") / h.value(SCHED_LOOP + "_count")


@pytest.mark.parametrize("first, second", [("influxdb", "datadog"), ("datadog", "influxdb"), ("plain", "datadog"),
                                           ("datadog", "plain")])
def test_the_timer_unit_is_decided_per_line_across_a_switch_of_mode(harness, caplog, first, second):
    """Issue 23 item 1: one bridge, an Airflow switched between InfluxDB (or plain) and DogStatsD. Each
    line of a Stats.timer() metric is read in the unit its client sends, whatever came before: a 30 ms
    scheduler loop stays 30 ms. As Airflow's clients write it: the statsd package `%0.6f` milliseconds,
    the DogStatsD client Python's float of seconds (untagged here: the loop has no tags)."""
    sent = {"influxdb": ["airflow.scheduler.scheduler_loop_duration:30.000000|ms",
                         "airflow.dagrun.dependency-check,dag_id=d:30.000000|ms"],
            "plain": ["airflow.scheduler.scheduler_loop_duration:30.000000|ms",
                      "airflow.dagrun.dependency-check:30.000000|ms",
                      "airflow.dagrun.dependency-check.d:30.000000|ms"],
            "datadog": ["airflow.scheduler.scheduler_loop_duration:0.030000000000000002|ms",
                        "airflow.dagrun.dependency-check:0.030000000000000002|ms|#dag_id:d"]}
    h = harness(airflow_tags="off" if "plain" in (first, second) else "on")
    with caplog.at_level("INFO"):
        for mode in (first, second, first):
            for _ in range(5):
                h.send(*sent[mode])
                h.now += 1
            h.ingest.housekeeping(h.now)
            assert loop_mean(h) == pytest.approx(0.03), mode
    dep = h.samples("airflow_dagrun_dependency_check_sum")
    count = h.samples("airflow_dagrun_dependency_check_count")
    assert sum(dep.values()) / sum(count.values()) == pytest.approx(0.03)
    said = [r.getMessage() for r in caplog.records if "now arrive" in r.getMessage()]
    assert len(said) == 2, said  # each change logged once
    assert h.value("airflow_monitor_bridge_dogstatsd_timers_in_seconds", decided="auto") is None  # not a store series


def test_a_dogstatsd_client_with_whole_milliseconds_is_read_as_milliseconds(h):
    """A DogStatsD client with use_ms (an Airflow that fixed issue 72110) sends whole milliseconds."""
    h.send("airflow.scheduler.scheduler_loop_duration:30|ms|#pod:p", "airflow.scheduler.scheduler_loop_duration:30|ms")
    assert h.value(SCHED_LOOP + "_sum", pod="p") == pytest.approx(0.03)
    assert h.value(SCHED_LOOP + "_sum") == pytest.approx(0.03)


@pytest.mark.parametrize("line", [
    "airflow.dag_processing.last_duration:0.170000|ms",  # the statsd client: plain
    "airflow.dag_processing.last_duration,file_name=f,bundle_name=b:0.170000|ms",  # InfluxDB
    "airflow.dag_processing.last_duration:0.17|ms|#file_name:f,bundle_name:b",  # DogStatsD
])
@pytest.mark.parametrize("unit", ["auto", "s", "ms"])
def test_parse_time_airflow_times_in_seconds_is_read_as_seconds_in_every_mode_and_sink(harness, line, unit):
    """Issue 23 item 2: Airflow passes time.monotonic() differences to Stats.timing() for
    dag_processing.last_duration, so it goes out as `0.17|ms` for 0.17 s, in every mode: exposed in
    seconds, sent to Datadog in milliseconds."""
    from monitor.bridge.datadog import DatadogSink

    h = harness(airflow_tags="on", dogstatsd_timer_unit=unit)
    sink = DatadogSink(h.store, target="api", api_key="k", api_host="http://127.0.0.1:9")
    sink.attach(h.ingest)
    h.send(line)
    h.ingest.housekeeping(h.now + 2)
    assert sum(h.samples("airflow_dag_processing_last_duration_sum").values()) == pytest.approx(0.17)
    sink.drain()
    sink._look()
    points = {p[0]: p[2] for p in sink.collect()}
    assert points["airflow.dag_processing.last_duration.avg"] == pytest.approx(170.0), points


def test_a_timer_metric_follows_airflow_when_its_tags_are_turned_off(h):
    """dagrun.dependency-check is timed with Stats.timer() and has a legacy twin: counted in its tagged form
    (DogStatsD), then Airflow's tags are turned off (tagless and legacy pairs, milliseconds): once the
    evidence window shows it, its legacy form counts; every sample is read in its own unit meanwhile."""
    from monitor.bridge.ingest import EVIDENCE_WINDOW

    for _ in range(3):  # DogStatsD: legacy (seconds, untagged) then tagged (seconds)
        h.send("airflow.dagrun.dependency-check.etl:0.020000000000000004|ms",
               "airflow.dagrun.dependency-check:0.020000000000000004|ms|#dag_id:etl")
        h.now += 1
    h.ingest.housekeeping(h.now + 2)
    assert h.ingest.mode["dagrun.dependency-check"] == "tagged"
    h.now += 10
    for _ in range(int(EVIDENCE_WINDOW // 5) + 3):  # plain statsd: tagless then legacy, milliseconds
        h.send("airflow.dagrun.dependency-check:20.000000|ms", "airflow.dagrun.dependency-check.etl:20.000000|ms")
        h.now += 5
        h.ingest.housekeeping(h.now)
    assert h.ingest.mode["dagrun.dependency-check"] == "plain"
    sums = h.samples("airflow_dagrun_dependency_check_sum")
    counts = h.samples("airflow_dagrun_dependency_check_count")
    assert sum(sums.values()) / sum(counts.values()) == pytest.approx(0.02)
