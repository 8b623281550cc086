"""The probe as Kubernetes runs it: a process with the Airflow image's Python and driver, against a real
Airflow 3.3.2 on PostgreSQL (scheduler + LocalExecutor), and on a real migrated SQLite schema."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from testkit.airflow import REPO, Airflow

pytestmark = pytest.mark.integration


def probe(venv, *args, env=None, component="scheduler", unset=()):
    """Run the probe with the Airflow venv's interpreter, as the scheduler container would."""
    cmd = [str(venv / "bin" / "python"), "-X", "importtime", "-m", "monitor.cli", "probe", component, "--json", *args]
    base = {k: v for k, v in os.environ.items() if k not in unset}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO,
                       env={**base, "PYTHONPATH": str(REPO), **(env or {})})
    assert r.stdout.count("\n") == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    heavy = imported & {"airflow", "sqlalchemy", "prometheus_client", "yaml", "datadog"}
    assert not heavy, f"the probe imported {heavy}"
    assert out["exit_code"] == r.returncode
    return r.returncode, out


def wait_probe(venv, want_code, *args, timeout=90, **kw):
    deadline = time.monotonic() + timeout
    while True:
        code, out = probe(venv, *args, **kw)
        if code == want_code or time.monotonic() > deadline:
            return code, out
        time.sleep(1)


@pytest.fixture(scope="module")
def airflow_pg(tmp_path_factory, venv, postgres):
    url = postgres("airflow_probe")
    af = Airflow(home=tmp_path_factory.mktemp("airflow-pg"), venv=venv, env_extra={
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url.replace("postgresql://", "postgresql+psycopg2://"),
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "3600",
    })
    try:
        af.start()
        af.wait_run("probe_demo", af.trigger("probe_demo"))
        yield af, url
    except BaseException:
        print(af.log_tail(80))
        raise
    finally:
        af.stop()


def test_healthy_scheduler_on_postgres(airflow_pg, venv):
    af, url = airflow_pg
    code, out = wait_probe(venv, 0, "--local", "--sql-alchemy-conn", url)
    assert (code, out["status"]) == (0, "healthy"), out
    assert out["heartbeat_age_seconds"] < 30
    # and with the settings Airflow itself reads
    code, out = probe(venv, "--local", env={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url})
    assert code == 0, out


def test_real_stall_fails_then_recovers(airflow_pg, venv):
    """Freeze the LocalExecutor workers: a triggered task stays queued, nothing runs or finishes."""
    af, url = airflow_pg
    fast = ["--sql-alchemy-conn", url, "--local", "--queued-grace", "3", "--finished-window", "5"]
    assert af.signal("LocalExecutor", signal.SIGSTOP), "no LocalExecutor worker found"
    try:
        run_id = af.trigger("probe_demo")
        code, out = wait_probe(venv, 1, *fast, timeout=120)
        assert (code, out["check"]) == (1, "stuck_queue"), out
        assert "queued over 3s" in out["reason"] and "none running" in out["reason"]
        # what the Helm chart's probe says about the same stall: alive
        jobs = subprocess.run([str(venv / "bin" / "airflow"), "jobs", "check", "--job-type", "SchedulerJob",
                               "--local"], env=af.env(), capture_output=True, text=True, timeout=120)
        assert jobs.returncode == 0 and "Found one alive job" in jobs.stdout, jobs.stdout + jobs.stderr
        assert probe(venv, *fast, "--checks", "heartbeat")[0] == 0
    finally:
        af.signal("LocalExecutor", signal.SIGCONT)
    assert af.wait_run("probe_demo", run_id) == "success"
    code, out = probe(venv, *fast)
    assert code == 0, out


