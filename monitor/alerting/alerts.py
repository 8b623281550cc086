"""What a producer of alerts (the SLA watcher, the healer, any future one) calls: open, update,
remind and resolve an alert by its Notice; each change and the notices that tell it are written in
one transaction of the AlertStore, then delivered from its outbox to every notifier, with retries.
The producer decides when; everything after that is here."""

from __future__ import annotations

import logging
import threading
import time

from monitor.alerting import Refused, Retry
from monitor.alerting.delivery import Delivery
from monitor.alerting.notice import Notice
from monitor.alerting.store import AlertRow, AlertStore

log = logging.getLogger(__name__)


CORRUPT_OPEN = 3600.0  # seconds the "corrupted record" page stays open


class Alerts:
    def __init__(self, store: AlertStore, notifiers: list, source: str = "airflow-monitor"):
        self.store, self.notifiers, self.source = store, notifiers, source
        self.delivery = Delivery(store, notifiers)
        self._corrupt_seen = 0
        self._corrupt_at = 0.0

    def clock(self) -> float:
        """The store's clock (the healer's state: the API server's), this process's otherwise."""
        return getattr(self.store, "clock", time.time)()

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.notifiers]

    def open(self, notice: Notice, now: float | None = None) -> bool:
        """Open the alert of notice.key and queue its notice, unless it is open already (True if opened)."""
        return self.store.open(notice.redacted(), self.names, self.clock() if now is None else now)

    def update(self, notice: Notice) -> None:
        """An alert still open whose reason or message changed: recorded, nobody paged."""
        self.store.update(*notice.key, notice.reason, notice.line)

    def remind(self, notice: Notice, now: float | None = None) -> None:
        self.store.remind(notice.redacted(), self.names, self.clock() if now is None else now)

    def resolve(self, notice: Notice, now: float | None = None) -> bool:
        """Close the alert of notice.key if it is open, and queue the close (True if it was open)."""
        return self.store.resolve(notice.redacted(), self.names, self.clock() if now is None else now)

    def open_alerts(self) -> dict[tuple[str, str], AlertRow]:
        return self.store.alerts("open")

    def deliver(self) -> int:
        """One pass over the outbox (a pass already under way in another thread makes this a no-op). A
        queued notice found unreadable (garbage inside one record) is set aside by the store as a dead
        letter and the rest is delivered; it is paged once, P3, and closed an hour later."""
        done = self.delivery.drain()
        corrupted = getattr(self.store, "corrupted", 0)
        now = self.clock()
        if corrupted > self._corrupt_seen:
            self._corrupt_seen, self._corrupt_at = corrupted, now
            self.open(self._corrupt_notice(corrupted), now)
        elif self._corrupt_at and now - self._corrupt_at > CORRUPT_OPEN:
            self._corrupt_at = 0.0
            self.resolve(self._corrupt_notice(corrupted).but(note="resolved: the rest of the outbox is delivered"),
                         now)
        return done

    def _corrupt_notice(self, n: int) -> Notice:
        from datetime import UTC, datetime

        what = self.store.WHAT
        return Notice(alias=f"{self.source}:{what.replace(' ', '-')}:corrupt-record", subject="_state",
                      rule="corrupt_record", reason="corrupt_record", priority="P3",
                      message=f"{n} queued notice(s) in the {what} were unreadable and set aside",
                      description=f"airflow-monitor found {n} record(s) of its outbox corrupted (garbage inside the "
                                  f"record) in the {what}. They are kept as dead letters (`status` lists them) and "
                                  "were not sent; everything else is delivered. A notice may be missing: check the "
                                  "open alerts in `status`.", tags=("airflow-monitor", "state"),
                      at=datetime.now(UTC).isoformat())


class DirectPage:
    """A page about the producer itself that cannot go through its state (the state file is broken, the API
    server that holds the state is out of reach): sent straight to each notifier, opened once and closed
    once per notifier, retried on the next call for a notifier that did not take it."""

    def __init__(self, notifiers: list, what: str):
        self.notifiers, self.what = notifiers, what
        self.paged: set[str] = set()  # notifiers that took the open
        self._lock = threading.Lock()

    def send(self, action: str, notice: Notice) -> None:
        """action: open or close."""
        notice = notice.redacted()
        with self._lock:
            for n in self.notifiers:
                if (n.name in self.paged) == (action == "open"):
                    continue
                try:
                    n.send(action, notice)
                except (Retry, Refused, OSError) as e:
                    log.warning("%s: %s of the %s page not delivered, tried again next cycle: %s", n.name, action,
                                self.what, e)
                    continue
                if action == "open":
                    self.paged.add(n.name)
                    log.error("%s: paged %s", self.what, n.name)
                else:
                    self.paged.discard(n.name)
