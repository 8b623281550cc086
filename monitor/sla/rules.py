"""SLA rules as pure functions: (a DAG, its recent runs, a rule, now) -> satisfied or breached.

Four kinds of rule:
- max_age:       a run must have succeeded (ended) within the last N;
- deadline:      by each deadline of a cron (in a time zone), the run due in the period
                 [previous deadline, deadline) has succeeded;
- from_schedule: the run Airflow scheduled last must succeed within `grace` of being due, and
                 the next one must be created within `grace` of its due time;
- max_duration:  no run may stay running longer than N.
A run is "due" at its run_after (for a scheduled run the end of its data interval or its cron
tick; for a manual run the moment it was triggered).

The first three are freshness rules. For them a paused DAG, a DAG that has never run and a
DAG whose latest run failed are breaches with their own reason, checked in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from monitor.airflow.models import Dag, Run
from monitor.durations import format_duration
from monitor.sla import windows

KINDS = ("max_age", "deadline", "from_schedule", "max_duration")
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
FINISHED = ("success", "failed")


@dataclass(frozen=True)
class History:
    """What the watcher knows of a DAG's runs: recent runs, and the latest success ever seen."""

    runs: tuple[Run, ...] = ()
    last_success_end: datetime | None = None
    ever_ran: bool = False

    def latest(self) -> Run | None:
        return max(self.runs, key=lambda r: (r.run_after, r.start_date or r.run_after), default=None)


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    seconds: float = 0.0  # max_age / max_duration / from_schedule's grace
    cron: str = ""
    tz: tzinfo | None = None
    tz_name: str = "UTC"
    priority: str = "P3"
    responders: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    runbook: str = ""

    def describe(self, now: datetime | None = None) -> str:
        if self.kind == "deadline":
            text = f"deadline '{self.cron}' {self.tz_name}"
            if now is not None:
                nxt = windows.next_deadline(self.cron, self.tz, now).astimezone(self.tz)
                text += f" (next {nxt:%Y-%m-%d %H:%M %Z})"
            return text
        if self.kind == "from_schedule":
            return f"from_schedule +{format_duration(self.seconds)}"
        return f"{self.kind} {format_duration(self.seconds)}"


@dataclass(frozen=True)
class Verdict:
    breached: bool
    reason: str  # ok | paused | never_run | failed | stale | missed_deadline | late | not_scheduled | too_long | n/a
    message: str
    details: dict = field(default_factory=dict)


def _ok(message: str = "ok") -> Verdict:
    return Verdict(False, "ok", message)


def _ts(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "never"


def _ago(now: datetime, t: datetime) -> str:
    return format_duration((now - t).total_seconds())


def evaluate(dag: Dag, history: History, rule: Rule, now: datetime) -> Verdict:
    if rule.kind == "max_duration":
        return _max_duration(dag, history, rule, now)
    if dag.is_paused:
        return Verdict(True, "paused", f"DAG {dag.dag_id} is paused")
    latest = history.latest()
    if not history.ever_ran and latest is None:
        return Verdict(True, "never_run", f"DAG {dag.dag_id} has never run")
    latest_finished = max((r for r in history.runs if r.state in FINISHED),
                          key=lambda r: (r.run_after, r.start_date or r.run_after), default=None)
    if latest_finished is not None and latest_finished.state == "failed" and (
            history.last_success_end is None or latest_finished.end_date is None
            or latest_finished.end_date >= history.last_success_end):
        return Verdict(True, "failed", f"latest run of {dag.dag_id} failed ({latest_finished.run_id}, "
                       f"ended {_ts(latest_finished.end_date)})", {"run_id": latest_finished.run_id})
    if rule.kind == "max_age":
        return _max_age(dag, history, rule, now)
    if rule.kind == "deadline":
        return _deadline(dag, history, rule, now)
    if rule.kind == "from_schedule":
        return _from_schedule(dag, history, rule, now)
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def _max_age(dag: Dag, history: History, rule: Rule, now: datetime) -> Verdict:
    last = history.last_success_end
    if last is not None and now - last <= timedelta(seconds=rule.seconds):
        return _ok(f"last success {_ago(now, last)} ago")
    since = f"{_ago(now, last)} ago" if last else "never"
    return Verdict(True, "stale", f"{dag.dag_id} has not succeeded within {format_duration(rule.seconds)} "
                   f"(last success: {since})", {"last_success": _ts(last)})


def _deadline(dag: Dag, history: History, rule: Rule, now: datetime) -> Verdict:
    start, deadline = windows.last_deadlines(rule.cron, rule.tz, now)
    due = [r for r in history.runs if start <= r.run_after < deadline]
    if any(r.state == "success" for r in due):
        return _ok(f"run due before {_ts(deadline)} succeeded")
    local = deadline.astimezone(rule.tz).strftime("%Y-%m-%d %H:%M %Z")
    if not due:
        what = "no run was due in its period"
    else:
        r = max(due, key=lambda r: r.run_after)
        what = f"run {r.run_id} is {r.state}"
    return Verdict(True, "missed_deadline", f"{dag.dag_id} missed its deadline {local}: {what}",
                   {"deadline": _ts(deadline), "period_start": _ts(start)})


def _from_schedule(dag: Dag, history: History, rule: Rule, now: datetime) -> Verdict:
    grace = timedelta(seconds=rule.seconds)
    if dag.schedule is None and dag.next_run_after is None:
        return Verdict(False, "n/a", f"{dag.dag_id} has no schedule to derive a window from")
    if dag.next_run_after is not None and now > dag.next_run_after + grace:
        return Verdict(True, "not_scheduled", f"{dag.dag_id}: the run due at {_ts(dag.next_run_after)} "
                       f"was not created within {format_duration(rule.seconds)}",
                       {"due": _ts(dag.next_run_after)})
    scheduled = [r for r in history.runs if r.run_type == "scheduled"]
    last = max(scheduled, key=lambda r: r.run_after, default=None)
    if last is None or last.state == "success":
        return _ok("latest scheduled run succeeded" if last else "no scheduled run due yet")
    if now <= last.run_after + grace:
        return _ok(f"run {last.run_id} is {last.state}, within grace")
    return Verdict(True, "late", f"{dag.dag_id}: run {last.run_id} due at {_ts(last.run_after)} is {last.state} "
                   f"after {format_duration(rule.seconds)} grace", {"run_id": last.run_id})


def _max_duration(dag: Dag, history: History, rule: Rule, now: datetime) -> Verdict:
    limit = timedelta(seconds=rule.seconds)
    long = [r for r in history.runs if r.state == "running" and r.start_date and now - r.start_date > limit]
    if not long:
        return _ok("no run over its time")
    r = min(long, key=lambda r: r.start_date)
    return Verdict(True, "too_long", f"{dag.dag_id}: run {r.run_id} has been running for "
                   f"{_ago(now, r.start_date)} (max {format_duration(rule.seconds)})", {"run_id": r.run_id})