def test_stale_heartbeat(airflow_pg, venv):
    af, url = airflow_pg
    pids = af.signal("airflow scheduler", signal.SIGSTOP)
    assert pids, "scheduler process not found"
    try:
        code, out = wait_probe(venv, 1, "--sql-alchemy-conn", url, "--local", "--heartbeat-threshold", "4",
                               timeout=60)
        assert (code, out["check"]) == (1, "heartbeat"), out
        assert "last heartbeat" in out["reason"]
    finally:
        af.signal("airflow scheduler", signal.SIGCONT)
    code, out = wait_probe(venv, 0, "--sql-alchemy-conn", url, "--local", "--heartbeat-threshold", "4")
    assert code == 0, out


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_behind_pgbouncer_the_probe_passes_and_can_fail(airflow_pg, venv, pool_mode):
    """The chart's pgbouncer.enabled: PgBouncer refuses a startup `options` parameter, so the
    statement timeout must be set another way, and must not leak into a pooled server connection."""
    import psycopg2

    from tests.integration.conftest import PG_PASSWORD, PG_USER
    from tests.integration.pgbouncer import PgBouncer

    af, url = airflow_pg
    pb = PgBouncer(url.rsplit("/", 1)[1], PG_USER, PG_PASSWORD, pool_mode, pool_size=1)
    try:
        code, out = wait_probe(venv, 0, "--local", "--sql-alchemy-conn", pb.url)
        assert (code, out["status"]) == (0, "healthy"), (out, pb.log())
        other = psycopg2.connect(pb.url)  # gets the pool's one server connection, the probe's before
        with other.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone()[0] == "0", "the probe's timeout leaked into the pool"
        # while it holds it (in a transaction), the probe waits for a connection: unknown in time
        code, out = probe(venv, "--local", "--sql-alchemy-conn", pb.url, "--deadline", "2")
        assert (code, out["status"]) == (0, "unknown") and "did not answer within 2s" in out["reason"], out
        other.close()
        pids = af.signal("airflow scheduler", signal.SIGSTOP)
        assert pids, "scheduler process not found"
        try:
            code, out = wait_probe(venv, 1, "--sql-alchemy-conn", pb.url, "--local", "--heartbeat-threshold", "4",
                                   timeout=60)
            assert (code, out["status"], out["check"]) == (1, "unhealthy", "heartbeat"), (out, pb.log())
        finally:
            af.signal("airflow scheduler", signal.SIGCONT)
    finally:
        pb.stop()
    wait_probe(venv, 0, "--sql-alchemy-conn", url, "--local")


def test_database_down_is_unknown_not_a_restart(venv):
    down = "postgresql://airflow_monitor:secret-pw@127.0.0.1:1/airflow"
    code, out = probe(venv, "--sql-alchemy-conn", down)
    assert (code, out["status"], out["check"]) == (0, "unknown", "source"), out
    assert "secret-pw" not in json.dumps(out)
    code, out = probe(venv, "--sql-alchemy-conn", down, "--on-unknown", "fail")
    assert (code, out["status"]) == (1, "unknown")


def test_a_mistake_is_told_apart_from_an_outage(airflow_pg, venv):
    """Outage: unknown, exit 0 (a restart fixes nothing). A person's mistake: misconfigured, exit 1,
    so the startup probe stops the rollout and the reason is in the pod's events."""
    af, url = airflow_pg
    base, db = url.rsplit("/", 1)
    mistakes = {
        "wrong password": url.replace("monitor-test-pw", "wrong-pw"),
        "unknown database": f"{base}/no_such_db",
        "unknown user": url.replace("airflow_monitor:", "nobody_here:"),
        "unsupported scheme": f"mssql+pyodbc://u:p@127.0.0.1/{db}",
        "missing driver": f"mysql+mysqldb://u:p@127.0.0.1/{db}",
        "not Airflow's database": f"{base}/postgres",
    }
    for what, bad in mistakes.items():
        code, out = probe(venv, "--sql-alchemy-conn", bad)
        assert (code, out["status"], out["check"]) == (1, "misconfigured", "source"), (what, out)
        assert "wrong-pw" not in out["reason"] and "monitor-test-pw" not in out["reason"]
        code, _ = probe(venv, "--sql-alchemy-conn", bad, "--on-misconfigured", "ok")
        assert code == 0, what
    code, out = probe(venv, "--sql-alchemy-conn", "postgresql://u:p@127.0.0.1:1/x")  # nothing listens
    assert (code, out["status"]) == (0, "unknown"), out


