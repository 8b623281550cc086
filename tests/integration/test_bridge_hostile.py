"""Hostile input and faults, second pass: each attack against a real `airflow-monitor serve`.

The series stay right, the process lives, nothing leaks; every refusal is counted and said in one
line. Deadlines are polled, never timed.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from testkit.bridge import BridgeProcess

pytestmark = pytest.mark.integration

IDS = "#dag_id:d,task_id:t,state:success"
K = (("dag_id", "d"), ("state", "success"), ("task_id", "t"))
ALIAS_BOMB = ("defaults:\n  shared:\n  - &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
              + "".join(f"  - &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
              + "mappings:\n- match: airflow.dagbag_size\n  name: bomb\n  histogram_options: {buckets: *h}\n")


def reloads(m: dict, outcome: str) -> float:
    return m.get("airflow_monitor_bridge_mapping_reloads_total", {}).get((("outcome", outcome),), 0)


def reason(m: dict, family: str, why: str) -> float:
    return m.get(f"airflow_monitor_bridge_{family}_total", {}).get((("reason", why),), 0)


def test_hostile_datagrams_cannot_make_airflow_series_non_finite_or_squat_their_names(bridge):
    """N1 and N2: sample rates and increments that would make a series +Inf or NaN, and names that
    an Airflow family exposes, sent before Airflow's first sample."""
    b = bridge("--airflow-tags", "on")
    b.send_udp("airflow_ti_finish_total:0|g", "airflow_dagrun_duration_count:0|g", "airflow_ti_finish_created:0|g",
               "airflow_task_duration_sum:1|c")
    b.send_udp(f"airflow.ti.finish:1|c|{IDS}", "airflow.task.duration:1000|ms|#dag_id:d,task_id:t",
               "airflow.dagrun.duration.success:2000|ms|#dag_id:d")
    b.send_udp(f"airflow.ti.finish:0|c|@1e-320|{IDS}", "airflow.task.duration:1|ms|@1e-320|#dag_id:d,task_id:t",
               *[f"airflow.ti.finish:9e299|c|@1e-8|{IDS}"] * 3, f"airflow.ti.finish:1|c|@nan|{IDS}")
    b.send_udp(f"airflow.ti.finish:1|c|{IDS}")
    m = b.wait_for(lambda m: m.get("airflow_monitor_bridge_lines_total", {}).get(()) == 14
                   and m.get("airflow_ti_finish_total", {}).get(K, 0) > 1)
    assert all(math.isfinite(v) for samples in m.values() for v in samples.values())
    assert m["airflow_ti_finish_total"] == {K: 9e307 + 2}
    assert m["airflow_task_duration_count"] == {(("dag_id", "d"), ("task_id", "t")): 1}
    assert m["airflow_dagrun_duration_count"] == {(("dag_id", "d"), ("state", "success")): 1}
    assert "airflow_ti_finish_created" not in m and "airflow_task_duration_sum_total" not in m
    assert reason(m, "parse_errors", "invalid_sample_rate") == 3
    assert reason(m, "dropped", "overflow") == 2 and reason(m, "dropped", "reserved") == 4
    assert not m.get("airflow_monitor_bridge_conflicts_total", {}).get(())
    assert b.proc.poll() is None


