"""A generic JSON webhook, Slack-compatible: {"text": ...} plus the structured alert.

Delivery is at least once, so each notice carries a key that is the same every time that notice
is sent (alias, action, when it was decided): the `Idempotency-Key` header and
`airflow_monitor.id` in the body, for the receiver to dedupe on."""

from __future__ import annotations

from monitor.alerting import Refused
from monitor.alerting.http import request
from monitor.alerting.notice import ACTIONS, Notice

ICON = {"open": ":red_circle:", "close": ":large_green_circle:", "remind": ":bell:"}


class WebhookNotifier:
    name = "webhook"

    def __init__(self, url: str, timeout: float = 10.0):
        self.url, self.timeout = url, timeout

    def __repr__(self) -> str:  # the URL of a Slack webhook is a secret
        return "WebhookNotifier(<url>)"

    def send(self, action: str, notice: Notice) -> str:
        if action not in ACTIONS:
            raise Refused(f"unknown action {action!r}")
        text = f"{ICON[action]} [{notice.priority}] {notice.title(action)}: {notice.message}"
        if notice.runbook:
            text += f" (runbook: {notice.runbook})"
        key = f"{notice.alias}/{action}/{notice.at}"
        payload = notice.payload()
        payload.pop("responders", None)
        body = {"text": text, "airflow_monitor": {"id": key, "action": action, **payload}}
        request("POST", self.url, body, {"Idempotency-Key": key}, self.timeout)
        return ""
