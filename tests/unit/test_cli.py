import json
import subprocess
import sys


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def test_help_imports_nothing_heavy():
    code = ("import sys; sys.argv=['airflow-monitor','--help']\nfrom monitor import cli\n"
            "try:\n  cli.main(['--help'])\nexcept SystemExit:\n  pass\n"
            "heavy=('prometheus_client','datadog','airflow','yaml','airflow_client','apscheduler','croniter')\n"
            "bad=[m for m in sys.modules if m.split('.')[0] in heavy]\n"
            "print('HEAVY', bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "HEAVY []" in out


def test_bad_input_gives_one_line_error():
    for args, msg in [
        (["serve", "--airflow-tags", "maybe"], "airflow_tags must be one of"),
        (["serve", "--mapping-file", "/nonexistent.yml"], "cannot read mapping file"),
        (["serve", "--web-listen", "nowhere"], "listen address"),
        (["serve", "--ttl", "soon"], "invalid duration"),
        (["serve", "--max-series-per-family", "many"], "max_series_per_family: invalid value"),
        (["serve", "--datadog", "api", "--statsd-udp", "127.0.0.1:0", "--statsd-tcp", ""], "API key"),
        (["sla", "check"], "no SLA config"),
        (["sla", "check", "--config", "/nonexistent.yaml"], "cannot read SLA config /nonexistent.yaml"),
        (["sla", "status", "--config", "/etc/hostname"], "/etc/hostname must be a mapping"),
        (["serve", "--sla-config", "/nonexistent.yaml", "--statsd-udp", "127.0.0.1:0", "--statsd-tcp", "",
          "--web-listen", "127.0.0.1:0"], "cannot read SLA config"),
    ]:
        r = run(*args, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_catalog_command_prints_every_metric():
    r = run("catalog", "--format", "markdown")
    assert r.returncode == 0
    assert "`airflow_ti_finish_total`" in r.stdout and "`airflow.dag.task.duration`" in r.stdout


def test_catalog_per_airflow_version():
    """What one Airflow line sends, in the forms it sends: 3.1 has no ti.queued gauge yet, and sends
    dag_processing.last_run.seconds_ago only with the file in the name."""
    r = run("catalog", "--format", "markdown", "--airflow-version", "3.1.8")
    assert r.returncode == 0, r.stderr
    assert "`ti.running / ti.running.{queue}.{dag_id}.{task_id}`" in r.stdout and "ti.queued" not in r.stdout
    assert "`dag_processing.last_run.seconds_ago.{file_name}`" in r.stdout
    assert "(formerly zombies_killed)" in r.stdout
    latest = run("catalog", "--format", "markdown", "--airflow-version", "3.3").stdout
    assert "`ti.queued / ti.queued.{queue}.{dag_id}.{task_id}`" in latest and "clear_not_launched" not in latest
    for bad in ("2.10", "foo", "3.9"):
        r = run("catalog", "--airflow-version", bad)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr



def test_every_flag_has_help_and_every_command_takes_log_level():
    import argparse

    from monitor.cli import build_parser

    missing, no_level = [], []

    def walk(parser, path):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for a in parser._actions:
            if a in subs or a.dest == "help":
                continue
            if a.help in (None, argparse.SUPPRESS):
                missing.append((path, a.option_strings or a.dest))
        if path and not any("--log-level" in a.option_strings for a in parser._actions):
            no_level.append(path)
        for sp in subs:
            for name, child in sp.choices.items():
                walk(child, [*path, name])

    walk(build_parser(), [])
    assert not missing and not no_level, (missing, no_level)


def test_catalog_into_a_closed_pipe_says_nothing():
    import subprocess
    import sys

    r = subprocess.run(f"{sys.executable} -m monitor.cli catalog | head -1", shell=True, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.startswith("statsd name") and r.stderr == "", r.stderr


def test_sla_and_heal_actions_are_subcommands_with_only_their_own_flags():
    """Issue 23 item 10: `sla check|status|run|test-notify` and `heal run|status|check` each have their own
    --help and flags; a flag of another action (or --once, which did nothing) is an error in one line."""
    for args, own, foreign in [
        (["sla", "run"], ["--metrics-listen", "--web-config-file", "--fresh-state"], ["--notify", "--json"]),
        (["sla", "check"], ["--notify", "--json"], ["--metrics-listen", "--web-config-file"]),
        (["sla", "status"], ["--json", "--fresh-state"], ["--notify", "--metrics-listen"]),
        (["sla", "test-notify"], ["--config"], ["--json", "--notify", "--state-file"]),
        (["heal", "run"], ["--sla-config", "--metrics-listen"], ["--json"]),
        (["heal", "check"], ["--json"], ["--sla-config", "--metrics-listen", "--fresh-state"]),
        (["heal", "status"], ["--json"], ["--sla-config", "--web-config-file"]),
    ]:
        shown = run(*args, "--help")
        assert shown.returncode == 0 and all(f in shown.stdout for f in own), (args, shown.stdout)
        assert not any(f in shown.stdout for f in foreign), (args, shown.stdout)
        for flag in foreign:
            r = run(*args, flag, "x")
            assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, flag, r.stderr)
    r = run("sla", "check", "--once", "--config", "x.yaml")
    assert r.returncode == 2 and "unrecognized arguments: --once" in r.stderr
    for args in (["sla"], ["heal"]):
        r = run(*args)
        assert r.returncode == 2 and "ACTION" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # the healer's documented behaviour stays: a mistake with --json is JSON, exit 2
    r = run("heal", "check", "--json", "--config", "/nonexistent.yaml")
    assert r.returncode == 2 and json.loads(r.stdout) == {"error": "cannot read healer config /nonexistent.yaml: "
                                                          "No such file or directory", "exit": 2}, r.stdout


def test_log_level_is_validated_everywhere():
    for args in (["--log-level", "LOUD", "catalog"], ["serve", "--log-level", "verbose"],
                 ["sla", "check", "--log-level", "5"], ["probe", "scheduler", "--log-level", "trace"],
                 ["heal", "status", "--log-level", "x"]):
        r = run(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "is not a log level" in r.stderr, (args, r.stderr)
    assert run("catalog", "--log-level", "debug", "--format", "markdown").returncode == 0


def test_catalog_shows_a_unit_column_and_fits_a_terminal():
    import os
    import pty

    r = run("catalog", "--format", "markdown")
    head = r.stdout.splitlines()[0]
    assert "| unit |" in head
    loop = next(line for line in r.stdout.splitlines() if "`scheduler.scheduler_loop_duration`" in line)
    assert "`ms, s dogstatsd -> s`" in loop
    parse = next(line for line in r.stdout.splitlines() if "`dag_processing.last_duration" in line)
    assert "`s as ms -> s`" in parse
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "catalog"], stdout=slave, stderr=slave,
                            env={**os.environ, "COLUMNS": "100", "LINES": "1000", "PAGER": "cat"})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    lines = out.decode().replace("\r", "").splitlines()
    assert len(lines) > 100 and lines[0].startswith("statsd name")
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
