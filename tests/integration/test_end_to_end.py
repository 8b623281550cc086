"""End to end: real Airflow 3.3 -> DogStatsD -> the bridge (+ SLA watcher) -> a real Prometheus.

Every PromQL expression of every dashboard panel and every alert rule is sent to Prometheus's
query API and must parse; after the example DAGs ran, every dashboard panel must show data.
Prometheus also loads alerts/prometheus/airflow-rules.yaml and must report the rules healthy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from monitor.dashboards import grafana
from tests.integration.tools import Prometheus

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "alerts" / "prometheus" / "airflow-rules.yaml"
PER_DAG = "sla_ok"  # the per-DAG dashboard is checked on a DAG that ran and succeeded


def concrete(expr: str) -> str:
    """Grafana's variables as a person viewing the dashboard would have them."""
    return (expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
            .replace("$dag_id", PER_DAG).replace("${datasource}", ""))


@pytest.fixture(scope="module")
def prom(stack, tmp_path_factory):
    p = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{stack.bridge.http}", rules=RULES)
    af = stack.airflow
    runs = {d: af.trigger(d) for d in ("team.sales_daily", "sla_ok", "sla_fail")}
    for dag, run_id in runs.items():
        af.wait_run(dag, run_id)
    time.sleep(70)  # a minute of scrapes: rate()[1m] windows need two samples after the runs
    yield p
    p.stop()


def dashboard_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((REPO / "dashboards" / "grafana").glob("*.json")):
        for title, expr in grafana.expressions(json.loads(path.read_text())):
            out.append((path.name, title, expr))
    return out


def test_every_dashboard_query_parses_and_every_panel_shows_data(prom):
    broken, empty = [], {}
    for dash, title, expr in dashboard_queries():
        r = prom.query(concrete(expr))
        if r.get("status") != "success":
            broken.append(f"{dash} / {title}: {r.get('error')}: {expr}")
            continue
        has_data = bool(r["data"]["result"])
        empty.setdefault((dash, title), []).append(has_data)
    assert not broken, "\n".join(broken)
    no_data = [f"{d} / {t}" for (d, t), flags in empty.items() if not any(flags)]
    assert not no_data, "panels without data after the example DAGs ran:\n" + "\n".join(no_data)


def test_every_alert_rule_parses_and_prometheus_loads_them(prom):
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        r = prom.query(rule["expr"])
        assert r.get("status") == "success", f"{rule['alert']}: {r.get('error')}"
    loaded = prom.get("/api/v1/rules")["data"]["groups"]
    health = {r["name"]: r["health"] for g in loaded for r in g["rules"]}
    assert set(health) == {r["alert"] for g in groups for r in g["rules"]}
    assert set(health.values()) == {"ok"}, health


def test_alerts_fire_on_real_data(prom):
    """The example DAGs include a failing run and a never-run DAG: those alerts fire for real."""
    deadline, firing = time.monotonic() + 60, set()
    while time.monotonic() < deadline:
        firing = {(a["labels"]["alertname"], a["labels"].get("dag_id")) for a in prom.get("/api/v1/alerts")["data"]
                  ["alerts"] if a["state"] == "firing"}
        if {("AirflowDagRunFailed", "team.sales_daily"), ("AirflowSLABreached", "sla_never")} <= firing:
            break
        time.sleep(2)
    assert ("AirflowDagRunFailed", "team.sales_daily") in firing, firing
    assert ("AirflowSLABreached", "sla_never") in firing, firing
    assert ("AirflowSchedulerHeartbeatMissing", None) not in firing
    assert not any(a == "AirflowSLABreached" and d == "sla_ok" for a, d in firing)


def test_hostile_lines_never_take_the_target_down(prom, stack):
    """Reserved labels, clashing names and squatted families, sent to the bridge a real Prometheus
    scrapes: the target stays up, and the bridge counts what it refused."""
    import socket

    hostile = [
        "app.y:1|c|#__name__:evil", "app.y2:1|c|#__meta_x:1", "app.z:1|ms|#le:0.5", "app.q:1|h|#quantile:0.9",
        "app.flag:1|c|#method:GET,flag", "app.flag:1|c|#method:GET,flag:", "app.t:5|ms", "app.t_sum:1|g",
        "app.t_bucket:2|g", "app.x:1|c", "app.x_total:2|g", "app.rows:1|c", "app.rows_total:2|c",
        "airflow_ti_finish:1|g", "airflow_sla_breached:0|g|#dag_id:sla_never,rule:fresh,priority:P3,reason:x",
        "airflow_monitor_bridge_parse_errors:0|c|#reason:malformed_line", "_total:1|c", "app.v:1|g|#k:a\"b\\\\c\nd",
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for line in hostile:
            s.sendto(line.encode(), ("127.0.0.1", stack.bridge.udp))
    time.sleep(6)  # three scrape intervals
    targets = prom.get("/api/v1/targets")["data"]["activeTargets"]
    assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")], targets
    up = prom.query('up{job="airflow-monitor"}')["data"]["result"]
    assert [r["value"][1] for r in up] == ["1"]
    refused = {r["metric"]["reason"]: float(r["value"][1]) for r in prom.query(
        "airflow_monitor_bridge_dropped_total")["data"]["result"]}
    assert refused.get("conflict", 0) >= 3, refused
    kept = {r["metric"]["reason"]: float(r["value"][1]) for r in prom.query(
        "airflow_monitor_bridge_labels_dropped_total")["data"]["result"]}
    assert kept.get("reserved_label", 0) >= 4, kept  # the tag goes, the sample stays
    assert prom.query("app_y_total")["data"]["result"][0]["value"][1] == "1"
    assert refused.get("reserved", 0) >= 3, refused
    assert prom.query('app_flag_total{method="GET"}')["data"]["result"][0]["value"][1] == "2"
