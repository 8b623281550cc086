"""The healer's YAML config: which Airflow release to watch, how, and what it may do.

Every mistake is a HealConfigError naming its place in the file, in one line. The database URL and
the notifiers' keys are secrets: read from a file or the environment, never from the YAML.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from monitor.alerting import config as notify_config
from monitor.alerting.config import NotifyConfig, NotifyConfigError, parse_notify
from monitor.config import ConfigError, mapping, only, read_secret, read_yaml
from monitor.durations import parse_duration
from monitor.heal.budget import Budget
from monitor.heal.rules import COMPONENTS, Settings
from monitor.probe.rules import Thresholds

MODES = ("observe", "act")
RESTARTS = ("evict", "delete", "rollout")
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

TOP_KEYS = {"kubernetes", "airflow", "healer", "budget", "thresholds", "probe", "lease", "notify"}
KUBE_KEYS = {"namespace", "kubeconfig", "context", "timeout"}
AIRFLOW_KEYS = {"release", "sql_alchemy_conn", "sql_alchemy_conn_file", "url"}
HEALER_KEYS = {"mode", "interval", "restart", "state_file", "metrics_listen", "blind_after", "priority",
               "exhausted_priority", "responders", "tags", "components", "runbook", "resolve_after"}
BUDGET_KEYS = {"per_component", "window", "global", "cooldown", "verify", "after_failed_check"}
THRESHOLD_KEYS = {"startup_grace", "pending_grace", "storm_restarts", "storm_window", "oom_window", "ready_grace",
                  "queued_timeout_window"}
PROBE_KEYS = {"queued_grace", "finished_window", "heartbeat"}
LEASE_KEYS = {"enabled", "name", "duration"}


class HealConfigError(ConfigError):
    pass


@dataclass
class HealConfig:
    namespace: str
    release: str
    db_url: str = field(repr=False)
    kubeconfig: str = ""
    context: str = ""
    kube_timeout: float = 10.0
    airflow_url: str = ""  # for links in pages
    mode: str = "observe"
    interval: float = 30.0
    restart: str = "delete"
    state_file: str = ""  # 0.1.0's SQLite state, imported once into the cluster state (ConfigMap)
    metrics_listen: str = ":9104"
    blind_after: int = 3
    resolve_after: float = 600.0  # a page closes once its diagnosis has been gone this long
    priority: str = "P2"
    exhausted_priority: str = "P1"
    responders: tuple = ()
    tags: tuple[str, ...] = ()
    runbook: str = ""
    budget: Budget = field(default_factory=Budget)
    settings: Settings = field(default_factory=Settings)
    thresholds: Thresholds = field(default_factory=Thresholds)
    lease: bool = True
    lease_name: str = ""  # default airflow-monitor-heal-<release>: one per release
    lease_duration: float = 15.0
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    source: str = ""


def _map(v, where: str) -> dict:
    return mapping(v, where, HealConfigError)


def _only(d: dict, allowed: set[str], where: str) -> None:
    only(d, allowed, where, HealConfigError)


def _seconds(d: dict, key: str, default: float, where: str, positive: bool = True) -> float:
    try:
        s = parse_duration(d.get(key, default))
    except ValueError as e:
        raise HealConfigError(f"{where}.{key}: {e}") from None
    if s < 0 or (positive and s == 0):
        raise HealConfigError(f"{where}.{key}: must be more than 0")
    return s


def _count(d: dict, key: str, default: int, where: str, least: int = 1) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise HealConfigError(f"{where}.{key}: must be a whole number, not {v!r}")
    try:
        n = int(v)
    except ValueError:
        raise HealConfigError(f"{where}.{key}: must be a whole number, not {v!r}") from None
    if n < least:
        raise HealConfigError(f"{where}.{key}: must be at least {least}")
    return n


def _choice(d: dict, key: str, choices: tuple[str, ...], default: str, where: str) -> str:
    v = str(d.get(key, default)).strip()
    if v not in choices:
        raise HealConfigError(f"{where}.{key}: one of {', '.join(choices)}, not {v!r}")
    return v


def _namespace(k: dict) -> str:
    ns = str(k.get("namespace") or os.environ.get("AIRFLOW_MONITOR_KUBE_NAMESPACE") or "").strip()
    if not ns and Path(SA_NAMESPACE).is_file():
        ns = Path(SA_NAMESPACE).read_text().strip()
    if not ns:
        raise HealConfigError("kubernetes.namespace: Airflow's namespace is required (or "
                              "$AIRFLOW_MONITOR_KUBE_NAMESPACE; in a pod, its own namespace is used)")
    return ns


def _db_url(a: dict) -> str:
    """The metadata database URL, found as the probe finds it: sql_alchemy_conn_file, then
    $AIRFLOW_MONITOR_SQL_ALCHEMY_CONN, then Airflow's own settings ($AIRFLOW__DATABASE__SQL_ALCHEMY_CONN,
    its _CMD, or [database] sql_alchemy_conn in $AIRFLOW_CONFIG or $AIRFLOW_HOME/airflow.cfg)."""
    if "sql_alchemy_conn" in a:
        raise HealConfigError("airflow.sql_alchemy_conn: secrets are not read from the config file; use "
                              "sql_alchemy_conn_file or $AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    from monitor.probe import settings
    from monitor.probe.db import SourceError, parse_url
    from monitor.redact import secret

    url = read_secret(("AIRFLOW_MONITOR_SQL_ALCHEMY_CONN",), str(a.get("sql_alchemy_conn_file") or ""))
    if not url:
        try:
            url = secret(settings.get("database", "sql_alchemy_conn"))
        except settings.SettingError as e:
            raise HealConfigError(f"airflow: {e}") from None
    if not url:
        raise HealConfigError("airflow: the metadata database URL is required (sql_alchemy_conn_file, "
                              "$AIRFLOW_MONITOR_SQL_ALCHEMY_CONN, $AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, or "
                              "[database] sql_alchemy_conn in $AIRFLOW_HOME/airflow.cfg)")
    try:
        parsed = parse_url(url)
    except SourceError as e:
        raise HealConfigError(f"airflow.sql_alchemy_conn: {e}") from None
    secret(parsed.password)  # a driver's error may quote it on its own
    return url


def parse(doc, source: str = "config", notifiers: bool = True) -> HealConfig:
    """notifiers=False (heal status, heal check: they page nobody): the notify: section's secrets are not read."""
    doc = _map(doc, source)
    _only(doc, TOP_KEYS, source)
    k = _map(doc.get("kubernetes"), "kubernetes")
    _only(k, KUBE_KEYS, "kubernetes")
    a = _map(doc.get("airflow"), "airflow")
    _only(a, AIRFLOW_KEYS, "airflow")
    release = str(a.get("release") or "").strip()
    if not release:
        raise HealConfigError("airflow.release: the Helm release name of Airflow is required (its pods' "
                              "`release` label)")
    h = _map(doc.get("healer"), "healer")
    _only(h, HEALER_KEYS, "healer")
    comps = h.get("components", list(Settings.components))
    if not isinstance(comps, list) or any(c not in COMPONENTS for c in comps):
        raise HealConfigError(f"healer.components: a list of {', '.join(COMPONENTS)}")
    b = _map(doc.get("budget"), "budget")
    _only(b, BUDGET_KEYS, "budget")
    t = _map(doc.get("thresholds"), "thresholds")
    _only(t, THRESHOLD_KEYS, "thresholds")
    p = _map(doc.get("probe"), "probe")
    _only(p, PROBE_KEYS, "probe")
    le = _map(doc.get("lease"), "lease")
    _only(le, LEASE_KEYS, "lease")
    try:
        notify = parse_notify(doc.get("notify")) if notifiers else NotifyConfig()
    except NotifyConfigError as e:
        raise HealConfigError(str(e)) from None
    if not notifiers:
        _only(_map(doc.get("notify"), "notify"), {"opsgenie", "jsm", "datadog", "webhook"}, "notify")
    responders = notify_config.responders(h.get("responders"), "healer", HealConfigError)
    tags = h.get("tags") or []
    if not isinstance(tags, list):
        raise HealConfigError("healer.tags: must be a list of strings")
    budget = Budget(per_component=_count(b, "per_component", 2, "budget"),
                    window=_seconds(b, "window", "1h", "budget"), global_max=_count(b, "global", 5, "budget"),
                    cooldown=_seconds(b, "cooldown", "5m", "budget", positive=False),
                    verify=_seconds(b, "verify", "5m", "budget"),
                    after_failed_check=_choice(b, "after_failed_check", ("retry", "stop"), "retry", "budget"))
    settings = Settings(
        components=tuple(c for c in comps if c != "worker"),
        startup_grace=_seconds(t, "startup_grace", "3m", "thresholds", positive=False),
        pending_grace=_seconds(t, "pending_grace", "5m", "thresholds", positive=False),
        storm_restarts=_count(t, "storm_restarts", 3, "thresholds"),
        storm_window=_seconds(t, "storm_window", "15m", "thresholds"),
        oom_window=_seconds(t, "oom_window", "1h", "thresholds"),
        ready_grace=_seconds(t, "ready_grace", "5m", "thresholds", positive=False),
        queued_timeout_window=_seconds(t, "queued_timeout_window", "1h", "thresholds"))
    thresholds = Thresholds(heartbeat=_seconds(p, "heartbeat", "30s", "probe"),
                            queued_grace=_seconds(p, "queued_grace", "5m", "probe"),
                            finished_window=_seconds(p, "finished_window", "5m", "probe"))
    if settings.startup_grace < thresholds.heartbeat:
        raise HealConfigError(f"thresholds.startup_grace: must be at least probe.heartbeat "
                              f"({thresholds.heartbeat:g}s): a restarted scheduler's old job stays live that long, "
                              "and a new pod judged before would be taken for one whose job cannot be paired")
    return HealConfig(
        namespace=_namespace(k), release=release, db_url=_db_url(a),
        kubeconfig=str(k.get("kubeconfig") or os.environ.get("KUBECONFIG") or ""),
        context=str(k.get("context") or ""), kube_timeout=_seconds(k, "timeout", "10s", "kubernetes"),
        airflow_url=str(a.get("url") or "").rstrip("/"),
        mode=_choice(h, "mode", MODES, "observe", "healer"),
        interval=_seconds(h, "interval", "30s", "healer"),
        restart=_choice(h, "restart", RESTARTS, "evict", "healer"),
        state_file=str(h.get("state_file") or ""),
        metrics_listen=str(h.get("metrics_listen", ":9104")),
        blind_after=_count(h, "blind_after", 3, "healer"),
        resolve_after=_seconds(h, "resolve_after", "10m", "healer", positive=False),
        priority=_choice({"priority": str(h.get("priority", "P2")).upper()}, "priority", PRIORITIES, "P2", "healer"),
        exhausted_priority=_choice({"exhausted_priority": str(h.get("exhausted_priority", "P1")).upper()},
                                   "exhausted_priority", PRIORITIES, "P1", "healer"),
        responders=responders, tags=tuple(str(x) for x in tags), runbook=str(h.get("runbook") or ""),
        budget=budget, settings=settings, thresholds=thresholds,
        lease=bool(le.get("enabled", True)), lease_name=str(le.get("name") or f"airflow-monitor-heal-{release}"),
        lease_duration=_seconds(le, "duration", "15s", "lease"), source=source, notify=notify)


def load(path: str | None, notifiers: bool = True) -> HealConfig:
    path = path or os.environ.get("AIRFLOW_MONITOR_HEAL_CONFIG")
    if not path:
        raise HealConfigError("no healer config: pass --config FILE (or set AIRFLOW_MONITOR_HEAL_CONFIG)")
    return parse(read_yaml(path, "healer config", HealConfigError) or {}, path, notifiers)
