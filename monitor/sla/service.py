"""Build a watcher from config and run it on a schedule (APScheduler), alone or beside the bridge."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from monitor.airflow.rest import AirflowRest
from monitor.sla.config import SLAConfig
from monitor.sla.state import State
from monitor.sla.watcher import Watcher

log = logging.getLogger(__name__)

DELIVERY_EVERY = 2.0  # seconds between outbox passes (each notice keeps its own backoff)


def notifiers(cfg: SLAConfig) -> list:
    out: list = []
    if cfg.opsgenie:
        from monitor.alerting.opsgenie import OpsGenieNotifier

        out.append(OpsGenieNotifier(cfg.opsgenie.url, cfg.opsgenie.api_key, cfg.opsgenie.source,
                                    cfg.opsgenie.heartbeat))
    if cfg.jsm:
        from monitor.alerting.jsm import JsmNotifier

        out.append(JsmNotifier(cfg.jsm.url, cfg.jsm.cloud_id, cfg.jsm.email, cfg.jsm.api_token, cfg.jsm.source))
    if cfg.datadog:
        from monitor.alerting.datadog import DatadogNotifier

        out.append(DatadogNotifier(cfg.datadog.api_url, cfg.datadog.api_key, cfg.datadog.service_check,
                                   cfg.datadog.tags))
    if cfg.webhook:
        from monitor.alerting.webhook import WebhookNotifier

        out.append(WebhookNotifier(cfg.webhook))
    return out


def build(cfg: SLAConfig, fresh_state: bool = False) -> Watcher:
    """Raises StateEmpty for a state file that lost its content (unless fresh_state)."""
    a = cfg.airflow
    rest = AirflowRest(a.url, a.username, a.password, a.token, a.timeout, a.verify_tls)
    return Watcher(cfg, rest, State(cfg.state_file, fresh=fresh_state), notifiers(cfg))


class Schedule:
    """A worker's cycle every `interval` and its outbox every few seconds, in background threads:
    the SLA watcher's and the healer's (both have cfg.interval, cycle(), deliver() and state)."""

    def __init__(self, worker, name: str = "sla"):
        from apscheduler.schedulers.background import BackgroundScheduler

        self.watcher, self.name = worker, name
        self.scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
        self.scheduler.add_job(self._cycle, "interval", seconds=worker.cfg.interval, id=f"{name}-cycle",
                               next_run_time=datetime.now().astimezone())
        self.scheduler.add_job(self._deliver, "interval", seconds=DELIVERY_EVERY, id=f"{name}-delivery",
                               next_run_time=datetime.now().astimezone() + timedelta(seconds=DELIVERY_EVERY))
        self.scheduler.add_job(self._prune, "interval", hours=6, id=f"{name}-prune")

    def _cycle(self) -> None:
        try:
            self.watcher.cycle()
        except Exception:  # a bug must not stop the schedule; it is logged with its traceback
            log.exception("%s cycle failed", self.name)

    def _deliver(self) -> None:
        try:
            self.watcher.deliver()
        except Exception:
            log.exception("%s delivery failed", self.name)

    def _prune(self) -> None:
        import sqlite3
        import time

        try:
            self.watcher.state.prune(time.time() - 30 * 86400)
        except sqlite3.Error:
            pass  # the cycle notices, says so and pages

    def start(self) -> None:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.shutdown(wait=True)
        close = getattr(self.watcher, "close", None)
        if close is not None:
            close()
        self.watcher.state.close()
