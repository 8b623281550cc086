"""`airflow-monitor serve`: build the bridge from config and run it."""

from __future__ import annotations

import dataclasses
import logging

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
        bridge.start()
    except (ConfigError, MappingError, OSError, ValueError) as e:
        raise UserError(str(e)) from None
    addrs = bridge.listeners.addresses
    log.info("statsd on %s; metrics on http://%s:%d/metrics", ", ".join(
        f"{k} {v}" for k, v in addrs.items()), cfg.web_listen.rpartition(":")[0] or "0.0.0.0", bridge.web_port)
    bridge.run()
    return 0
