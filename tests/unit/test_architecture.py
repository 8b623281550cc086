"""The house's plan, held to its imports: every `monitor.*` import (lazy ones inside functions too)
must run along an arrow of monitor/__init__.py's drawing."""

import ast
from pathlib import Path

import monitor

ROOT = Path(monitor.__file__).parent
SHARED = {"config", "errors", "durations", "redact"}
# room -> the rooms it may import (besides itself)
ALLOWED = {
    "errors": set(), "durations": set(), "redact": set(), "config": {"redact"},
    "catalog": {"config"},
    "probe": set(),  # one file of standard library only: the zipapp runs in Airflow's image
    "http": {"config", "errors"},
    "airflow": SHARED, "kube": SHARED, "alerting": SHARED,
    "bridge": SHARED | {"catalog", "http"},
    "dashboards": SHARED | {"catalog"},
    "sla": SHARED | {"airflow", "alerting"},
    "heal": SHARED | {"kube", "alerting", "probe"},
    "worker": SHARED | {"http", "alerting"},
    "serve": SHARED | {"bridge", "sla", "heal", "worker", "http", "alerting"},
    "cli": SHARED | {"serve", "sla", "heal", "probe", "dashboards", "catalog", "bridge", "__init__"},
    "__init__": set(),
}
PURE = ["sla/rules.py", "sla/windows.py", "heal/rules.py", "heal/budget.py", "probe/rules.py",
        "airflow/models.py", "kube/models.py", "alerting/notice.py"]
PURE_MAY = {"monitor.airflow.models", "monitor.kube.models", "monitor.durations", "monitor.sla.windows",
            "monitor.probe.rules", "monitor.heal.budget", "monitor.redact"}
IO = {"socket", "sqlite3", "urllib", "http", "subprocess", "kubernetes", "airflow_client", "psycopg2", "requests",
      "prometheus_client", "threading", "time"}
# (probe/db.py asks the probe's rule which counts it needs, to keep a probe run to one short transaction)
ACCESS = ["airflow/rest.py", "kube/client.py", "kube/lease.py"]


def imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            package = node.module.startswith("monitor") and (ROOT.parent / node.module.replace(".", "/")).is_dir()
            # from a package, each name is a module of it (or a name of its __init__)
            out += [f"{node.module}.{a.name}" for a in node.names] if package else [node.module]
    return out


def room(module: str) -> str:
    part = module.split(".")[1] if module.count(".") else "__init__"
    return "__init__" if part == "__version__" else part


def test_every_import_runs_along_an_arrow():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        mine = "__init__" if rel.parts == ("__init__.py",) else rel.with_suffix("").parts[0]
        for m in imports(path):
            if m.startswith("monitor.") or m == "monitor":
                theirs = room(m) if m != "monitor" else "__init__"
                if theirs != mine and theirs not in ALLOWED[mine]:
                    wrong.append(f"monitor/{rel} imports {m} ({mine} -> {theirs})")
    assert not wrong, "\n".join(wrong)


def test_every_room_is_on_the_plan():
    rooms = {p.with_suffix("").parts[0] for p in (x.relative_to(ROOT) for x in ROOT.rglob("*.py"))}
    assert rooms - {"__init__"} <= set(ALLOWED), rooms - set(ALLOWED)


def test_rules_are_pure_and_access_layers_do_not_know_them():
    for rel in PURE:
        for m in imports(ROOT / rel):
            top = m.split(".")[0]
            assert top not in IO, f"monitor/{rel} imports {m}: rules do no I/O and read no clock"
            assert not m.startswith("monitor.") or m in PURE_MAY, f"monitor/{rel} imports {m}"
    for rel in ACCESS:
        for m in imports(ROOT / rel):
            assert not m.endswith((".rules", ".budget", ".windows")), f"monitor/{rel} imports the rules {m}"


def test_bench_and_demo_share_code_with_the_tests_only_through_testkit():
    repo = ROOT.parent
    for path in [*(repo / "bench").glob("*.py"), *(repo / "demo").rglob("*.py")]:
        for m in imports(path):
            assert not m.startswith("tests"), f"{path.relative_to(repo)} imports {m}; share it through testkit/"
