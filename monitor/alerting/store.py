"""Alert state and the notification outbox, in one embedded SQLite file (for every producer of
alerts: the SLA watcher's file, the healer's; each adds its own tables through EXTRA_SCHEMA).

An alert is keyed by (subject, rule): a DAG, a pod or a component, and the rule it breaks (the
column keeps its 0.1.0 name, dag_id, so that a state file written by an installed version opens).
Opening or closing it and queueing the notifications that say so happen in one transaction, so a
crash or restart can neither page twice nor forget to page: the outbox is drained by the delivery
loop until each notifier accepted. Delivery is at least once: a crash after a notifier accepted a
notice and before that was recorded sends it again, with the same alias, which every notifier
dedupes on.

A state file that cannot be used (a corrupted page, an unreadable disk) makes every operation
raise sqlite3.Error; `broken` then says why, and `retry()` opens the file afresh (after an
operator repaired or removed it). A file that existed and is now empty is refused at start
(StateEmpty): starting afresh would page every open alert again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from monitor.alerting.notice import Notice
from monitor.errors import StoreError
from monitor.redact import redact

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS alert (
    dag_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    status TEXT NOT NULL,            -- open | closed
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    priority TEXT NOT NULL,
    opened_at REAL NOT NULL,
    closed_at REAL,
    notified_at REAL NOT NULL,
    PRIMARY KEY (dag_id, rule)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    notifier TEXT NOT NULL,
    action TEXT NOT NULL,            -- open | close | remind
    dag_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    payload TEXT NOT NULL,           -- JSON: the Notice
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    done_at REAL,
    dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (notifier, done_at, id);
"""


@dataclass
class AlertRow:
    subject: str
    rule: str
    status: str
    reason: str
    message: str
    priority: str
    opened_at: float
    closed_at: float | None
    notified_at: float


@dataclass
class OutboxItem:
    id: int
    notifier: str
    action: str
    subject: str
    rule: str
    notice: Notice
    attempts: int


STORE_ERRORS = (sqlite3.Error, StoreError)  # what a store's operations raise when the state cannot be used


class StateEmpty(Exception):
    """The state file exists and is empty: refuse to start unless told to start fresh."""


class _Broken:
    """Stands in for the connection while the file cannot be used: every use raises."""

    def __init__(self, why: str):
        self.why = why

    def execute(self, *_a, **_k):
        raise sqlite3.DatabaseError(self.why)

    executemany = executescript = execute

    def close(self) -> None:
        pass