def test_a_probe_set_up_wrong_fails_and_says_how_to_fix_it(airflow_pg, venv, tmp_path):
    """Issue 23 item 7: each of these passed as `unknown` (exit 0 with --on-unknown=ok), so a wrong probe
    never failed. Each is `misconfigured` (exit 1) with a line that names the fix; outages stay unknown."""
    af, url = airflow_pg
    empty = tmp_path / "empty-home"
    empty.mkdir()
    notdb = tmp_path / "airflow.db"
    notdb.write_text("this is not a database\n")
    pw = {"AIRFLOW_MONITOR_AIRFLOW_PASSWORD": "admin"}
    mistakes = [  # (what, args, env, words the reason must have)
        ("no Airflow config found", [], {"AIRFLOW_HOME": str(empty)},
         ["no Airflow database setting found", str(empty / "airflow.cfg"), "--sql-alchemy-conn"]),
        ("an API user without a password", ["--source", "api", "--api-url", af.api_url, "--api-user", "admin"], {},
         ["has no password", "AIRFLOW_MONITOR_AIRFLOW_PASSWORD"]),
        ("an --api-url ending in /api/v2", ["--source", "api", "--api-url", af.api_url + "/api/v2", "--api-user",
                                             "admin"], pw, ["base URL", af.api_url, "without /api/v2"]),
        ("a file that is not a database", ["--sql-alchemy-conn", f"sqlite:///{notdb}"], {}, ["not a database"]),
        ("a SQLite file that does not exist", ["--sql-alchemy-conn", f"sqlite:///{tmp_path / 'nope.db'}"], {},
         ["does not exist"]),
        ("sslmode=bogus", ["--sql-alchemy-conn", url + "?sslmode=bogus"], {}, ["sslmode", "options"]),
        ("not Airflow's database", ["--sql-alchemy-conn", url.rsplit("/", 1)[0] + "/postgres"], {},
         ["no Airflow tables here (wrong database, or not migrated"]),
    ]
    for what, args, env, words in mistakes:
        code, out = probe(venv, *args, env=env, unset=("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_CONFIG",
                                                       "AIRFLOW_MONITOR_AIRFLOW_PASSWORD", "AIRFLOW_HOME"))
        assert (code, out["status"]) == (1, "misconfigured"), (what, out)
        assert all(w in out["reason"] for w in words), (what, out["reason"])
        assert "\n" not in out["reason"] and "monitor-test-pw" not in out["reason"], (what, out["reason"])
    # outages stay unknown: a database that refuses connections, an API server that is not there
    outages = [["--sql-alchemy-conn", "postgresql://u:p@127.0.0.1:1/x"],
               ["--source", "api", "--api-url", "http://127.0.0.1:1", "--api-user", "admin"]]
    for args in outages:
        code, out = probe(venv, *args, env=pw)
        assert (code, out["status"]) == (0, "unknown"), (args, out)


def test_triggerer_and_dag_processor_run_only_their_checks(airflow_pg, venv):
    """No task queue for them: a healthy one is healthy, never 'task counts not available'."""
    af, url = airflow_pg
    for comp in ("triggerer", "dag-processor"):
        code, out = wait_probe(venv, 0, "--local", "--sql-alchemy-conn", url, "--on-unknown", "fail",
                               component=comp)
        assert (code, out["status"]) == (0, "healthy"), (comp, out)
        assert "queued" not in out, out


