"""OpsGenie Alert API v2 (and Jira Service Management's integration API, which takes the same body).

open   -> POST /v2/alerts                                     (alias: OpsGenie dedupes on it)
close  -> POST /v2/alerts/{alias}/close?identifierType=alias
remind -> POST /v2/alerts/{alias}/notes?identifierType=alias
Requests are processed asynchronously: 202 with a requestId means accepted.
"""

from __future__ import annotations

import logging
import urllib.parse

from monitor.alerting import Refused, Retry
from monitor.alerting.http import post_accepted, request
from monitor.alerting.notice import Notice

log = logging.getLogger(__name__)

MESSAGE_MAX, DESCRIPTION_MAX, TAG_MAX, TAGS_MAX, DETAILS_MAX = 130, 15000, 50, 20, 8000


def clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def create_body(notice: Notice, source: str, details_key: str = "details") -> dict:
    """The create-alert body OpsGenie and JSM share (JSM's REST API calls `details` extraProperties)."""
    responders = [{"type": t, k: v} for t, k, v in notice.responders]
    details, size = {}, 0
    for k, v in notice.details.items():
        v = str(v)
        size += len(k) + len(v)
        if size > DETAILS_MAX:
            break
        details[k] = v
    body = {
        "message": clip(notice.message, MESSAGE_MAX),
        "alias": notice.alias,
        "description": clip(notice.description, DESCRIPTION_MAX),
        "responders": responders,
        "tags": [clip(t, TAG_MAX) for t in notice.tags][:TAGS_MAX],
        details_key: details,
        "entity": notice.entity,
        "source": source,
        "priority": notice.priority or "P3",
    }
    return {k: v for k, v in body.items() if v not in ("", [], {})}


class OpsGenieNotifier:
    name = "opsgenie"

    def __init__(self, url: str, api_key: str, source: str = "airflow-monitor", heartbeat: str = "",
                 timeout: float = 10.0):
        self.url, self.source, self.heartbeat_name, self.timeout = url.rstrip("/"), source, heartbeat, timeout
        self._headers = {"Authorization": f"GenieKey {api_key}"}

    def __repr__(self) -> str:  # never shows the key
        return f"OpsGenieNotifier({self.url})"

    def _post(self, path: str, body: dict) -> str:
        return post_accepted(self.url + path, body, self._headers, self.timeout, "OpsGenie")

    def send(self, action: str, notice: Notice) -> str:
        alias = urllib.parse.quote(notice.alias, safe="")
        if action == "open":
            return self._post("/v2/alerts", create_body(notice, self.source))
        note = clip(notice.note or notice.message, 25000)
        if action == "close":
            return self._post(f"/v2/alerts/{alias}/close?identifierType=alias", {"source": self.source, "note": note})
        if action == "remind":
            return self._post(f"/v2/alerts/{alias}/notes?identifierType=alias", {"source": self.source, "note": note})
        raise Refused(f"unknown action {action!r}")

    def heartbeat(self) -> None:
        """Best effort: a missed ping is itself the signal OpsGenie acts on."""
        if not self.heartbeat_name:
            return
        try:
            request("GET", f"{self.url}/v2/heartbeats/{urllib.parse.quote(self.heartbeat_name, safe='')}/ping",
                    None, self._headers, self.timeout)
        except (Retry, Refused) as e:
            log.warning("OpsGenie heartbeat ping failed: %s", e)
