"""helm/: what can be checked without helm. values.yaml obeys values.schema.json, the schema
refuses the mistakes users make, every `.Values` path a template reads is declared, every value is
read, and the schema's bridge settings are the bridge's own. (Rendering: tests/integration.)"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from monitor.config import BridgeConfig

HELM = Path(__file__).resolve().parents[2] / "helm"
CHART = HELM / "airflow-monitor"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
TEMPLATES = "\n".join(p.read_text() for p in sorted((CHART / "templates").iterdir()))
# the chart sets these itself (web_config_file from web.tls and web.basicAuthUsers)
CHART_OWNED = {"statsd_udp", "statsd_tcp", "statsd_unix", "web_listen", "mapping_file", "datadog_api_key_file",
               "web_config_file", "otlp_listen"}


def errors(values) -> list[str]:
    return [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(values)]


def with_(path: str, value):
    v = copy.deepcopy(VALUES)
    *parents, last = path.split(".")
    node = v
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return v


def test_default_values_obey_the_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert errors(VALUES) == []


SLA_ON = {"enabled": True,
          "config": {**VALUES["sla"]["config"], "watch": [{"dag_id": "d", "rules": [{"max_age": "1h"}]}]}}


@pytest.mark.parametrize("path,value", [
    ("service.statsdPort", 0),
    ("service.metricsPort", "9102"),
    ("image.pullPolicy", "Sometimes"),
    ("bridge.config.web_listen", ":1"),               # the chart owns the listen addresses
    ("bridge.config.datadog", "yes"),
    ("bridge.config.ttl_typo", "1h"),
    ("bridge.mapping", {"mappings": [{"match": "a.*"}]}),  # a rule without a name
    ("sla", {"enabled": True}),                       # the watcher with nothing to watch
    ("sla", {**SLA_ON, "config": {**SLA_ON["config"], "notify": {"opsgenie": {"api_key": "k"}}}}),
    ("sla", {**SLA_ON, "config": {**SLA_ON["config"], "airflow": {"password": "p"}}}),
    ("sla", {**SLA_ON, "config": {**SLA_ON["config"], "watcher": {"state_file": "/x"}}}),
    ("sla", {**SLA_ON, "config": {**SLA_ON["config"], "watch": [{"rules": [{"max_age": "1h"}]}]}}),
    ("secrets.opsgenieApiKey", {"name": "og"}),          # a reference needs its key
    ("secrets.opsgenieApiKey", "the-key-itself"),
    ("serviceMonitor.interval", "30"),
    ("replicas", 2),                                  # one bridge and one watcher, by design
])
def test_the_schema_refuses(path, value):
    assert errors(with_(path, value)), f"{path}={value!r} was accepted"


def test_the_schema_accepts_a_full_setup():
    v = with_("sla", SLA_ON)
    v["sla"]["config"]["notify"] = {"opsgenie": {"region": "eu", "heartbeat": "airflow-sla"}, "webhook": {}}
    v["secrets"]["opsgenieApiKey"]["name"] = "opsgenie"
    v["bridge"]["config"].update(datadog="agent", datadog_tags=["env:prod"], buckets=[0.1, 1, 10])
    v["bridge"]["mapping"] = {"mappings": [{"match": "team.*.rows", "name": "team_rows_total"}]}
    assert errors(v) == []


def test_the_example_sla_config_fits_sla_config():
    doc = yaml.safe_load((HELM.parent / "examples" / "sla.yaml").read_text())
    for owned in ("state_file", "metrics_listen"):   # set by the chart
        doc["watcher"].pop(owned)
    assert errors(with_("sla", {"enabled": True, "config": doc})) == []


def test_bridge_settings_in_the_schema_are_the_bridges_own():
    declared = set(SCHEMA["properties"]["bridge"]["properties"]["config"]["properties"])
    assert declared == {f.name for f in dataclasses.fields(BridgeConfig)} - CHART_OWNED


def schema_has(path: list[str]) -> bool:
    node = SCHEMA
    for key in path:
        props = node.get("properties")
        if props is None:   # a free-form object (labels, resources...): anything below is fine
            return node.get("type") == "object"
        if key not in props:
            return False
        node = props[key]
    return True


def referenced() -> set[tuple[str, ...]]:
    return {tuple(m.split(".")[1:]) for m in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", TEMPLATES)}


def test_every_values_path_a_template_reads_is_declared():
    refs = referenced()
    assert len(refs) > 30
    undeclared = [".".join(p) for p in refs if not schema_has(list(p))]
    assert not undeclared, f"templates read values the schema does not declare: {undeclared}"


def test_every_value_is_read_by_a_template():
    refs = {".".join(p) for p in referenced()}
    unread = []
    for top, v in VALUES.items():
        keys = [top] if not isinstance(v, dict) or not v else [f"{top}.{k}" for k in v]
        unread += [k for k in keys if not any(r == k or r.startswith(k + ".") or k.startswith(r + ".")
                                                for r in refs)]
    assert not unread, f"values no template reads: {unread}"


def test_the_airflow_chart_snippet_sends_statsd_to_the_bridge():
    # its probe commands are checked with the other probe specs (test_probe_specs.py)
    snippet = yaml.safe_load((HELM / "airflow-values.yaml").read_text())
    assert snippet["statsd"] == {"enabled": False}
    assert snippet["config"]["metrics"]["statsd_on"] == "True"
    assert snippet["config"]["metrics"]["statsd_port"] == VALUES["service"]["statsdPort"]



def test_the_sla_config_schema_takes_what_the_watcher_takes():
    """A typo inside sla.config (max_agee) fails `helm install`, not the watcher at start."""
    from monitor.sla import config as c

    sla = SCHEMA["properties"]["sla"]["properties"]["config"]["properties"]
    secrets = {"password", "token"}  # never in values: they come from Secrets
    owned = {"state_file", "metrics_listen"}  # the chart sets them
    assert set(sla) == c.TOP_KEYS - {"bridge"}
    assert set(sla["airflow"]["properties"]) == c.AIRFLOW_KEYS - secrets
    assert set(sla["watcher"]["properties"]) | owned == c.WATCHER_KEYS
    assert set(sla["watch"]["items"]["properties"]) == c.WATCH_KEYS
    assert set(sla["watch"]["items"]["properties"]["rules"]["items"]["properties"]) == c.RULE_KEYS
    assert set(sla["defaults"]["properties"]) == c.DEFAULTS_KEYS
    assert set(sla["mutes"]["items"]["properties"]) == c.MUTE_KEYS
    from monitor.alerting import config as notify

    assert set(sla["notify"]["properties"]) == notify.NOTIFY_KEYS
    assert set(sla["notify"]["properties"]["jsm"]["properties"]) == notify.JSM_KEYS - {"api_token"}
    typos = [{"dag_id": "d", "rules": [{"max_agee": "1h"}]}, {"dag_id": "d", "rule": [{"max_age": "1h"}]},
             {"dag_id": "d", "rules": [{"max_age": "1h", "timezon": "UTC"}]}]
    for watch in typos:
        assert errors(with_("sla", {**SLA_ON, "config": {**SLA_ON["config"], "watch": [watch]}})), watch
    assert errors(with_("sla", {**SLA_ON, "config": {**SLA_ON["config"], "mutes": [{"dag_id": "d"}]}}))


def test_the_heal_config_schema_takes_what_the_healer_takes():
    from monitor.heal import config as c

    heal = SCHEMA["properties"]["heal"]["properties"]["config"]["properties"]
    assert set(heal) | {"kubernetes"} == c.TOP_KEYS
    assert set(heal["healer"]["properties"]) == c.HEALER_KEYS
    assert set(heal["budget"]["properties"]) == c.BUDGET_KEYS
    assert set(heal["thresholds"]["properties"]) == c.THRESHOLD_KEYS
    assert set(heal["probe"]["properties"]) == c.PROBE_KEYS
    assert set(heal["lease"]["properties"]) == c.LEASE_KEYS
    assert set(heal["airflow"]["properties"]) == c.AIRFLOW_KEYS - {"sql_alchemy_conn"}
