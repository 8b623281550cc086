"""The OTLP port of a real `airflow-monitor serve`: the OpenTelemetry SDK's own OTLP/HTTP exporter (from
the Airflow venv) sends to it, the web config's TLS and basic auth apply to it, request bodies are
bounded over HTTP, and a web process that dies takes the OTLP channel with it and brings it back."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.tools import web_config

pytestmark = pytest.mark.integration

SDK_SENDER = """
import sys
from opentelemetry import metrics
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

url, compression = sys.argv[1], sys.argv[2]
from opentelemetry.exporter.otlp.proto.http import Compression
exporter = OTLPMetricExporter(endpoint=url, compression=Compression(compression))
reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
mp = MeterProvider(resource=Resource.create({"service.name": "Airflow", "service.instance.id": "airflow-worker-0"}),
                   metric_readers=[reader],
                   views=[View(instrument_type=metrics.Histogram, aggregation=ExponentialBucketHistogramAggregation())])
m = mp.get_meter("airflow._shared.observability.metrics.otel_logger")
finish = m.create_counter("airflow.ti.finish")
duration = m.create_histogram("airflow.task.duration", unit="ms")
for _ in range(3):
    finish.add(1, {"dag_id": "team.sales", "task_id": "load", "state": "success"})
    duration.record(1500.0, {"dag_id": "team.sales", "task_id": "load"})
    print(mp.force_flush(), flush=True)
mp.shutdown()
"""


def send_sdk(venv, url: str, compression: str = "none") -> str:
    r = subprocess.run([str(venv / "bin" / "python"), "-c", SDK_SENDER, url, compression], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout + r.stderr


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_the_opentelemetry_sdks_exporter_is_taken(bridge, venv, compression):
    b = bridge()
    out = send_sdk(venv, f"http://127.0.0.1:{b.otlp}/v1/metrics", compression)
    assert "Failed to export" not in out, out
    m = b.wait_for(lambda m: m.get("airflow_task_duration_count"))
    labels = (("dag_id", "team.sales"), ("pod", "airflow-worker-0"), ("task_id", "load"))
    assert m["airflow_ti_finish_total"] == {(("dag_id", "team.sales"), ("pod", "airflow-worker-0"),
                                             ("state", "success"), ("task_id", "load")): 3}
    assert m["airflow_task_duration_count"][labels] == 3 and m["airflow_task_duration_sum"][labels] == 4.5


def post(url: str, body: bytes, headers: dict, ctx=None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def body_json(n: int = 1) -> bytes:
    return json.dumps({"resourceMetrics": [{"resource": {"attributes": [
        {"key": "service.instance.id", "value": {"stringValue": "airflow-scheduler-0"}}]},
        "scopeMetrics": [{"metrics": [{"name": "airflow.scheduler_heartbeat", "sum": {
            "aggregationTemporality": 2, "isMonotonic": True,
            "dataPoints": [{"asInt": str(n), "startTimeUnixNano": "1", "timeUnixNano": "2"}]}}]}]}]}).encode()


def test_tls_and_basic_auth_apply_to_the_otlp_port(bridge, tmp_path):
    web, crt = web_config(tmp_path, "airflow", "0tlp-pw")
    b = bridge("--web-config-file", str(web), ca=crt)
    ctx = ssl.create_default_context(cafile=str(crt))
    url = f"https://127.0.0.1:{b.otlp}/v1/metrics"
    status, _, headers = post(url, body_json(), {"Content-Type": "application/json"}, ctx)
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
    auth = "Basic " + base64.b64encode(b"airflow:0tlp-pw").decode()
    status, answer, headers = post(url, body_json(), {"Content-Type": "application/json", "Authorization": auth}, ctx)
    assert status == 200 and headers["Content-Type"] == "application/json" and json.loads(answer) == {}
    with pytest.raises(OSError):  # plain HTTP is no TLS handshake
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{b.otlp}/v1/metrics", data=body_json()),
                               timeout=10)
    req = urllib.request.Request(f"https://127.0.0.1:{b.http}/metrics", headers={"Authorization": auth})
    deadline = time.monotonic() + 10
    while 'airflow_scheduler_heartbeat_total{pod="airflow-scheduler-0"} 1.0' not in (
            text := urllib.request.urlopen(req, timeout=10, context=ctx).read().decode()):
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.2)


def test_bodies_are_bounded_over_http(bridge):
    b = bridge("--otlp-max-body", "100000")
    url = f"http://127.0.0.1:{b.otlp}/v1/metrics"
    status, _, _ = post(url, b"\0" * 100_001, {"Content-Type": "application/x-protobuf"})
    assert status == 413
    bomb = gzip.compress(b"\0" * 10_000_000)
    status, _, _ = post(url, bomb, {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    assert status == 413
    status, _, _ = post(url, b"\x0a\xff", {"Content-Type": "application/x-protobuf"})
    assert status == 400
    m = b.scrape()
    refused = {dict(k)["outcome"]: v for k, v in m["airflow_monitor_bridge_otlp_requests_total"].items()}
    assert refused["decode_error"] == 1 and refused["too_large"] == 1  # the other 413: the HTTP layer's own
    assert m["airflow_monitor_bridge_http_refused_total"][(("reason", "too_large"),)] == 1


def test_the_otlp_channel_comes_back_with_a_new_web_process(bridge):
    b = bridge()
    url = f"http://127.0.0.1:{b.otlp}/v1/metrics"
    assert post(url, body_json(1), {"Content-Type": "application/json"})[0] == 200
    b.wait_for(lambda m: m.get("airflow_scheduler_heartbeat_total"))
    web = [int(p) for p in subprocess.run(["pgrep", "-P", str(b.proc.pid), "-f", "monitor.bridge.web"],
                                          capture_output=True, text=True).stdout.split()]
    assert len(web) == 1
    os.kill(web[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if post(url, body_json(3), {"Content-Type": "application/json"})[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    # one cumulative stream: its total, however many times it was sent, across the restart
    m = b.wait_for(lambda m: m.get("airflow_monitor_bridge_web_restarts_total", {}).get((), 0) >= 1
                   and m.get("airflow_scheduler_heartbeat_total") == {(("pod", "airflow-scheduler-0"),): 3})
    assert m["airflow_scheduler_heartbeat_total"] == {(("pod", "airflow-scheduler-0"),): 3}


def test_bodies_read_at_once_are_bounded_together(bridge):
    """A body may take --otlp-max-body; bodies being read at once, twice that: beyond it a client is told
    to come back (503, Retry-After), so that many large bodies together cannot take the memory."""
    import socket

    b = bridge("--otlp-max-body", "100000")
    head = "POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n"
    first = socket.create_connection(("127.0.0.1", b.otlp))
    second = socket.create_connection(("127.0.0.1", b.otlp))
    third = socket.create_connection(("127.0.0.1", b.otlp))
    try:
        first.sendall(head.format(90_000).encode() + b"\0" * 1000)  # trickles: its body is held
        second.sendall(head.format(90_000).encode() + b"\0" * 1000)
        time.sleep(0.5)
        third.sendall(head.format(50_000).encode())
        third.settimeout(10)
        answer = third.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 503") and "Retry-After: 1" in answer, answer
    finally:
        for s in (first, second, third):
            s.close()
    assert b.scrape()["airflow_monitor_bridge_http_refused_total"][(("reason", "busy"),)] == 1
