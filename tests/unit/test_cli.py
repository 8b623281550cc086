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
