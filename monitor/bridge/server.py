"""The bridge process: listeners -> ingest -> store -> /metrics (web process), Datadog and relay.

This process reads the sockets and writes the store; a separate web process (web.py, fed by
publisher.py) serves HTTP: /metrics, /-/healthy, /-/ready, POST /-/reload, and the OTLP port
(POST /v1/metrics, decoded there and applied here: otlp.py, otlpmap.py). SIGHUP reloads the
mapping file too; an invalid file is reported and the old mapping stays in force.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest

from monitor.bridge.exposition import SelfCollector
from monitor.bridge.ingest import Ingest
from monitor.bridge.listener import Listeners, bind
from monitor.bridge.mapper import (
    DEFAULT_BUCKETS,
    AirflowMapping,
    Mapper,
    MappingError,
    load_rules,
    native_spec,
    parse_duration,
)
from monitor.bridge.publisher import WebProcess
from monitor.bridge.store import Store
from monitor.config import BridgeConfig, ConfigError, read_secret

log = logging.getLogger(__name__)


class Bridge:
    def __init__(self, cfg: BridgeConfig):
        self.cfg = cfg
        self.buckets = tuple(sorted(cfg.buckets)) if cfg.buckets else DEFAULT_BUCKETS
        for name, allowed in (("airflow_tags", ("auto", "on", "off")), ("unmapped", ("export", "drop")),
                              ("datadog", ("none", "agent", "api")), ("dogstatsd_timer_unit", ("auto", "s", "ms"))):
            if getattr(cfg, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {getattr(cfg, name)!r}")
        if cfg.web_config_file:  # its one-line errors here, before anything listens
            from monitor.http.webconfig import load as load_web_config

            load_web_config(cfg.web_config_file)
        try:
            ttl = parse_duration(cfg.ttl)
        except MappingError as e:
            raise ConfigError(f"ttl: {e}") from None
        try:
            self.tcp_idle_timeout = parse_duration(cfg.statsd_tcp_idle_timeout)
        except MappingError as e:
            raise ConfigError(f"statsd_tcp_idle_timeout: {e}") from None
        try:
            self.unix_mode = int(str(cfg.statsd_unix_mode), 8)
            if not 0 <= self.unix_mode <= 0o777:
                raise ValueError
        except ValueError:
            raise ConfigError(f"statsd_unix_mode must be octal permissions like 755, not {cfg.statsd_unix_mode!r}")\
                from None
        self.native, self.classic = _histogram_settings(cfg)
        if not self.classic:
            self.buckets = ()
        self.otlp_args: tuple[str, ...] = ()
        if cfg.otlp_listen:
            try:
                self.otlp_stream_ttl = parse_duration(cfg.otlp_stream_ttl)
            except MappingError as e:
                raise ConfigError(f"otlp_stream_ttl: {e}") from None
            for name in ("otlp_max_body", "otlp_max_points", "otlp_max_attributes"):
                if getattr(cfg, name) < 1:
                    raise ConfigError(f"{name} must be at least 1, not {getattr(cfg, name)}")
            self.otlp_args = ("--otlp-max-body", str(cfg.otlp_max_body), "--otlp-max-points",
                              str(cfg.otlp_max_points), "--otlp-max-attributes", str(cfg.otlp_max_attributes))
        self.store = Store(default_ttl=ttl, max_series_per_family=cfg.max_series_per_family,
                           max_series=cfg.max_series, max_label_bytes=cfg.max_label_bytes,
                           max_series_label_bytes=cfg.max_series_label_bytes)
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
                             dogstatsd_timer_unit=cfg.dogstatsd_timer_unit,
                             max_packet=cfg.max_packet, cache_bytes=cfg.cache_bytes, relay=relay)
        self.otlp = None
        if cfg.otlp_listen:
            from monitor.bridge.otlpmap import OtlpIngest

            self.otlp = OtlpIngest(self.ingest, stream_ttl=self.otlp_stream_ttl)
        if cfg.datadog != "none":
            sink = self._datadog()
            sink.attach(self.ingest)
            self.sinks.append(sink)
        # what only this process knows (its own health, the SLA watcher's series); the store's
        # series are rendered by the web process
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SelfCollector(self))
        self.listeners: Listeners | None = None
        self.web: WebProcess | None = None
        self.http_sock: socket.socket | None = None
        self.otlp_sock: socket.socket | None = None
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._reload_lock = threading.Lock()
        self._next_mapper: tuple | None = None  # (mapper, done): built by reload(), swapped in by run()
        self._running = False
        self._loop: threading.Thread | None = None
        self._loop_errors: Counter[str] = Counter()
        self.ready = False
        self.sla_ready = lambda: None  # the SLA watcher beside the bridge sets it: "" ready, else why not

    def _mapper(self) -> Mapper:
        rules = load_rules(self.cfg.mapping_file, self.buckets, self.native) if self.cfg.mapping_file else []
        return Mapper(rules, AirflowMapping(self.cfg.statsd_prefix, self.buckets, self.native), self.cfg.unmapped)

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
                hostname=cfg.datadog_hostname or None,
            )
        except ValueError as e:
            raise ConfigError(f"datadog: {e}") from None

    def reload(self) -> tuple[bool, str]:
        """Reload the mapping file (SIGHUP, POST /-/reload). The new mapper is built in the calling
        thread, never the ingest loop's (SIGHUP starts a thread for it), within the loader's bounds;
        the ingest loop swaps it in between two batches. Any failure, of any kind, keeps the running
        mapping, is counted and logged in one line, and is the answer's text."""
        with self._reload_lock:
            try:
                mapper = self._mapper()
            except MappingError as e:
                return self._reload_failed(str(e))
            except Exception as e:  # RecursionError, MemoryError...: said, never raised
                return self._reload_failed(f"mapping file {self.cfg.mapping_file} cannot be loaded: "
                                           f"{type(e).__name__}")
            if not self._swap(mapper):
                return self._reload_failed("the ingest loop did not take the new mapping within 10s")
            self.reloads["success"] += 1
            log.info("mapping reloaded: %d user rules", len(mapper.rules))
            return True, f"reloaded {len(mapper.rules)} rules"

    def _reload_failed(self, why: str) -> tuple[bool, str]:
        why = why.replace("\n", " ")[:2000]
        self.reloads["failure"] += 1
        log.error("mapping reload failed, keeping the current mapping: %s", why)
        return False, why

    def _swap(self, mapper: Mapper) -> bool:
        """Hand the mapper to the ingest loop and wait until it is in force (directly when no loop runs)."""
        if not self._running or threading.current_thread() is self._loop:
            self.ingest.reload(mapper)
            return True
        done = threading.Event()
        self._next_mapper = (mapper, done)
        if done.wait(10.0):
            return True
        self._next_mapper = None
        return done.is_set()

    # ------------------------------------------------------------------ lifecycle
    def start(self, log_level: str = "INFO") -> None:
        cfg = self.cfg
        self.http_sock = _listen_http(cfg.web_listen)
        if cfg.otlp_listen:
            try:
                self.otlp_sock = _listen_http(cfg.otlp_listen, "otlp")
            except OSError:
                self.http_sock.close()
                raise
        self.web = WebProcess(self.store, self.http_sock, metrics=lambda: generate_latest(self.registry).decode(),
                              ready=lambda: self.ready, reload=self.reload, sla_ready=lambda: self.sla_ready(),
                              log_level=log_level, lifecycle=cfg.web_enable_lifecycle,
                              web_config=cfg.web_config_file, otlp_sock=self.otlp_sock, otlp=self.otlp,
                              otlp_args=self.otlp_args,
                              dropped=lambda: json.dumps(self.ingest.recent_dropped()))
        try:
            self.listeners = Listeners(self.ingest, udp=cfg.statsd_udp or None, tcp=cfg.statsd_tcp or None,
                                       unix=cfg.statsd_unix or None, rcvbuf=cfg.udp_rcvbuf, unix_mode=self.unix_mode,
                                       idle_timeout=self.tcp_idle_timeout)
        except OSError:
            self.http_sock.close()
            if self.otlp_sock is not None:
                self.otlp_sock.close()
            raise
        self.web.start()
        for sink in self.sinks:
            if hasattr(sink, "start"):
                sink.start()
        # other threads here (control answers, Datadog, the SLA watcher) must give the GIL back
        # to the socket reader fast: a small receive buffer holds only milliseconds of traffic
        sys.setswitchinterval(0.001)
        # what exists now (modules, config, mapper) lives as long as the process: keep it out of
        # the cyclic GC's full passes, whose pauses a small receive buffer cannot absorb
        gc.collect()
        gc.freeze()
        self.ready = True

    @property
    def web_port(self) -> int:
        return self.http_sock.getsockname()[1]

    @property
    def otlp_port(self) -> int | None:
        return self.otlp_sock.getsockname()[1] if self.otlp_sock is not None else None

    def run(self) -> None:
        """Serve until stop() or SIGTERM/SIGINT; SIGHUP reloads the mapping."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
            signal.signal(signal.SIGHUP, lambda *_: self._reload_requested.set())
        last = time.monotonic()
        poll, pump, otlp_step = self.listeners.poll, self.web.pump, self.web.otlp_step
        watched = None  # the OTLP channel the poll wakes for (a new one with each web process)
        more = False
        self._loop, self._running = threading.current_thread(), True
        try:
            while not self._stop.is_set():
                try:
                    channel = self.web.otlp_pump
                    if channel is not None and channel.closed:  # the web process is gone: check() restarts it
                        channel = None
                    if channel is not watched:
                        if watched is not None:
                            self.listeners.watch(watched.fd, None)
                        if channel is not None:
                            self.listeners.watch(channel.fd, lambda: None)  # wakes the poll; read below
                        watched = channel
                    poll(0.0 if more else 0.2)
                    pump()
                    more = otlp_step()
                    now = time.monotonic()
                    if now - last >= 1.0:
                        last = now
                        freed = self.ingest.housekeeping(now)
                        if self.otlp is not None:
                            self.otlp.housekeeping(now, freed)
                        self.web.check()
                    if self._next_mapper is not None:  # built by reload() in another thread
                        (mapper, done), self._next_mapper = self._next_mapper, None
                        self.ingest.reload(mapper)
                        done.set()
                    if self._reload_requested.is_set():
                        self._reload_requested.clear()
                        threading.Thread(target=self.reload, name="mapping-reload", daemon=True).start()
                except Exception as e:  # a defect costs a log line and a count, never the process
                    self._loop_error(e)
        finally:
            self._running = False
            self.close()

    def _loop_error(self, e: Exception) -> None:
        kind = type(e).__name__
        if not self._loop_errors[kind]:
            log.exception("unexpected error in the ingest loop (logged once per kind): %s", e)
        self._loop_errors[kind] += 1
        self.ingest.stats.internal_errors[kind] += 1
        time.sleep(0.05)  # not a busy loop if it repeats

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.ready = False
        for sink in self.sinks:
            sink.close()
        if self.web:
            self.web.close()
        if self.http_sock:
            self.http_sock.close()
        if self.otlp_sock:
            self.otlp_sock.close()
        if self.listeners:
            self.listeners.close()


def _listen_http(addr: str, what: str = "http") -> socket.socket:
    s = bind(socket.SOCK_STREAM, addr, what)
    s.listen(128)
    return s


def _histogram_settings(cfg: BridgeConfig) -> tuple[tuple[int, int, int] | None, bool]:
    """(native spec or None, classic buckets on) from the config's histogram settings."""
    onoff = {"on": True, "true": True, "1": True, "yes": True, "off": False, "false": False, "0": False, "no": False}
    flags = {}
    for name in ("native_histograms", "classic_histograms"):
        v = onoff.get(str(getattr(cfg, name)).strip().lower())
        if v is None:
            raise ConfigError(f"{name} must be on or off, not {getattr(cfg, name)!r}")
        flags[name] = v
    if not -4 <= cfg.native_histogram_schema <= 8:
        raise ConfigError(f"native_histogram_schema must be within -4..8, not {cfg.native_histogram_schema}")
    if not 2 <= cfg.native_histogram_max_buckets <= 1000:
        raise ConfigError("native_histogram_max_buckets must be within 2..1000, not "
                          f"{cfg.native_histogram_max_buckets}")
    if not flags["native_histograms"] and not flags["classic_histograms"]:
        raise ConfigError("native_histograms and classic_histograms cannot both be off: timers need buckets")
    native = native_spec(cfg.native_histogram_schema, cfg.native_histogram_max_buckets) \
        if flags["native_histograms"] else None
    return native, flags["classic_histograms"]
