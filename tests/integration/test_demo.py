"""scripts/demo.sh, run as a person would: it must tell the whole story and exit 0."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_shows_metrics_pages_and_the_probe(venv):
    r = subprocess.run([str(REPO / "scripts" / "demo.sh"), "--late-seconds", "25"], capture_output=True,
                       text=True, timeout=600, cwd=REPO)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert re.search(r"metrics: \d+ Airflow families", out)
    for dag, state in (("demo_ok", "success"), ("demo_fail", "failed"), ("demo_late", "success")):
        assert f"run {dag}: {state}" in out
        assert f'airflow_dagrun_duration_count{{dag_id="{dag}",state="{state}"}} = 1' in out
    assert re.search(r"PAGE +demo_fail/fresh \[P2\]", out)
    assert re.search(r"PAGE +demo_late/budget \[P3\] .* has been running for \d+s \(max 10s\)", out)
    assert "RESOLVED demo_late/budget" in out
    assert len(re.findall(r"PAGE +demo_fail/", out)) == 1, "paged twice for one breach"
    assert "exit 1, unhealthy (stuck_queue)" in out
    assert "airflow jobs check: exit 0" in out
    assert re.search(r"demo_fail +fresh .* BREACHED +failed +open since", out)
    assert "demo complete" in out
