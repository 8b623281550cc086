"""The product's composition root: what `airflow-monitor serve`, `sla run` and `heal run` start.

- `serve`: the statsd bridge, and beside it (one process, one /metrics) the SLA watcher and the
  healer when their configs are given; the watcher then shares the healer's Lease.
- `sla run` / `heal run [--sla-config]`: a producer of alerts (or two) on a schedule, with an HTTP
  port of its own (/metrics, /-/healthy, /-/ready).

Nothing below imports this module: the bridge builds only the bridge, the watcher and the healer are
producers of alerts that know nothing of each other; they meet here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading

from monitor.errors import UserError

log = logging.getLogger("airflow_monitor")


# ---------------------------------------------------------------------- the producers
def watcher_for(path: str, fresh_state: bool = False, lease=None, **over):
    """The SLA watcher and its collector; with a Lease (the healer's) it pages only while holding it."""
    from monitor.sla.command import build_from
    from monitor.sla.exposition import SLACollector

    watcher = build_from(path, fresh_state=fresh_state, **over)
    watcher.lease = lease
    return watcher, SLACollector(watcher)


def healer_for(path: str):
    from monitor.heal.command import build_from
    from monitor.heal.exposition import HealCollector

    healer = build_from(path)
    return healer, HealCollector(healer)


def watchdog(schedule, healer) -> None:
    """A healer's cycle that stops completing stops its Lease renewing (a standby takes over)."""
    if healer.lease is not None:
        healer.lease.healthy = lambda: not schedule.stalled()


# ---------------------------------------------------------------------- serve
def serve(args) -> int:
    from monitor.bridge.mapper import MappingError
    from monitor.bridge.server import Bridge
    from monitor.config import BridgeConfig, ConfigError, load
    from monitor.worker import Schedule

    flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(BridgeConfig)}
    try:
        cfg = load(BridgeConfig, "bridge", args.config, flags)
        bridge = Bridge(cfg)
        bridge.start(log_level=str(getattr(args, "log_level", "INFO")).upper())
    except OSError as e:  # "cannot listen on :9125 (udp): Address already in use", without "[Errno 98]"
        raise UserError(e.strerror if e.errno and e.strerror else str(e)) from None
    except (ConfigError, MappingError, ValueError) as e:
        raise UserError(str(e)) from None
    fresh = getattr(args, "fresh_state", False)
    schedules: list[Schedule] = []
    try:
        lease = None
        heal_config = getattr(args, "heal_config", None) or os.environ.get("AIRFLOW_MONITOR_HEAL_CONFIG")
        if heal_config:
            healer, collector = healer_for(heal_config)
            bridge.registry.register(collector)
            schedules.append(Schedule(healer, "heal"))
            watchdog(schedules[-1], healer)
            lease = healer.lease
            log.info("healer: %s, mode %s, every %.0fs", healer.where, healer.cfg.mode, healer.cfg.interval)
        sla_config = getattr(args, "sla_config", None) or os.environ.get("AIRFLOW_MONITOR_SLA_CONFIG")
        if sla_config:
            watcher, collector = watcher_for(sla_config, fresh, lease)
            bridge.registry.register(collector)
            bridge.sla_ready = watcher.problem  # /-/ready/sla, apart from the statsd Service's /-/ready
            schedules.append(Schedule(watcher))
            log.info("SLA watcher: every %.0fs, state in %s", watcher.cfg.interval, watcher.cfg.state_file)
    except BaseException:
        for schedule in schedules:
            schedule.stop(started=False)
        bridge.close()
        raise
    for schedule in schedules:
        schedule.start()
    addrs = bridge.listeners.addresses
    log.info("statsd on %s; metrics on http://%s:%d/metrics%s", ", ".join(
        f"{k} {v}" for k, v in addrs.items()), cfg.web_listen.rpartition(":")[0] or "0.0.0.0", bridge.web_port,
        f"; OTLP/HTTP on {cfg.otlp_listen.rpartition(':')[0] or '0.0.0.0'}:{bridge.otlp_port}/v1/metrics"
        if bridge.otlp_port else "")
    try:
        bridge.run()
    finally:
        for schedule in reversed(schedules):  # the healer (first) hands its Lease over last
            schedule.stop()
    return 0


# ---------------------------------------------------------------------- sla run, heal run
def sla_run(args) -> int:
    watcher, collector = watcher_for(args.config, getattr(args, "fresh_state", False),
                                     airflow_url=args.airflow_url, state_file=getattr(args, "state_file", None))
    log.info("SLA watcher: %d rule sets, every %.0fs, notifiers: %s", len(watcher.cfg.watches),
             watcher.cfg.interval, ", ".join(n.name for n in watcher.notifiers) or "none (metrics only)")
    return serve_alone([(watcher, collector, "sla")], args.metrics_listen or watcher.cfg.metrics_listen,
                       getattr(args, "web_config_file", None))


def heal_run(args) -> int:
    fresh = getattr(args, "fresh_state", False)
    healer, collector = healer_for(args.config)
    workers = [(healer, collector, "heal")]
    try:
        log.info("healer: %s, mode %s, every %.0fs, notifiers: %s", healer.where, healer.cfg.mode,
                 healer.cfg.interval, ", ".join(n.name for n in healer.notifiers) or "none (metrics and Events only)")
        if getattr(args, "sla_config", None):
            watcher, sla_collector = watcher_for(args.sla_config, fresh, healer.lease)
            log.info("SLA watcher beside the healer: every %.0fs, paging only while this replica holds the Lease",
                     watcher.cfg.interval)
            workers.append((watcher, sla_collector, "sla"))
    except BaseException:
        healer.close()
        raise
    listen = args.metrics_listen if args.metrics_listen is not None else healer.cfg.metrics_listen
    return serve_alone(workers, listen, getattr(args, "web_config_file", None))


class _Ready:
    """Several workers (the healer and the SLA watcher) behind one /-/ready: the first problem wins."""

    def __init__(self, workers: list):
        self.workers = workers

    def problem(self) -> str:
        return next((p for w in self.workers if (p := w.problem())), "")


def serve_alone(workers: list[tuple], listen: str, web_config: str | None = None) -> int:
    """Producers (worker, collector, name) on their schedules, with /metrics, /-/healthy and /-/ready on
    `listen` ('' for none), until SIGTERM or SIGINT. The first worker hands its Lease over last."""
    from prometheus_client import CollectorRegistry

    from monitor.worker import Schedule, start_web

    schedules = [Schedule(w, name) for w, _, name in workers]
    for schedule in schedules:
        if schedule.name == "heal":
            watchdog(schedule, schedule.worker)
    server = None
    if listen:
        registry = CollectorRegistry(auto_describe=False)
        for _, collector, _ in workers:
            registry.register(collector)
        server = start_web(listen, registry, _Ready([w for w, _, _ in workers]), web_config, workers[0][2],
                           healthy=lambda: next((why for s in schedules if (why := s.stalled())), ""))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for schedule in schedules:
        schedule.start()
    stop.wait()
    for schedule in reversed(schedules):
        schedule.stop()
    if server:
        server.shutdown()
    return 0
