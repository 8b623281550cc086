"""SLA rules as pure functions: table-driven over runs and `now`."""

from datetime import UTC, datetime, timedelta

import pytest

from monitor.airflow.models import Dag, Run
from monitor.sla.rules import History, Rule, evaluate
from monitor.sla.windows import zone

NOW = datetime(2026, 5, 10, 7, 0, tzinfo=UTC)
H = timedelta(hours=1)


def run(rid, state, after_h, end_h=None, start_h=None, kind="scheduled") -> Run:
    at = NOW - after_h * H
    return Run(rid, state, kind, at, start_date=NOW - start_h * H if start_h is not None else at,
               end_date=NOW - end_h * H if end_h is not None else None, dag_id="d")


def hist(*runs: Run) -> History:
    ends = [r.end_date for r in runs if r.state == "success" and r.end_date]
    return History(runs=runs, last_success_end=max(ends, default=None), ever_ran=bool(runs))


MAX_AGE = Rule("fresh", "max_age", seconds=4 * 3600)
DEADLINE = Rule("by6", "deadline", cron="0 6 * * *", tz=zone("UTC"), tz_name="UTC")
SCHED = Rule("sched", "from_schedule", seconds=1800)
LONG = Rule("long", "max_duration", seconds=2 * 3600)


@pytest.mark.parametrize("rule,dag,history,reason", [
    (MAX_AGE, Dag("d"), hist(run("a", "success", 2, end_h=1)), "ok"),
    (MAX_AGE, Dag("d"), hist(run("a", "success", 6, end_h=5)), "stale"),
    (MAX_AGE, Dag("d", is_paused=True), hist(run("a", "success", 2, end_h=1)), "paused"),
    (MAX_AGE, Dag("d"), History(), "never_run"),
    (MAX_AGE, Dag("d"), hist(run("a", "success", 3, end_h=2.5), run("b", "failed", 1, end_h=0.5)), "failed"),
    # a failure followed by a successful rerun is fine
    (MAX_AGE, Dag("d"), hist(run("a", "failed", 3, end_h=2.5), run("b", "success", 1, end_h=0.5, kind="manual")),
     "ok"),
    # a success known from before the look-back (no recent runs) still counts
    (MAX_AGE, Dag("d"), History((), NOW - 2 * H, True), "ok"),
    # deadline 06:00: the run due in [yesterday 06:00, today 06:00) must have succeeded
    (DEADLINE, Dag("d"), hist(run("a", "success", 7, end_h=6.5)), "ok"),  # due 00:00, done 00:30
    (DEADLINE, Dag("d"), hist(run("a", "success", 30, end_h=29)), "missed_deadline"),  # only yesterday's
    (DEADLINE, Dag("d"), hist(run("y", "success", 31, end_h=30), run("a", "running", 7)), "missed_deadline"),
    # late but now succeeded: resolved
    (DEADLINE, Dag("d"), hist(run("a", "success", 7, end_h=0.1)), "ok"),
    # due after the deadline (06:30): belongs to tomorrow's period
    (DEADLINE, Dag("d"), hist(run("y", "success", 31, end_h=30), run("a", "success", 0.5, end_h=0.2)),
     "missed_deadline"),
    # from_schedule: next run due in the future, latest scheduled run succeeded
    (SCHED, Dag("d", next_run_after=NOW + H, schedule="@hourly"), hist(run("a", "success", 1, end_h=0.9)), "ok"),
    # the scheduler did not create the run due 2h ago (grace 30m)
    (SCHED, Dag("d", next_run_after=NOW - 2 * H, schedule="@hourly"), hist(run("a", "success", 3, end_h=2.9)),
     "not_scheduled"),
    # the latest scheduled run is still running 40m after being due
    (SCHED, Dag("d", next_run_after=NOW + 0.5 * H, schedule="@hourly"),
     hist(run("y", "success", 1.5, end_h=1.4), run("a", "running", 0.67)), "late"),
    # ... but 20m is within grace
    (SCHED, Dag("d", next_run_after=NOW + 0.5 * H, schedule="@hourly"),
     hist(run("y", "success", 1.5, end_h=1.4), run("a", "running", 0.33)), "ok"),
    (SCHED, Dag("d"), hist(run("a", "success", 1, end_h=0.9, kind="manual")), "n/a"),
    # max_duration: only running runs, by their start
    (LONG, Dag("d"), hist(run("a", "running", 3, start_h=2.5)), "too_long"),
    (LONG, Dag("d"), hist(run("a", "running", 3, start_h=1)), "ok"),
    (LONG, Dag("d", is_paused=True), History(), "ok"),
])
def test_evaluate(rule, dag, history, reason):
    v = evaluate(dag, history, rule, NOW)
    assert v.reason == reason, v.message
    assert v.breached == (reason not in ("ok", "n/a"))
    assert v.message


def test_messages_say_what_is_wrong():
    v = evaluate(Dag("sales"), hist(run("a", "success", 6, end_h=5)), MAX_AGE, NOW)
    assert v.message == "sales has not succeeded within 4h (last success: 5h ago)"
    berlin = Rule("by6", "deadline", cron="0 6 * * *", tz=zone("Europe/Berlin"), tz_name="Europe/Berlin")
    v = evaluate(Dag("sales"), hist(run("a", "success", 30, end_h=29)), berlin, NOW)
    assert v.message == "sales missed its deadline 2026-05-10 06:00 CEST: no run was due in its period"
    assert "2h" in Rule("x", "max_age", seconds=7200).describe()
