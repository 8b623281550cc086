"""`airflow-monitor heal [status|check]`: a table of what the healer sees, or one dry look (`heal run`
is composed by monitor.serve).

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
    from monitor.alerting.store import StateEmpty
    from monitor.config import ConfigError
    from monitor.heal.config import load
    from monitor.heal.service import build
    from monitor.kube.client import KubeError

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
    """status and check (`heal run` is composed by monitor.serve)."""
    action = args.action or "run"
    healer = build_from(args.config, getattr(args, "fresh_state", False), lease=False)
    if action in ("status", "check"):
        healer.cycle(apply=False)
        show(healer, args.json)
        if healer.stats.blind_reason:
            return 1
        return 1 if action == "check" and healer.diagnoses else 0
    raise UserError(f"unknown heal action {action!r}")