def test_a_bad_mapping_file_never_stops_the_bridge(bridge, tmp_path):
    """N6 and N8: SIGHUP and POST /-/reload with files that exhausted the recursion (20,000-deep
    list), overflowed (a{4294967296}), expanded to 10^8 elements (alias bomb) or backtrack (a
    backreference): each keeps the running mapping, is counted and said in one line, and the
    answer to /-/reload carries the reason; ingest goes on meanwhile, losing nothing."""
    mapping = tmp_path / "mapping.yml"
    mapping.write_text("mappings:\n- match: airflow.dagbag_size\n  name: kept_name\n")
    b = bridge("--mapping-file", str(mapping), "--web-enable-lifecycle")
    b.send_udp("airflow.dagbag_size:1|g")
    b.wait_for(lambda m: m.get("kept_name", {}).get(()) == 1)
    bad = {
        "nested more than 64 levels": "mappings: " + "[" * 20_000 + "]" * 20_000,
        "repetition {4294967296} is over 1000": "mappings:\n- match: 'a{4294967296}'\n  match_type: regex\n"
                                               "  name: x\n",
        "expands to more than 1,000,000 nodes": ALIAS_BOMB,
        "backreferences need backtracking": "mappings:\n- match: '(a)\\1'\n  match_type: regex\n  name: x\n",
    }
    failures = 0
    for i, (why, text) in enumerate(bad.items()):
        mapping.write_text(text)
        code, body = b.post("/-/reload")
        assert code == 500 and why in body and body.count("\n") == 1, (code, body)
        failures += 1
        sent = 2000

        def stream(n=sent, value=i + 2):  # lines arrive while the SIGHUP reload runs
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for k in range(n):
                    s.sendto(b"app.during:1|c", ("127.0.0.1", b.udp))
                    if k % 200 == 0:
                        time.sleep(0.005)
                s.sendto(b"airflow.dagbag_size:%d|g" % value, ("127.0.0.1", b.udp))

        t = threading.Thread(target=stream)
        t.start()
        b.proc.send_signal(signal.SIGHUP)
        t.join()
        failures += 1
        m = b.wait_for(lambda m, f=failures: reloads(m, "failure") == f)
        m = b.wait_for(lambda m, i=i, n=sent * (i + 1): m.get("kept_name", {}).get(()) == i + 2
                       and m.get("app_during_total", {}).get(()) == n)
        assert b.proc.poll() is None
    assert reloads(m, "success") == 0
    log = b.log.read_text()
    assert "Traceback" not in log and "MemoryError" not in log
    failed = [line for line in log.splitlines() if "mapping reload failed" in line]
    assert len(failed) == failures and all(len(line) < 600 for line in failed)

    # a template naming a group that does not exist: loads, and the first matching line is counted
    mapping.write_text("mappings:\n- match: 'app\\.(.*)'\n  match_type: regex\n  name: 'x_$" + "9" * 5000 + "_$1'\n")
    code, body = b.post("/-/reload")
    assert code == 200 and body == "reloaded 1 rules\n"
    b.send_udp("app.rows:1|c", "app.rows:1|c")
    # Go's regexp.Expand reads `$999..._` (the `_` with it) as one name no group has: nothing, then $1
    m = b.wait_for(lambda m: m.get("x_rows_total", {}).get(()) == 2)
    assert not m.get("airflow_monitor_bridge_internal_errors_total") and b.proc.poll() is None


