"""The one HTTP layer of the three ports (the bridge's web process, `sla run`, `heal run`), attacked as
an attacker or bad luck would, on the real processes: idle and trickling connections, clients that
never read, a web config emptied while serving, running out of descriptors, a bridge that does not
answer its web process. What a user must see: /-/healthy and /metrics still answer, nothing opens,
nothing partial is served as complete."""

from __future__ import annotations

import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from testkit.airflow import REPO, free_port
from tests.integration.tools import web_config

pytestmark = pytest.mark.integration


def hold_idle(port: int, n: int, source: str = "127.0.0.2", tls: bool = False) -> list[socket.socket]:
    """n connections from another client address that send part of a head and stop there."""
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            break
        if not tls:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        out.append(s)
    return out


def trickle(conns: list[socket.socket], stop: threading.Event) -> None:
    """A header line every 2 s on each: a per-read timeout would let them hold their slot for ever."""
    while not stop.wait(2.0):
        for s in conns:
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                pass


def get(url: str, ctx=None, auth: str | None = None, timeout: float = 30.0, gzip: bool = False) -> tuple[int, bytes]:
    headers = {"Authorization": auth} if auth else {}
    if gzip:
        headers["Accept-Encoding"] = "gzip"
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            body = r.read()  # a 200 cut short raises IncompleteRead here
            if gzip and r.headers.get("Content-Encoding") == "gzip":
                import gzip as gz

                body = gz.decompress(body)
            return r.status, body
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def basic(user: str, pw: str, scheme: str = "Basic") -> str:
    import base64

    return f"{scheme} " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def test_idle_and_trickling_connections_do_not_take_the_bridge_port_down(bridge):
    b = bridge()
    b.send_udp("airflow.dagbag_size:3|g")
    conns = hold_idle(b.http, 300)
    stop = threading.Event()
    t = threading.Thread(target=trickle, args=(conns, stop), daemon=True)
    t.start()
    try:
        time.sleep(7)  # past the head deadline: trickling no longer holds anything
        assert get(f"http://127.0.0.1:{b.http}/-/healthy")[0] == 200
        status, body = get(f"http://127.0.0.1:{b.http}/metrics")
        assert status == 200 and b"airflow_dagbag_size 3.0" in body
        m = b.scrape()["airflow_monitor_bridge_http_refused_total"]
        assert m[(("reason", "head_timeout"),)] >= 1 and m[(("reason", "per_client"),)] >= 1
    finally:
        stop.set()
        for s in conns:
            s.close()


def test_idle_tls_handshakes_do_not_take_the_healthz_down_and_an_emptied_web_config_keeps_tls(bridge, tmp_path):
    web, crt = web_config(tmp_path, "prom", "s3cret")
    b = bridge("--web-config-file", str(web), ca=crt)
    ctx = ssl.create_default_context(cafile=str(crt))
    base = f"https://127.0.0.1:{b.http}"
    conns = hold_idle(b.http, 80, tls=True)  # TCP open, no ClientHello
    try:
        assert get(f"{base}/-/healthy", ctx)[0] == 200  # probes answer without credentials
        assert get(f"{base}/metrics", ctx)[0] == 401
        assert get(f"{base}/metrics", ctx, basic("prom", "s3cret"))[0] == 200
        assert get(f"{base}/metrics", ctx, basic("prom", "s3cret", "bAsIc"))[0] == 200  # RFC 7617
    finally:
        for s in conns:
            s.close()
    # an editor's truncating save, then a comment-only file: TLS and basic auth stay on
    for content in ("", "# nothing here\n"):
        web.write_text(content)
        time.sleep(0.05)
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{b.http}/metrics", timeout=30)
        assert get(f"{base}/metrics", ctx)[0] == 401
        assert get(f"{base}/metrics", ctx, basic("prom", "s3cret"))[0] == 200
    status, body = get(f"{base}/metrics", ctx, basic("prom", "s3cret"))
    assert b"airflow_monitor_bridge_web_config_refused_total 2" in body, body[-600:]
    assert "web config not reloaded, keeping the last" in b.log.read_text()


def test_clients_that_never_read_cost_only_themselves(bridge):
    b = bridge("--airflow-tags", "on")
    lines = [f"team{f}.rows:1|c|#k:{i:05d}" for f in range(40) for i in range(2500)]  # a few MB of exposition
    for i in range(0, len(lines), 50):
        b.send_udp("\n".join(lines[i:i + 50]))
    b.wait_for(lambda m: len(m.get("team39_rows_total", {})) >= 2400, timeout=60)
    stalled = []
    for _ in range(8):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", b.http))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        stalled.append(s)
    try:
        time.sleep(0.5)
        for _ in range(4):
            status, body = get(f"http://127.0.0.1:{b.http}/metrics", timeout=60)
            assert status == 200 and body.count(b"team39_rows_total{") == 2500
        # served while the eight never-reading clients still hold their answers (none dropped yet)
        refused = b.scrape()["airflow_monitor_bridge_http_refused_total"]
        assert refused[(("reason", "slow_reader"),)] == 0
    finally:
        for s in stalled:
            s.close()


