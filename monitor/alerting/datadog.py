"""Datadog: an event per open/close/remind and a service check per (DAG, rule), via the
`datadog` package's HTTP API (/api/v1/events, /api/v1/check_run)."""

from __future__ import annotations

import socket

from monitor.alerting import Refused, Retry
from monitor.alerting.notice import Notice

ALERT_TYPE = {"open": "error", "close": "success", "remind": "warning"}
STATUS = {"open": 2, "remind": 2, "close": 0}  # service check: 0 OK, 2 CRITICAL


class DatadogNotifier:
    name = "datadog"

    def __init__(self, api_url: str, api_key: str, service_check: str = "airflow.sla", tags: tuple = (),
                 timeout: float = 10.0):
        from datadog import api, initialize

        initialize(api_key=api_key, api_host=api_url, mute=False, hostname=socket.gethostname())
        api._timeout = timeout
        api._max_retries = 0  # the outbox retries, with backoff
        self.api, self.url, self.check, self.tags = api, api_url, service_check, list(tags)

    def __repr__(self) -> str:
        return f"DatadogNotifier({self.url})"

    def send(self, action: str, notice: Notice) -> str:
        from datadog.api.exceptions import DatadogException

        if action not in ALERT_TYPE:
            raise Refused(f"unknown action {action!r}")
        # the healer's notices name what they are about themselves (subject, release)
        about = list(notice.dd_tags) or [f"dag_id:{notice.subject}", f"rule:{notice.rule}"]
        tags = [*self.tags, *about, f"priority:{notice.priority}", f"reason:{notice.reason}"]
        text = notice.note if action == "close" and notice.note else notice.message
        if notice.runbook:
            text += f"\nRunbook: {notice.runbook}"
        try:
            reply = self.api.Event.create(
                title=f"{notice.title(action)}: {notice.entity_title or notice.subject} ({notice.rule})", text=text,
                tags=tags,
                alert_type=ALERT_TYPE[action], aggregation_key=notice.alias, source_type_name="airflow",
                priority="normal")
            self._check_errors(reply)
            self._check_errors(self.api.ServiceCheck.check(
                check=notice.service_check or self.check, host_name=socket.gethostname(),
                status=STATUS[action], message=text[:500], tags=tags))
        except DatadogException as e:
            raise Retry(f"Datadog: {type(e).__name__}: {e}") from None
        except OSError as e:
            raise Retry(f"cannot reach Datadog: {e}") from None
        return str(reply.get("event", {}).get("id", "")) if isinstance(reply, dict) else ""

    @staticmethod
    def _check_errors(reply) -> None:
        if isinstance(reply, dict) and reply.get("errors"):
            raise Retry(f"Datadog: {reply['errors']}")
