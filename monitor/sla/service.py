"""Build a watcher from config (monitor.worker runs it on a schedule, alone or beside the bridge)."""

from __future__ import annotations

from monitor.airflow.rest import AirflowRest
from monitor.sla.config import SLAConfig
from monitor.sla.state import State
from monitor.sla.watcher import Watcher


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