def test_metrics_is_a_503_not_a_partial_200_when_the_bridge_does_not_answer(bridge):
    b = bridge()
    b.send_udp("airflow.dagbag_size:3|g")
    b.wait_for(lambda m: m.get("airflow_dagbag_size", {}).get(()) == 3)
    os.kill(b.proc.pid, signal.SIGSTOP)  # the bridge (ingest) process stops answering its web process
    try:
        status, body = get(f"http://127.0.0.1:{b.http}/metrics", timeout=60)
        assert status == 503 and b"did not answer" in body, (status, body[:300])
        assert get(f"http://127.0.0.1:{b.http}/-/ready", timeout=60)[0] == 503
        assert get(f"http://127.0.0.1:{b.http}/-/healthy", timeout=60)[0] == 200
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    assert get(f"http://127.0.0.1:{b.http}/metrics", timeout=60)[0] == 200


class Worker:
    """`airflow-monitor sla run` with an Airflow that is not there (the watcher is blind; its port is
    what is attacked), optionally under a low limit of file descriptors."""

    def __init__(self, tmp: Path, max_files: int | None = None, web: Path | None = None):
        self.port = free_port()
        (tmp / "token").write_text("jwt")
        cfg = tmp / "sla.yaml"
        cfg.write_text(yaml.safe_dump({
            "airflow": {"url": f"http://127.0.0.1:{free_port()}", "token_file": str(tmp / "token"), "timeout": "2s"},
            "watcher": {"interval": "5s", "state_file": str(tmp / "sla.sqlite")},
            "watch": [{"dag_id": "d", "rules": [{"max_age": "1h"}]}]}))
        self.log = open(tmp / "worker.log", "wb")
        limit = max_files
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "sla", "run", "--config", str(cfg), "--metrics-listen",
             f"127.0.0.1:{self.port}", *(["--web-config-file", str(web)] if web else [])], cwd=REPO,
            stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))) if limit else None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if get(f"http://127.0.0.1:{self.port}/-/healthy", timeout=5)[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError((tmp / "worker.log").read_text())

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def test_sla_run_survives_199_idle_connections_and_running_out_of_descriptors(tmp_path):
    w = Worker(tmp_path, max_files=128)
    conns: list[socket.socket] = []
    try:
        conns = hold_idle(w.port, 199)
        assert get(f"http://127.0.0.1:{w.port}/-/healthy")[0] == 200
        status, body = get(f"http://127.0.0.1:{w.port}/metrics")
        assert status == 200 and b"airflow_monitor_sla_cycles_total" in body
        # descriptors exhausted (128 allowed): accept sheds and pauses, it does not spin
        more = [socket.create_connection(("127.0.0.1", w.port)) for _ in range(150)]
        conns += more
        before, t0 = w.cpu(), time.monotonic()
        time.sleep(4)
        spent, wall = w.cpu() - before, time.monotonic() - t0
        assert spent < 0.5 * wall, f"{spent:.2f} CPU-s in {wall:.1f} s: the accept loop spins"
        assert w.proc.poll() is None
    finally:
        for s in conns:
            s.close()
    time.sleep(1)
    status, body = get(f"http://127.0.0.1:{w.port}/metrics")
    assert status == 200
    assert b'airflow_monitor_sla_http_refused_total{reason="out_of_descriptors"}' in body
    w.stop()


def test_a_restarted_web_process_answers_503_until_it_has_every_series_never_a_partial_200(bridge):
    """Right after the web process restarts, the bridge sends it every series again; until the whole
    snapshot is applied /metrics is a 503 (Prometheus records up=0), never a 200 with part of them, nor
    a gzip'ed 200 cut short after its header."""
    from tests.integration.test_bridge_process import _web_pid

    b = bridge("--airflow-tags", "on")
    lines = [f"team{f}.rows:1|c|#k:{i:05d}" for f in range(20) for i in range(1000)]
    for i in range(0, len(lines), 50):
        b.send_udp("\n".join(lines[i:i + 50]))
    b.wait_for(lambda m: sum(len(v) for k, v in m.items() if k.startswith("team")) >= 20000, timeout=60)
    import http.client

    seen = {"partial": 0, "503": 0, "full": 0, "cut": 0}
    for round_ in range(4):
        old = _web_pid(b)
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, body = get(f"http://127.0.0.1:{b.http}/metrics", timeout=30, gzip=round_ % 2 == 1)
            except http.client.IncompleteRead:
                seen["cut"] += 1
                continue
            except OSError:
                continue  # between the old process and the new one
            if status == 503:
                seen["503"] += 1
                continue
            n = body.count(b"_rows_total{")
            if n == 20000:
                seen["full"] += 1
                break
            seen["partial"] += 1
        assert _web_pid(b) != old
    assert seen["partial"] == 0 and seen["cut"] == 0 and seen["full"] == 4, seen
