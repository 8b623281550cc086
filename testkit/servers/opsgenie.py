"""A local server implementing OpsGenie's documented Alert API v2 (and the same API under
Jira Service Management's /jsm/ops/integration prefix), for tests.

What it enforces, as documented: `Authorization: GenieKey <key>`; create needs a message of at
most 130 characters; priority P1..P5; responders typed team/user/escalation/schedule with id,
name or username; at most 20 tags; requests are accepted asynchronously with 202 and a
requestId; an open alert with the same alias is deduplicated (its count goes up, nobody is
paged again); close/notes take identifierType=id|alias|tiny. `fail_next(n, status)` makes the
next n requests fail (429 or 5xx), like an outage or rate limiting.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlparse

from testkit.servers.base import JsonServer

PRIORITIES = {"P1", "P2", "P3", "P4", "P5"}
RESPONDER_TYPES = {"team", "user", "escalation", "schedule"}


def create_problem(body: dict, details: str = "details") -> str | None:
    """Why a create-alert body is refused (422), as OpsGenie and JSM document it; None if it is fine.
    `details`: the name of the free-form string map (JSM's REST API calls it extraProperties)."""
    msg = body.get("message")
    if not isinstance(msg, str) or not msg.strip():
        return "Message can not be empty."
    if len(msg) > 130:
        return "Message can not be longer than 130 characters."
    if len(body.get("alias", "")) > 512:
        return "Alias can not be longer than 512 characters."
    if "priority" in body and body["priority"] not in PRIORITIES:
        return "Priority should be one of [P1, P2, P3, P4, P5]"
    for r in body.get("responders", []):
        if r.get("type") not in RESPONDER_TYPES or not any(r.get(k) for k in ("id", "name", "username")):
            return "Responder type should be one of team, user, escalation, schedule"
    if len(body.get("tags", [])) > 20:
        return "Tags can not be more than 20."
    if details != "details" and "details" in body:
        return f"Unrecognized field 'details' (extra properties are '{details}')"
    if any(not isinstance(v, str) for v in body.get(details, {}).values()):
        return f"{details[0].upper()}{details[1:]} values should be strings."
    return None


@dataclass
class Alert:
    id: str
    tiny_id: str
    alias: str
    message: str
    priority: str
    body: dict
    status: str = "open"
    count: int = 1
    notes: list = field(default_factory=list)


class OpsGenieServer(JsonServer):
    def __init__(self, api_key: str = "test-genie-key"):
        self.api_key = api_key
        self.alerts: list[Alert] = []
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, body) of every request
        self.pages: list[dict] = []  # create requests that made a new alert (someone got paged)
        self.closes: list[tuple[str, dict]] = []  # (alias, body) of accepted closes of an open alert
        self.heartbeats: list[str] = []
        self.statuses: dict[str, dict] = {}
        self.echo_key = False  # a 401 that quotes the Authorization header back, as some services do
        super().__init__()

    def open_aliases(self) -> set[str]:
        with self.lock:
            return {a.alias for a in self.alerts if a.status == "open"}

    def find(self, alias: str) -> Alert | None:
        with self.lock:
            return next((a for a in reversed(self.alerts) if a.alias == alias), None)

    # ------------------------------------------------------------------ HTTP
    def _accepted(self, h, action: str, ok: bool, status_text: str, alert: Alert | None) -> None:
        rid = str(uuid.uuid4())
        self.statuses[rid] = {"success": ok, "isSuccess": ok, "action": action, "status": status_text,
                              "alertId": alert.id if alert else "", "alias": alert.alias if alert else ""}
        self.reply(h, 202, {"result": "Request will be processed", "took": 0.01, "requestId": rid})

    def _error(self, h, status: int, message: str) -> None:
        self.reply(h, status, {"message": message, "took": 0.0, "requestId": str(uuid.uuid4())})

    def handle(self, h, method: str) -> None:
        url = urlparse(h.path)
        path = url.path
        if path.startswith("/jsm/ops/integration"):
            path = path[len("/jsm/ops/integration"):]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if method == "POST" else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._error(h, 400, "Could not parse JSON body")
        with self.lock:
            self.requests.append((method, path, body))
            if (status := self.injected_failure()) is not None:
                return self._error(h, status, "Rate limit exceeded" if status == 429 else "Internal error")
            if h.headers.get("Authorization") != f"GenieKey {self.api_key}":
                given = h.headers.get("Authorization", "") if self.echo_key else ""
                return self._error(h, 401, f"Could not authenticate {given}".strip())
            if method == "POST" and path == "/v2/alerts":
                return self._create(h, body)
            m = re.fullmatch(r"/v2/alerts/([^/]+)/(close|notes|acknowledge)", path)
            if method == "POST" and m:
                return self._action(h, unquote(m.group(1)), m.group(2), query.get("identifierType", "id"), body)
            m = re.fullmatch(r"/v2/alerts/requests/([^/]+)", path)
            if method == "GET" and m:
                st = self.statuses.get(m.group(1))
                if st is None:
                    return self._error(h, 404, "Request does not exist")
                return self.reply(h, 200, {"data": st, "took": 0.0, "requestId": str(uuid.uuid4())})
            m = re.fullmatch(r"/v2/heartbeats/([^/]+)/ping", path)
            if m:
                self.heartbeats.append(unquote(m.group(1)))
                return self.reply(h, 202, {"result": "PONG - Heartbeat received", "took": 0.0,
                                            "requestId": str(uuid.uuid4())})
            return self._error(h, 404, f"No such endpoint {method} {path}")

    def _create(self, h, body: dict) -> None:
        if (problem := create_problem(body)) is not None:
            return self._error(h, 422, problem)
        msg = body["message"]
        alias = body.get("alias") or str(uuid.uuid4())
        existing = next((a for a in self.alerts if a.alias == alias and a.status == "open"), None)
        if existing:
            existing.count += 1
            return self._accepted(h, "Create", True, "Alert deduplicated", existing)
        alert = Alert(id=str(uuid.uuid4()), tiny_id=str(len(self.alerts) + 1), alias=alias, message=msg,
                      priority=body.get("priority", "P3"), body=body)
        self.alerts.append(alert)
        self.pages.append(body)
        return self._accepted(h, "Create", True, "Created alert", alert)

    def _action(self, h, ident: str, action: str, id_type: str, body: dict) -> None:
        if id_type not in ("id", "alias", "tiny"):
            return self._error(h, 422, "identifierType should be one of id, alias, tiny")
        attr = {"id": "id", "alias": "alias", "tiny": "tiny_id"}[id_type]
        alert = next((a for a in reversed(self.alerts) if getattr(a, attr) == ident), None)
        if alert is None:
            return self._accepted(h, action.capitalize(), False, "Alert does not exist", None)
        if action == "close":
            if alert.status == "open":
                alert.status = "closed"
                self.closes.append((alert.alias, body))
        elif action == "notes":
            alert.notes.append(body.get("note", ""))
        return self._accepted(h, action.capitalize(), True, f"{action} done", alert)