@pytest.mark.parametrize("text, why", [
    ("mappings: " + "[" * 20_000 + "]" * 20_000, "nested more than 64 levels"),
    ("mappings:\n- match: 'a{4294967296}'\n  match_type: regex\n  name: x\n", "is over 1000"),
    (ALIAS_BOMB, "expands to more than 1,000,000 nodes"),
], ids=["deep", "repeat", "aliases"])
def test_a_bad_mapping_file_at_start_is_one_line(tmp_path, text, why):
    mapping = tmp_path / "m.yml"
    mapping.write_text(text)
    p = subprocess.run([sys.executable, "-m", "monitor.cli", "serve", "--mapping-file", str(mapping),
                        "--statsd-udp", "127.0.0.1:0", "--statsd-tcp", "", "--web-listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stdout == ""
    assert why in p.stderr and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr


def test_a_backtracking_regex_costs_nothing(bridge, tmp_path):
    """N5: statsd_exporter's own README regex on 1,000-byte names backtracked for 5.7 s each in the
    single ingest thread (this shape, 16 s in Python's re); here the line after them counts at once."""
    mapping = tmp_path / "mapping.yml"
    mapping.write_text("mappings:\n- match: '(.*)\\.(.*)--(.*)\\.status\\.(.*)\\.count'\n  match_type: regex\n"
                       "  name: requests_total\n  labels: {service: '$1', code: '$4'}\n")
    b = bridge("--mapping-file", str(mapping))
    b.send_udp(*(f"{'a.--' * 249}{i}:1|c" for i in range(20)))
    b.send_udp("web.api--get.status.500.count:1|c")
    m = b.wait_for(lambda m: m.get("requests_total", {}).get((("code", "500"), ("service", "web"))) == 1,
                   timeout=15)
    assert len([k for k in m if k.startswith("a__a__")]) == 20


def test_label_bytes_and_families_stay_bounded(bridge):
    """N14: 64 tags of 1,000 characters a series; names that expire leave no family behind (in
    either process); a burst of clashing families is a line or two in the log, not one each."""
    b = bridge("--ttl", "2s", "--max-label-bytes", "200000")
    huge = "|#" + ",".join(f"k{i}:" + "v" * 1000 for i in range(63))  # and n: 64 tags, as many as a line may have
    for i in range(20):
        b.send_udp(f"app.huge:1|c{huge},n:{i}")
    base = b.wait_for(lambda m: reason(m, "dropped", "labels_too_long") == 20)
    assert "app_huge_total" not in base
    families = base["airflow_monitor_bridge_families"][()]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for r in range(3):
            for i in range(0, 2000, 50):
                s.sendto("\n".join(f"junk{r}.n{i + k}:1|c|#k:{'v' * 900}" for k in range(50)).encode(),
                         ("127.0.0.1", b.udp))
            time.sleep(0.05)
            for i in range(0, 1500, 50):
                s.sendto("\n".join(f"clash{r}.t{i + k}:1|ms\nclash{r}.t{i + k}_sum:1|g" for k in range(50)).encode(),
                         ("127.0.0.1", b.udp))
    m = b.wait_for(lambda m: reason(m, "dropped", "label_bytes_cap") > 0)
    assert m["airflow_monitor_bridge_label_bytes"][()] <= 200_000
    m = b.wait_for(lambda m: m["airflow_monitor_bridge_families"][()] <= families
                   and not any(k.startswith(("junk", "clash")) for k in m), timeout=30)
    assert m["airflow_monitor_bridge_exposed_series"][()] == m["airflow_monitor_bridge_series"][()]
    assert m["airflow_monitor_bridge_label_bytes"][()] == 0
    log = b.log.read_text()
    assert log.count("clashes with") <= 2 and reason(m, "dropped", "conflict") == 4500
    assert b.proc.poll() is None


def test_idle_statsd_connections_and_descriptors_never_stop_the_bridge(bridge):
    """N9: under a low RLIMIT_NOFILE, idle TCP connections can no longer take every descriptor: the
    web process, killed, comes back while they are held; a new client gets in (the longest-idle
    connection makes way); idle connections are closed after --statsd-tcp-idle-timeout."""
    b = bridge("--statsd-tcp-idle-timeout", "3s", max_files=64)
    held = []
    try:
        for _ in range(100):
            held.append(socket.create_connection(("127.0.0.1", b.tcp)))
        time.sleep(1.5)
        web = _web_pid(b)
        os.kill(web, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if _web_pid(b) != web and b.get("/-/ready")[0] == 200:
                    break
            except (AssertionError, OSError):
                pass
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", b.tcp)) as s:
            s.sendall(b"airflow.dagbag_size:8|g\n")
        m = b.wait_for(lambda m: m.get("airflow_dagbag_size", {}).get(()) == 8)
        assert m["airflow_monitor_bridge_web_restarts_total"][()] == 1
        assert reason(m, "socket_errors", "evicted_idle") + reason(m, "socket_errors", "too_many_connections") >= 60
        assert not reason(m, "socket_errors", "emfile")
        # the connections still held are closed by the bridge once idle for 3 s
        for s in held:
            s.settimeout(10)
        assert all(s.recv(1) == b"" for s in held[:20])
        m = b.wait_for(lambda m: reason(m, "socket_errors", "idle_timeout") >= 1)
        assert b.proc.poll() is None
    finally:
        for s in held:
            s.close()


def test_the_unix_socket_gets_the_mode_asked_for(bridge, tmp_path):
    b = bridge()
    assert stat.S_IMODE(os.stat(b.unix).st_mode) == 0o755  # statsd_exporter's default, not the umask's
    other = bridge("--statsd-unix-mode", "770", "--statsd-unix", str(tmp_path / "group.sock"))
    assert stat.S_IMODE(os.stat(tmp_path / "group.sock").st_mode) == 0o770
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"airflow.dagbag_size:3|g", str(tmp_path / "group.sock"))
    other.wait_for(lambda m: m.get("airflow_dagbag_size", {}).get(()) == 3)


def test_a_web_process_that_cannot_start_is_counted_and_retried(tmp_path, monkeypatch):
    """N9: os.pipe() failing with EMFILE when the web process must start again raised out of the
    bridge's loop. It is counted and tried again at the next check (once a second)."""
    import errno

    from monitor.bridge.publisher import WebProcess
    from monitor.bridge.store import Store

    store = Store(max_series=1000)
    http = socket.socket()
    http.bind(("127.0.0.1", 0))
    http.listen(8)
    web = WebProcess(store, http, metrics=lambda: "", ready=lambda: True, reload=lambda: (True, ""))
    web.start()
    try:
        web.proc.kill()
        web.proc.wait()
        real_pipe = os.pipe

        def no_fd():
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(os, "pipe", no_fd)
        web.check()
        web.check()
        assert web.start_failures == {"emfile": 2} and web.restarts == 0
        monkeypatch.setattr(os, "pipe", real_pipe)
        web.check()
        assert web.restarts == 1 and web.proc.poll() is None
    finally:
        web.close()
        http.close()


def _web_pid(b: BridgeProcess) -> int:
    from tests.integration.test_bridge_process import _web_pid as find

    return find(b)
