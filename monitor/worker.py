"""Running a producer of alerts (the SLA watcher, the healer): its cycle and outbox on a schedule, and
(when it runs alone) an HTTP port with /metrics, /-/healthy and /-/ready. Both workers have
cfg.interval, cycle(), deliver(), problem() and state; the healer also close() (it hands its Lease
over). monitor.serve decides what runs where."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from monitor.errors import UserError

log = logging.getLogger("airflow_monitor")

DELIVERY_EVERY = 2.0  # seconds between outbox passes (each notice keeps its own backoff)
STALLED, STALLED_MIN = 3, 60.0  # a worker is stalled when no cycle completed for 3 intervals (at least 60 s)


class Schedule:
    """A worker's cycle every `interval` and its outbox every few seconds, in background threads:
    the SLA watcher's and the healer's (both have cfg.interval, cycle(), deliver() and state)."""

    def __init__(self, worker, name: str = "sla"):
        from apscheduler.schedulers.background import BackgroundScheduler

        self.worker, self.name = worker, name
        self._created = self._started = self._done = time.monotonic()
        self.scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
        self.scheduler.add_job(self._cycle, "interval", seconds=worker.cfg.interval, id=f"{name}-cycle",
                               next_run_time=datetime.now().astimezone())
        self.scheduler.add_job(self._deliver, "interval", seconds=DELIVERY_EVERY, id=f"{name}-delivery",
                               next_run_time=datetime.now().astimezone() + timedelta(seconds=DELIVERY_EVERY))
        self.scheduler.add_job(self._prune, "interval", hours=6, id=f"{name}-prune")

    def _cycle(self) -> None:
        self._started = time.monotonic()
        try:
            self.worker.cycle()
        except Exception:  # a bug must not stop the schedule; it is logged with its traceback
            log.exception("%s cycle failed", self.name)
        finally:
            self._done = time.monotonic()

    def stalled(self) -> str:
        """'' while cycles complete; else why not: no cycle has completed for STALLED intervals (at least
        STALLED_MIN seconds), for instance a call that hangs. /-/healthy fails on it (the kubelet restarts
        the process) and the healer's Lease stops renewing on it (a standby takes over)."""
        limit = max(STALLED * self.worker.cfg.interval, STALLED_MIN)
        last = max(self._done, self._created)
        if time.monotonic() - last <= limit:
            return ""
        running = f" (the current one started {time.monotonic() - self._started:.0f}s ago)" \
            if self._started > self._done else ""
        return f"{self.name}: no cycle completed for {time.monotonic() - last:.0f}s{running}"

    def _deliver(self) -> None:
        try:
            self.worker.deliver()
        except Exception:
            log.exception("%s delivery failed", self.name)

    def _prune(self) -> None:
        from monitor.alerting.store import STORE_ERRORS

        try:
            (getattr(self.worker, "prune", None) or self.worker.state.prune)(time.time() - 30 * 86400)
        except STORE_ERRORS:
            pass  # the cycle notices, says so and pages

    def start(self) -> None:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self.scheduler.start()

    def stop(self, started: bool = True) -> None:
        if started:
            self.scheduler.shutdown(wait=True)
        close = getattr(self.worker, "close", None)
        if close is not None:
            close()
        self.worker.state.close()


def start_web(listen: str, registry, ready, web_config: str | None, name: str, healthy=lambda: ""):
    """/metrics (the registry), /-/healthy and /-/ready (ready.problem()) on `listen`, in threads of the
    one HTTP layer (monitor.http)."""
    from monitor.http import server as http
    from monitor.http.app import HttpCollector, Service, registry_metrics
    from monitor.http.webconfig import WebConfigError

    service = Service(registry_metrics(registry), ready=ready.problem, healthy=healthy,
                      index=f"airflow-monitor {name}: /metrics /-/healthy /-/ready")
    try:
        server = http.serve(listen, service, web_config, name=f"{name}-web", probe_paths=service.probe_paths)
    except WebConfigError as e:
        raise UserError(str(e)) from None
    except (OSError, ValueError) as e:
        raise UserError(f"metrics listen address {listen}: {e}") from None
    registry.register(HttpCollector(f"airflow_monitor_{name}", server))
    host = http.parse_address(listen)[0]
    log.info("%s metrics on http%s://%s:%d/metrics", name, "s" if server.web and server.web.current.tls else "",
             host, server.port)
    return server
