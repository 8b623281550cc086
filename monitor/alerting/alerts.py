"""What a producer of alerts (the SLA watcher, the healer, any future one) calls: open, update,
remind and resolve an alert by its Notice; each change and the notices that tell it are written in
one transaction of the AlertStore, then delivered from its outbox to every notifier, with retries.
The producer decides when; everything after that is here."""

from __future__ import annotations

import logging
import time

from monitor.alerting.delivery import Delivery
from monitor.alerting.notice import Notice
from monitor.alerting.store import AlertRow, AlertStore

log = logging.getLogger(__name__)


class Alerts:
    def __init__(self, store: AlertStore, notifiers: list):
        self.store, self.notifiers = store, notifiers
        self.delivery = Delivery(store, notifiers)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.notifiers]

    def open(self, notice: Notice, now: float | None = None) -> bool:
        """Open the alert of notice.key and queue its notice, unless it is open already (True if opened)."""
        return self.store.open(notice, self.names, time.time() if now is None else now)

    def update(self, notice: Notice) -> None:
        """An alert still open whose reason or message changed: recorded, nobody paged."""
        self.store.update(*notice.key, notice.reason, notice.line)

    def remind(self, notice: Notice, now: float | None = None) -> None:
        self.store.remind(notice, self.names, time.time() if now is None else now)

    def resolve(self, notice: Notice, now: float | None = None) -> bool:
        """Close the alert of notice.key if it is open, and queue the close (True if it was open)."""
        return self.store.resolve(notice, self.names, time.time() if now is None else now)

    def open_alerts(self) -> dict[tuple[str, str], AlertRow]:
        return self.store.alerts("open")

    def deliver(self) -> int:
        """One pass over the outbox (a pass already under way in another thread makes this a no-op)."""
        return self.delivery.drain()
