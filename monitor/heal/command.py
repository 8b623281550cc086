"""`airflow-monitor heal [status|check]`: a table of what the healer sees, or one dry look (`heal run`
is composed by monitor.serve).

`status` and `check` observe once and act on nothing: no Event, no restart, no page, no Lease taken
(they share the state file with the running healer, so a look from a laptop changes nothing)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from monitor.errors import UserError

log = logging.getLogger("airflow_monitor")


def build_from(path: str | None, read_only: bool = False):
    """A healer from its config file; every failure a UserError of one line. read_only (status, check):
    no Lease, no notifier (so no notifier secret is needed), nothing written."""
    from monitor.config import ConfigError
    from monitor.heal.config import load
    from monitor.heal.service import build
    from monitor.kube.client import KubeError

    try:
        cfg = load(path, notifiers=not read_only)
        return build(cfg, lease=not read_only, read_only=read_only)
    except (ConfigError, KubeError) as e:
        raise UserError(str(e)) from None


def _ts(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def rows(healer) -> dict:
    from monitor.heal import budget as budgets

    now = healer.time()
    open_alerts = healer.state.alerts("open")
    actions = healer.state.actions(now - healer.cfg.budget.window - healer.cfg.budget.verify)
    diag = [{"rule": d.rule, "component": d.component, "subject": d.subject, "restartable": d.restartable,
             "alert": (f"open since {_ts(open_alerts[d.key].opened_at)}" if d.key in open_alerts else "-"),
             "reason": d.reason} for d in healer.diagnoses]
    acts = [{"at": _ts(a.at), "component": a.component, "rule": a.rule, "action": a.what, "outcome": a.outcome,
             "detail": a.detail} for a in actions]
    left = None if healer.state.broken else budgets.left([a.budget_action() for a in actions], "scheduler", now,
                                                          healer.cfg.budget)
    alerts = [{"subject": s, "rule": r, "priority": a.priority, "since": _ts(a.opened_at), "message": a.message}
              for (s, r), a in sorted(open_alerts.items())]
    return {"release": healer.where, "mode": healer.cfg.mode, "blind": healer.stats.blind_reason,
            "state": healer.state.broken or f"{healer.state.where} (version {healer.state.version or 'none yet'})",
            "scheduler_restarts_left": left, "diagnoses": diag, "actions": acts, "alerts": alerts}


def printable(text: str) -> str:
    """For a terminal: no control character (an ESC sequence from a hand-edited state or the database)."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _table(items: list[dict], columns: tuple[str, ...]) -> None:
    if not items:
        print("  (none)")
        return
    items = [{c: printable(str(r[c])) for c in columns} for r in items]
    widths = {c: max(len(c), *(len(r[c]) for r in items)) for c in columns}
    print("  " + "  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in items:
        print("  " + "  ".join(r[c].ljust(widths[c]) for c in columns).rstrip())


def show(healer, as_json: bool) -> None:
    r = rows(healer)
    if as_json:
        print(json.dumps(r, indent=2, default=str))
        return
    left = r["scheduler_restarts_left"]
    print(f"release {r['release']}, mode {r['mode']}, scheduler restarts left in the budget: "
          + (f"{left}/{healer.cfg.budget.per_component}" if left is not None else "unknown (the state cannot be read)"))
    if r["blind"]:
        print(f"CANNOT SEE: {printable(r['blind'])}")
    if healer.state.broken:
        print(f"STATE UNUSABLE: {printable(healer.state.broken)}")
    print("diagnoses:")
    _table(r["diagnoses"], ("rule", "subject", "alert", "reason"))
    print("actions:")
    _table(r["actions"], ("at", "component", "action", "outcome", "detail"))
    print("open alerts:")
    _table(r["alerts"], ("subject", "rule", "priority", "since", "message"))


EXIT = {"ok": 0, "diagnosed": 1, "mistake": 2, "blind": 3, "misconfigured": 4}


def verdict(healer, check: bool) -> str:
    """What `heal check` exits with (EXIT); `heal status` exits 0 unless blind or misconfigured."""
    if healer.stats.blind_reason or healer.state.broken:
        return "blind"
    if any(d.rule == "misconfigured" for d in healer.diagnoses):
        return "misconfigured"
    return "diagnosed" if check and healer.diagnoses else "ok"


def run(args) -> int:
    """status and check (`heal run` is composed by monitor.serve). Exit codes: 0 nothing diagnosed
    (status: shown), 1 something diagnosed (check), 2 a mistake in the command or the config,
    3 blind (the Kubernetes API, the database or the healer's state cannot be read), 4 scheduler jobs and pods that
    cannot be paired (the healer would restart nothing: see the diagnosis)."""
    for noisy in ("urllib3", "kubernetes"):  # their retry and connection warnings are not the answer
        logging.getLogger(noisy).setLevel(logging.ERROR)
    action = args.action or "run"
    try:
        if action not in ("status", "check"):
            raise UserError(f"unknown heal action {action!r}")
        healer = build_from(args.config, read_only=True)
    except UserError as e:
        if getattr(args, "json", False):
            from monitor.redact import redact

            print(json.dumps({"error": redact(str(e)), "exit": EXIT["mistake"]}))
            return EXIT["mistake"]
        raise
    healer.cycle(apply=False)
    show(healer, args.json)
    return EXIT[verdict(healer, action == "check")]
