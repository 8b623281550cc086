"""The catalog holds every metric of the Airflow wheel's own registry, with the same type and forms."""

import pytest
import yaml

from monitor import catalog

pytestmark = pytest.mark.integration


def test_catalog_matches_airflow_metrics_registry(venv):
    files = list(venv.glob("lib/python*/site-packages/airflow/_shared/observability/metrics/metrics_template.yaml"))
    assert files, "Airflow's metrics_template.yaml not found in the venv"
    registry = yaml.safe_load(files[0].read_text())["metrics"]
    theirs = {(m["name"], m["type"], None if m["legacy_name"] == "-" else m["legacy_name"]) for m in registry}
    ours = {(m.name, m.type, m.legacy) for m in catalog.load() if catalog.sent_by(m, "3.3")}
    assert theirs - ours == set(), "metrics Airflow has and the catalog lacks"
    assert ours - theirs == set(), "catalog metrics Airflow no longer has"
    for m in (m for m in catalog.load() if catalog.sent_by(m, "3.3")):
        names = set(m.name_vars) | set(m.labels.values())
        reg = next(r for r in registry if r["name"] == m.name)
        assert set(reg.get("name_variables") or []) <= names, m.name
