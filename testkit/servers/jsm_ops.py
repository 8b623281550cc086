"""A local server implementing the documented Jira Service Management Operations REST API
(https://api.atlassian.com/jsm/ops/api/{cloudId}/v1/alerts...), for tests.

What it enforces, as documented: Basic auth with an Atlassian account's email and API token; the
site's cloudId in the path; create needs a message of at most 130 characters, priority P1..P5,
responders typed team/user/escalation/schedule, at most 20 tags and string extraProperties; writes
are asynchronous (202 with a requestId; GET /v1/alerts/requests/{requestId} tells the outcome), and
the alert appears in searches only once the request is processed (`processing` seconds later); an
open alert with the same alias is deduplicated (count up, nobody paged again); close, notes and
acknowledge address an alert only by its id (JSDCLOUD-14179: no identifierType=alias); the list
takes a query (alias:"..." and status:open|closed, joined by AND), offset and size, and answers
{values, count, links}. `fail_next(n, status)` makes the next n requests fail.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote, urlparse

from testkit.servers.base import JsonServer
from testkit.servers.opsgenie import Alert as OpsGenieAlert
from testkit.servers.opsgenie import create_problem

_TERM = re.compile(r'\s*(alias|status)\s*:\s*("(?:[^"\\]|\\.)*"|[^\s"]+)\s*')


@dataclass
class Alert(OpsGenieAlert):
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def json(self) -> dict:
        return {"id": self.id, "tinyId": self.tiny_id, "alias": self.alias, "message": self.message,
                "status": self.status, "acknowledged": False, "priority": self.priority, "count": self.count,
                "tags": self.body.get("tags", []), "createdAt": self.created, "updatedAt": self.created}


def parse_query(q: str) -> list[tuple[str, str]]:
    """alias:"a b" AND status:open -> [("alias", "a b"), ("status", "open")]; ValueError otherwise."""
    terms = []
    for i, part in enumerate(re.split(r"\s+AND\s+", q.strip())):
        m = _TERM.fullmatch(part)
        if not m:
            raise ValueError(f"cannot parse query term {i + 1}: {part!r}")
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        terms.append((m.group(1), value))
    return terms


class JsmOpsServer(JsonServer):
    def __init__(self, cloud_id: str, email: str, api_token: str, processing: float = 0.3):
        self.cloud_id, self.processing = cloud_id, processing
        self.auth = "Basic " + base64.b64encode(f"{email}:{api_token}".encode()).decode()
        self.alerts: list[Alert] = []  # processed: visible to searches and actions
        self.requests: list[tuple[str, str, dict]] = []
        self.pages: list[dict] = []  # creates that made a new alert (someone got paged)
        self.closes: list[tuple[str, dict]] = []  # (alias, body) of closes of an open alert
        self.statuses: dict[str, dict] = {}
        self.echo_auth = False  # a 401 that quotes the Authorization header back, as some proxies do
        super().__init__()

    def open_aliases(self) -> set[str]:
        with self.lock:
            return {a.alias for a in self.alerts if a.status == "open"}

    # ------------------------------------------------------------------ HTTP
    def _error(self, h, status: int, message: str) -> None:
        self.reply(h, status, {"message": message, "took": 0.0, "requestId": str(uuid.uuid4())})

    def _later(self, h, action: str, work) -> None:
        """Accept now (202 + requestId), process `processing` seconds later, as JSM does."""
        rid = str(uuid.uuid4())

        def run():
            time.sleep(self.processing)
            with self.lock:
                ok, text, alert = work()
                self.statuses[rid] = {"action": action, "isSuccess": ok, "status": text,
                                      "processedAt": datetime.now(UTC).isoformat(),
                                      "alertId": alert.id if alert else "", "alias": alert.alias if alert else ""}

        threading.Thread(target=run, daemon=True).start()
        self.reply(h, 202, {"result": "Request will be processed", "took": 0.01, "requestId": rid})

    def handle(self, h, method: str) -> None:
        url = urlparse(h.path)
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if method == "POST" else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._error(h, 400, "Could not parse JSON body")
        prefix = f"/jsm/ops/api/{self.cloud_id}/v1"
        with self.lock:
            self.requests.append((method, url.path, body))
            if (status := self.injected_failure()) is not None:
                return self._error(h, status, "Rate limit exceeded" if status == 429 else "Internal error")
            if h.headers.get("Authorization") != self.auth:
                given = f" (got {h.headers.get('Authorization', '')})" if self.echo_auth else ""
                return self._error(h, 401, "Client must be authenticated to access this resource." + given)
            if not url.path.startswith(prefix + "/"):
                return self._error(h, 404, "Site not found")
            path = url.path[len(prefix):]
            if method == "POST" and path == "/alerts":
                return self._create(h, body)
            if method == "GET" and path == "/alerts":
                return self._list(h, {k: v[0] for k, v in parse_qs(url.query).items()})
            m = re.fullmatch(r"/alerts/requests/([^/]+)", path)
            if method == "GET" and m:
                st = self.statuses.get(m.group(1))
                if st is None:
                    return self._error(h, 404, "Request not found (it may still be processing)")
                return self.reply(h, 200, st)
            m = re.fullmatch(r"/alerts/([^/]+)/(close|notes|acknowledge)", path)
            if method == "POST" and m:
                return self._action(h, unquote(m.group(1)), m.group(2), body)
            return self._error(h, 404, f"No such endpoint {method} {path}")

    def _create(self, h, body: dict) -> None:
        if (problem := create_problem(body, "extraProperties")) is not None:
            return self._error(h, 422, problem)
        msg = body["message"]

        def work():
            alias = body.get("alias") or str(uuid.uuid4())
            existing = next((a for a in self.alerts if a.alias == alias and a.status == "open"), None)
            if existing:
                existing.count += 1
                return True, "Alert deduplicated", existing
            alert = Alert(id=f"{uuid.uuid4()}-{int(time.time() * 1000)}", tiny_id=str(len(self.alerts) + 1),
                          alias=alias, message=msg, priority=body.get("priority", "P3"), body=body)
            self.alerts.append(alert)
            self.pages.append(body)
            return True, "Created alert", alert

        self._later(h, "Create", work)

    def _list(self, h, query: dict) -> None:
        try:
            terms = parse_query(query.get("query", ""))
            offset, size = int(query.get("offset", 0)), int(query.get("size", 20))
        except ValueError as e:
            return self._error(h, 400, str(e))
        hits = [a for a in reversed(self.alerts) if all(getattr(a, k) == v for k, v in terms)]
        page = hits[offset: offset + size]
        links = {"next": f"?offset={offset + size}&size={size}"} if offset + size < len(hits) else {}
        self.reply(h, 200, {"values": [a.json() for a in page], "count": len(hits), "links": links})

    def _action(self, h, ident: str, action: str, body: dict) -> None:
        alert = next((a for a in self.alerts if a.id == ident), None)
        if alert is None:  # an alias or tinyId is not an id here
            return self._error(h, 404, f"Alert with id [{ident}] not found")

        def work():
            if action == "close" and alert.status == "open":
                alert.status = "closed"
                self.closes.append((alert.alias, body))
            elif action == "notes":
                alert.notes.append(body.get("note", ""))
            return True, f"{action} done", alert

        self._later(h, action.capitalize(), work)
