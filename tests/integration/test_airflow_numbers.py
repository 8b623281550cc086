"""Right numbers when a real Airflow 3.3.2 switches its statsd mode under one bridge process (issue 23).

One `airflow-monitor serve`, one Airflow home (SQLite, a DAG file that takes 2 s to parse), and Airflow
restarted three times: InfluxDB, then DogStatsD (what the Helm values ship), then InfluxDB again (what
the README recommends for Prometheus). Each phase's scheduler loops and DAG-file parse times are read
from the bridge's histograms as the difference since the phase began, and held to what Airflow itself
stores (`dag.last_parse_duration`, seconds). While DogStatsD runs, a second bridge is started on the
first one's ports: it must fail at once, and the first must keep the traffic.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys

import pytest

from testkit.airflow import Airflow, free_port, statsd_env
from testkit.bridge import BridgeProcess

pytestmark = pytest.mark.integration
PHASES = ("influxdb", "datadog", "influxdb")
LOOP = "airflow_scheduler_scheduler_loop_duration_seconds"
PARSE = "airflow_dag_processing_last_duration"
SLOW_DAG = '''
import time

import pendulum
from airflow.sdk import DAG, task

time.sleep(2.0)  # a DAG file that takes 2 s to parse: Airflow records it in dag.last_parse_duration

with DAG(dag_id="slow_parse", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):

    @task
    def nothing() -> None:
        pass

    nothing()
'''


def totals(scrape: dict, family: str, **labels) -> tuple[float, float]:
    """(sum, count) over the family's series whose labels include `labels`."""
    def pick(name):
        return sum(v for k, v in scrape.get(name, {}).items() if labels.items() <= dict(k).items())
    return pick(family + "_sum"), pick(family + "_count")


def second_bridge(tmp, udp: int | None = None, tcp: int | None = None, unix: str | None = None):
    """`airflow-monitor serve` on the given statsd address (the others free): its exit code and output
    (None when it did not exit within a minute: it runs, on the first bridge's port)."""
    args = ["serve", "--statsd-udp", f"127.0.0.1:{udp or free_port(socket.SOCK_DGRAM)}",
            "--statsd-tcp", f"127.0.0.1:{tcp or free_port()}", "--web-listen", f"127.0.0.1:{free_port()}"]
    if unix:
        args += ["--statsd-unix", unix]
    try:
        p = subprocess.run([sys.executable, "-m", "monitor.cli", *args], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:  # (killed by run) it started on a port in use and took its traffic
        return None, "started on a port in use and kept running"
    return p.returncode, (p.stdout + p.stderr).strip()


@pytest.fixture(scope="module")
def phases(tmp_path_factory, venv):
    tmp = tmp_path_factory.mktemp("numbers")
    dags = tmp / "dags"
    dags.mkdir()
    (dags / "slow_parse.py").write_text(SLOW_DAG)
    bridge = BridgeProcess(tmp)
    home = tmp / "airflow"
    out = []
    try:
        for mode in PHASES:
            before = bridge.scrape()
            af = Airflow(home=home, venv=venv, dags_folder=dags, env_extra=statsd_env(bridge.udp, mode))
            try:
                af.start()
                b_loop, b_parse = totals(before, LOOP), totals(before, PARSE, dag_file="slow_parse")
                # enough of this phase: 10 scheduler loops and a parse of the slow file
                bridge.wait_for(lambda m, lo=b_loop, pa=b_parse: totals(m, LOOP)[1] >= lo[1] + 10
                                and totals(m, PARSE, dag_file="slow_parse")[1] >= pa[1] + 1, timeout=300)
                second = None
                if mode == "datadog":  # a second bridge on the first one's ports, while Airflow sends
                    beats = bridge.scrape().get("airflow_scheduler_heartbeat_total", {}).get((), 0)
                    second = {"udp": second_bridge(tmp, udp=bridge.udp), "tcp": second_bridge(tmp, tcp=bridge.tcp),
                              "unix": second_bridge(tmp, unix=bridge.unix)}
                    # the first bridge still gets Airflow's traffic
                    bridge.wait_for(lambda m, b=beats: m.get("airflow_scheduler_heartbeat_total", {}).get((), 0)
                                    >= b + 3, timeout=120)
                after = bridge.scrape()
                with sqlite3.connect(f"file:{home / 'airflow.db'}?mode=ro", uri=True) as db:
                    stored = db.execute("SELECT last_parse_duration FROM dag WHERE dag_id = 'slow_parse'").fetchone()
            except BaseException:
                print(af.log_tail(80))
                raise
            finally:
                af.stop()
            a_loop, a_parse = totals(after, LOOP), totals(after, PARSE, dag_file="slow_parse")
            out.append({"mode": mode, "second": second, "stored_parse": stored[0] if stored else None,
                        "loop": (a_loop[0] - b_loop[0]) / (a_loop[1] - b_loop[1]),
                        "parse": (a_parse[0] - b_parse[0]) / (a_parse[1] - b_parse[1])})
        yield out, bridge.log.read_text()
    finally:
        bridge.stop()


def test_the_scheduler_loop_keeps_its_magnitude_across_influxdb_datadog_influxdb(phases):
    """Item 1: a real loop takes milliseconds to a second in every phase. Before, the first DogStatsD line
    latched seconds for the life of the process, and InfluxDB's milliseconds read as seconds: 30 ms -> 30 s."""
    out, log = phases
    for p in out:
        assert 0.0002 < p["loop"] < 5.0, out
    # the change of what arrives is said once each way
    assert log.count("now arrive in seconds labelled ms") == 1, log[-3000:]
    assert log.count("now arrive in milliseconds") == 1, log[-3000:]


def test_parse_time_is_what_airflow_stores_in_every_mode(phases):
    """Item 2: dag_processing.last_duration is seconds labelled ms in every mode; the bridge's mean parse
    time of a file that sleeps 2 s is 2 s and more, within a factor of two of Airflow's own record."""
    out, _ = phases
    for p in out:
        assert p["stored_parse"] is not None and p["stored_parse"] >= 2.0, p
        assert 2.0 <= p["parse"] < 60, p
        assert p["stored_parse"] / 2 < p["parse"] < p["stored_parse"] * 2, p


def test_a_second_bridge_on_a_port_in_use_fails_and_the_first_keeps_the_traffic(phases):
    """Item 3: UDP, TCP and the Unix socket: one line, `address already in use`, exit code 2."""
    out, _ = phases
    second = next(p["second"] for p in out if p["second"])
    for what, (code, text) in second.items():
        assert code == 2, (what, text)
        assert len(text.splitlines()) == 1 and "already in use" in text.lower(), (what, text)
        assert text.startswith("airflow-monitor: error: cannot listen on"), (what, text)