class AlertStore:
    EXTRA_SCHEMA = ""  # a producer's own tables (the SLA watcher's DAGs seen, the healer's actions)
    WHAT = "state file"

    def __init__(self, path: str, fresh: bool = False, read_only: bool = False):
        """read_only: a look that changes nothing (`sla check`, `sla status`): an existing file is opened
        read-only, and a missing one is neither created nor its directories made (an empty state is read)."""
        self.path = path
        self.read_only = read_only
        if path != ":memory:":
            p = Path(path).expanduser()
            if p.is_file() and p.stat().st_size == 0 and not fresh:
                raise StateEmpty(f"{self.WHAT} {p} is empty: it had the open alerts, and starting afresh "
                                 "would page every one of them again; restore it, or pass --fresh-state to "
                                 "start with no alerts")
            if read_only and not (p.is_file() and p.stat().st_size):
                self.path = ":memory:"
            elif not read_only:
                p.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.corrupted = 0  # outbox records found unreadable and moved aside
        self.broken = ""  # why the file cannot be used; "" while it can
        self.db = _Broken("not opened")
        self.retry()

    def retry(self) -> bool:
        """(Re)open the file and check it; True if it can be used."""
        with self.lock:
            self.db.close()
            try:
                if self.read_only and self.path != ":memory:":  # written by nobody here
                    self.db = sqlite3.connect(f"{Path(self.path).expanduser().resolve().as_uri()}?mode=ro", uri=True,
                                              check_same_thread=False, isolation_level=None, timeout=10)
                else:
                    self.db = sqlite3.connect(str(Path(self.path).expanduser()) if self.path != ":memory:"
                                              else self.path, check_same_thread=False, isolation_level=None,
                                              timeout=10)
                    self.db.execute("PRAGMA journal_mode=WAL")
                    self.db.executescript(SCHEMA + self.EXTRA_SCHEMA)
                check = self.db.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(f"integrity check: {check}")
            except sqlite3.Error as e:
                self._fail(e)
                return False
            self.broken = ""
            return True

    def fail(self, err: Exception) -> None:
        """An operation raised sqlite3.Error: the file is not used until retry() succeeds."""
        with self.lock:
            self._fail(err)

    def _fail(self, err: Exception) -> None:
        try:
            self.db.close()
        except sqlite3.Error:
            pass
        self.broken = f"{self.path}: {err}"
        self.db = _Broken(self.broken)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self):
        """One write transaction under the lock; rolled back on any error."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            self.db.execute("COMMIT")

    # ------------------------------------------------------------------ alerts
    def alerts(self, status: str | None = None) -> dict[tuple[str, str], AlertRow]:
        q = "SELECT dag_id, rule, status, reason, message, priority, opened_at, closed_at, notified_at FROM alert"
        args: tuple = ()
        if status:
            q, args = q + " WHERE status = ?", (status,)
        with self.lock:
            rows = self.db.execute(q, args).fetchall()
        return {(r[0], r[1]): AlertRow(*r) for r in rows}

    def open(self, notice: Notice, notifiers: list[str], now: float | None = None) -> bool:
        """Open an alert and queue its notice for each notifier, unless it is open already. True if opened."""
        now = time.time() if now is None else now
        (dag_id, rule), reason, message, priority = notice.key, notice.reason, notice.line, notice.priority
        with self._tx() as db:
            row = db.execute("SELECT status FROM alert WHERE dag_id=? AND rule=?", (dag_id, rule)).fetchone()
            if row and row[0] == "open":
                return False
            db.execute(
                "INSERT INTO alert VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(dag_id, rule) DO UPDATE SET "
                "status='open', reason=excluded.reason, message=excluded.message, priority=excluded.priority, "
                "opened_at=excluded.opened_at, closed_at=NULL, notified_at=excluded.notified_at",
                (dag_id, rule, "open", reason, message, priority, now, None, now))
            self._queue(notice, "open", notifiers, now)
            return True

    def update(self, subject: str, rule: str, reason: str, message: str) -> None:
        """A still-open alert whose reason changed: record it, page nobody."""
        with self.lock:
            self.db.execute("UPDATE alert SET reason=?, message=? WHERE dag_id=? AND rule=? AND status='open'",
                            (reason, message, subject, rule))

    def remind(self, notice: Notice, notifiers: list[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("UPDATE alert SET notified_at=? WHERE dag_id=? AND rule=?", (now, *notice.key))
            self._queue(notice, "remind", notifiers, now)

    def resolve(self, notice: Notice, notifiers: list[str], now: float | None = None) -> bool:
        """Close an open alert and queue the close for each notifier. True if it was open."""
        now = time.time() if now is None else now
        with self._tx() as db:
            cur = db.execute("UPDATE alert SET status='closed', closed_at=? WHERE dag_id=? AND rule=? "
                             "AND status='open'", (now, *notice.key))
            if cur.rowcount:
                self._queue(notice, "close", notifiers, now)
            return bool(cur.rowcount)

    def _queue(self, notice: Notice, action: str, notifiers: list[str], now: float) -> None:
        payload = json.dumps(notice.payload())
        self.db.executemany(
            "INSERT INTO outbox (notifier, action, dag_id, rule, payload, created_at, next_at) VALUES (?,?,?,?,?,?,?)",
            [(name, action, *notice.key, payload, now, now) for name in notifiers])

    # ------------------------------------------------------------------ outbox
    def pending(self, notifier: str, now: float | None = None, limit: int = 100) -> list[OutboxItem]:
        """Undelivered items of one notifier in order, if the oldest is due (order is kept)."""
        now = time.time() if now is None else now
        with self.lock:
            rows = self.db.execute(
                "SELECT id, notifier, action, dag_id, rule, payload, attempts, next_at FROM outbox "
                "WHERE notifier=? AND done_at IS NULL ORDER BY id LIMIT ?", (notifier, limit)).fetchall()
        if not rows or rows[0][7] > now:
            return []
        out = []
        for r in rows:
            try:
                notice = Notice.from_payload(json.loads(r[5]))
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                # garbage inside one record (a torn write, a bad disk): moved aside, the rest delivered
                self.corrupted += 1
                self.failed(r[0], f"corrupted record ({type(e).__name__}): moved aside, not sent", None)
                log.error("%s: outbox record %d (%s %s/%s) is corrupted; kept as a dead letter, the rest is "
                          "delivered", self.WHAT, r[0], r[2], r[3], r[4])
                continue
            out.append(OutboxItem(r[0], r[1], r[2], r[3], r[4], notice, r[6]))
        return out

    def delivered(self, item_id: int, now: float | None = None) -> None:
        with self.lock:
            self.db.execute("UPDATE outbox SET done_at=?, attempts=attempts+1, last_error='' WHERE id=?",
                            (time.time() if now is None else now, item_id))

    def failed(self, item_id: int, error: str, retry_at: float | None) -> None:
        """A failed attempt; retry_at None means the notifier refused it for good (kept, marked dead)."""
        with self.lock:
            if retry_at is None:
                self.db.execute("UPDATE outbox SET attempts=attempts+1, last_error=?, dead=1, done_at=? WHERE id=?",
                                (redact(error)[:500], time.time(), item_id))
            else:
                self.db.execute("UPDATE outbox SET attempts=attempts+1, last_error=?, next_at=? WHERE id=?",
                                (redact(error)[:500], retry_at, item_id))

    def backlog(self) -> dict[str, int]:
        with self.lock:
            rows = self.db.execute("SELECT notifier, count(*) FROM outbox WHERE done_at IS NULL GROUP BY notifier")
            return dict(rows.fetchall())

    def dead_letters(self) -> list[tuple[str, str, str, str, str]]:
        with self.lock:
            return self.db.execute("SELECT notifier, action, dag_id, rule, last_error FROM outbox WHERE dead=1 "
                                   "ORDER BY id").fetchall()

    def prune(self, older_than: float) -> None:
        """Forget delivered items and closed alerts older than a timestamp."""
        with self.lock:
            self.db.execute("DELETE FROM outbox WHERE done_at IS NOT NULL AND dead=0 AND done_at < ?", (older_than,))
            self.db.execute("DELETE FROM alert WHERE status='closed' AND closed_at < ?", (older_than,))
