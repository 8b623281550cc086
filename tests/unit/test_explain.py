"""`airflow-monitor bridge explain LINE` (issue 23 item 11): how one line is parsed, mapped (and by which rule),
which twin form it is, and what it exposes, through the bridge's own code."""

from __future__ import annotations

import json
import subprocess
import sys

from monitor.bridge.explain import explain
from monitor.bridge.mapper import Mapper, load_rules


def test_a_refused_line_says_the_reason_and_why():
    r = explain("x,k=v:1|c|#a:b", Mapper())
    assert "mixed_tagging_styles" in r["steps"][0] and not r["exposed"]
    assert r["verdict"] == "not stored (parse error mixed_tagging_styles)"


def test_an_airflow_line_names_its_catalog_metric_twin_form_and_what_it_exposes():
    r = explain("airflow.ti.finish.team__sales.load.success:1|c", Mapper())
    text = "\n".join(r["steps"])
    assert "the Airflow catalog: ti.finish, its legacy form (ti.finish.{dag_id}.{task_id}.{state})" in text
    assert "twin:" in text and "legacy_twin" in text
    assert r["exposed"] == ['airflow_ti_finish_total{dag_id="team__sales",state="success",task_id="load"} 1.0']
    pinned = explain("airflow.ti.finish.team__sales.load.success:1|c", Mapper(), airflow_tags="on")
    assert pinned["exposed"] == [] and pinned["counted"] == {"dropped{reason='legacy_twin'}": 1}


def test_the_rule_that_decided_is_named(tmp_path):
    path = tmp_path / "m.yml"
    path.write_text("mappings:\n- match: other.*\n  name: o\n- match: 'app\\.(.*)'\n  match_type: regex\n"
                    "  name: app_$1_x\n")
    r = explain("app.rows:2|c", Mapper(load_rules(path)))
    assert "mapping file rule #2 (match 'app\\.(.*)', regex)" in r["steps"][1], r["steps"]
    assert r["exposed"] == ["app__total 2.0"], r  # Go's $1_x is the name 1_x: nothing


def test_a_reserved_tag_is_removed_and_the_timer_unit_said():
    r = explain("app.y:1|c|#__name__:evil,env:prod", Mapper())
    assert r["exposed"] == ['app_y_total{env="prod"} 1.0']
    assert r["counted"] == {"labels_dropped{reason='reserved_label'}": 1}
    loop = explain("airflow.scheduler.scheduler_loop_duration:0.031234567|ms", Mapper())
    assert any(s.startswith("unit: a Stats.timer() metric") for s in loop["steps"])
    assert "airflow_scheduler_scheduler_loop_duration_seconds_sum 0.031234567" in loop["exposed"]


def test_the_command_prints_each_step_and_json():
    run = [sys.executable, "-m", "monitor.cli", "bridge", "explain"]
    out = subprocess.run([*run, "airflow.pool.open_slots.default_pool:3|g", "bogus"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "map: by the Airflow catalog: pool.open_slots" in out.stdout
    assert 'exposed: airflow_pool_open_slots{pool="default_pool"} 3.0' in out.stdout
    assert "parse: refused, parse_errors{reason='malformed_line'}" in out.stdout
    js = subprocess.run([*run, "--json", "airflow.ti_successes:1|c"], capture_output=True, text=True, timeout=60)
    assert json.loads(js.stdout)[0]["exposed"] == ["airflow_ti_successes_total 1.0"]
    bad = subprocess.run([*run, "--mapping-file", "/nonexistent.yml", "x:1|c"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
