"""The README's configuration table names every setting the bridge takes, and nothing else; the demo's
header and the README give it the same time (issue 23 item 12)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from monitor.config import BridgeConfig

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_the_configuration_table_lists_every_setting_the_parser_takes():
    section = README.split("## Configuration", 1)[1].split("\n\n", 3)[2]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = {n for row in rows for n in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    fields = {f.name for f in dataclasses.fields(BridgeConfig)}
    assert named == fields, {"missing from the README": sorted(fields - named),
                             "not a setting": sorted(named - fields)}


def test_every_setting_is_a_flag_with_help():
    from monitor.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {a.dest: a for a in serve._actions}
    for f in dataclasses.fields(BridgeConfig):
        assert f.name in flags and flags[f.name].help and flags[f.name].help != "==SUPPRESS==", f.name


def test_the_demo_and_the_readme_agree_on_its_time():
    header = re.search(r"\(about (\d+) minutes", (REPO / "scripts" / "demo.sh").read_text())
    said = re.search(r"after that it takes (\d+) min (\d+) s", README)
    assert header and said, "scripts/demo.sh and the README's Demo section each give the demo's time"
    assert abs(int(header.group(1)) - (int(said.group(1)) + int(said.group(2)) / 60)) <= 0.5, \
        (header.group(0), said.group(0))
