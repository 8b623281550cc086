"""The alert record every producer (the SLA watcher, the healer) hands to alerting, and every
notifier reads: what the alert is about, what to say, how urgent, and where it comes from.

A Notice is queued in the outbox as JSON (`payload()`), so that a notice decided before a restart is
sent after it; `from_payload()` also reads the payloads airflow-monitor 0.1.0 queued (plain dicts with
the subject under `dag_id`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

ACTIONS = ("open", "close", "remind")
# how chat and Datadog title each action, unless the producer names its own (the healer does)
DEFAULT_TITLES = {"open": "SLA breached", "close": "SLA resolved", "remind": "SLA still breached"}


@dataclass(frozen=True)
class Notice:
    alias: str  # the receiver dedupes on it (OpsGenie/JSM alias, Datadog aggregation_key, webhook key)
    subject: str  # what the alert is about: a dag_id, a pod, a component
    rule: str
    message: str  # one line
    priority: str = "P3"  # P1..P5
    reason: str = ""
    description: str = ""
    responders: tuple[tuple[str, str, str], ...] = ()  # (type, id|name|username, value)
    tags: tuple[str, ...] = ()
    entity: str = ""
    runbook: str = ""
    details: dict = field(default_factory=dict)
    note: str = ""  # the text of a close or a reminder
    at: str = ""  # ISO time the producer decided it (part of the webhook's idempotency key)
    titles: dict = field(default_factory=dict)  # action -> title for chat and Datadog
    service_check: str = ""  # Datadog service check name ("" = the notifier's own)
    dd_tags: tuple[str, ...] = ()  # Datadog tags naming the subject ("" = dag_id and rule)
    entity_title: str = ""  # how a title names the subject ("" = the subject)
    summary: str = ""  # the alert's line as the state file and `status` keep it ("" = message)

    @property
    def key(self) -> tuple[str, str]:
        return (self.subject, self.rule)

    @property
    def line(self) -> str:
        return self.summary or self.message

    def title(self, action: str) -> str:
        return (self.titles or DEFAULT_TITLES).get(action, DEFAULT_TITLES.get(action, action))

    def payload(self) -> dict:
        """JSON-able, in the outbox's 0.1.0 shape (the subject is `dag_id`), so a downgrade reads it."""
        d = asdict(self)
        d["dag_id"] = d.pop("subject")
        d["responders"] = [list(r) for r in self.responders]
        d["tags"], d["dd_tags"] = list(self.tags), list(self.dd_tags)
        return d

    @classmethod
    def from_payload(cls, d: dict) -> Notice:
        known = {f.name for f in fields(cls)}
        v = {k: d[k] for k in known if k in d and d[k] is not None}
        v.setdefault("subject", str(d.get("dag_id", "")))
        v["responders"] = tuple(tuple(r) for r in v.get("responders", ()))
        v["tags"], v["dd_tags"] = tuple(v.get("tags", ())), tuple(v.get("dd_tags", ()))
        v["details"] = dict(v.get("details") or {})
        v["titles"] = dict(v.get("titles") or {})
        return cls(**v)

    def redacted(self) -> Notice:
        """The notice with every registered secret and URL userinfo taken out of its text (an error that
        quotes a URL with credentials must not reach a page)."""
        from monitor.redact import redact

        return self.but(alias=redact(self.alias), message=redact(self.message), description=redact(self.description),
                        note=redact(self.note), summary=redact(self.summary), entity=redact(self.entity),
                        details={k: redact(str(v)) for k, v in self.details.items()})

    def but(self, **changes) -> Notice:
        from dataclasses import replace

        return replace(self, **changes)
