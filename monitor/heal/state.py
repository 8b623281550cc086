"""The healer's state, in the cluster: the alert table and outbox every producer has (as a document,
monitor.alerting.docstore) plus the actions taken (what the budget has spent, and the restarts still
being checked), in one ConfigMap beside the Lease. So after a failover, an eviction or a drain the
new leader has the same budget, pages nothing a second time and resolves what the last one opened.

A healer of airflow-monitor 0.1.0 kept this in a SQLite file (`healer.state_file`); `import_file`
brings its open alerts, undelivered notices and recent actions over once, into an empty state.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from monitor.alerting.docstore import DocAlertStore
from monitor.heal.budget import Action

log = logging.getLogger(__name__)


@dataclass
class ActionRow:
    id: int
    component: str
    pod: str
    rule: str
    what: str
    reason: str
    at: float
    verify_by: float
    outcome: str  # pending | healed | failed | error
    detail: str
    done_at: float | None
    uid: str = ""  # the uid of the pod restarted: healed means a pod with another uid ...
    before: str = ""  # ... and not one of these (the component's pods' uids at the time, comma separated)

    def budget_action(self) -> Action:
        return Action(self.component, self.at, self.outcome)


class HealState(DocAlertStore):
    WHAT = "healer state"

    def record(self, component: str, pod: str, rule: str, what: str, reason: str, verify_by: float,
               outcome: str = "pending", detail: str = "", now: float | None = None, uid: str = "",
               before: tuple[str, ...] = ()) -> int:
        now = self.clock() if now is None else now

        def fn(doc: dict) -> int:
            acts = doc.setdefault("actions", [])
            n = doc.setdefault("next_action", 1)
            doc["next_action"] = n + 1
            acts.append(asdict(ActionRow(n, component, pod, rule, what, reason, now, verify_by, outcome, detail,
                                         None if outcome == "pending" else now, uid, ",".join(before))))
            return n

        return self.change(fn)

    def settle(self, action_id: int, outcome: str, detail: str, now: float | None = None) -> None:
        now = self.clock() if now is None else now

        def fn(doc: dict) -> None:
            for a in doc.get("actions", []):
                if a["id"] == action_id and a["outcome"] == "pending":
                    a.update(outcome=outcome, detail=detail, done_at=now)

        self.change(fn)

    def check(self, doc: dict) -> None:
        super().check(doc)
        acts = doc.get("actions", [])
        if not isinstance(acts, list):
            raise ValueError("actions is not a list")
        need = [f for f, d in ActionRow.__dataclass_fields__.items() if d.default is dataclasses.MISSING]
        for a in acts:
            if not isinstance(a, dict) or any(f not in a for f in need):
                raise ValueError("an action lacks its fields")
            if not isinstance(a["at"], int | float) or not isinstance(a["verify_by"], int | float):
                raise ValueError("an action's times are not numbers")

    def actions(self, since: float = 0.0) -> list[ActionRow]:
        with self.lock:
            known = set(ActionRow.__dataclass_fields__)
            rows = [ActionRow(**{k: v for k, v in a.items() if k in known}) for a in self.doc.get("actions", [])
                    if a["at"] >= since]
        return sorted(rows, key=lambda a: a.id)

    def prune(self, older_than: float) -> None:
        super().prune(older_than)
        with self.lock:
            old = [a["id"] for a in self.doc.get("actions", []) if a["at"] < older_than and a["outcome"] != "pending"]
        if old:
            gone = set(old)
            self.change(lambda doc: doc.__setitem__("actions", [a for a in doc.get("actions", [])
                                                                 if a["id"] not in gone]))


def import_file(path: str, state: HealState, notifiers: list[str]) -> bool:
    """Bring a 0.1.0 healer state file over into an empty state (once): open alerts, undelivered
    notices, actions of the last day. True if something was imported."""
    p = Path(path).expanduser()
    if not p.is_file() or p.stat().st_size == 0 or state.doc.get("alerts") or state.doc.get("actions"):
        return False
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        alerts = db.execute("SELECT dag_id, rule, status, reason, message, priority, opened_at, closed_at, "
                            "notified_at FROM alert WHERE status='open'").fetchall()
        outbox = db.execute("SELECT notifier, action, dag_id, rule, payload, created_at, attempts, next_at, "
                            "last_error FROM outbox WHERE done_at IS NULL ORDER BY id").fetchall()
        actions = db.execute("SELECT component, pod, rule, what, reason, at, verify_by, outcome, detail, done_at "
                             "FROM action WHERE at >= ? ORDER BY id", (time.time() - 86400,)).fetchall()
        db.close()
    except sqlite3.Error as e:
        log.warning("healer: the old state file %s cannot be read, not imported: %s", p, e)
        return False
    if not (alerts or outbox or actions):
        return False
    import json

    def fn(doc: dict) -> None:
        if doc.get("alerts") or doc.get("actions"):
            return  # another replica imported it first (this write was a retry after a conflict)
        for r in alerts:
            doc["alerts"][f"{r[0]}\x00{r[1]}"] = dict(zip(("subject", "rule", "status", "reason", "message", "priority",
                                                           "opened_at", "closed_at", "notified_at"), r, strict=True))
        for r in outbox:
            if r[0] not in notifiers:
                continue
            doc["outbox"].append({"id": doc["next_id"], "notifier": r[0], "action": r[1], "subject": r[2],
                                  "rule": r[3], "payload": json.loads(r[4]), "created_at": r[5], "attempts": r[6],
                                  "next_at": r[7], "last_error": r[8]})
            doc["next_id"] += 1
        acts = doc.setdefault("actions", [])
        for r in actions:
            n = doc.setdefault("next_action", 1)
            doc["next_action"] = n + 1
            acts.append(asdict(ActionRow(n, *r)))

    state.change(fn)
    log.info("healer: imported %d open alert(s), %d notice(s) and %d action(s) from %s into the cluster", len(alerts),
             len(outbox), len(actions), p)
    return True
