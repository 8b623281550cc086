"""A producer's notifications on /metrics: sent and failed per notifier, and its outbox backlog,
as `<prefix>_notifications_total` etc. (the SLA watcher's `airflow_monitor_sla_...`, the healer's
`airflow_monitor_heal_...`)."""

from __future__ import annotations

import sqlite3

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


def delivery_families(prefix: str, alerts):
    d = alerts.delivery
    sent = CounterMetricFamily(f"{prefix}_notifications", "Notices accepted by a notifier",
                               labels=["notifier", "action"])
    for (name, action), n in sorted(d.sent.items()):
        sent.add_metric([name, action], n)
    yield sent
    errs = CounterMetricFamily(f"{prefix}_notification_errors", "Failed delivery attempts", labels=["notifier"])
    for name, n in sorted(d.errors.items()):
        errs.add_metric([name], n)
    yield errs
    pending = GaugeMetricFamily(f"{prefix}_outbox_pending", "Notices waiting for delivery", labels=["notifier"])
    store = alerts.store
    try:
        backlog = None if store.broken else store.backlog()
    except sqlite3.Error:
        backlog = None  # the cycle says so (state_broken) and pages
    for n in alerts.notifiers if backlog is not None else ():
        pending.add_metric([n.name], backlog.get(n.name, 0))
    yield pending