def test_connection_strings_are_read_as_sqlalchemy_reads_them(venv):
    """The probe's parser against SQLAlchemy's own make_url (the Airflow image's), on hostile URLs."""
    import random

    rnd = random.Random(7)
    alphabet = "aZ9_-.~/:#?%&=+!$ @[]"
    urls = ["postgresql://u:Pw/x@host/db", "postgresql+psycopg2://u:p%40w@h:5433/d?sslmode=require",
            "mysql+mysqldb://u@h/db", "sqlite:////abs/airflow.db", "sqlite:///rel.db", "postgresql://h",
            "postgresql://u:pw@[::1]:5432/db", "postgresql://:pw@/db?host=/var/run/postgresql"]
    for _ in range(3000):
        pw = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
        user = "".join(rnd.choice("ab9_-.%") for _ in range(rnd.randint(0, 4)))
        urls.append(f"{rnd.choice(['postgresql', 'postgresql+psycopg2', 'mysql+pymysql'])}://{user}:{pw}@"
                    f"{rnd.choice(['db', '10.0.0.1', '[::1]', ''])}{rnd.choice(['', ':5432', ':'])}"
                    f"/{rnd.choice(['airflow', 'a%20b', ''])}{rnd.choice(['', '?sslmode=require&a=1'])}")
    script = """
import json, sys
from sqlalchemy.engine import make_url
from monitor.probe.db import SourceError, parse_url
bad = []
for url in json.load(sys.stdin):
    try:
        s = make_url(url)
        want = (s.drivername.split("+")[0], s.username, s.password, s.host, s.port, s.database, dict(s.query))
    except Exception:
        want = "error"
    try:
        u = parse_url(url)
        got = (u.dialect, u.user, u.password, u.host, u.port, u.database, u.query)
    except SourceError as e:
        got = "error"
        assert "Pw" not in str(e) and url.split("//", 1)[1].split("@")[0] not in str(e) or not url, str(e)
    if got != want and not (got == "error" and want != "error" and "@" in (want[3] or "")):
        bad.append((url, got, want))
print(json.dumps(bad[:5]))
"""
    r = subprocess.run([str(venv / "bin" / "python"), "-c", script], input=json.dumps(urls), capture_output=True,
                       text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [], r.stdout


def test_an_unencoded_password_works_and_no_credential_is_ever_printed(airflow_pg, venv, tmp_path):
    """SQLAlchemy (and so Airflow) accepts `u:Pw/x@host`; the probe must too, and say nothing of it."""
    import psycopg2

    af, url = airflow_pg
    pw = "Pw/x:y#z?q"
    with psycopg2.connect(url) as c, c.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS probe_raw")
        cur.execute(f"CREATE ROLE probe_raw LOGIN SUPERUSER PASSWORD '{pw}'")
    dbname = url.rsplit("/", 1)[1]
    raw = f"postgresql://probe_raw:{pw}@127.0.0.1:5432/{dbname}"
    code, out = wait_probe(venv, 0, "--local", "--sql-alchemy-conn", raw)
    assert (code, out["status"]) == (0, "healthy"), out
    # a wrong one, an '@' left unencoded, an API URL with a password: no part of any is printed
    for args in (["--sql-alchemy-conn", raw.replace("Pw/x", "Wrong/x")],
                 ["--sql-alchemy-conn", f"postgresql://probe_raw:Se@cretPart@127.0.0.1:5432/{dbname}"],
                 ["--sql-alchemy-conn", f"postgresql://probe_raw:SecretPart:77@127.0.0.1/{dbname}"],
                 ["--source", "api", "--api-url", "http://admin:SecretPart@127.0.0.1:1/"]):
        code, out = probe(venv, *args)
        text = json.dumps(out)
        assert out["status"] in ("unknown", "misconfigured") and out["check"] == "source", out
        assert not any(part in text for part in ("Wrong", "Se@", "cretPart", "SecretPart")), text


def test_ha_other_schedulers_queue_does_not_fail_this_one(airflow_pg, venv):
    """A second scheduler (another host) whose tasks are stuck: only its own probe fails."""
    import psycopg2
    af, url = airflow_pg
    now = datetime.now(UTC)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT hostname FROM job WHERE job_type='SchedulerJob' AND state='running' LIMIT 1")
        host_a = cur.fetchone()[0]
        cur.execute("INSERT INTO job (state, job_type, start_date, latest_heartbeat, hostname, executor_class) "
                    "VALUES ('running', 'SchedulerJob', %s, %s, 'scheduler-b', 'LocalExecutor') RETURNING id",
                    (now, now))
        job_b = cur.fetchone()[0]
        # a finished task of probe_demo becomes queued by scheduler B, 10 minutes ago, with no progress since
        cur.execute("UPDATE task_instance SET state='queued', queued_dttm=%s, queued_by_job_id=%s, "
                    "end_date=NULL, last_heartbeat_at=%s WHERE id = (SELECT id FROM task_instance "
                    "WHERE dag_id='probe_demo' AND state='success' LIMIT 1)",
                    (now - timedelta(minutes=10), job_b, now - timedelta(minutes=10)))
    try:
        code, out = probe(venv, "--sql-alchemy-conn", url, "--hostname", host_a, "--finished-window", "1")
        assert code == 0, out
        code, out = probe(venv, "--sql-alchemy-conn", url, "--hostname", "scheduler-b", "--finished-window", "1")
        assert (code, out["check"]) == (1, "stuck_queue"), out
    finally:
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("UPDATE task_instance SET state='success', end_date=now() WHERE queued_by_job_id=%s",
                        (job_b,))
            cur.execute("UPDATE job SET state='success' WHERE id=%s", (job_b,))


def test_sqlite_schema_from_airflow_db_migrate(tmp_path, venv):
    """On a real migrated SQLite schema with no scheduler: unhealthy, said in one line."""
    db = tmp_path / "airflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{db}")
    subprocess.run([str(venv / "bin" / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    code, out = probe(venv, "--sql-alchemy-conn", f"sqlite:///{db}")
    assert (code, out["check"]) == (1, "heartbeat") and "no running scheduler job" in out["reason"]
    for comp in ("triggerer", "dag-processor"):
        code, out = probe(venv, "--sql-alchemy-conn", f"sqlite:///{db}", component=comp)
        assert code == 1 and comp in out["reason"]


def test_rest_api_source_with_jwt(airflow_pg, venv, tmp_path):
    af, _ = airflow_pg
    api = ["--source", "api", "--api-url", af.api_url, "--api-user", "admin", "--local"]
    code, out = wait_probe(venv, 0, *api, env={"AIRFLOW_MONITOR_AIRFLOW_PASSWORD": "admin"})
    assert (code, out["status"]) == (0, "healthy"), out
    code, out = probe(venv, *api, env={"AIRFLOW_MONITOR_API_PASSWORD": "wrong-pw"})  # the former name works
    assert (code, out["status"]) == (1, "misconfigured") and "authentication failed" in out["reason"], out
    assert "wrong-pw" not in json.dumps(out)
    token = tmp_path / "jwt"
    token.write_text(af.token())
    code, out = probe(venv, "--source", "api", "--api-url", af.api_url, "--api-token-file", str(token))
    assert code == 0, out


def test_the_one_file_probe_runs_with_the_images_python_alone(airflow_pg, airflow, venv, tmp_path):
    """The official image has no airflow-monitor: the zipapp the chart ships, run by the Airflow
    venv's Python without the repository on its path, gives `airflow-monitor probe`'s verdicts, on
    PostgreSQL and on SQLite, healthy and stuck."""
    from monitor.probe.zipapp import build

    pyz = tmp_path / "airflow-monitor-probe.pyz"
    pyz.write_bytes(build())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import monitor"], cwd=tmp_path, env=env,
                          capture_output=True).returncode != 0, "airflow-monitor must not be importable here"

    def one(component, *args):
        r = subprocess.run([python, str(pyz), component, "--json", *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
        out = json.loads(r.stdout)
        assert out["exit_code"] == r.returncode, r.stderr
        return r.returncode, out

    af, url = airflow_pg
    sqlite = f"sqlite:///{airflow.home / 'airflow.db'}"
    for conn, proc in ((url, af), (sqlite, airflow)):
        deadline = time.monotonic() + 90
        while (code := one("scheduler", "--local", "--sql-alchemy-conn", conn)[0]) != 0 and \
                time.monotonic() < deadline:
            time.sleep(1)
        assert code == 0
        for comp in ("scheduler", "triggerer", "dag-processor"):
            z = one(comp, "--local", "--sql-alchemy-conn", conn)
            c = probe(venv, "--local", "--sql-alchemy-conn", conn, component=comp)
            assert (z[0], z[1]["status"]) == (c[0], c[1]["status"]) == (0, "healthy"), (conn, comp, z, c)
        pids = proc.signal("airflow scheduler", signal.SIGSTOP)
        assert pids
        try:
            deadline = time.monotonic() + 60
            while (z := one("scheduler", "--local", "--sql-alchemy-conn", conn, "--heartbeat-threshold", "4"))[0] \
                    != 1 and time.monotonic() < deadline:
                time.sleep(1)
            assert (z[0], z[1]["status"], z[1]["check"]) == (1, "unhealthy", "heartbeat"), z
        finally:
            proc.signal("airflow scheduler", signal.SIGCONT)
