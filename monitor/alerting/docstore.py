"""The alert table and outbox of AlertStore, kept as one JSON document somewhere every replica can
read (for the healer: a ConfigMap beside its Lease), so that the next leader continues where the last
one stopped: the same open alerts (no second page; it resolves what the last leader opened), the
same undelivered notices, and a producer's own records (the healer's actions: its budget and the
checks of its restarts).

Every change is a read-modify-write of the whole document with compare-and-swap (the document's
version, a resourceVersion): a writer that lost the race (WriteConflict) reads again and applies
its change again. Reads come from the copy read last (`refresh()` once per cycle). Bounded: at
most OUTBOX_MAX undelivered notices (the oldest beyond are kept as dead letters, without their
text), DEAD_MAX dead letters, closed alerts and actions pruned like the SQLite store's.

A backend has read() -> (document, version) ({} and "" when there is none yet) and
write(document, version) -> new version, raising monitor.errors.WriteConflict on a stale version.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable

from monitor.alerting.notice import Notice
from monitor.alerting.store import AlertRow, OutboxItem
from monitor.errors import StoreError, WriteConflict
from monitor.redact import redact

OUTBOX_MAX = 200
DEAD_MAX = 50
FORMAT = 1


class MemoryDoc:
    """A backend in memory (tests, and a producer run without a cluster)."""

    def __init__(self):
        self.doc, self.version, self.writes = {}, "", 0
        self.lock = threading.Lock()

    def read(self) -> tuple[dict, str]:
        with self.lock:
            return copy.deepcopy(self.doc), self.version

    def write(self, doc: dict, version: str) -> str:
        with self.lock:
            if version != self.version:
                raise WriteConflict(f"version {version!r} is not the current {self.version!r}")
            self.doc, self.writes = copy.deepcopy(doc), self.writes + 1
            self.version = str(self.writes)
            return self.version


def _key(subject: str, rule: str) -> str:
    return f"{subject}\x00{rule}"


# what each record of the document holds (a document edited by hand, or by another program, is refused
# whole: StoreError, nothing read from it)
ALERT_FIELDS = ("subject", "rule", "status", "reason", "message", "priority", "opened_at", "notified_at")
OUTBOX_FIELDS = ("id", "notifier", "action", "subject", "rule", "payload", "created_at", "attempts", "next_at")


def _records(doc: dict, key: str, kind: type, fields: tuple[str, ...]) -> None:
    v = doc[key]
    if not isinstance(v, kind):
        raise ValueError(f"{key} is not a {'list' if kind is list else 'mapping'}")
    for r in v.values() if isinstance(v, dict) else v:
        if not isinstance(r, dict) or any(f not in r for f in fields):
            lacks = [f for f in fields if not isinstance(r, dict) or f not in r] or ["its fields"]
            raise ValueError(f"a record of {key} lacks {', '.join(lacks)}")


class DocAlertStore:
    WHAT = "state"
    clock = staticmethod(time.time)  # the clock of what it keeps (the healer's: the API server's)

    def __init__(self, backend, where: str = "", read_only: bool = False):
        self.backend, self.where, self.read_only = backend, where, read_only
        self.lock = threading.RLock()
        self.broken = ""
        self.doc: dict = self._shaped({})
        self.version = ""
        self.writes = 0
        self.refresh()

    # ------------------------------------------------------------------ the document
    def refresh(self) -> bool:
        """Read the document again (once a cycle, and before acting on it); False if it cannot be read."""
        try:
            doc, version = self.backend.read()
            doc = self._shaped(doc)
            self.check(doc)
        except StoreError as e:
            self.broken = f"{self.where}: {e}"
            return False
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            self.broken = f"{self.where}: not the shape of a {self.WHAT} ({e}); fix it or delete it to start afresh"
            return False
        with self.lock:
            self.doc, self.version, self.broken = doc, version, ""
        return True

    retry = refresh

    @staticmethod
    def _shaped(doc: dict) -> dict:
        if not isinstance(doc, dict):
            raise ValueError("the document is not a mapping")
        doc = dict(doc)
        doc.setdefault("format", FORMAT)
        for k, v in (("alerts", {}), ("outbox", []), ("dead", []), ("next_id", 1)):
            doc.setdefault(k, v)
        return doc

    def check(self, doc: dict) -> None:
        """ValueError when the document is not one this store wrote."""
        _records(doc, "alerts", dict, ALERT_FIELDS)
        _records(doc, "outbox", list, OUTBOX_FIELDS)
        _records(doc, "dead", list, ())
        if not isinstance(doc["next_id"], int) or isinstance(doc["next_id"], bool):
            raise ValueError("next_id is not a number")

    def fail(self, err: Exception) -> None:
        self.broken = f"{self.where}: {err}"

    def close(self) -> None:
        pass

    def change(self, fn: Callable[[dict], object]):
        """Apply fn to the document and write it (compare-and-swap; on a conflict, read and apply again).
        Returns what fn returned. Raises StoreError when it cannot be written."""
        if self.read_only:
            raise StoreError(f"{self.where}: read-only (status and check change nothing)")
        with self.lock:
            for _ in range(5):
                doc = copy.deepcopy(self.doc)
                out = fn(doc)
                try:
                    version = self.backend.write(doc, self.version)
                except WriteConflict:
                    if not self.refresh():
                        raise StoreError(self.broken) from None
                    continue
                except StoreError as e:
                    self.broken = f"{self.where}: {e}"
                    raise
                self.doc, self.version, self.broken = doc, version, ""
                self.writes += 1
                return out
            raise StoreError(f"{self.where}: five conflicting writes in a row")

    # ------------------------------------------------------------------ alerts
    def alerts(self, status: str | None = None) -> dict[tuple[str, str], AlertRow]:
        with self.lock:
            rows = list(self.doc.get("alerts", {}).values())
        return {(r["subject"], r["rule"]): AlertRow(r["subject"], r["rule"], r["status"], r["reason"], r["message"],
                                                    r["priority"], r["opened_at"], r.get("closed_at"),
                                                    r["notified_at"])
                for r in rows if status is None or r["status"] == status}

    def _queue(self, doc: dict, notice: Notice, action: str, notifiers: list[str], now: float) -> None:
        payload = notice.payload()
        for name in notifiers:
            doc["outbox"].append({"id": doc["next_id"], "notifier": name, "action": action, "subject": notice.subject,
                                  "rule": notice.rule, "payload": payload, "created_at": now, "attempts": 0,
                                  "next_at": now, "last_error": ""})
            doc["next_id"] += 1
        while len(doc["outbox"]) > OUTBOX_MAX:
            self._dead(doc, doc["outbox"].pop(0), "outbox full: dropped, oldest first")

    @staticmethod
    def _dead(doc: dict, item: dict, error: str) -> None:
        doc["dead"].append({k: item[k] for k in ("notifier", "action", "subject", "rule")} | {"last_error": error})
        del doc["dead"][:-DEAD_MAX]

    def open(self, notice: Notice, notifiers: list[str], now: float | None = None) -> bool:
        now = self.clock() if now is None else now

        def fn(doc: dict) -> bool:
            k = _key(*notice.key)
            cur = doc["alerts"].get(k)
            if cur and cur["status"] == "open":
                return False
            doc["alerts"][k] = {"subject": notice.subject, "rule": notice.rule, "status": "open",
                                "reason": notice.reason, "message": notice.line, "priority": notice.priority,
                                "opened_at": now, "closed_at": None, "notified_at": now}
            self._queue(doc, notice, "open", notifiers, now)
            return True

        with self.lock:
            cur = self.doc["alerts"].get(_key(*notice.key))
            if cur and cur["status"] == "open":  # no write for what is already open
                return False
            return self.change(fn)

    def update(self, subject: str, rule: str, reason: str, message: str) -> None:
        with self.lock:
            cur = self.doc["alerts"].get(_key(subject, rule))
            if not cur or cur["status"] != "open" or (cur["reason"], cur["message"]) == (reason, message):
                return

            def fn(doc: dict) -> None:
                a = doc["alerts"].get(_key(subject, rule))
                if a and a["status"] == "open":
                    a["reason"], a["message"] = reason, message

            self.change(fn)

    def remind(self, notice: Notice, notifiers: list[str], now: float | None = None) -> None:
        now = self.clock() if now is None else now

        def fn(doc: dict) -> None:
            a = doc["alerts"].get(_key(*notice.key))
            if a:
                a["notified_at"] = now
            self._queue(doc, notice, "remind", notifiers, now)

        self.change(fn)

    def resolve(self, notice: Notice, notifiers: list[str], now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        with self.lock:
            cur = self.doc["alerts"].get(_key(*notice.key))
            if not cur or cur["status"] != "open":
                return False

            def fn(doc: dict) -> bool:
                a = doc["alerts"].get(_key(*notice.key))
                if not a or a["status"] != "open":
                    return False
                a["status"], a["closed_at"] = "closed", now
                self._queue(doc, notice, "close", notifiers, now)
                return True

            return self.change(fn)

    # ------------------------------------------------------------------ outbox
    def pending(self, notifier: str, now: float | None = None, limit: int = 100) -> list[OutboxItem]:
        now = self.clock() if now is None else now
        with self.lock:
            items = [i for i in self.doc["outbox"] if i["notifier"] == notifier][:limit]
        if not items or items[0]["next_at"] > now:
            return []
        out = []
        for i in items:
            try:
                notice = Notice.from_payload(i["payload"])
            except (TypeError, ValueError, KeyError) as e:
                self.failed(i["id"], f"corrupted record ({type(e).__name__}): moved aside", None)
                continue
            out.append(OutboxItem(i["id"], i["notifier"], i["action"], i["subject"], i["rule"], notice,
                                  i["attempts"]))
        return out

    def delivered(self, item_id: int, now: float | None = None) -> None:
        self.change(lambda doc: doc.__setitem__("outbox", [i for i in doc["outbox"] if i["id"] != item_id]))

    def failed(self, item_id: int, error: str, retry_at: float | None) -> None:
        def fn(doc: dict) -> None:
            for n, i in enumerate(doc["outbox"]):
                if i["id"] == item_id:
                    if retry_at is None:
                        self._dead(doc, doc["outbox"].pop(n), redact(error)[:500])
                    else:
                        i["attempts"] += 1
                        i["last_error"], i["next_at"] = redact(error)[:500], retry_at
                    return

        self.change(fn)

    def backlog(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self.lock:
            for i in self.doc["outbox"]:
                out[i["notifier"]] = out.get(i["notifier"], 0) + 1
        return out

    def dead_letters(self) -> list[tuple[str, str, str, str, str]]:
        with self.lock:
            return [(d["notifier"], d["action"], d["subject"], d["rule"], d["last_error"]) for d in self.doc["dead"]]

    def prune(self, older_than: float) -> None:
        with self.lock:
            old = [k for k, a in self.doc["alerts"].items() if a["status"] == "closed"
                   and (a.get("closed_at") or 0) < older_than]
        if old:
            self.change(lambda doc: [doc["alerts"].pop(k, None) for k in old])

    def size(self) -> int:
        with self.lock:
            return len(json.dumps(self.doc))
