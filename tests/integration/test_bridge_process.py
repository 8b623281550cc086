"""The bridge as a user runs it: a real process, real sockets, real HTTP, real contract peers."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from testkit.servers.datadog import DatadogServer

pytestmark = pytest.mark.integration

K = (("dag_id", "d.x"), ("state", "success"), ("task_id", "g.t"))


def test_udp_tcp_unix_health_and_self_metrics(bridge):
    b = bridge("--airflow-tags", "on")
    assert b.get("/-/healthy") == (200, "OK\n")
    assert b.get("/-/ready")[0] == 200
    b.send_udp("airflow.ti.finish:1|c|#dag_id:d.x,task_id:g.t,state:success", "bogus")
    with socket.create_connection(("127.0.0.1", b.tcp)) as s:
        s.sendall(b"airflow.ti.finish:2|c|#dag_id:d.x,task_id:g.t,state:success\nairflow.dagbag_size:4|g")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"airflow.ti.finish:3|c|#dag_id:d.x,task_id:g.t,state:success", b.unix)
    # the bridge's own series are read before the store is rendered: wait for both to have seen the lines
    m = b.wait_for(lambda m: m.get("airflow_ti_finish_total", {}).get(K) == 6 and m.get("airflow_dagbag_size")
                   and len(m.get("airflow_monitor_bridge_packets_total", {})) >= 4)
    assert m["airflow_dagbag_size"][()] == 4
    transports = {dict(k)["transport"] for k in m["airflow_monitor_bridge_packets_total"]}
    assert {"udp", "tcp", "unix"} <= transports
    assert m["airflow_monitor_bridge_parse_errors_total"][(("reason", "malformed_line"),)] == 1


def test_mapping_reload_by_sighup_and_http_keeps_old_on_error(bridge, tmp_path):
    mapping = tmp_path / "mapping.yml"
    mapping.write_text("mappings:\n- match: airflow.dagbag_size\n  name: first_name\n")
    closed = bridge("--mapping-file", str(mapping))  # without --web-enable-lifecycle: refused, as statsd_exporter
    code, body = closed.post("/-/reload")
    assert code == 403 and "--web-enable-lifecycle" in body
    b = bridge("--mapping-file", str(mapping), "--web-enable-lifecycle")
    b.send_udp("airflow.dagbag_size:1|g")
    b.wait_for(lambda m: "first_name" in m)

    mapping.write_text("mappings:\n- match: airflow.dagbag_size\n  name: second_name\n")
    b.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    b.send_udp("airflow.dagbag_size:2|g")
    b.wait_for(lambda m: m.get("second_name", {}).get(()) == 2)

    mapping.write_text("mappings:\n- match: [unclosed\n")
    code, body = b.post("/-/reload")
    assert code == 500 and "not valid YAML" in body
    b.send_udp("airflow.dagbag_size:3|g")
    m = b.wait_for(lambda m: m.get("second_name", {}).get(()) == 3)
    assert m["airflow_monitor_bridge_mapping_reloads_total"][(("outcome", "failure"),)] == 1
    assert m["airflow_monitor_bridge_mapping_reloads_total"][(("outcome", "success"),)] == 1


def test_relay_forwards_raw_lines_and_never_blocks(bridge):
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    b = bridge("--relay", f"127.0.0.1:{sink.getsockname()[1]}")
    b.send_udp("airflow.ti_successes:1|c")
    assert sink.recv(1000) == b"airflow.ti_successes:1|c"
    sink.close()  # target down: ingestion goes on
    b.send_udp(*["airflow.ti_successes:1|c"] * 200)
    b.wait_for(lambda m: m.get("airflow_ti_successes_total", {}).get(()) == 201)


def test_datadog_agent_receives_mapped_dogstatsd(bridge):
    agent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    agent.bind(("127.0.0.1", 0))
    agent.settimeout(1)
    b = bridge("--datadog", "agent", "--datadog-port", str(agent.getsockname()[1]),
               "--datadog-flush-interval", "0.5", "--datadog-tags", "env:test")
    b.send_udp("airflow.ti.finish:1|c|#dag_id:d.x,task_id:g.t,state:success",
               "airflow.pool.open_slots:7|g|#pool_name:default_pool",
               "airflow.task.duration:1500|ms|#dag_id:d.x,task_id:g.t")
    got = b""
    deadline = time.monotonic() + 10
    wanted = (b"airflow.dag.task.duration:", b"airflow.ti.finish:", b"airflow.pool.open_slots:")
    while time.monotonic() < deadline and not all(name in got for name in wanted):
        try:
            got += agent.recv(65536) + b"\n"
        except TimeoutError:
            pass
    points = {}
    for line in got.decode().splitlines():
        if line:
            name, rest = line.split(":", 1)
            value, kind, tags = rest.split("|", 2)
            points[name] = (float(value), kind, set(tags.lstrip("#").split(",")))
    assert points["airflow.ti.finish"] == (1.0, "c", {"dag_id:d.x", "task_id:g.t", "state:success", "env:test"})
    assert points["airflow.pool.open_slots"] == (7.0, "g", {"pool_name:default_pool", "env:test"})
    # each timer sample goes to the agent as a timing (in ms, as Datadog's Airflow integration has
    # them): the agent computes .avg, .median, .95percentile and .max from real samples
    assert points["airflow.dag.task.duration"] == (1500.0, "ms", {"dag_id:d.x", "task_id:g.t", "env:test"})
    assert not any(name.endswith((".avg", ".median", ".95percentile")) for name in points)


def test_datadog_agentless_retries_and_never_logs_the_key(bridge, tmp_path):
    srv = DatadogServer("s3cr3t-datadog-key")
    srv.fail_next(1, 429)
    srv.fail_next(1, 500)
    keyfile = tmp_path / "dd.key"
    keyfile.write_text("s3cr3t-datadog-key\n")
    b = bridge("--datadog", "api", "--datadog-api-key-file", str(keyfile), "--datadog-flush-interval", "0.5",
               "--datadog-api-url", srv.url, "--log-level", "DEBUG")
    b.send_udp("airflow.ti.finish:1|c|#dag_id:d.x,task_id:g.t,state:success",
               "airflow.task.duration:1500|ms|#dag_id:d.x,task_id:g.t")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(any(s["metric"] == m for s in srv.series) for m in (
            "airflow.ti.finish", "airflow.dag.task.duration.95percentile")):
        time.sleep(0.2)
    srv.close()
    series = [s for s in srv.series if s["metric"] == "airflow.ti.finish"]
    assert len(series) == 1, "the count must arrive exactly once after the 429 and the 500"
    assert series[0]["type"] == "count" and series[0]["points"][0][1] == 1
    assert sorted(series[0]["tags"]) == ["dag_id:d.x", "state:success", "task_id:g.t"]
    # percentiles from the samples themselves: one 1,500 ms sample is 1,500 at every percentile
    timer = {s["metric"].rsplit(".", 1)[1]: s["points"][0][1] for s in srv.series
             if s["metric"].startswith("airflow.dag.task.duration.")}
    assert timer == {"count": 1, "avg": 1500, "median": 1500, "95percentile": 1500, "max": 1500}, timer
    assert set(srv.keys) == {"s3cr3t-datadog-key"}
    # issue 23 item 12: no host unless one is set (the datadog package attached this machine's, a pod name)
    assert all("host" not in s for s in srv.series), {s.get("host") for s in srv.series}
    b.stop()
    assert "s3cr3t" not in b.log.read_text()


def test_datadog_agentless_points_carry_the_host_that_is_set(bridge, tmp_path):
    srv = DatadogServer("k")
    (tmp_path / "dd.key").write_text("k\n")
    b = bridge("--datadog", "api", "--datadog-api-key-file", str(tmp_path / "dd.key"), "--datadog-flush-interval",
               "0.5", "--datadog-api-url", srv.url, "--datadog-hostname", "airflow-prod")
    b.send_udp("airflow.ti.finish:1|c|#dag_id:d.x,task_id:g.t,state:success")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not srv.series:
        time.sleep(0.2)
    srv.close()
    assert srv.series and {s.get("host") for s in srv.series} == {"airflow-prod"}, srv.series
    b.stop()
    # at the default level, the datadog package's line per POST (and its hostname lookup) is not shown
    assert " INFO datadog" not in b.log.read_text(), b.log.read_text()[-2000:]


def _web_pid(b) -> int:
    """The bridge's web process: its child running monitor.bridge.web."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == b.proc.pid and b"monitor.bridge.web" in (p / "cmdline").read_bytes():
                    return int(p.name)
            except (OSError, IndexError):
                continue
    raise AssertionError("no web process")


