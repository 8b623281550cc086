"""The reasons the bridge counts come from one place (monitor/bridge/reasons.py): the code counts no other,
the HELP on /metrics lists them all, and the README's tables are generated from it (issue 23 item 6)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from monitor.bridge import reasons

REPO = Path(__file__).resolve().parents[2]
BRIDGE = REPO / "monitor" / "bridge"


def counted_in_code() -> dict[str, set[str]]:
    """Every reason literal the bridge's code counts, by self-metric."""
    text = "\n".join(p.read_text() for p in BRIDGE.glob("*.py") if p.name not in ("reasons.py", "datadog.py"))
    word = "([a-z0-9_]+)"
    dropped = set(re.findall(rf'dropped\["{word}"\]', text)) | set(re.findall(rf'Drop\("{word}"', text))
    dropped |= set(re.findall(rf'\(DROP, "{word}"', text)) | set(re.findall(rf'reason="{word}"', text))
    dropped |= set(re.findall(rf'\(DROP, "{word}" if \w+ else "{word}"\)', text)[0])
    dropped |= set(re.findall(r'return "(reserved_label)"', text))
    parse = set(re.findall(rf'ParseError\("{word}"', text)) | set(re.findall(rf'parse_errors\["{word}"\]', text))
    labels = set(re.findall(rf'labels_dropped\["{word}"\]', text))
    return {"dropped": dropped, "parse_errors": parse, "labels_dropped": labels}


def test_the_code_counts_only_the_reasons_listed():
    code = counted_in_code()
    for table, listed in reasons.TABLES.items():
        assert code[table] == set(listed), (table, code[table] ^ set(listed))


def test_the_help_on_metrics_lists_every_reason(h):
    from monitor.bridge.exposition import SelfCollector

    class Bridge:  # what SelfCollector reads of a bridge
        ingest, store, sinks, web, reloads = h.ingest, h.store, [], None, {}

    registry = CollectorRegistry()
    registry.register(SelfCollector(Bridge()))
    helps = dict(re.findall(r"# HELP airflow_monitor_bridge_(\w+)_total (.*)", generate_latest(registry).decode()))
    for table, listed in reasons.TABLES.items():
        assert all(r in helps[table] for r in listed), (table, helps[table])


def test_the_readme_tables_are_generated_from_the_reasons():
    readme = (REPO / "README.md").read_text()
    for table in reasons.TABLES:
        block = re.search(rf"<!-- reasons:{table} -->\n(.*?)\n<!-- /reasons:{table} -->", readme, re.S)
        assert block, f"README has no table of {table} reasons (python -m monitor.bridge.reasons {table})"
        assert block.group(1) == reasons.markdown(table), f"README's {table} table is stale: " \
                                                          f"python -m monitor.bridge.reasons {table}"
