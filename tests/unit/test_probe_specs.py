"""The shipped probe specs are valid YAML whose commands the CLI accepts."""

from pathlib import Path

import pytest
import yaml

from monitor.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
SPECS = [*sorted((REPO / "probes").glob("*.yaml")), REPO / "helm" / "airflow-values.yaml"]


def commands():
    for f in SPECS:
        doc = yaml.safe_load(f.read_text())
        stack = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if "timeoutSeconds" in node:  # a probe: chart style (command) or Kubernetes style (exec)
                    yield f.name, node.get("command") or node["exec"]["command"], node
                else:
                    stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)


ZIPAPP = ["python", "/opt/airflow-monitor/airflow-monitor-probe.pyz"]


def _args(cmd: list[str]):
    """`airflow-monitor probe ...` (an image with airflow-monitor), or the zipapp run by the image's
    own Python (the official chart, helm/airflow-values.yaml): both take the same flags."""
    import argparse

    from monitor.probe.command import add_arguments

    if cmd[:2] == ["airflow-monitor", "probe"]:
        return build_parser().parse_args(cmd[1:])
    assert cmd[:2] == ZIPAPP, cmd
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(cmd[2:])


@pytest.mark.parametrize("name, cmd, spec", list(commands()))
def test_probe_commands_parse(name, cmd, spec):
    args = _args(cmd)
    assert args.component in ("scheduler", "triggerer", "dag-processor")
    assert spec["timeoutSeconds"] >= 1 and spec["periodSeconds"] >= spec["timeoutSeconds"]
    assert args.deadline < spec["timeoutSeconds"], "the probe must answer before the kubelet gives up"


def test_every_component_has_a_probe():
    found = {_args(cmd).component for _, cmd, _ in commands()}
    assert found == {"scheduler", "triggerer", "dag-processor"}


def test_the_shipped_zipapp_is_built_from_these_sources():
    """helm/airflow-monitor/files/airflow-monitor-probe.pyz: `python -m monitor.probe.zipapp` rebuilds it."""
    from monitor.probe.zipapp import build

    shipped = REPO / "helm" / "airflow-monitor" / "files" / "airflow-monitor-probe.pyz"
    assert shipped.read_bytes() == build(), "stale: python -m monitor.probe.zipapp " + str(shipped.relative_to(REPO))


def test_the_official_chart_values_mount_the_probe_where_they_run_it():
    doc = yaml.safe_load((REPO / "helm" / "airflow-values.yaml").read_text())
    chart = yaml.safe_load((REPO / "helm" / "airflow-monitor" / "values.yaml").read_text())
    for component in ("scheduler", "triggerer", "dagProcessor"):
        c = doc[component]
        (vol,) = c["extraVolumes"]
        (mount,) = c["extraVolumeMounts"]
        assert vol["configMap"]["name"] == chart["probe"]["name"] and mount["name"] == vol["name"]
        assert ZIPAPP[1].startswith(mount["mountPath"] + "/")
