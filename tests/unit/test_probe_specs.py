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


@pytest.mark.parametrize("name, cmd, spec", list(commands()))
def test_probe_commands_parse(name, cmd, spec):
    assert cmd[:2] == ["airflow-monitor", "probe"], name
    args = build_parser().parse_args(cmd[1:])
    assert args.component in ("scheduler", "triggerer", "dag-processor")
    assert spec["timeoutSeconds"] >= 1 and spec["periodSeconds"] >= spec["timeoutSeconds"]


def test_every_component_has_a_probe():
    found = {cmd[2] for _, cmd, _ in commands()}
    assert found == {"scheduler", "triggerer", "dag-processor"}
