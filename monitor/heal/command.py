"""`airflow-monitor heal [run|status|check]`: the healer alone, a table of what it sees, or one dry look.

`status` and `check` observe once and act on nothing: no Event, no restart, no page, no Lease taken
(they share the state file with the running healer, so a look from a laptop changes nothing)."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, datetime

from monitor.errors import UserError

log = logging.getLogger("airflow_monitor")


def build_from(path: str | None, fresh_state: bool = False, lease: bool = True):
    from monitor.config import ConfigError
    from monitor.heal.config import load
    from monitor.heal.service import build
    from monitor.kube.client import KubeError
    from monitor.sla.state import StateEmpty

    try:
        cfg = load(path)
        return build(cfg, fresh_state, lease)
    except (ConfigError, KubeError, StateEmpty) as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot open the healer state file: {e.strerror or e}") from None
    except sqlite3.Error as e:
        raise UserError(f"cannot start the healer: {e}") from None


def _ts(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def rows(healer) -> dict:
    import time

    from monitor.heal import budget as budgets

    now = time.time()
    try:
        open_alerts = healer.state.alerts("open")
        actions = healer.state.actions(now - healer.cfg.budget.window - healer.cfg.budget.verify)
    except sqlite3.Error as e:
        healer.state.fail(e)
        open_alerts, actions = {}, []
    diag = [{"rule": d.rule, "component": d.component, "subject": d.subject, "restartable": d.restartable,
             "alert": (f"open since {_ts(open_alerts[d.key].opened_at)}" if d.key in open_alerts else "-"),
             "reason": d.reason} for d in healer.diagnoses]
    acts = [{"at": _ts(a.at), "component": a.component, "rule": a.rule, "action": a.what, "outcome": a.outcome,
             "detail": a.detail} for a in actions]
    left = budgets.left([a.budget_action() for a in actions], "scheduler", now, healer.cfg.budget)
    alerts = [{"subject": s, "rule": r, "priority": a.priority, "since": _ts(a.opened_at), "message": a.message}
              for (s, r), a in sorted(open_alerts.items())]
    return {"release": healer.where, "mode": healer.cfg.mode, "blind": healer.stats.blind_reason,
            "scheduler_restarts_left": left, "diagnoses": diag, "actions": acts, "alerts": alerts}


def _table(items: list[dict], columns: tuple[str, ...]) -> None:
    if not items:
        print("  (none)")
        return
    widths = {c: max(len(c), *(len(str(r[c])) for r in items)) for c in columns}
    print("  " + "  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in items:
        print("  " + "  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip())


def show(healer, as_json: bool) -> None:
    r = rows(healer)
    if as_json:
        print(json.dumps(r, indent=2, default=str))
        return
    print(f"release {r['release']}, mode {r['mode']}, scheduler restarts left in the budget: "
          f"{r['scheduler_restarts_left']}/{healer.cfg.budget.per_component}")
    if r["blind"]:
        print(f"CANNOT SEE: {r['blind']}")
    print("diagnoses:")
    _table(r["diagnoses"], ("rule", "subject", "alert", "reason"))
    print("actions:")
    _table(r["actions"], ("at", "component", "action", "outcome", "detail"))
    print("open alerts:")
    _table(r["alerts"], ("subject", "rule", "priority", "since", "message"))


def run(args) -> int:
    action = args.action or "run"
    healer = build_from(args.config, getattr(args, "fresh_state", False), lease=action == "run")
    if action in ("status", "check"):
        healer.cycle(apply=False)
        show(healer, args.json)
        if healer.stats.blind_reason:
            return 1
        return 1 if action == "check" and healer.diagnoses else 0
    from monitor.heal.exposition import HealCollector
    from monitor.worker import serve_alone

    log.info("healer: %s, mode %s, every %.0fs, notifiers: %s", healer.where, healer.cfg.mode, healer.cfg.interval,
             ", ".join(n.name for n in healer.notifiers) or "none (metrics and Events only)")
    also = ()
    if getattr(args, "sla_config", None):
        also = (with_watcher(healer, args.sla_config, getattr(args, "fresh_state", False)),)
    return serve_alone(healer, HealCollector(healer), args.metrics_listen, getattr(args, "web_config_file", None),
                       name="heal", also=also)


def with_watcher(healer, path: str, fresh_state: bool = False):
    """The SLA watcher in the healer's process, sharing its Lease: with two replicas it pages once."""
    from monitor.sla.command import load_config
    from monitor.sla.exposition import SLACollector
    from monitor.sla.service import build
    from monitor.sla.state import StateEmpty

    cfg = load_config(path)
    try:
        watcher = build(cfg, fresh_state)
    except StateEmpty as e:
        raise UserError(str(e)) from None
    watcher.lease = healer.lease
    log.info("SLA watcher beside the healer: every %.0fs, paging only while this replica holds the Lease",
             cfg.interval)
    return watcher, SLACollector(watcher), "sla"
