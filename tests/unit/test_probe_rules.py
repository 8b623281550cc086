from datetime import UTC, datetime, timedelta

import pytest

from monitor.probe.rules import Observation, Thresholds, evaluate, needs_finished

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
TH = Thresholds(heartbeat=30, queued_grace=300, finished_window=300)


def obs(**kw):
    base = dict(now=NOW, job_id=7, hostname="sched-a", heartbeat=NOW - timedelta(seconds=5),
                queued=0, queued_stuck=0, running=0, finished_recently=None)
    base.update(kw)
    return Observation(**base)


@pytest.mark.parametrize("o, status, check, words", [
    (obs(), "healthy", "all", ["heartbeat 5s ago", "no task queued"]),
    (obs(job_id=None, heartbeat=None), "unhealthy", "heartbeat", ["no running scheduler job on sched-a"]),
    (obs(heartbeat=NOW - timedelta(seconds=31)), "unhealthy", "heartbeat", ["31s ago", "threshold 30s"]),
    (obs(heartbeat=None), "unhealthy", "heartbeat", ["never heartbeat"]),
    (obs(queued=3, queued_stuck=3, running=2), "healthy", "all", ["2 running"]),
    (obs(queued=3, queued_stuck=3, running=0, finished_recently=4), "healthy", "all", ["4 finished"]),
    (obs(queued=3, queued_stuck=3, running=0, finished_recently=0, oldest_queued=NOW - timedelta(seconds=412)),
     "unhealthy", "stuck_queue", ["3 task(s) queued over 300s", "oldest 412s", "none running", "none finished"]),
    (obs(queued=9, queued_stuck=0, running=0), "healthy", "all", ["no task queued over 300s"]),
    (obs(queued_stuck=None, running=None), "unknown", "stuck_queue", ["not available"]),
    # a stale heartbeat wins over a healthy queue, and is reported first
    (obs(heartbeat=NOW - timedelta(seconds=99), queued_stuck=1, running=0, finished_recently=0), "unhealthy",
     "heartbeat", ["99s ago"]),
])
def test_rules(o, status, check, words):
    v = evaluate(o, TH)
    assert (v.status, v.check) == (status, check), v
    for w in words:
        assert w in v.reason, v.reason


def test_only_selected_checks_run():
    stale = obs(heartbeat=NOW - timedelta(seconds=99))
    assert evaluate(stale, TH, ("stuck_queue",)).status == "healthy"
    assert evaluate(stale, TH, ("heartbeat",)).status == "unhealthy"


def test_exit_codes():
    assert evaluate(obs(), TH).exit_code() == 0
    v = evaluate(obs(queued_stuck=None, running=None), TH)
    assert v.exit_code("ok") == 0 and v.exit_code("fail") == 1
    assert evaluate(obs(job_id=None), TH).exit_code("ok") == 1


def test_finished_count_only_needed_when_queue_looks_stuck():
    assert needs_finished(obs(queued_stuck=2, running=0))
    assert not needs_finished(obs(queued_stuck=2, running=1))
    assert not needs_finished(obs(queued_stuck=0, running=0))


def test_components_without_a_queue_run_only_their_checks():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    obs = Observation(now=now, component="triggerer", job_id=3, heartbeat=now - timedelta(seconds=5))
    v = evaluate(obs, Thresholds())
    assert (v.status, v.check) == ("healthy", "all") and "queued" not in v.reason


def test_a_misconfigured_probe_fails_unless_told_otherwise():
    from monitor.probe.rules import Verdict

    v = Verdict("misconfigured", "source", "cannot connect: password authentication failed")
    assert v.exit_code() == 1 and v.exit_code(on_misconfigured="ok") == 0
    assert Verdict("unknown", "source", "timeout").exit_code() == 0


@pytest.mark.parametrize("message, mistake", [
    ('connection to server at "db" (10.0.0.5), port 5432 failed: FATAL:  password authentication failed '
     'for user "airflow"', True),
    ('FATAL:  database "airflw" does not exist', True),
    ("ERROR:  no such database: airflow-metdata", True),  # PgBouncer
    ("FATAL:  SASL authentication failed", True),
    ("(1045, \"Access denied for user 'airflow'@'10.0.0.3' (using password: YES)\")", True),
    ('relation "job" does not exist', True),
    ('connection to server at "db" (10.0.0.5), port 5432 failed: Connection refused', False),
    ("timeout expired", False),
    ("FATAL:  the database system is shutting down", False),
    ("FATAL:  the database system is starting up", False),
    ("server closed the connection unexpectedly", False),
    ("ERROR:  query_wait_timeout", False),
    ("(2003, \"Can't connect to MySQL server on 'db' (111)\")", False),
])
def test_mistakes_and_outages_are_told_apart(message, mistake):
    from monitor.probe.db import _misconfigured

    assert _misconfigured(message) is mistake
