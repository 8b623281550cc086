"""Every snippet a user pastes works: the README's Airflow config goes through Airflow's own
config parser (the Airflow venv), its YAML through a YAML parser."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml

from testkit.airflow import REPO

pytestmark = pytest.mark.integration
README = (REPO / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_readme_airflow_config_means_what_it_says(venv, tmp_path):
    """Airflow keeps `value   # comment` as the whole value: a pasted snippet must not do that."""
    ini = blocks("ini")
    assert ini, "the README shows Airflow's [metrics] settings"
    script = """
import json, sys
from airflow.configuration import conf
out = {}
for section in conf.sections():
    if section == "metrics":
        out.update({k: conf.get(section, k) for k in ("statsd_on", "statsd_host", "statsd_port", "statsd_prefix",
                                                      "statsd_datadog_enabled", "statsd_influxdb_enabled")})
        out["_types"] = [conf.getboolean("metrics", "statsd_on"), conf.getint("metrics", "statsd_port"),
                         conf.getboolean("metrics", "statsd_datadog_enabled")]
print(json.dumps(out))
"""
    for text in ini:
        if "otel_on" in text:
            continue  # test_readme_opentelemetry_setup_points_airflow_at_the_bridge
        home = tmp_path / f"home{len(list(tmp_path.iterdir()))}"
        home.mkdir()
        (home / "airflow.cfg").write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env["AIRFLOW_HOME"] = str(home)
        r = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        got = json.loads(r.stdout.strip().splitlines()[-1])
        assert got["statsd_host"] == "airflow-monitor" and got["statsd_prefix"] == "airflow", got
        assert not any("#" in str(v) for v in got.values()), got


def test_readme_opentelemetry_setup_points_airflow_at_the_bridge(venv, tmp_path):
    """The README's [metrics] block for OpenTelemetry and its OTEL_* variables, as a shell sets them,
    through Airflow's own config parser and metrics factory: Airflow's OTLP exporter sends to the
    bridge's port, every ten seconds, with the host name as service.instance.id."""
    ini = [b for b in blocks("ini") if "otel_on" in b]
    sh = [b for b in blocks("sh") if "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT" in b]
    assert len(ini) == 1 and len(sh) == 1, "the README shows the OpenTelemetry variant once"
    (tmp_path / "airflow.cfg").write_text(ini[0])
    script = """
import json
from airflow.configuration import conf
from airflow.observability.metrics import stats_utils
factory = stats_utils.get_stats_factory()
factory()
from opentelemetry import metrics
mp = metrics.get_meter_provider()
reader = mp._metric_readers[0]
print(json.dumps({"factory": factory.__module__, "endpoint": reader._exporter._endpoint,
                  "interval": reader._export_interval_millis, "resource": dict(mp._sdk_config.resource.attributes),
                  "prefix": conf.get("metrics", "otel_prefix")}))
"""
    (tmp_path / "check.py").write_text(script)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AIRFLOW_HOME": str(tmp_path)}
    r = subprocess.run(["bash", "-c", f"set -a\n{sh[0]}\nset +a\nexec {venv / 'bin' / 'python'} check.py"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["factory"].endswith("otel_logger"), got  # statsd is off: OpenTelemetry is used
    assert got["endpoint"] == "http://airflow-monitor:4318/v1/metrics" and got["prefix"] == "airflow", got
    assert got["interval"] == 10000, got
    assert got["resource"]["service.instance.id"] == subprocess.run(["hostname"], capture_output=True,
                                                                    text=True).stdout.strip(), got


def test_readme_yaml_and_json_snippets_parse():
    for text in blocks("yaml"):
        yaml.safe_load(text)
    for text in blocks("json"):
        json.loads(text)


def test_every_file_the_docs_name_exists():
    """A path in the README or in a shipped file's comments that points nowhere is a broken promise."""
    roots = ("helm/", "probes/", "bench/", "scripts/", "tests/", "monitor/", "alerts/", "dashboards/", "examples/",
             "demo/")
    texts = {"README.md": README}
    for d in ("probes", "helm", "examples", "alerts"):
        for p in (REPO / d).rglob("*"):
            if p.is_file() and p.suffix in (".yaml", ".yml", ".md", ".txt"):
                texts[str(p.relative_to(REPO))] = p.read_text()
    missing = []
    pattern = re.compile(r"(?<![\w/.-])((?:" + "|".join(map(re.escape, roots)) + r")[\w./-]+[\w])")
    for where, text in texts.items():
        for path in pattern.findall(text):
            if not (REPO / path).exists() and "<" not in path:
                missing.append(f"{where}: {path}")
    assert not missing, missing
