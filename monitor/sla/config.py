"""The SLA watcher's YAML config: which DAGs to watch, their rules, where to page.

Every mistake is a SLAConfigError whose message names the place in the file, in one line.
Secrets (Airflow password or token, OpsGenie and Datadog keys, webhook URL) are read from a
file or the environment, never from the YAML itself.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from urllib.parse import urlsplit

from monitor.airflow.models import Dag
from monitor.alerting import config as notify_config
from monitor.alerting.config import NotifyConfig, NotifyConfigError, parse_notify
from monitor.config import ConfigError, mapping, only, read_yaml
from monitor.durations import parse_duration
from monitor.sla import windows
from monitor.sla.rules import KINDS, Rule


class SLAConfigError(ConfigError):
    pass


@dataclass(frozen=True)
class Watch:
    """One `watch:` entry: a selector (dag_id, glob or Airflow tag) and its rules."""

    selector: str  # dag_id | match | tag
    value: str
    rules: tuple[Rule, ...]

    def selects(self, dag: Dag) -> bool:
        if self.selector == "dag_id":
            return dag.dag_id == self.value
        if self.selector == "match":
            return fnmatch.fnmatchcase(dag.dag_id, self.value)
        return self.value in dag.tags


@dataclass(frozen=True)
class Mute:
    """A `mutes:` entry: no page for the DAG(s) and rule until `until` (UTC)."""

    selector: str  # dag_id | match
    value: str
    rule: str | None  # None: every rule of the DAG
    until: datetime
    reason: str = ""

    def covers(self, dag_id: str, rule: str, now: datetime) -> bool:
        if now >= self.until or (self.rule is not None and self.rule != rule):
            return False
        if self.selector == "dag_id":
            return dag_id == self.value
        return fnmatch.fnmatchcase(dag_id, self.value)


@dataclass
class AirflowAccess:
    url: str = "http://localhost:8080"
    username: str = ""
    password: str | None = None
    token: str | None = None
    timeout: float = 10.0
    verify_tls: bool = True


@dataclass
class SLAConfig:
    airflow: AirflowAccess
    watches: tuple[Watch, ...]
    interval: float = 60.0
    state_file: str = "airflow-monitor-sla.sqlite"
    blind_after: int = 3
    blind_priority: str = "P2"
    blind_responders: tuple = ()
    renotify: float = 0.0
    lookback: float = 7 * 86400.0
    metrics_listen: str = ":9103"
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    source: str = ""  # the file it came from, for messages
    new_dag_grace: float = 3600.0  # a DAG Airflow first parsed less than this ago is not judged yet
    # a watched dag_id Airflow does not know is not_found once the watcher has looked for it this long
    # (one DAG-processor interval: [dag_processor] refresh_interval, 300 s by default, finds a new file)
    not_found_grace: float = 300.0
    mutes: tuple[Mute, ...] = ()

    def mute_for(self, dag_id: str, rule: str, now: datetime) -> Mute | None:
        return next((m for m in self.mutes if m.covers(dag_id, rule, now)), None)

    def rules_for(self, dag: Dag) -> list[Rule]:
        """The rules watching a DAG; a rule name already taken by an earlier entry is skipped."""
        out: dict[str, Rule] = {}
        for w in self.watches:
            if w.selects(dag):
                for r in w.rules:
                    out.setdefault(r.name, r)
        return list(out.values())

    def explicit_dag_ids(self) -> set[str]:
        return {w.value for w in self.watches if w.selector == "dag_id"}


def _map(v, where: str) -> dict:
    return mapping(v, where, SLAConfigError)


def _only(d: dict, allowed: set[str], where: str) -> None:
    only(d, allowed, where, SLAConfigError)


def _duration(v, where: str) -> float:
    try:
        s = parse_duration(v)
    except ValueError as e:
        raise SLAConfigError(f"{where}: {e}") from None
    if s < 0:
        raise SLAConfigError(f"{where}: must not be negative")
    return s


def _priority(v, where: str) -> str:
    return notify_config.priority(v, where, SLAConfigError)


def _responders(v, where: str) -> tuple[tuple[str, str, str], ...]:
    return notify_config.responders(v, where, SLAConfigError)


def _tags(v, where: str) -> tuple[str, ...]:
    return notify_config.tags(v, where, SLAConfigError)


_META = {"name", "priority", "responders", "tags", "runbook"}
# the keys each place of the file takes (the Helm chart's values.schema.json is held to these)
TOP_KEYS = {"airflow", "watcher", "notify", "defaults", "watch", "mutes", "bridge"}
AIRFLOW_KEYS = {"url", "username", "password_file", "token_file", "timeout", "verify_tls", "password", "token"}
WATCHER_KEYS = {"interval", "state_file", "blind_after", "blind_priority", "blind_responders", "renotify",
                "lookback", "metrics_listen", "new_dag_grace", "not_found_grace"}
WATCH_KEYS = {"dag_id", "match", "tag", "rules", *_META - {"name"}}
RULE_KEYS = {*_META, "max_age", "deadline", "from_schedule", "max_duration", "timezone"}
DEFAULTS_KEYS = _META - {"name"}
MUTE_KEYS = {"dag_id", "match", "rule", "until", "reason"}


def _check_meta(d: dict, where: str) -> None:
    """Validate inheritable settings where they are written, so errors point there."""
    if "priority" in d:
        _priority(d["priority"], where)
    _responders(d.get("responders"), where)
    _tags(d.get("tags"), f"{where}.tags")


def _rule(raw, where: str, inherited: dict) -> Rule:
    raw = _map(raw, where)
    unknown = sorted(str(k) for k in raw if k not in RULE_KEYS)
    if unknown:  # `max_agee:` is a typo to name, not a rule without a kind
        close = difflib.get_close_matches(unknown[0], sorted(RULE_KEYS), n=1)
        raise SLAConfigError(f"{where}: unknown setting {unknown[0]!r}" + (f" (did you mean {close[0]!r}?)" if close
                             else f" (a rule takes one of {', '.join(KINDS)}, and {', '.join(sorted(_META))})"))
    kinds = [k for k in KINDS if k in raw]
    if len(kinds) != 1:
        raise SLAConfigError(f"{where}: a rule needs exactly one of {', '.join(KINDS)}")
    kind = kinds[0]
    _only(raw, _META | {kind} | ({"timezone"} if kind == "deadline" else set()), where)
    meta = {**inherited, **{k: raw[k] for k in _META if k in raw}}
    common = dict(
        name=str(meta.get("name") or kind),
        kind=kind,
        priority=_priority(meta.get("priority", "P3"), where),
        responders=_responders(meta.get("responders"), where),
        tags=_tags(meta.get("tags"), where),
        runbook=str(meta.get("runbook") or ""),
    )
    if kind == "deadline":
        tz_name = str(raw.get("timezone") or "UTC")
        try:
            cron = windows.check_cron(raw[kind])
            tz = windows.zone(tz_name)
        except windows.WindowError as e:
            raise SLAConfigError(f"{where}: {e}") from None
        return Rule(cron=cron, tz=tz, tz_name=tz_name, **common)
    seconds = _duration(raw[kind], f"{where}.{kind}")
    if kind != "from_schedule" and seconds <= 0:
        raise SLAConfigError(f"{where}.{kind}: must be more than 0")
    return Rule(seconds=seconds, **common)


def _watch(raw, where: str, defaults: dict) -> Watch:
    raw = _map(raw, where)
    sels = [k for k in ("dag_id", "match", "tag") if k in raw]
    if len(sels) != 1 or not raw[sels[0]]:
        raise SLAConfigError(f"{where}: needs exactly one of dag_id, match (a glob) or tag")
    _only(raw, {sels[0], "rules", *_META - {"name"}}, where)
    _check_meta(raw, where)
    inherited = {**defaults, **{k: raw[k] for k in _META - {"name"} if k in raw}}
    rules_raw = raw.get("rules")
    if not isinstance(rules_raw, list) or not rules_raw:
        raise SLAConfigError(f"{where}: needs a non-empty list of rules")
    rules = tuple(_rule(r, f"{where}.rules[{i}]", inherited) for i, r in enumerate(rules_raw))
    names = [r.name for r in rules]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise SLAConfigError(f"{where}: two rules are named {dup!r}; give each a distinct name")
    return Watch(sels[0], str(raw[sels[0]]), rules)


def _until(v, where: str) -> datetime:
    """An expiry: an ISO date or date-time (UTC unless it says otherwise)."""
    if isinstance(v, datetime):
        t = v
    elif isinstance(v, date):
        t = datetime(v.year, v.month, v.day)
    else:
        try:
            t = datetime.fromisoformat(str(v).strip().replace("Z", "+00:00"))
        except ValueError:
            raise SLAConfigError(f"{where}: until must be an ISO date or date-time (2026-12-01T08:00Z), "
                                 f"not {v!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _mute(raw, where: str) -> Mute:
    raw = _map(raw, where)
    sels = [k for k in ("dag_id", "match") if k in raw]
    if len(sels) != 1 or not raw[sels[0]]:
        raise SLAConfigError(f"{where}: needs exactly one of dag_id or match (a glob)")
    _only(raw, {sels[0], "rule", "until", "reason"}, where)
    if "until" not in raw:
        raise SLAConfigError(f"{where}: needs until (a mute without an end is forgotten, then misses a real "
                             "breach)")
    return Mute(sels[0], str(raw[sels[0]]), str(raw["rule"]) if raw.get("rule") else None,
                _until(raw["until"], f"{where}.until"), str(raw.get("reason") or ""))


def _secret(sec: dict, key: str, env: tuple[str, ...], where: str) -> str | None:
    return notify_config.secret_setting(sec, key, env, where, SLAConfigError)


def _notify(raw) -> NotifyConfig:
    try:
        return parse_notify(raw)
    except NotifyConfigError as e:
        raise SLAConfigError(str(e)) from None


def parse(doc: dict, source: str = "config", airflow_url: str | None = None) -> SLAConfig:
    doc = _map(doc, source)
    _only(doc, TOP_KEYS, source)
    a = _map(doc.get("airflow"), "airflow")
    _only(a, AIRFLOW_KEYS, "airflow")
    airflow = AirflowAccess(
        url=(airflow_url or os.environ.get("AIRFLOW_MONITOR_AIRFLOW_URL") or str(a.get("url") or
             AirflowAccess.url)).rstrip("/"),
        username=str(a.get("username") or os.environ.get("AIRFLOW_MONITOR_AIRFLOW_USERNAME") or ""),
        password=_secret(a, "password", ("AIRFLOW_MONITOR_AIRFLOW_PASSWORD",), "airflow"),
        token=_secret(a, "token", ("AIRFLOW_MONITOR_AIRFLOW_TOKEN",), "airflow"),
        timeout=_duration(a.get("timeout", 10), "airflow.timeout"),
        verify_tls=bool(a.get("verify_tls", True)),
    )
    parts = urlsplit(airflow.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SLAConfigError(f"airflow.url must be the API server's http(s) URL, such as https://airflow.example.com "
                             f"or http://airflow-api-server:8080, not {airflow.url!r}")
    if not airflow.token and not (airflow.username and airflow.password):
        raise SLAConfigError("airflow: give username and a password (password_file or "
                             "$AIRFLOW_MONITOR_AIRFLOW_PASSWORD), or a token (token_file or "
                             "$AIRFLOW_MONITOR_AIRFLOW_TOKEN)")

    w = _map(doc.get("watcher"), "watcher")
    _only(w, WATCHER_KEYS, "watcher")
    try:
        blind_after = int(w.get("blind_after", 3))
    except (TypeError, ValueError):
        raise SLAConfigError("watcher.blind_after: must be a whole number of cycles") from None
    if blind_after < 1:
        raise SLAConfigError("watcher.blind_after: must be at least 1")
    interval = _duration(w.get("interval", 60), "watcher.interval")
    if interval <= 0:
        raise SLAConfigError("watcher.interval: must be more than 0")

    defaults = _map(doc.get("defaults"), "defaults")
    _only(defaults, DEFAULTS_KEYS, "defaults")
    _check_meta(defaults, "defaults")
    watch_raw = doc.get("watch")
    if not isinstance(watch_raw, list) or not watch_raw:
        raise SLAConfigError(f"{source}: 'watch' must be a non-empty list of DAG selectors with rules")
    watches = tuple(_watch(x, f"watch[{i}]", defaults) for i, x in enumerate(watch_raw))
    mutes_raw = doc.get("mutes") or []
    if not isinstance(mutes_raw, list):
        raise SLAConfigError("mutes: must be a list")
    mutes = tuple(_mute(x, f"mutes[{i}]") for i, x in enumerate(mutes_raw))
    return SLAConfig(
        airflow=airflow, watches=watches, interval=interval,
        state_file=str(w.get("state_file") or SLAConfig.state_file), blind_after=blind_after,
        blind_priority=_priority(w.get("blind_priority", "P2"), "watcher.blind_priority"),
        blind_responders=_responders(w.get("blind_responders"), "watcher"),
        renotify=_duration(w.get("renotify", 0), "watcher.renotify"),
        lookback=_duration(w.get("lookback", "7d"), "watcher.lookback"),
        metrics_listen=str(w.get("metrics_listen", ":9103")),
        notify=_notify(doc.get("notify")), source=source,
        new_dag_grace=_duration(w.get("new_dag_grace", "1h"), "watcher.new_dag_grace"), mutes=mutes,
        not_found_grace=_duration(w.get("not_found_grace", "5m"), "watcher.not_found_grace"),
    )


def load(path: str, airflow_url: str | None = None) -> SLAConfig:
    return parse(read_yaml(path, "SLA config", SLAConfigError) or {}, path, airflow_url)
