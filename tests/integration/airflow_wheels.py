"""What each Airflow 3.x line sends, read from its apache-airflow-core wheel on PyPI (no venv):
its metrics registry (metrics_template.yaml, shipped since 3.2) and, for every line, the metric
names its code passes to Stats/DualStatsManager calls (read with ast, never imported); and the unit
of every timer it sends, from the Stats.timing()/timer() call sites of that wheel and of the
apache-airflow-task-sdk wheel the same apache-airflow release pins."""

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


def _download(package: str, version: str) -> Path:
    path = CACHE / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "-d", str(CACHE), f"{package}=={version}"], check=True, timeout=600)
    return path


def wheel(version: str) -> Wheel:
    path = _download("apache-airflow-core", version)
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
    return {name: _CALLS[node.func.attr] for node, name in _stats_calls(tree, _CALLS)}


def _stats_calls(tree: ast.AST, methods) -> list[tuple[ast.Call, str]]:
    """Every Stats.<method>(name, ...) call in a module whose name is a literal or f-string, with its name."""
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods):
            continue
        recv = node.func.value
        if (recv.id if isinstance(recv, ast.Name) else getattr(recv, "attr", None)) not in _RECEIVERS:
            continue
        arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "stat"), None)
        name = _text(arg) if arg is not None else None
        if name:
            out.append((node, name))
    return out


def shape(name: str) -> str:
    """A name with its variables blanked: 'ti.finish.{dag_id}.{task_id}' -> 'ti.finish.{}.{}'."""
    return re.sub(r"\{[a-z_]+\}", "{}", name)


def pattern(literal: str) -> re.Pattern:
    """A literal from the code as a pattern over catalog names: each {var} stands for any text
    (a variable may hold a fixed word such as a state, or a prefix with dots)."""
    return re.compile(".+".join(re.escape(p) for p in re.split(r"\{[A-Za-z_]+\}", literal)) + r"\Z")


# apache-airflow X.Y.Z pins the task SDK its tasks run (apache-airflow 3.0.6: >=1.0.6,<1.1; 3.1.8: ==1.1.8...):
# task.duration, serde and the io filesystems are timed there
TASK_SDK = {"3.0.6": "1.0.6", "3.1.8": "1.1.8", "3.2.2": "1.2.2", "3.3.2": "1.3.2"}
_TIMED = {"timing", "timer"}


@dataclass(frozen=True)
class Timed:
    name: str  # the metric name as written (f-string parts as {var})
    unit: str  # timer (Stats.timer()), ms (Stats.timing() of a timedelta or milliseconds), s (of seconds), ?
    where: str  # wheel file:line
    value: str  # the value's source, for a message


def timed(version: str) -> list[Timed]:
    """Every Stats.timing()/timer() call with a metric name in the core and task-SDK wheels of a release,
    with the unit of what it passes, read from the code (the value's definitions, followed through
    assignments and keyword arguments in its module)."""
    out = []
    for path in (_download("apache-airflow-core", version), _download("apache-airflow-task-sdk", TASK_SDK[version])):
        with zipfile.ZipFile(path) as z:
            for n in sorted(z.namelist()):
                if n.startswith("airflow/") and n.endswith(".py") and "/_shared/" not in n:
                    out += _timed_calls(n, z.read(n).decode("utf-8", "replace"))
    return out


def _timed_calls(fname: str, source: str) -> list[Timed]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    out = []
    for node, name in _stats_calls(tree, _TIMED):
        if node.func.attr == "timer":
            out.append(Timed(name, "timer", f"{fname}:{node.lineno}", ""))
            continue
        value = _timing_value(node, tree, parents)
        units = _units(value, tree, parents, 4) if value is not None else set()
        unit = units.pop() if len(units) == 1 else "?"
        out.append(Timed(name, unit, f"{fname}:{node.lineno}", ast.unparse(value) if value is not None else "?"))
    return out


def _timing_value(call: ast.Call, tree, parents):
    if len(call.args) > 1:
        return call.args[1]
    for k in call.keywords:
        if k.arg in ("dt", "delta"):
            return k.value
        if k.arg is None:  # **params: the dict it was built as
            for d in _definitions(k.value, tree, parents):
                if isinstance(d, ast.Dict):
                    for key, v in zip(d.keys, d.values, strict=True):
                        if isinstance(key, ast.Constant) and key.value == "dt":
                            return v
    return None


def _function(node, parents):
    while node is not None and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        node = parents.get(node)
    return node


def _definitions(expr, tree, parents) -> list:
    """What a name or attribute was given: assignments to it in its function (to the attribute anywhere),
    and keyword arguments of that name anywhere in the module (a parameter passed on, a field set)."""
    if isinstance(expr, ast.Name):
        name, scope = expr.id, _function(expr, parents) or tree
    elif isinstance(expr, ast.Attribute):
        name, scope = expr.attr, tree
    else:
        return []
    out = []
    for n in ast.walk(scope):
        if isinstance(n, ast.Assign | ast.AnnAssign) and n.value is not None:
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                if (isinstance(t, ast.Name) and t.id == name) or (isinstance(t, ast.Attribute) and t.attr == name
                                                                   and isinstance(expr, ast.Attribute)):
                    out.append(n.value)
    for n in ast.walk(tree):
        if isinstance(n, ast.keyword) and n.arg == name:
            out.append(n.value)
    return out


_DATES = ("_date", "_dttm", "utcnow()", "run_after", "queued_at", "data_interval_end")


def _units(expr, tree, parents, depth: int) -> set[str]:
    """ms: a timedelta (the statsd clients send its milliseconds) or seconds times 1000; s: a difference of
    time.monotonic() / perf_counter() / time.time() readings; followed through the names it is built of."""
    text = ast.unparse(expr)
    if any(f in text for f in ("monotonic()", "perf_counter()", "time.time()")):
        return {"s"}
    if "total_seconds()" in text and "1000" in text:
        return {"ms"}
    if "timedelta(" in text or (isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Sub)
                                and any(d in text for d in _DATES)):
        return {"ms"}
    if depth == 0:
        return set()
    out: set[str] = set()
    for n in ast.walk(expr):
        if isinstance(n, ast.Name | ast.Attribute) and not isinstance(n.ctx, ast.Store):
            for d in _definitions(n, tree, parents):
                if d is not expr:
                    out |= _units(d, tree, parents, depth - 1)
        if out:
            break
    return out
