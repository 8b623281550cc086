"""Running a producer of alerts (the SLA watcher, the healer): its cycle and outbox on a schedule, and
(when it runs alone) an HTTP port with /metrics, /-/healthy and /-/ready. Both workers have
cfg.interval, cycle(), deliver(), problem() and state; the healer also close() (it hands its Lease
over). monitor.serve decides what runs where."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from monitor.errors import UserError

log = logging.getLogger("airflow_monitor")

DELIVERY_EVERY = 2.0  # seconds between outbox passes (each notice keeps its own backoff)


class Schedule:
    """A worker's cycle every `interval` and its outbox every few seconds, in background threads:
    the SLA watcher's and the healer's (both have cfg.interval, cycle(), deliver() and state)."""

    def __init__(self, worker, name: str = "sla"):
        from apscheduler.schedulers.background import BackgroundScheduler

        self.worker, self.name = worker, name
        self.scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
        self.scheduler.add_job(self._cycle, "interval", seconds=worker.cfg.interval, id=f"{name}-cycle",
                               next_run_time=datetime.now().astimezone())
        self.scheduler.add_job(self._deliver, "interval", seconds=DELIVERY_EVERY, id=f"{name}-delivery",
                               next_run_time=datetime.now().astimezone() + timedelta(seconds=DELIVERY_EVERY))
        self.scheduler.add_job(self._prune, "interval", hours=6, id=f"{name}-prune")

    def _cycle(self) -> None:
        try:
            self.worker.cycle()
        except Exception:  # a bug must not stop the schedule; it is logged with its traceback
            log.exception("%s cycle failed", self.name)

    def _deliver(self) -> None:
        try:
            self.worker.deliver()
        except Exception:
            log.exception("%s delivery failed", self.name)

    def _prune(self) -> None:
        import sqlite3
        import time

        try:
            self.worker.state.prune(time.time() - 30 * 86400)
        except sqlite3.Error:
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


def _web_app(watcher, registry, web=None):
    """/metrics, /-/healthy, and /-/ready: 503 with the reason while the worker cannot work; all
    behind the web config's basic auth when it has users, but for the probes' bare status."""
    from prometheus_client import make_wsgi_app

    from monitor import webconfig

    metrics = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        authed = web is None or web.get().allows(environ.get("HTTP_AUTHORIZATION"))
        if not authed and path not in webconfig.PROBE_PATHS:
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", 'Basic realm="airflow-monitor"')])
            return [b"Unauthorized\n"]
        if path in webconfig.PROBE_PATHS:
            why = "" if path == "/-/healthy" else watcher.problem()
            start_response("503 Service Unavailable" if why else "200 OK", [("Content-Type", "text/plain")])
            return [((why if authed else "not ready") if why else "OK").encode() + b"\n"]
        return metrics(environ, start_response)

    return app


def start_web(listen: str, registry, ready, web_config: str | None, name: str):
    """/metrics (the registry), /-/healthy and /-/ready (ready.problem()) on `listen`, in a thread."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer

    from monitor import webconfig
    from monitor.bridge.listener import parse_address

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):  # no access log
            pass

    try:
        web = webconfig.Watched(web_config) if web_config else None
    except (webconfig.WebConfigError, OSError) as e:
        raise UserError(str(e)) from None

    class Server(ThreadingWSGIServer):  # TLS from the web config, handshakes in the connection's thread
        def get_request(self):
            sock, addr = super().get_request()
            return webconfig.wrap(web, sock), addr

        def finish_request(self, request, client_address):
            if webconfig.handshake(request, 30.0):
                super().finish_request(request, client_address)

    try:
        host, port = parse_address(listen)
        server = make_server(host or "0.0.0.0", port, _web_app(ready, registry, web), Server, handler_class=Quiet)
    except (OSError, ValueError) as e:
        raise UserError(f"metrics listen address {listen}: {e}") from None
    threading.Thread(target=server.serve_forever, name=f"{name}-web", daemon=True).start()
    log.info("%s metrics on http://%s:%d/metrics", name, host or "0.0.0.0", server.server_port)
    return server
