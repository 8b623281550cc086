"""The SLA config: what it accepts, and a one-line error naming the place for what it does not."""

import pytest

from monitor.airflow.models import Dag
from monitor.sla.config import SLAConfigError, load, parse

BASE = {"airflow": {"url": "http://af:8080/", "username": "admin"}}


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("AIRFLOW_MONITOR_AIRFLOW_PASSWORD", "pw")
    for k in ("AIRFLOW_MONITOR_OPSGENIE_API_KEY", "OPSGENIE_API_KEY", "DD_API_KEY", "AIRFLOW_MONITOR_AIRFLOW_URL"):
        monkeypatch.delenv(k, raising=False)


def cfg(watch, **extra):
    return parse({**BASE, "watch": watch, **extra})


def test_a_full_config(tmp_path, monkeypatch):
    key = tmp_path / "og.key"
    key.write_text("genie\n")
    monkeypatch.setenv("DD_API_KEY", "dd")
    c = cfg([
        {"dag_id": "sales_daily", "priority": "p1", "responders": ["sales", {"type": "user", "username": "a@b.c"}],
         "runbook": "https://wiki/sales", "rules": [
             {"deadline": "0 6 * * *", "timezone": "Europe/Berlin", "name": "by-6"},
             {"max_age": "26h", "priority": "P2", "tags": ["finance"]}]},
        {"match": "etl_*", "rules": [{"from_schedule": "30m"}, {"max_duration": "2h"}]},
        {"tag": "critical", "rules": [{"max_age": "1h"}]},
    ], notify={"opsgenie": {"api_key_file": str(key), "region": "eu", "heartbeat": "airflow-sla"},
               "datadog": {"site": "datadoghq.eu"}, "webhook": {"url": "https://hooks.example/x"}},
        watcher={"interval": "30s", "renotify": "4h", "blind_after": 2})
    assert c.airflow.url == "http://af:8080" and c.airflow.password == "pw"
    assert c.interval == 30 and c.renotify == 4 * 3600 and c.blind_after == 2
    assert c.notify.opsgenie.url == "https://api.eu.opsgenie.com" and c.notify.opsgenie.api_key == "genie"
    assert c.notify.datadog.api_url == "https://api.datadoghq.eu"
    by6, age = c.rules_for(Dag("sales_daily"))
    assert (by6.name, by6.kind, by6.priority, by6.tz_name) == ("by-6", "deadline", "P1", "Europe/Berlin")
    assert by6.responders == (("team", "name", "sales"), ("user", "username", "a@b.c"))
    assert (age.name, age.priority, age.seconds, age.tags, age.runbook) == ("max_age", "P2", 93600, ("finance",),
                                                                           "https://wiki/sales")
    assert [r.name for r in c.rules_for(Dag("etl_orders", tags=("critical",)))] == [
        "from_schedule", "max_duration", "max_age"]
    assert c.rules_for(Dag("other")) == []


def test_jsm_endpoint(monkeypatch):
    monkeypatch.setenv("AIRFLOW_MONITOR_OPSGENIE_API_KEY", "k")
    c = cfg([{"dag_id": "d", "rules": [{"max_age": "1h"}]}], notify={"opsgenie": {"region": "jsm"}})
    assert c.notify.opsgenie.url == "https://api.atlassian.com/jsm/ops/integration"


