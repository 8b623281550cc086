"""`airflow-monitor sla [run|check|status]`: the watcher alone, once, or as a table."""

from __future__ import annotations

import json
import logging
import signal
import threading
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


def _build(args):
    from monitor.sla.service import build

    cfg = load_config(args.config, args.airflow_url)
    if getattr(args, "state_file", None):
        cfg.state_file = args.state_file
    try:
        return build(cfg)
    except OSError as e:
        raise UserError(f"cannot open state file {cfg.state_file}: {e.strerror or e}") from None
    except Exception as e:  # sqlite3.Error and friends: one line, no traceback
        raise UserError(f"cannot start the SLA watcher: {e}") from None


def _ts(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%SZ") if t else "never"


def _rows(watcher) -> list[dict]:
    open_alerts = watcher.state.alerts("open")
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
                     "state": "BREACHED" if j.verdict.breached else ("n/a" if j.verdict.reason == "n/a" else "ok"),
                     "reason": j.verdict.reason, "message": j.verdict.message,
                     "alert": (f"open since {_ts(datetime.fromtimestamp(alert.opened_at, UTC))}" if alert else "-")})
    if ("_watcher", "blind") in open_alerts:
        a = open_alerts[("_watcher", "blind")]
        rows.append({"dag_id": "_watcher", "rule": "blind", "window": "-", "priority": a.priority,
                     "last_success": "-", "state": "BLIND", "reason": "blind", "message": a.message,
                     "alert": f"open since {_ts(datetime.fromtimestamp(a.opened_at, UTC))}"})
    return rows


def _print(rows: list[dict], as_json: bool, columns: tuple[str, ...]) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no DAG matches the SLA config")
        return
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip())


def _airflow_error(e) -> UserError:
    return UserError(f"cannot read Airflow: {e}")


def run(args) -> int:
    action = args.action or "run"
    watcher = _build(args)
    if action == "status":
        from monitor.airflow.rest import AirflowError

        try:
            watcher.cycle(apply=False)
        except AirflowError as e:
            raise _airflow_error(e) from None
        _print(_rows(watcher), args.json,
               ("dag_id", "rule", "window", "last_success", "state", "reason", "alert"))
        backlog = watcher.state.backlog()
        if backlog and not args.json:
            print("undelivered notices: " + ", ".join(f"{k}={v}" for k, v in sorted(backlog.items())))
        for dead in watcher.state.dead_letters():
            if not args.json:
                print(f"refused by {dead[0]}: {dead[1]} {dead[2]}/{dead[3]}: {dead[4]}")
        return 0
    if action == "check":
        watcher.cycle()
        if watcher.stats.consecutive_errors:
            raise _airflow_error(watcher.stats.last_error)
        _print(_rows(watcher), args.json, ("dag_id", "rule", "priority", "state", "reason", "message"))
        backlog = watcher.state.backlog()
        if backlog:
            log.warning("undelivered notices stay queued for the next run: %s", backlog)
        return 1 if any(j.verdict.breached for j in watcher.judgements.values()) else 0
    return serve_alone(watcher, args.metrics_listen)


def serve_alone(watcher, listen: str | None) -> int:
    """The watcher with its own /metrics (and /-/healthy) until SIGTERM or SIGINT."""
    from prometheus_client import CollectorRegistry, start_http_server

    from monitor.bridge.listener import parse_address
    from monitor.sla.exposition import SLACollector
    from monitor.sla.service import Schedule

    listen = listen if listen is not None else watcher.cfg.metrics_listen
    server = None
    if listen:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SLACollector(watcher))
        try:
            host, port = parse_address(listen)
            server, _ = start_http_server(port, host or "0.0.0.0", registry)
        except (OSError, ValueError) as e:
            raise UserError(f"metrics listen address {listen}: {e}") from None
        log.info("SLA watcher metrics on http://%s:%d/metrics", host or "0.0.0.0", server.server_port)
    schedule = Schedule(watcher)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    schedule.start()
    log.info("SLA watcher: %d rule sets, every %.0fs, notifiers: %s", len(watcher.cfg.watches),
             watcher.cfg.interval, ", ".join(n.name for n in watcher.notifiers) or "none (metrics only)")
    stop.wait()
    schedule.stop()
    if server:
        server.shutdown()
    return 0
