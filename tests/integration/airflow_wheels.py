"""What each Airflow 3.x line sends, read from its apache-airflow-core wheel on PyPI (no venv):
its metrics registry (metrics_template.yaml, shipped since 3.2) and, for every line, the metric
names its code passes to Stats/DualStatsManager calls (read with ast, never imported)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

CACHE = Path(os.environ.get("AIRFLOW_MONITOR_CACHE") or
             Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "airflow-monitor") / "wheels"
REGISTRY = "airflow/_shared/observability/metrics/metrics_template.yaml"
_CALLS = {"incr": "counter", "decr": "counter", "gauge": "gauge", "timing": "timer", "timer": "timer"}
_RECEIVERS = {"Stats", "stats", "DualStatsManager"}


@dataclass(frozen=True)
class Wheel:
    version: str
    registry: list[dict] | None  # None where the wheel ships none (before 3.2)
    literals: dict[str, str]  # metric name as written in a call (f-string parts as {var}) -> type


def wheel(version: str) -> Wheel:
    path = CACHE / f"apache_airflow_core-{version}-py3-none-any.whl"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "-d", str(CACHE), f"apache-airflow-core=={version}"], check=True, timeout=600)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        registry = yaml.safe_load(z.read(REGISTRY))["metrics"] if REGISTRY in names else None
        literals: dict[str, str] = {}
        for n in sorted(names):
            if n.startswith("airflow/") and n.endswith(".py"):
                literals.update(_metric_literals(z.read(n)))
    return Wheel(version, registry, literals)


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        out = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                out.append(str(part.value))
            else:
                e = part.value
                out.append("{" + (e.attr if isinstance(e, ast.Attribute) else getattr(e, "id", "x")) + "}")
        return "".join(out)
    return None


def _metric_literals(source: bytes) -> dict[str, str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    out = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _CALLS):
            continue
        recv = node.func.value
        if (recv.id if isinstance(recv, ast.Name) else getattr(recv, "attr", None)) not in _RECEIVERS:
            continue
        arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "stat"), None)
        name = _text(arg) if arg is not None else None
        if name:
            out[name] = _CALLS[node.func.attr]
    return out


def shape(name: str) -> str:
    """A name with its variables blanked: 'ti.finish.{dag_id}.{task_id}' -> 'ti.finish.{}.{}'."""
    return re.sub(r"\{[a-z_]+\}", "{}", name)


def pattern(literal: str) -> re.Pattern:
    """A literal from the code as a pattern over catalog names: each {var} stands for any text
    (a variable may hold a fixed word such as a state, or a prefix with dots)."""
    return re.compile(".+".join(re.escape(p) for p in re.split(r"\{[A-Za-z_]+\}", literal)) + r"\Z")
