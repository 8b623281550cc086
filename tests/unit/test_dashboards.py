"""dashboards/ and alerts/datadog/ are generated from the catalog and checked in: they must be
current, and name only series the bridge and watcher expose."""

import json
import re
from pathlib import Path

from monitor import catalog
from monitor.dashboards import command, grafana

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_files_are_current():
    stale = [name for name, text in command.rendered().items() if (REPO / name).read_text() != text]
    assert not stale, f"stale: {stale}; run `airflow-monitor dashboards build`"


def grafana_docs():
    return {p.name: json.loads(p.read_text()) for p in (REPO / "dashboards" / "grafana").glob("*.json")}


def test_grafana_queries_name_only_exposed_series():
    known = catalog.all_series_names()
    docs = grafana_docs()
    assert set(docs) == {"airflow-overview.json", "airflow-dag.json"}
    for name, doc in docs.items():
        exprs = grafana.expressions(doc)
        assert len(exprs) >= 6
        for title, expr in exprs:
            unknown = set(re.findall(r"\b(airflow_[a-z0-9_]+)\b", expr)) - known
            assert not unknown, f"{name} panel {title!r} names {unknown}"


def test_overview_covers_what_the_issue_asks():
    titles = " | ".join(p["title"] for p in grafana_docs()["airflow-overview.json"]["panels"])
    for needle in ("heartbeat", "loop duration", "Queued vs running", "Pool slots", "Task outcomes",
                   "DAG-run outcomes", "parse time", "import errors", "Triggerer capacity", "SLA", "Statsd lines"):
        assert needle.lower() in titles.lower(), needle


def test_per_dag_dashboard_has_a_dag_variable():
    doc = grafana_docs()["airflow-dag.json"]
    (var,) = [v for v in doc["templating"]["list"] if v["name"] == "dag_id"]
    assert var["query"] == "label_values(airflow_dagrun_duration_count, dag_id)"
    assert all('dag_id="$dag_id"' in e for _, e in grafana.expressions(doc))


def datadog_names(text: str) -> set[str]:
    return set(re.findall(r"\b(airflow\.[a-z0-9_.]+?)(?=\{)", text))


def test_datadog_dashboard_and_monitors_name_only_forwarded_metrics():
    forwarded = catalog.datadog_names()
    dash = (REPO / "dashboards" / "datadog" / "airflow-datadog.json").read_text()
    mons = (REPO / "alerts" / "datadog" / "monitors.json").read_text()
    for label, text in (("dashboard", dash), ("monitors", mons)):
        names = datadog_names(text)
        assert len(names) >= 5, label
        assert names <= forwarded, f"{label} names {names - forwarded}, which the bridge never forwards"
    for m in json.loads(mons):
        assert m["type"] in ("metric alert", "query alert") and m["message"] and m["query"]
