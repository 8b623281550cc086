"""Configuration: defaults < YAML file section < AIRFLOW_MONITOR_* environment < command-line flags.

Secrets are never stored here in clear from flags: they come from the environment or a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

ENV_PREFIX = "AIRFLOW_MONITOR_"


class ConfigError(ValueError):
    """A configuration mistake; the message is one line a person can act on."""


@dataclass
class BridgeConfig:
    statsd_udp: str = ":9125"
    statsd_tcp: str = ":9125"
    statsd_unix: str = ""
    statsd_unix_mode: str = "755"  # octal permissions of the Unix socket (statsd_exporter's --statsd.unixsocket-mode)
    statsd_tcp_idle_timeout: str = "5m"  # a statsd TCP connection silent this long is closed ("0": never)
    web_listen: str = ":9102"
    web_config_file: str = ""  # TLS and basic auth, exporter-toolkit format (monitor/webconfig.py)
    web_enable_lifecycle: bool = False  # POST /-/reload (SIGHUP always reloads), as statsd_exporter's flag
    mapping_file: str = ""
    statsd_prefix: str = "airflow"
    airflow_tags: str = "auto"  # auto | on | off
    dogstatsd_timer_unit: str = "auto"  # auto | s | ms: the unit of Airflow's timer() metrics sent with DogStatsD
    ttl: str = "24h"
    # sized for 10,000 DAGs x 10 tasks (~670k series, ti.finish ~200k of them), with a warning at half
    max_series_per_family: int = 500_000
    max_series: int = 1_000_000  # all families together
    max_label_bytes: int = 256 << 20  # label text of all series together (`name="value",` each)
    max_series_label_bytes: int = 4096  # label text of one series
    cache_bytes: int = 256 << 20  # the mapper cache's memory budget (~190 bytes a distinct line key)
    buckets: list[float] = field(default_factory=list)  # empty: the built-in Airflow buckets
    classic_histograms: str = "on"  # on | off: the classic buckets beside a native histogram
    native_histograms: str = "on"  # on | off: timers are native histograms too (protobuf exposition)
    native_histogram_schema: int = 3  # -4..8; 3: buckets 9 % wide (client_golang's bucket factor 1.1)
    native_histogram_max_buckets: int = 20  # consecutive buckets a native histogram keeps; then its schema goes down
    otlp_listen: str = ":4318"  # OTLP/HTTP metrics (POST /v1/metrics); '' disables
    otlp_max_body: int = 64 << 20  # bytes of an OTLP request, before and after decompression
    otlp_max_points: int = 1_000_000  # data points in one OTLP request; more are rejected (partial success)
    otlp_max_attributes: int = 64  # attributes on one OTLP data point; a point with more is rejected
    otlp_stream_ttl: str = "15m"  # a cumulative OTLP stream without a point for this long is forgotten
    unmapped: str = "export"  # export | drop
    max_packet: int = 65535
    udp_rcvbuf: int = 8 << 20
    relay: str = ""
    datadog: str = "none"  # none | agent | api
    datadog_host: str = "127.0.0.1"
    datadog_port: int = 8125
    datadog_socket: str = ""
    datadog_api_key_file: str = ""
    datadog_site: str = "datadoghq.com"
    datadog_api_url: str = ""  # overrides the site's https://api.<site>
    datadog_flush_interval: float = 10.0
    datadog_tags: list[str] = field(default_factory=list)
    datadog_hostname: str = ""  # the host agentless points carry; none when empty (pod names churn)


def _coerce(name: str, typ, raw):
    try:
        if typ in (bool, "bool"):
            if isinstance(raw, bool):
                return raw
            word = str(raw).strip().lower()
            if word in ("1", "true", "yes", "on"):
                return True
            if word in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(word)
        if typ in (int, "int"):
            return int(raw)
        if typ in (float, "float"):
            return float(raw)
        if typ in ("list[float]",):
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return [float(x) for x in items if str(x).strip()]
        if typ in ("list[str]",):
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return [str(x).strip() for x in items if str(x).strip()]
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: invalid value {raw!r}") from None


def mapping(v, where: str, error: type[Exception] = ConfigError) -> dict:
    """A config section that must be a mapping (None: empty)."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise error(f"{where} must be a mapping")
    return v


def only(d: dict, allowed: set[str], where: str, error: type[Exception] = ConfigError) -> None:
    """Refuse a key the section does not take, naming it and those it takes."""
    extra = sorted(set(d) - allowed)
    if extra:
        raise error(f"{where}: unknown setting {extra[0]!r} (known: {', '.join(sorted(allowed))})")


def read_yaml(path, what: str, error: type[Exception] = ConfigError):
    """Parse a YAML file; an unreadable or invalid file raises `error` with a one-line reason."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise error(f"{what} {path} is not valid YAML{at}") from None


def load(cls, section: str, file: str | None, flags: dict) -> object:
    """Build a config dataclass from file section, environment and (non-None) flags."""
    values: dict = {}
    if file:
        doc = read_yaml(file, "config file") or {}
        sec = doc.get(section) or {}
        if not isinstance(sec, dict):
            raise ConfigError(f"config file {file}: '{section}' must be a mapping")
        values.update({k.replace("-", "_"): v for k, v in sec.items()})
    known = {f.name: f for f in fields(cls)}
    for k in values:
        if k not in known:
            raise ConfigError(f"config file {file}: unknown setting {section}.{k}")
    for name in known:
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env is not None:
            values[name] = env
    values.update({k: v for k, v in flags.items() if v is not None and k in known})
    return cls(**{k: _coerce(k, known[k].type, v) for k, v in values.items()})


def read_secret(env_names: tuple[str, ...], file: str = "") -> str | None:
    """A secret from a file (first line) or the first set environment variable; registered with
    monitor.redact, so that no log line or stored error shows it."""
    from monitor.redact import secret

    if file:
        try:
            return secret(Path(file).read_text().strip() or None)
        except OSError as e:
            raise ConfigError(f"cannot read secret file {file}: {e.strerror}") from None
    for name in env_names:
        v = os.environ.get(name)
        if v:
            return secret(v)
    return None