def test_continuous_scrapes_lose_nothing_of_a_burst(bridge):
    """Ingest and scrapes run side by side: every line of a burst is counted while /metrics is read
    without pause (plain and gzip), on a store of thousands of series."""
    b = bridge("--airflow-tags", "on")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in range(500):  # 5,000 series, 1,000 of them histograms
            for t in range(2):
                s.sendto(b"airflow.task.duration:1500|ms|#dag_id:d%d,task_id:t%d" % (d, t), ("127.0.0.1", b.udp))
                for state in (b"success", b"failed", b"up_for_retry", b"skipped"):
                    s.sendto(b"airflow.ti.finish:0|c|#dag_id:d%d,task_id:t%d,state:%b" % (d, t, state),
                             ("127.0.0.1", b.udp))
            if d % 50 == 0:
                time.sleep(0.01)
    b.wait_for(lambda m: len(m.get("airflow_task_duration_count", {})) == 1000, timeout=30)

    stop, scrapes, errors = threading.Event(), [], []

    def scraper(gz: bool):
        while not stop.is_set():
            req = urllib.request.Request(f"http://127.0.0.1:{b.http}/metrics",
                                         headers={"Accept-Encoding": "gzip"} if gz else {})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    body = r.read()
                    assert (r.headers.get("Content-Encoding") == "gzip") == gz
                text = gzip.decompress(body).decode() if gz else body.decode()
                assert "airflow_ti_finish_total{" in text
                scrapes.append(len(text))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

    threads = [threading.Thread(target=scraper, args=(gz,)) for gz in (False, True)]
    for th in threads:
        th.start()
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        start = time.monotonic()
        while sent < 40_000:  # 10,000 lines/s, one line per datagram, spread over every series
            d, t = sent % 500, (sent // 500) % 2
            s.sendto(b"airflow.ti.finish:1|c|#dag_id:d%d,task_id:t%d,state:success" % (d, t), ("127.0.0.1", b.udp))
            sent += 1
            if sent % 100 == 0:
                ahead = sent / 10_000 - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    m = b.wait_for(lambda m: sum(m.get("airflow_ti_finish_total", {}).values()) >= sent, timeout=30)
    stop.set()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    assert len(scrapes) >= 4, "the scrapes did not run during the burst"
    assert sum(m["airflow_ti_finish_total"].values()) == sent


def test_concurrent_scrapers_share_renderings_and_a_stalled_one_holds_nobody(bridge):
    b = bridge("--airflow-tags", "on")
    lines = [f"team{f}.rows:1|c|#k:{i:05d}" for f in range(40) for i in range(2500)]  # ~6 MB of text
    for i in range(0, len(lines), 50):
        b.send_udp("\n".join(lines[i:i + 50]))
    b.wait_for(lambda m: len(m.get("team39_rows_total", {})) >= 2400, timeout=30)
    before = b.scrape()
    # a client that asks and never reads: it holds its own worker until its write deadline, and no rendering
    stalled = socket.create_connection(("127.0.0.1", b.http))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.5)
    bodies: list = [None] * 20
    failed: list = []

    def scrape(i: int) -> None:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{b.http}/metrics",
                                         headers={"Accept-Encoding": "gzip"} if i % 2 else {})
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
                bodies[i] = gzip.decompress(raw) if r.headers.get("Content-Encoding") == "gzip" else raw
        except Exception as e:  # noqa: BLE001 - reported below
            failed.append(e)

    threads = [threading.Thread(target=scrape, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    stalled.close()
    assert not failed, failed
    assert all(body and body.count(b"team39_rows_total{") == 2500 for body in bodies)
    after = b.scrape()
    renders = after["airflow_monitor_bridge_renders_total"][()] - before["airflow_monitor_bridge_renders_total"][()]
    scrapes = after["airflow_monitor_bridge_scrapes_total"][()] - before["airflow_monitor_bridge_scrapes_total"][()]
    # 21 scrapes: the stalled one's, then the rest, sharing renderings (a rendering never waits for a client)
    assert scrapes >= 21 and renders <= 10, (scrapes, renders)


def test_a_killed_web_process_comes_back_with_every_series(bridge):
    b = bridge("--airflow-tags", "on")
    b.send_udp("airflow.ti.finish:2|c|#dag_id:d.x,task_id:g.t,state:success", "airflow.dagbag_size:4|g")
    before = b.wait_for(lambda m: m.get("airflow_ti_finish_total", {}).get(K) == 2
                        and m.get("airflow_dagbag_size", {}).get(()) == 4)
    old = _web_pid(b)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if _web_pid(b) != old and b.get("/-/ready")[0] == 200:
                break
        except (AssertionError, OSError):
            pass
        time.sleep(0.2)
    b.send_udp("airflow.ti.finish:1|c|#dag_id:d.x,task_id:g.t,state:success")
    after = b.wait_for(lambda m: m.get("airflow_ti_finish_total", {}).get(K) == 3)
    assert after["airflow_dagbag_size"] == before["airflow_dagbag_size"]
    assert "the web process exited" in b.log.read_text()
    assert before["airflow_monitor_bridge_web_restarts_total"][()] == 0
    assert after["airflow_monitor_bridge_web_restarts_total"][()] == 1


def test_an_over_long_tcp_line_is_dropped_whole(bridge):
    b = bridge()
    with socket.create_connection(("127.0.0.1", b.tcp)) as s:
        s.sendall(b"x" * 65536 + b"evil.metric:1|c\nairflow.dagbag_size:4|g\n")
        s.sendall(b"y" * 70000)
        s.sendall(b"evil.other:1|c\n" + b"z" * 50000 + b"\nairflow.dagbag_size:5|g\n")
    m = b.wait_for(lambda m: m.get("airflow_dagbag_size", {}).get(()) == 5 and m.get(
        "airflow_monitor_bridge_parse_errors_total", {}).get((("reason", "oversized_line"),), 0) >= 2)
    assert not any(name.startswith("evil") for name in m)


def test_running_out_of_file_descriptors_does_not_stop_the_bridge(bridge):
    b = bridge(max_files=64)
    held = []
    try:
        for _ in range(80):  # more than the bridge may open: statsd TCP stops short of EMFILE
            held.append(socket.create_connection(("127.0.0.1", b.tcp)))
        time.sleep(1.5)
        assert b.proc.poll() is None
        for s in held:
            s.close()
        held.clear()
        b.send_udp("airflow.dagbag_size:7|g")
        m = b.wait_for(lambda m: m.get("airflow_dagbag_size", {}).get(()) == 7)
        errors = m["airflow_monitor_bridge_socket_errors_total"]
        assert errors.get((("reason", "too_many_connections"),), 0) >= 80 - 32  # 64 descriptors: 32 connections
        with socket.create_connection(("127.0.0.1", b.tcp)) as s:  # accepting again
            s.sendall(b"airflow.dagbag_size:8|g\n")
        b.wait_for(lambda m: m.get("airflow_dagbag_size", {}).get(()) == 8)
        # the same on the HTTP port: the web process runs out, pauses accepting, and serves again
        web = _web_pid(b)
        for _ in range(80):
            held.append(socket.create_connection(("127.0.0.1", b.http)))
        time.sleep(1.5)
        for s in held:
            s.close()
        held.clear()
        m = b.wait_for(lambda m: m["airflow_monitor_bridge_http_refused_total"].get(
            (("reason", "out_of_descriptors"),), 0) >= 1)
        assert _web_pid(b) == web and b.proc.poll() is None, "neither process died nor was restarted"
    finally:
        for s in held:
            s.close()


def test_tls_and_basic_auth_from_a_web_config_file(tmp_path):
    """The exporter-toolkit's web config (statsd_exporter's --web.config.file): a certificate made
    here, a bcrypt user as htpasswd makes it, a real Prometheus scraping over TLS with basic auth."""
    import base64
    import json
    import ssl
    import subprocess
    import sys
    import urllib.error

    from testkit.airflow import free_port
    from tests.integration.tools import Prometheus, web_config

    web, crt = web_config(tmp_path, "prom", "s3cret-pw")
    udp, http = free_port(socket.SOCK_DGRAM), free_port()
    log = tmp_path / "bridge.log"
    proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "serve", "--statsd-udp", f"127.0.0.1:{udp}",
                             "--statsd-tcp", "", "--web-listen", f"127.0.0.1:{http}", "--web-config-file", str(web),
                             "--otlp-listen", ""],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    ctx = ssl.create_default_context(cafile=str(crt))

    def get(path, user=None, pw=None, scheme="https", method="GET"):
        req = urllib.request.Request(f"{scheme}://127.0.0.1:{http}{path}", method=method,
                                     data=b"" if method == "POST" else None)
        if user:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx if scheme == "https" else None) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    prom = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get("/-/ready", "prom", "s3cret-pw")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert get("/-/ready", "prom", "s3cret-pw")[0] == 200, log.read_text()
        assert get("/metrics")[0] == 401 and get("/metrics", "prom", "wrong")[0] == 401
        assert get("/metrics", "nobody", "s3cret-pw")[0] == 401
        # the kubelet's probes send no credentials: health and readiness answer with status only
        assert get("/-/healthy") == (200, "OK\n") and get("/-/ready") == (200, "OK\n")
        assert get("/-/ready/sla") == (404, "no SLA watcher in this process\n")
        with pytest.raises((OSError, urllib.error.URLError)):  # plain HTTP gets no answer
            get("/metrics", "prom", "s3cret-pw", scheme="http")
        code, body = get("/metrics", "prom", "s3cret-pw")
        assert code == 200 and "airflow_monitor_bridge_lines_total" in body
        assert get("/-/reload", "prom", "s3cret-pw", method="POST")[0] == 403, "no lifecycle without the flag"
        prom = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{http}", scrape={
            "scheme": "https", "basic_auth": {"username": "prom", "password": "s3cret-pw"},
            "tls_config": {"ca_file": str(crt)}})
        deadline = time.monotonic() + 30
        up = []
        while time.monotonic() < deadline and [r["value"][1] for r in up] != ["1"]:
            time.sleep(1)
            up = prom.query('up{job="airflow-monitor"}')["data"]["result"]
        assert [r["value"][1] for r in up] == ["1"], json.dumps(prom.get("/api/v1/targets"))[:2000]
        refused = get("/metrics", "prom", "s3cret-pw")[1]
        assert 'http_refused_total{reason="tls_handshake"} ' in refused
        assert "s3cret" not in log.read_text()
    finally:
        if prom is not None:
            prom.stop()
        proc.terminate()
        proc.wait(timeout=10)


