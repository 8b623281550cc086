"""Jira Service Management Operations REST API (api.atlassian.com/jsm/ops/api/{cloudId}/v1), where
OpsGenie's customers move (OpsGenie stops on 5 April 2027).

Basic auth with an Atlassian account's email and API token. Writes are asynchronous: 202 with a
requestId means accepted. The API addresses an alert only by its id (not by alias; JSDCLOUD-14179),
so closing and reminding first find the open alert by its alias:

open   -> POST /v1/alerts                        (alias: JSM dedupes an open alert on it)
close  -> GET /v1/alerts?query=alias:"A" AND status:open, then POST /v1/alerts/{id}/close
remind -> the same lookup, then POST /v1/alerts/{id}/notes

An alias with no alert at all is retried: the create it follows may still be processing. An alias
whose alerts are all closed (a person closed it) needs nothing more.
"""

from __future__ import annotations

import base64
import urllib.parse

from monitor.alerting import Refused, Retry
from monitor.alerting.http import post_accepted, request
from monitor.alerting.notice import Notice
from monitor.alerting.opsgenie import clip, create_body
from monitor.redact import secret

NOTE_MAX = 25000


def alias_query(alias: str, open_only: bool) -> str:
    """A JSM alert search for one alias (a quoted phrase: aliases hold ':' and '-')."""
    phrase = alias.replace("\\", "\\\\").replace('"', '\\"')
    return f'alias:"{phrase}"' + (" AND status:open" if open_only else "")


class JsmNotifier:
    name = "jsm"

    def __init__(self, url: str, cloud_id: str, email: str, api_token: str, source: str = "airflow-monitor",
                 timeout: float = 10.0):
        self.base = f"{url.rstrip('/')}/jsm/ops/api/{urllib.parse.quote(cloud_id, safe='')}/v1"
        self.source, self.timeout = source, timeout
        # the encoded credential is a secret of its own: a service that echoes the header back must not leak it
        basic = secret(base64.b64encode(f"{email}:{api_token}".encode()).decode())
        self._headers = {"Authorization": f"Basic {basic}"}

    def __repr__(self) -> str:  # never shows the token
        return f"JsmNotifier({self.base})"

    def _post(self, path: str, body: dict) -> str:
        return post_accepted(self.base + path, body, self._headers, self.timeout, "JSM")

    def _alerts(self, alias: str, open_only: bool) -> list[dict]:
        query = urllib.parse.urlencode({"query": alias_query(alias, open_only), "size": 20})
        _, reply = request("GET", f"{self.base}/alerts?{query}", None, self._headers, self.timeout)
        values = reply.get("values") if isinstance(reply, dict) else None
        if not isinstance(values, list):
            raise Retry("JSM answered the alert search without a list of values")
        return [a for a in values if isinstance(a, dict) and a.get("alias") == alias and a.get("id")]

    def _open_ids(self, alias: str) -> list[str]:
        """The ids of the open alerts with this alias; [] when all are closed; Retry when there is none
        yet (the create is still being processed)."""
        found = self._alerts(alias, open_only=True)
        if found:
            return [a["id"] for a in found]
        if self._alerts(alias, open_only=False):
            return []
        raise Retry(f"no JSM alert with alias {alias!r} yet (its create may still be processing)")

    def send(self, action: str, notice: Notice) -> str:
        if action == "open":
            return self._post("/alerts", create_body(notice, self.source, details_key="extraProperties"))
        if action not in ("close", "remind"):
            raise Refused(f"unknown action {action!r}")
        note = clip(notice.note or notice.message, NOTE_MAX)
        verb = "close" if action == "close" else "notes"
        ids = []
        for alert_id in self._open_ids(notice.alias):
            ids.append(self._post(f"/alerts/{urllib.parse.quote(alert_id, safe='')}/{verb}",
                                  {"note": note, "source": self.source}))
        return ",".join(ids)
