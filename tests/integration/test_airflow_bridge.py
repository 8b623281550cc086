"""A real Airflow 3.3.2 sends statsd to the bridge in each emission mode; we scrape what a user would.

The DAG `team.sales_daily` has a dot in its dag_id, a task inside a task group (`extract.load`,
succeeds) and a task that fails (`boom`). The bridge relays every raw packet to a capture socket,
so each test can compare what Airflow emitted with what the bridge exposes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from monitor import catalog
from testkit.airflow import REPO, Airflow, statsd_env
from testkit.bridge import BridgeProcess

pytestmark = pytest.mark.integration
DAG = "team.sales_daily"


class Capture:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.lines: list[str] = []
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop:
            try:
                self.lines.extend(x for x in self.sock.recv(65536).decode().split("\n") if x)
            except TimeoutError:
                continue

    def events(self, name: str) -> float:
        """Sum of the values of the tagless/tagged (not legacy) form of a metric."""
        total = 0.0
        for line in self.lines:
            head, _, rest = line.partition(":")
            if head.split(",")[0] == name:
                value, kind = rest.split("|")[:2]
                total += 1 if kind == "ms" else float(value)  # a timer line is one observation
        return total

    def close(self):
        self._stop = True


@pytest.fixture(scope="module", params=["plain", "datadog", "influxdb"])
def run(request, tmp_path_factory, venv):
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"airflow-{mode}")
    cap = Capture()
    bridge = BridgeProcess(tmp, "--relay", f"127.0.0.1:{cap.sock.getsockname()[1]}")
    af = Airflow(home=tmp / "airflow", venv=venv, env_extra=statsd_env(bridge.udp, mode))
    try:
        af.start()
        run_id = af.trigger(DAG)
        state = af.wait_run(DAG, run_id)
        assert state == "failed", "boom fails on purpose, so the run fails"
        # the scheduler keeps emitting gauges; give the last task metrics a moment to arrive
        bridge.wait_for(lambda m: m.get("airflow_dagrun_duration_count"), timeout=30)
        time.sleep(3)
        scrape = bridge.scrape()
        # while this Airflow (SQLite) runs, the probe must call its scheduler healthy
        probe = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "monitor.cli", "probe", "scheduler", "--local",
             "--sql-alchemy-conn", f"sqlite:///{af.home / 'airflow.db'}"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    except BaseException:
        print(af.log_tail(80))
        raise
    finally:
        af.stop()
        cap.close()
        bridge.stop()
    ids = {"plain": ("team__sales_daily", "extract__load")}.get(mode, (DAG, "extract.load"))
    return mode, scrape, cap, ids, probe


def only(samples: dict, **labels) -> float:
    """The value of the one series whose labels include `labels` (tagged modes add extra tags)."""
    hits = [v for k, v in samples.items() if labels.items() <= dict(k).items()]
    assert len(hits) == 1, (labels, samples)
    return hits[0]


def test_task_outcomes_with_real_ids(run):
    mode, m, cap, (dag, task), _ = run
    fin = m["airflow_ti_finish_total"]
    assert only(fin, dag_id=dag, task_id=task, state="success") == 1
    assert only(fin, dag_id=dag, task_id="boom", state="failed") == 1
    assert only(m["airflow_ti_start_total"], dag_id=dag, task_id=task) == 1
    if mode != "plain":  # no second, mangled series for the same event
        assert not [k for k in fin if "__" in dict(k)["dag_id"]]


def test_sum_over_labels_equals_what_airflow_emitted(run):
    mode, m, cap, _, _ = run
    for statsd, prom in [("airflow.ti.finish", "airflow_ti_finish_total"),
                         ("airflow.ti.start", "airflow_ti_start_total"),
                         ("airflow.task.duration", "airflow_task_duration_count")]:
        emitted = cap.events(statsd)
        assert emitted >= 2
        assert sum(m[prom].values()) == emitted, (statsd, mode)


def test_durations_are_histograms_in_seconds(run):
    mode, m, cap, (dag, task), _ = run
    assert only(m["airflow_task_duration_count"], dag_id=dag, task_id=task) == 1
    total = only(m["airflow_task_duration_sum"], dag_id=dag, task_id=task)
    assert 0 < total < 120, "seconds, not milliseconds"
    assert only(m["airflow_task_duration_bucket"], dag_id=dag, task_id=task, le="+Inf") == 1
    assert only(m["airflow_dagrun_duration_count"], dag_id=dag, state="failed") == 1
    assert only(m["airflow_dag_processing_last_duration_count"], dag_file="bridge_demo", bundle="dags-folder") >= 1


def test_timers_have_the_same_magnitude_in_every_mode(run):
    """Airflow 3.3.2's DogStatsD client sends Stats.timer() durations in seconds labelled ms (a 40 ms
    scheduler loop arrives as `0.04|ms`); the bridge reads them as seconds, so each timer lands in the
    same band in all three modes (a real loop or dependency check: milliseconds to seconds)."""
    mode, m, cap, (dag, task), _ = run
    for family in ("airflow_scheduler_scheduler_loop_duration_seconds", "airflow_dagrun_dependency_check"):
        total = sum(m[family + "_sum"].values())
        count = sum(m[family + "_count"].values())
        assert count > 0, (mode, family)
        assert 0.0002 < total / count < 30, (mode, family, total / count)
    assert m["airflow_monitor_bridge_dogstatsd_timers_in_seconds"][(("decided", "auto"),)] == (mode == "datadog")


def test_scheduler_pool_and_executor_gauges(run):
    mode, m, cap, _, _ = run
    assert only(m["airflow_pool_open_slots"], pool="default_pool") > 0
    assert only(m["airflow_executor_open_slots"], executor="LocalExecutor") > 0
    assert only(m["airflow_executor_queued_tasks"], executor="LocalExecutor") >= 0
    assert m["airflow_scheduler_heartbeat_total"][()] >= 1
    assert m["airflow_scheduler_scheduler_loop_duration_seconds_count"][()] >= 1


def test_everything_airflow_sent_is_mapped_cleanly(run):
    mode, m, cap, _, _ = run
    assert not m.get("airflow_monitor_bridge_parse_errors_total")
    known = catalog.prometheus_series_names()
    stray = {name for name in m if name.startswith("airflow_") and not name.startswith("airflow_monitor_")
             and name not in known}
    assert not stray, f"series outside the catalog: {sorted(stray)}"
    dropped = {dict(k)["reason"]: v for k, v in m["airflow_monitor_bridge_dropped_total"].items()}
    assert set(dropped) == {"plain": {"tagless_twin"}}.get(mode, {"legacy_twin"})


def test_probe_sees_the_running_scheduler_healthy_on_sqlite(run):
    probe = run[4]
    assert probe.returncode == 0 and probe.stdout.startswith("healthy: scheduler job"), probe.stdout + probe.stderr
