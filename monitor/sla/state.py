"""The SLA watcher's state file: the alert table and outbox every producer has (monitor.alerting.store),
plus the DAGs the watcher has judged and since when (for the new-DAG grace)."""

from __future__ import annotations

from monitor.alerting.store import AlertStore

SEEN = """
CREATE TABLE IF NOT EXISTS seen (
    dag_id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL         -- when the watcher first judged it; 0: there at its first cycle
);
"""


class SLAState(AlertStore):
    EXTRA_SCHEMA = SEEN
    WHAT = "SLA state file"

    def first_seen(self, dag_ids: list[str], now: float, record: bool = True) -> dict[str, float]:
        """When each DAG was first seen; new ones are recorded (with `record`) as seen now, or
        as 0 (not new) on the watcher's very first cycle, so installing it starts no grace."""
        with self.lock:
            known = dict(self.db.execute("SELECT dag_id, first_seen FROM seen").fetchall())
            new = [d for d in dag_ids if d not in known]
            when = now if known else 0.0
            if new and record:
                self.db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", [(d, when) for d in new])
        return {d: known.get(d, when) for d in dag_ids}
