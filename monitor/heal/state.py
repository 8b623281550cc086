"""The healer's state: the alert table and outbox every producer has (monitor.alerting.store) plus the
actions taken, in one SQLite file, so that a restart of the healer neither forgets what it spent of a
budget nor pages again what it already paged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from monitor.alerting.store import AlertStore
from monitor.heal.budget import Action

ACTIONS = """
CREATE TABLE IF NOT EXISTS action (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    component TEXT NOT NULL,
    pod TEXT NOT NULL,
    rule TEXT NOT NULL,
    what TEXT NOT NULL,              -- delete pod/<name> | rollout Deployment/<name>
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    verify_by REAL NOT NULL,
    outcome TEXT NOT NULL,           -- pending | healed | failed | error
    detail TEXT NOT NULL DEFAULT '',
    done_at REAL
);
CREATE INDEX IF NOT EXISTS action_at ON action (at);
"""


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
    outcome: str
    detail: str
    done_at: float | None

    def budget_action(self) -> Action:
        return Action(self.component, self.at, self.outcome)


class HealState(AlertStore):
    EXTRA_SCHEMA = ACTIONS
    WHAT = "healer state file"

    def record(self, component: str, pod: str, rule: str, what: str, reason: str, verify_by: float,
               outcome: str = "pending", detail: str = "", now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self.lock:
            cur = self.db.execute(
                "INSERT INTO action (component, pod, rule, what, reason, at, verify_by, outcome, detail, done_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                (component, pod, rule, what, reason, now, verify_by, outcome, detail,
                 None if outcome == "pending" else now))
            return int(cur.lastrowid)

    def settle(self, action_id: int, outcome: str, detail: str, now: float | None = None) -> None:
        with self.lock:
            self.db.execute("UPDATE action SET outcome=?, detail=?, done_at=? WHERE id=? AND outcome='pending'",
                            (outcome, detail, time.time() if now is None else now, action_id))

    def actions(self, since: float = 0.0) -> list[ActionRow]:
        with self.lock:
            rows = self.db.execute("SELECT id, component, pod, rule, what, reason, at, verify_by, outcome, detail, "
                                   "done_at FROM action WHERE at >= ? ORDER BY id", (since,)).fetchall()
        return [ActionRow(*r) for r in rows]

    def prune(self, older_than: float) -> None:
        super().prune(older_than)
        with self.lock:
            self.db.execute("DELETE FROM action WHERE at < ? AND outcome != 'pending'", (older_than,))
