"""`airflow-monitor serve`: build the bridge from config and run it."""

from __future__ import annotations

import dataclasses
import logging
import os

from monitor.config import BridgeConfig, ConfigError, load
from monitor.errors import UserError

log = logging.getLogger("airflow_monitor")


def serve(args) -> int:
    from monitor.bridge.mapper import MappingError
    from monitor.bridge.server import Bridge

    flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(BridgeConfig)}
    try:
        cfg = load(BridgeConfig, "bridge", args.config, flags)
        bridge = Bridge(cfg)
        bridge.start(log_level=str(getattr(args, "log_level", "INFO")).upper())
    except (ConfigError, MappingError, OSError, ValueError) as e:
        raise UserError(str(e)) from None
    schedules = []
    heal_config = getattr(args, "heal_config", None) or os.environ.get("AIRFLOW_MONITOR_HEAL_CONFIG")
    if heal_config:
        schedules.append(_start_healer(bridge, heal_config, getattr(args, "fresh_state", False)))
    sla_config = args.sla_config or os.environ.get("AIRFLOW_MONITOR_SLA_CONFIG")
    if sla_config:
        schedules.append(_start_watcher(bridge, sla_config, getattr(args, "fresh_state", False),
                                        schedules[0].worker.lease if schedules else None))
    addrs = bridge.listeners.addresses
    log.info("statsd on %s; metrics on http://%s:%d/metrics", ", ".join(
        f"{k} {v}" for k, v in addrs.items()), cfg.web_listen.rpartition(":")[0] or "0.0.0.0", bridge.web_port)
    try:
        bridge.run()
    finally:
        for schedule in reversed(schedules):
            schedule.stop()
    return 0


def _start_watcher(bridge, path: str, fresh_state: bool = False, lease=None):
    """The SLA watcher beside the bridge: its series are served on the bridge's /metrics."""
    from monitor.sla.command import load_config
    from monitor.sla.exposition import SLACollector
    from monitor.sla.service import build
    from monitor.sla.state import StateEmpty
    from monitor.worker import Schedule

    try:
        cfg = load_config(path)
        watcher = build(cfg, fresh_state)
    except StateEmpty as e:
        bridge.close()
        raise UserError(str(e)) from None
    except UserError:
        bridge.close()
        raise
    except Exception as e:
        bridge.close()
        raise UserError(f"cannot start the SLA watcher: {e}") from None
    watcher.lease = lease  # beside the healer: page only while it holds the Lease
    bridge.registry.register(SLACollector(watcher))
    bridge.sla_ready = watcher.problem
    schedule = Schedule(watcher)
    schedule.start()
    log.info("SLA watcher: every %.0fs, state in %s", cfg.interval, cfg.state_file)
    return schedule


def _start_healer(bridge, path: str, fresh_state: bool = False):
    """The healer beside the bridge: its series are served on the bridge's /metrics."""
    from monitor.heal.command import build_from
    from monitor.heal.exposition import HealCollector
    from monitor.worker import Schedule

    try:
        healer = build_from(path, fresh_state)
    except UserError:
        bridge.close()
        raise
    bridge.registry.register(HealCollector(healer))
    schedule = Schedule(healer, "heal")
    schedule.start()
    log.info("healer: %s, mode %s, every %.0fs", healer.where, healer.cfg.mode, healer.cfg.interval)
    return schedule