@pytest.mark.parametrize("watch,extra,message", [
    ([], {}, "'watch' must be a non-empty list"),
    ([{"rules": [{"max_age": "1h"}]}], {}, "watch[0]: needs exactly one of dag_id, match (a glob) or tag"),
    ([{"dag_id": "d", "tag": "x", "rules": [{"max_age": "1h"}]}], {}, "watch[0]: needs exactly one of"),
    ([{"dag_id": "d"}], {}, "watch[0]: needs a non-empty list of rules"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h", "max_duration": "1h"}]}], {},
     "watch[0].rules[0]: a rule needs exactly one of max_age"),
    ([{"dag_id": "d", "rules": [{"max_age": "soon"}]}], {}, "watch[0].rules[0].max_age: invalid duration 'soon'"),
    ([{"dag_id": "d", "rules": [{"max_age": 0}]}], {}, "watch[0].rules[0].max_age: must be more than 0"),
    ([{"dag_id": "d", "rules": [{"deadline": "6am"}]}], {}, "watch[0].rules[0]: invalid cron expression '6am'"),
    ([{"dag_id": "d", "rules": [{"deadline": "0 6 * * *", "timezone": "CEST"}]}], {},
     "watch[0].rules[0]: unknown time zone 'CEST'"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h", "priority": "urgent"}]}], {},
     "watch[0].rules[0]: priority must be one of P1..P5"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h"}, {"max_age": "2h"}]}], {}, "two rules are named 'max_age'"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h", "timezone": "UTC"}]}], {}, "unknown setting 'timezone'"),
    ([{"dag_id": "d", "responders": [{"type": "pager"}], "rules": [{"max_age": "1h"}]}], {},
     "watch[0].responders[0]: a team name, or a mapping with type"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h"}]}], {"notify": {"opsgenie": {"api_key": "inline"}}},
     "notify.opsgenie.api_key: secrets are not read from the config file"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h"}]}], {"notify": {"opsgenie": {}}}, "notify.opsgenie: no API key"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h"}]}], {"notify": {"pagerduty": {}}}, "unknown setting 'pagerduty'"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h"}]}], {"watcher": {"blind_after": 0}}, "at least 1"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h"}]}], {"mutes": [{"dag_id": "d"}]}, "mutes[0]: needs until"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h"}]}], {"mutes": [{"dag_id": "d", "until": "next week"}]},
     "mutes[0].until: until must be an ISO date"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h"}]}], {"mutes": [{"until": "2026-12-01"}]},
     "mutes[0]: needs exactly one of dag_id or match"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h"}]}], {"mutes": [{"dag_id": "d", "until": "2026-12-01", "x": 1}]},
     "mutes[0]: unknown setting 'x'"),
    ([{"dag_id": "d", "rules": [{"max_age": "1h"}]}], {"watcher": {"new_dag_grace": "soon"}},
     "watcher.new_dag_grace: invalid duration"),
])
def test_mistakes_are_one_line_errors(watch, extra, message):
    with pytest.raises(SLAConfigError) as e:
        cfg(watch, **extra)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_mutes_cover_their_dags_and_rules_until_they_end():
    from datetime import UTC, datetime

    c = cfg([{"match": "fin_*", "rules": [{"max_age": "1h"}, {"max_duration": "1h"}]}],
            mutes=[{"match": "fin_*", "rule": "max_age", "until": "2026-12-01T08:00Z", "reason": "migration"},
                   {"dag_id": "fin_x", "until": "2026-11-30"}])
    before, after = datetime(2026, 11, 22, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC)
    assert c.mute_for("fin_a", "max_age", before).reason == "migration"
    assert c.mute_for("fin_a", "max_duration", before) is None
    assert c.mute_for("fin_x", "max_duration", before) is not None
    assert c.mute_for("fin_a", "max_age", after) is None and c.new_dag_grace == 3600


def test_credentials_are_required(monkeypatch):
    monkeypatch.delenv("AIRFLOW_MONITOR_AIRFLOW_PASSWORD")
    with pytest.raises(SLAConfigError, match="airflow: give username and a password"):
        cfg([{"dag_id": "d", "rules": [{"max_age": "1h"}]}])


def test_file_errors(tmp_path):
    with pytest.raises(SLAConfigError, match="cannot read SLA config"):
        load(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("watch: [\n  - dag_id: x\n  rules: oops: no\n")
    with pytest.raises(SLAConfigError, match=r"is not valid YAML \(line \d+\)"):
        load(str(bad))


def test_the_shipped_example_is_valid(tmp_path):
    from pathlib import Path

    import yaml

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "sla.yaml").read_text())
    (tmp_path / "key").write_text("k")
    doc["notify"]["opsgenie"]["api_key_file"] = str(tmp_path / "key")  # the example's path is a k8s secret
    c = parse(doc)
    assert [r.name for r in c.rules_for(Dag("sales_daily", tags=("tier-1",)))] == [
        "by-six", "max_duration", "from_schedule"]
    assert c.rules_for(Dag("sales_daily"))[0].responders == (("team", "name", "sales-data"),)