def test_dropped_shows_the_last_refused_and_unmapped_lines_bounded_and_rate_limited(bridge):
    """Issue 23 item 11: a metric "does not show up": /-/dropped shows the last lines refused or unmapped,
    by reason, at most 20 a reason and one a second, whatever the flood."""
    import json

    b = bridge("--airflow-tags", "on")
    b.send_udp("x,k=v:1|c|#a:b", "airflow.ti.finish.d.t.success:1|c", "my.app.rows:1|c", "nocolon")
    for i in range(5):  # a flood of malformed lines: one kept a second, 20 at most
        b.send_udp(*[f"flood{i}-{n}" for n in range(2000)])
        time.sleep(0.3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, text = b.get("/-/dropped")
        if code == 200 and "mixed_tagging_styles" in text and "legacy_twin" in text and "my.app.rows" in text:
            break
        time.sleep(0.3)
    assert code == 200, text
    assert "parse_errors mixed_tagging_styles, 1 in all:" in text and "x,k=v:1|c|#a:b" in text, text
    assert "dropped legacy_twin, 1 in all:" in text and "airflow.ti.finish.d.t.success:1|c" in text, text
    assert "unmapped exported as my_app_rows" in text, text
    assert "bridge explain" in text
    groups = json.loads(b.get("/-/dropped?format=json")[1])
    malformed = next(g for g in groups if g["reason"] == "malformed_line")
    assert malformed["count"] >= 1000 and 1 <= len(malformed["lines"]) <= 5, malformed
    assert all(len(g["lines"]) <= 20 for g in groups)
