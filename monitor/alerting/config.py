"""The `notify:` section every producer of alerts shares (the SLA watcher's file, the healer's), and
the notifiers built from it. Every mistake is a NotifyConfigError naming its place, in one line.
Secrets (OpsGenie and Datadog keys, the JSM API token, a webhook URL) are read from a file or the
environment, never from the YAML itself."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from monitor.config import ConfigError, mapping, only, read_secret
from monitor.redact import secret

RESPONDER_TYPES = ("team", "user", "escalation", "schedule")
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
OPSGENIE_URLS = {
    "us": "https://api.opsgenie.com",
    "eu": "https://api.eu.opsgenie.com",
    "jsm": "https://api.atlassian.com/jsm/ops/integration",  # Jira Service Management, same body
}
NOTIFY_KEYS = {"opsgenie", "jsm", "datadog", "webhook"}
OPSGENIE_KEYS = {"api_key_file", "api_key", "region", "url", "source", "heartbeat"}
JSM_KEYS = {"cloud_id", "email", "api_token", "api_token_file", "url", "source"}
DATADOG_KEYS = {"api_key_file", "api_key", "site", "api_url", "service_check", "tags"}
WEBHOOK_KEYS = {"url", "url_file"}


class NotifyConfigError(ConfigError):
    pass


@dataclass
class OpsGenie:
    api_key: str = field(repr=False)
    url: str
    source: str = "airflow-monitor"
    heartbeat: str = ""


@dataclass
class DatadogNotify:
    api_key: str = field(repr=False)
    api_url: str
    service_check: str = "airflow.sla"
    tags: tuple[str, ...] = ()


@dataclass
class JsmOps:
    """The JSM Operations REST API: an Atlassian site's cloudId, an account's email and API token."""

    cloud_id: str = field(repr=False)
    email: str
    api_token: str = field(repr=False)
    url: str = "https://api.atlassian.com"
    source: str = "airflow-monitor"


@dataclass
class NotifyConfig:
    opsgenie: OpsGenie | None = None
    jsm: JsmOps | None = None
    datadog: DatadogNotify | None = None
    webhook: str | None = field(default=None, repr=False)


def _map(v, where: str) -> dict:
    return mapping(v, where, NotifyConfigError)


def _only(d: dict, allowed: set[str], where: str) -> None:
    only(d, allowed, where, NotifyConfigError)


def priority(v, where: str, error: type[Exception] = NotifyConfigError) -> str:
    p = str(v).upper()
    if p not in PRIORITIES:
        raise error(f"{where}: priority must be one of P1..P5, not {v!r}")
    return p


def responders(v, where: str, error: type[Exception] = NotifyConfigError) -> tuple[tuple[str, str, str], ...]:
    """'team-name' or {type: team|user|escalation|schedule, name|id|username: ...}."""
    if v is None:
        return ()
    if not isinstance(v, list):
        raise error(f"{where}: responders must be a list")
    out = []
    for i, r in enumerate(v):
        if isinstance(r, str) and r:
            out.append(("team", "name", r))
            continue
        if not isinstance(r, dict) or r.get("type") not in RESPONDER_TYPES:
            raise error(f"{where}.responders[{i}]: a team name, or a mapping with type "
                        f"({'/'.join(RESPONDER_TYPES)}) and name, id or username")
        keys = [k for k in ("id", "name", "username") if r.get(k)]
        if len(keys) != 1 or set(r) - {"type", *keys}:
            raise error(f"{where}.responders[{i}]: needs exactly one of id, name, username")
        out.append((r["type"], keys[0], str(r[keys[0]])))
    return tuple(out)


def tags(v, where: str, error: type[Exception] = NotifyConfigError) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(t, str | int | float) for t in v):
        raise error(f"{where}: tags must be a list of strings")
    return tuple(str(t) for t in v)


def secret_setting(sec: dict, key: str, env: tuple[str, ...], where: str,
                   error: type[Exception] = NotifyConfigError) -> str | None:
    """A secret of a config section: from `<key>_file` or the environment, never from the file itself."""
    if key in sec:
        raise error(f"{where}.{key}: secrets are not read from the config file; use {key}_file or ${env[0]}")
    return read_secret(env, str(sec.get(f"{key}_file") or ""))


_secret = secret_setting


def _opsgenie(raw) -> OpsGenie:
    og = _map(raw, "notify.opsgenie")
    _only(og, OPSGENIE_KEYS, "notify.opsgenie")
    region = str(og.get("region") or "us").lower()
    if region not in OPSGENIE_URLS:
        raise NotifyConfigError(f"notify.opsgenie.region: one of {', '.join(OPSGENIE_URLS)}, not {region!r}")
    key = _secret(og, "api_key", ("AIRFLOW_MONITOR_OPSGENIE_API_KEY", "OPSGENIE_API_KEY"), "notify.opsgenie")
    if not key:
        raise NotifyConfigError("notify.opsgenie: no API key (api_key_file or $AIRFLOW_MONITOR_OPSGENIE_API_KEY)")
    return OpsGenie(api_key=key, url=str(og.get("url") or OPSGENIE_URLS[region]).rstrip("/"),
                    source=str(og.get("source") or "airflow-monitor"), heartbeat=str(og.get("heartbeat") or ""))


def _jsm(raw) -> JsmOps:
    j = _map(raw, "notify.jsm")
    _only(j, JSM_KEYS, "notify.jsm")
    token = _secret(j, "api_token", ("AIRFLOW_MONITOR_JSM_API_TOKEN",), "notify.jsm")
    cloud_id, email = str(j.get("cloud_id") or "").strip(), str(j.get("email") or "").strip()
    if not cloud_id or not email or not token:
        raise NotifyConfigError("notify.jsm: needs cloud_id, email and an API token (api_token_file or "
                                "$AIRFLOW_MONITOR_JSM_API_TOKEN)")
    if not re.fullmatch(r"[A-Za-z0-9-]+", cloud_id):
        raise NotifyConfigError("notify.jsm.cloud_id: the site's cloudId, a UUID "
                                "(https://<site>.atlassian.net/_edge/tenant_info shows it)")
    return JsmOps(cloud_id=cloud_id, email=email, api_token=token, url=str(j.get("url") or JsmOps.url).rstrip("/"),
                  source=str(j.get("source") or "airflow-monitor"))


def _datadog(raw) -> DatadogNotify:
    dd = _map(raw, "notify.datadog")
    _only(dd, DATADOG_KEYS, "notify.datadog")
    key = _secret(dd, "api_key", ("AIRFLOW_MONITOR_DATADOG_API_KEY", "DD_API_KEY"), "notify.datadog")
    if not key:
        raise NotifyConfigError("notify.datadog: no API key (api_key_file or $DD_API_KEY)")
    site = str(dd.get("site") or "datadoghq.com")
    return DatadogNotify(api_key=key, api_url=str(dd.get("api_url") or f"https://api.{site}").rstrip("/"),
                         service_check=str(dd.get("service_check") or "airflow.sla"),
                         tags=tags(dd.get("tags"), "notify.datadog.tags"))


def _webhook(raw) -> str:
    wh = _map(raw, "notify.webhook")
    _only(wh, WEBHOOK_KEYS, "notify.webhook")
    url = secret(str(wh.get("url") or "")) or read_secret(("AIRFLOW_MONITOR_WEBHOOK_URL",),
                                                          str(wh.get("url_file") or ""))
    if not url or not url.startswith(("http://", "https://")):
        raise NotifyConfigError("notify.webhook: needs an http(s) url (url, url_file or $AIRFLOW_MONITOR_WEBHOOK_URL)")
    return url


def parse_notify(raw) -> NotifyConfig:
    """The `notify:` section: each notifier None when not configured."""
    n = _map(raw, "notify")
    _only(n, NOTIFY_KEYS, "notify")
    parts = {"opsgenie": _opsgenie, "jsm": _jsm, "datadog": _datadog, "webhook": _webhook}
    return NotifyConfig(**{k: parse(n[k]) for k, parse in parts.items() if n.get(k) is not None})


def build_notifiers(cfg: NotifyConfig) -> list:
    """The notifiers a `notify:` section configures, in a fixed order."""
    out: list = []
    if cfg.opsgenie:
        from monitor.alerting.opsgenie import OpsGenieNotifier

        og = cfg.opsgenie
        out.append(OpsGenieNotifier(og.url, og.api_key, og.source, og.heartbeat))
    if cfg.jsm:
        from monitor.alerting.jsm import JsmNotifier

        j = cfg.jsm
        out.append(JsmNotifier(j.url, j.cloud_id, j.email, j.api_token, j.source))
    if cfg.datadog:
        from monitor.alerting.datadog import DatadogNotifier

        dd = cfg.datadog
        out.append(DatadogNotifier(dd.api_url, dd.api_key, dd.service_check, dd.tags))
    if cfg.webhook:
        from monitor.alerting.webhook import WebhookNotifier

        out.append(WebhookNotifier(cfg.webhook))
    return out
