"""The bridge process: listeners -> ingest -> store -> /metrics, Datadog and relay.

HTTP: /metrics, /-/healthy, /-/ready, POST /-/reload. SIGHUP reloads the mapping file too;
an invalid file is reported and the old mapping stays in force.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from monitor.bridge.exposition import SelfCollector, StoreCollector
from monitor.bridge.ingest import Ingest
from monitor.bridge.listener import Listeners, parse_address
from monitor.bridge.mapper import (
    DEFAULT_BUCKETS,
    AirflowMapping,
    Mapper,
    MappingError,
    load_rules,
    parse_duration,
)
from monitor.bridge.store import Store
from monitor.config import BridgeConfig, ConfigError, read_secret

log = logging.getLogger(__name__)


class Bridge:
    def __init__(self, cfg: BridgeConfig):
        self.cfg = cfg
        self.buckets = tuple(sorted(cfg.buckets)) if cfg.buckets else DEFAULT_BUCKETS
        for name, allowed in (("airflow_tags", ("auto", "on", "off")), ("unmapped", ("export", "drop")),
                              ("datadog", ("none", "agent", "api"))):
            if getattr(cfg, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {getattr(cfg, name)!r}")
        try:
            ttl = parse_duration(cfg.ttl)
        except MappingError as e:
            raise ConfigError(f"ttl: {e}") from None
        self.store = Store(default_ttl=ttl, max_series_per_family=cfg.max_series_per_family)
        self.reloads: Counter[str] = Counter()
        self.sinks: list = []
        relay = None
        if cfg.relay:
            from monitor.bridge.relay import Relay

            try:
                relay = Relay(cfg.relay)
            except (ValueError, OSError) as e:
                raise ConfigError(f"relay: {e}") from None
            self.sinks.append(relay)
        self.ingest = Ingest(self._mapper(), self.store, airflow_tags=cfg.airflow_tags,
                             max_packet=cfg.max_packet, relay=relay)
        if cfg.datadog != "none":
            self.sinks.append(self._datadog())
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(self.store))
        self.registry.register(SelfCollector(self))
        self.listeners: Listeners | None = None
        self.http: ThreadingHTTPServer | None = None
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self.ready = False

    def _mapper(self) -> Mapper:
        rules = load_rules(self.cfg.mapping_file, self.buckets) if self.cfg.mapping_file else []
        return Mapper(rules, AirflowMapping(self.cfg.statsd_prefix, self.buckets), self.cfg.unmapped)

    def _datadog(self):
        from monitor.bridge.datadog import DatadogSink

        cfg = self.cfg
        key = read_secret(("AIRFLOW_MONITOR_DATADOG_API_KEY", "DD_API_KEY"), cfg.datadog_api_key_file)
        try:
            return DatadogSink(
                self.store, target=cfg.datadog, host=cfg.datadog_host, port=cfg.datadog_port,
                socket_path=cfg.datadog_socket or None, api_key=key,
                api_host=cfg.datadog_api_url or f"https://api.{cfg.datadog_site}",
                flush_interval=cfg.datadog_flush_interval, constant_tags=cfg.datadog_tags,
            )
        except ValueError as e:
            raise ConfigError(f"datadog: {e}") from None

    def reload(self) -> tuple[bool, str]:
        """Reload the mapping file; on error keep the current mapping."""
        try:
            mapper = self._mapper()
        except MappingError as e:
            self.reloads["failure"] += 1
            log.error("mapping reload failed, keeping the current mapping: %s", e)
            return False, str(e)
        self.ingest.reload(mapper)
        self.reloads["success"] += 1
        log.info("mapping reloaded: %d user rules", len(mapper.rules))
        return True, f"reloaded {len(mapper.rules)} rules"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        cfg = self.cfg
        self.listeners = Listeners(self.ingest, udp=cfg.statsd_udp or None, tcp=cfg.statsd_tcp or None,
                                   unix=cfg.statsd_unix or None, rcvbuf=cfg.udp_rcvbuf)
        host, port = parse_address(cfg.web_listen)
        try:
            self.http = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as e:
            self.listeners.close()
            raise OSError(e.errno, f"cannot listen on {cfg.web_listen} (http): {e.strerror}") from None
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, name="http", daemon=True).start()
        for sink in self.sinks:
            if hasattr(sink, "start"):
                sink.start()
        self.ready = True

    @property
    def web_port(self) -> int:
        return self.http.server_address[1]

    def run(self) -> None:
        """Serve until stop() or SIGTERM/SIGINT; SIGHUP reloads the mapping."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
            signal.signal(signal.SIGHUP, lambda *_: self._reload_requested.set())
        last = time.monotonic()
        while not self._stop.is_set():
            self.listeners.poll(0.2)
            now = time.monotonic()
            if now - last >= 1.0:
                self.ingest.housekeeping(now)
                last = now
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
        self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.ready = False
        for sink in self.sinks:
            sink.close()
        if self.http:
            self.http.shutdown()
            self.http.server_close()
        if self.listeners:
            self.listeners.close()


def _handler(bridge: Bridge):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # no access log on stderr
            pass

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(bridge.registry), ctype)
            elif path == "/-/healthy":
                self._send(200, b"OK\n")
            elif path == "/-/ready":
                ok = bridge.ready
                self._send(200 if ok else 503, b"OK\n" if ok else b"not ready\n")
            elif path == "/":
                self._send(200, b"airflow-monitor bridge: /metrics /-/healthy /-/ready POST /-/reload\n")
            else:
                self._send(404, b"not found\n")

        def do_POST(self):
            if self.path.split("?", 1)[0] == "/-/reload":
                ok, msg = bridge.reload()
                self._send(200 if ok else 500, (msg + "\n").encode())
            else:
                self._send(404, b"not found\n")

        do_PUT = do_POST

    return Handler
