"""Read the probe's observation from Airflow's REST API v2 (JWT auth), for set-ups where the probe
may not open the metadata database. Standard library only (urllib), to stay fast.

Limits of this source: the API cannot filter task instances by queued_by_job_id, so with
`--local` only the heartbeat is per host; queued ages come from up to 100 queued tasks.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from monitor.probe.db import SourceError, parse_ts
from monitor.probe.rules import Observation, Thresholds, needs_finished
from monitor.probe.settings import COMPONENTS

TI = "/api/v2/dags/~/dagRuns/~/taskInstances"


class Api:
    def __init__(self, url: str, *, token: str | None = None, username: str | None = None,
                 password: str | None = None, timeout: float = 0.8):
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError("--api-url must be an http(s) URL of the Airflow API server", True)
        if "@" in parts.netloc:  # credentials in the URL: used to log in, never printed
            userinfo, _, hostport = parts.netloc.rpartition("@")
            user, _, pw = userinfo.partition(":")
            username = username or urllib.parse.unquote(user) or None
            password = password or urllib.parse.unquote(pw) or None
            parts = parts._replace(netloc=hostport)
        if parts.path.rstrip("/").endswith(("/api/v2", "/api/v1", "/api")):
            base = urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/").rsplit("/api", 1)[0],
                                                          netloc=parts.netloc.rpartition("@")[2]))
            raise SourceError(f"--api-url is the API server's base URL ({base}), without {parts.path.rstrip('/')}",
                              True)
        url = urllib.parse.urlunsplit(parts)
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token
        self.username, self.password = username, password

    def _token(self) -> str:
        if self.token:
            return self.token
        if not self.username:
            raise SourceError("the API source needs a token or a username and password", True)
        if not self.password:
            raise SourceError(f"the API user {self.username!r} has no password: set AIRFLOW_MONITOR_AIRFLOW_PASSWORD "
                              "or --api-password-file (or give a token)", True)
        body = json.dumps({"username": self.username, "password": self.password or ""}).encode()
        data = self._request("POST", "/auth/token", body=body, auth=False)
        self.token = data.get("access_token")
        if not self.token:
            raise SourceError("the API answered /auth/token without an access_token")
        return self.token

    def _request(self, method: str, path: str, params: dict | None = None, body: bytes | None = None,
                 auth: bool = True) -> dict:
        q = ("?" + urllib.parse.urlencode(params, doseq=True)) if params else ""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token()}"
        req = urllib.request.Request(self.url + path + q, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            hint = {400: " (the request was refused as invalid: check the user, password or token)",
                    401: " (authentication failed)", 403: " (the user may not read this)",
                    404: " (not an Airflow 3 API server at this URL?)",
                    405: " (is --api-url the API server's base URL, without /api/v2?)",
                    422: " (the request was refused as invalid: check the user, password or token)"}.get(e.code, "")
            raise SourceError(f"Airflow API {method} {path} answered HTTP {e.code}{hint}",
                              e.code in (400, 401, 403, 404, 405, 422)) from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise SourceError(f"Airflow API at {self.url} unreachable: {reason}") from None
        except ValueError:
            raise SourceError(f"Airflow API {path} did not answer JSON") from None

    def observe(self, component: str, th: Thresholds, *, hostname: str | None = None, tasks: bool = True,
                now: datetime | None = None) -> Observation:
        now = now or datetime.now(UTC)
        params = {"job_type": COMPONENTS[component][0], "job_state": "running",
                  "order_by": "-latest_heartbeat", "limit": 1}
        if hostname:
            params["hostname"] = hostname
        jobs = self._request("GET", "/api/v2/jobs", params).get("jobs") or []
        job = jobs[0] if jobs else None
        obs = Observation(now=now, component=component, job_id=job["id"] if job else None,
                          hostname=job["hostname"] if job else hostname,
                          heartbeat=parse_ts(job["latest_heartbeat"]) if job else None)
        if not tasks:
            return obs
        queued = self._request("GET", TI, {"state": "queued", "limit": 100})
        cutoff = now - timedelta(seconds=th.queued_grace)
        times = [t for t in (parse_ts(i.get("queued_when")) for i in queued.get("task_instances", [])) if t]
        stuck = sum(1 for t in times if t < cutoff)
        running = 0
        if stuck:
            running = self._request("GET", TI, {"state": "running", "limit": 1}).get("total_entries", 0)
        obs = replace(obs, queued=queued.get("total_entries", 0), queued_stuck=stuck,
                      oldest_queued=min(times) if times else None, running=running)
        if needs_finished(obs):
            since = (now - timedelta(seconds=th.finished_window)).isoformat()
            done = self._request("GET", TI, {"end_date_gte": since, "limit": 1}).get("total_entries", 0)
            obs = replace(obs, finished_recently=done)
        return obs
