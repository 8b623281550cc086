"""`airflow-monitor sla [run|check|status|test-notify]`: the watcher alone, a dry look, a table,
or a test alert through every notifier.

`check` evaluates and prints; it notifies and changes the state file only with --notify (it shares
the state with the running watcher, so a look from a laptop must page nobody)."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from datetime import UTC, datetime

from monitor.config import ConfigError
from monitor.errors import UserError

log = logging.getLogger("airflow_monitor")


def load_config(path: str | None, airflow_url: str | None = None):
    import os

    from monitor.sla.config import load

    path = path or os.environ.get("AIRFLOW_MONITOR_SLA_CONFIG")
    if not path:
        raise UserError("no SLA config: pass --config FILE (or set AIRFLOW_MONITOR_SLA_CONFIG)")
    try:
        return load(path, airflow_url)
    except ConfigError as e:
        raise UserError(str(e)) from None


def build_from(path: str | None, airflow_url: str | None = None, state_file: str | None = None,
               fresh_state: bool = False, read_only: bool = False):
    """A watcher from its config file; every failure a UserError of one line. read_only: the state file is
    read, never written or created (check without --notify, status, test-notify)."""
    from monitor.alerting.store import StateEmpty
    from monitor.sla.service import build

    cfg = load_config(path, airflow_url)
    if state_file:
        cfg.state_file = state_file
    try:
        return build(cfg, fresh_state=fresh_state, read_only=read_only)
    except StateEmpty as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot open state file {cfg.state_file}: {e.strerror or e}") from None
    except Exception as e:  # sqlite3.Error and friends: one line, no traceback
        raise UserError(f"cannot start the SLA watcher: {e}") from None


def _ts(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%SZ") if t else "never"


def _state(j) -> str:
    if j.verdict.breached:
        return (f"MUTED until {j.muted.until:%Y-%m-%d %H:%M}Z" + (f" ({j.muted.reason})" if j.muted.reason else "")
                if j.muted else "BREACHED")
    if j.verdict.reason == "grace" and j.verdict.details.get("would_be") == "not_found":
        return "grace (not in Airflow yet)"
    return {"n/a": "n/a", "grace": "grace (new DAG)"}.get(j.verdict.reason, "ok")


def _open_alerts(watcher) -> dict:
    """The open alerts in the state file ({} when it cannot be read: the state row says why)."""
    try:
        return watcher.state.alerts("open")
    except sqlite3.Error as e:
        watcher.state.fail(e)
        return {}


def _rows(watcher) -> list[dict]:
    open_alerts = _open_alerts(watcher)
    now = datetime.now(UTC)
    rows = []
    for (dag_id, rule), j in sorted(watcher.judgements.items()):
        alert = open_alerts.get((dag_id, rule))
        try:
            window = j.rule.describe(now)
        except ValueError:
            window = j.rule.describe()
        rows.append({"dag_id": dag_id, "rule": rule, "window": window, "priority": j.rule.priority,
                     "last_success": _ts(watcher.history.last_success(dag_id)),
                     "state": _state(j),
                     "reason": j.verdict.reason, "message": j.verdict.message,
                     "alert": (f"open since {_ts(datetime.fromtimestamp(alert.opened_at, UTC))}" if alert else "-")})
    if ("_watcher", "blind") in open_alerts:
        a = open_alerts[("_watcher", "blind")]
        rows.append({"dag_id": "_watcher", "rule": "blind", "window": "-", "priority": a.priority,
                     "last_success": "-", "state": "BLIND", "reason": "blind", "message": a.message,
                     "alert": f"open since {_ts(datetime.fromtimestamp(a.opened_at, UTC))}"})
    if watcher.state.broken:
        rows.append({"dag_id": "_watcher", "rule": "state", "window": "-", "priority": watcher.cfg.blind_priority,
                     "last_success": "-", "state": "BROKEN", "reason": "state_broken",
                     "message": watcher.problem(), "alert": "unknown"})
    return rows


def _stored_rows(watcher) -> list[dict]:
    """The open alerts as the state file has them (Airflow unreadable)."""
    stored = _open_alerts(watcher)
    rows = [{"dag_id": d, "rule": r, "priority": a.priority, "state": "BREACHED (stored)", "reason": a.reason,
             "alert": f"open since {_ts(datetime.fromtimestamp(a.opened_at, UTC))}"}
            for (d, r), a in sorted(stored.items())]
    if watcher.state.broken:
        rows.append({"dag_id": "_watcher", "rule": "state", "priority": watcher.cfg.blind_priority,
                     "state": "BROKEN", "reason": "state_broken", "alert": watcher.problem()})
    return rows


def test_notify(watcher) -> int:
    """One test alert through each configured notifier, opened and closed at once, without the
    state file; exit 1 if any notifier did not take both."""
    from monitor.alerting import Refused, Retry
    from monitor.alerting.notice import Notice

    if not watcher.notifiers:
        print("no notifier configured (notify: opsgenie, jsm, datadog or webhook)")
        return 1
    now = datetime.now(UTC)
    notice = Notice(alias=f"airflow-sla:test:{now.strftime('%Y%m%dT%H%M%S')}", subject="_test", rule="test",
                    reason="test", message="[SLA] airflow-monitor test alert (closed at once; nothing is wrong)",
                    description="Sent by `airflow-monitor sla test-notify` to check the notifier's settings.",
                    priority="P5", tags=("airflow-sla", "test"), entity="airflow-monitor", details={"test": "true"},
                    at=now.isoformat())
    failed = 0
    for n in watcher.notifiers:
        try:
            opened = n.send("open", notice)
            closed = _close_soon(n, notice.but(note="test over", at=datetime.now(UTC).isoformat()))
        except (Retry, Refused) as e:
            failed += 1
            print(f"{n.name}: FAILED: {e}")
            continue
        ids = ", ".join(x for x in (opened, closed) if x)
        print(f"{n.name}: ok: test alert {notice.alias} opened and closed" + (f" ({ids})" if ids else ""))
    return 1 if failed else 0


def _close_soon(notifier, notice, within: float = 30.0) -> str:
    """Close what was just opened; a service that processes writes asynchronously (JSM) may not
    have the alert yet, so a Retry is tried again for up to `within` seconds."""
    import time

    from monitor.alerting import Retry

    deadline = time.monotonic() + within
    while True:
        try:
            return notifier.send("close", notice)
        except Retry as e:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(e.after or 1.0, 5.0))


def _outbox(watcher, as_json: bool) -> None:
    """What the state file holds beside the alerts: undelivered notices and refused ones."""
    if as_json or watcher.state.broken:
        return
    try:
        backlog = watcher.state.backlog()
        dead = watcher.state.dead_letters()
    except sqlite3.Error as e:
        print(f"the state file cannot be read: {e}", file=sys.stderr)
        return
    if backlog:
        print("undelivered notices: " + ", ".join(f"{k}={v}" for k, v in sorted(backlog.items())))
    for d in dead:
        print(f"refused by {d[0]}: {d[1]} {d[2]}/{d[3]}: {d[4]}")


def _print(rows: list[dict], as_json: bool, columns: tuple[str, ...],
           empty: str = "no DAG in Airflow matches the SLA config") -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(empty)
        return
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip())


def _airflow_error(e) -> UserError:
    return UserError(f"cannot read Airflow: {e}")


def run(args) -> int:
    """check, status and test-notify (`sla run` is composed by monitor.serve)."""
    action = args.action or "run"
    read_only = action in ("status", "test-notify") or (action == "check" and not args.notify)
    watcher = build_from(args.config, getattr(args, "airflow_url", None), getattr(args, "state_file", None),
                         getattr(args, "fresh_state", False), read_only=read_only)
    if action == "test-notify":
        return test_notify(watcher)
    if action == "status":
        from monitor.airflow.rest import AirflowError

        try:
            watcher.cycle(apply=False)
        except AirflowError as e:  # what is on disk is still worth showing; the notice on stderr, so
            # that --json stays JSON
            print(f"Airflow could not be read ({e}); showing the state file {watcher.cfg.state_file} only",
                  file=sys.stderr if args.json else sys.stdout)
            _print(_stored_rows(watcher), args.json, ("dag_id", "rule", "priority", "state", "reason", "alert"),
                   empty="no open alerts in the state file")
            _outbox(watcher, args.json)
            return 1
        _print(_rows(watcher), args.json,
               ("dag_id", "rule", "window", "last_success", "state", "reason", "alert"))
        _outbox(watcher, args.json)
        return 0
    if action == "check":
        from monitor.airflow.rest import AirflowError

        if args.notify:
            watcher.cycle()
            if watcher.stats.consecutive_errors:
                raise _airflow_error(watcher.stats.last_error)
        else:
            try:
                watcher.cycle(apply=False)
            except AirflowError as e:
                raise _airflow_error(e) from None
        _print(_rows(watcher), args.json, ("dag_id", "rule", "priority", "state", "reason", "message"))
        _outbox(watcher, args.json)
        return 1 if any(j.verdict.breached for j in watcher.judgements.values()) else 0
    raise UserError(f"unknown sla action {action!r}")
