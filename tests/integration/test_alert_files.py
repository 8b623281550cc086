"""alerts/: Prometheus rules checked and unit-tested by promtool, the Alertmanager example by
amtool, and every series they name is one the service can expose (monitor/catalog)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from monitor import catalog
from tests.integration.tools import run, tool

pytestmark = pytest.mark.integration

ALERTS = Path(__file__).resolve().parents[2] / "alerts"
RULES = ALERTS / "prometheus" / "airflow-rules.yaml"


def test_promtool_checks_the_rules():
    out = run(tool("promtool"), "check", "rules", str(RULES)).stdout
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 11 and f"SUCCESS: {len(rules)} rules found" in out, out


def test_promtool_unit_tests_fire_and_do_not_fire():
    out = run(tool("promtool"), "test", "rules", "airflow-rules.test.yaml", cwd=ALERTS / "prometheus" / "tests").stdout
    assert "SUCCESS" in out


def test_every_rule_has_summary_description_runbook_and_is_tested():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    tests = (ALERTS / "prometheus" / "tests" / "airflow-rules.test.yaml").read_text()
    for rule in (r for g in groups for r in g["rules"]):
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert f"alertname: {rule['alert']}" in tests, f"{rule['alert']} has no promtool test"


def series_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(airflow_[a-z0-9_]+)\b", expr))


def test_rules_name_only_series_the_service_exposes():
    known = catalog.all_series_names()
    for g in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in g["rules"]:
            unknown = series_in(rule["expr"]) - known
            assert not unknown, f"{rule['alert']} names {unknown}, which the bridge and watcher never expose"


def test_amtool_checks_the_alertmanager_example():
    r = run(tool("amtool"), "check-config", str(ALERTS / "alertmanager" / "alertmanager.yml"))
    out = r.stdout + r.stderr
    assert "SUCCESS" in out
