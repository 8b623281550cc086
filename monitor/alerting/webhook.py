"""A generic JSON webhook, Slack-compatible: {"text": ...} plus the structured alert.

Delivery is at least once, so each notice carries a key that is the same every time that notice
is sent (alias, action, when it was decided): the `Idempotency-Key` header and
`airflow_monitor.id` in the body, for the receiver to dedupe on."""

from __future__ import annotations

from monitor.alerting import Refused
from monitor.alerting.http import request

ICON = {"open": ":red_circle:", "close": ":large_green_circle:", "remind": ":bell:"}
VERB = {"open": "SLA breached", "close": "SLA resolved", "remind": "SLA still breached"}


class WebhookNotifier:
    name = "webhook"

    def __init__(self, url: str, timeout: float = 10.0):
        self.url, self.timeout = url, timeout

    def __repr__(self) -> str:  # the URL of a Slack webhook is a secret
        return "WebhookNotifier(<url>)"

    def send(self, action: str, notice: dict) -> str:
        if action not in VERB:
            raise Refused(f"unknown action {action!r}")
        verb = (notice.get("titles") or VERB).get(action, VERB[action])  # the healer's notices name their own
        text = f"{ICON[action]} [{notice.get('priority', '')}] {verb}: {notice['message']}"
        if notice.get("runbook"):
            text += f" (runbook: {notice['runbook']})"
        key = f"{notice['alias']}/{action}/{notice.get('at', '')}"
        body = {"text": text, "airflow_monitor": {"id": key, "action": action,
                                                  **{k: v for k, v in notice.items() if k != "responders"}}}
        request("POST", self.url, body, {"Idempotency-Key": key}, self.timeout)
        return ""
