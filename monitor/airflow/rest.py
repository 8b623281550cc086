"""Airflow's REST API v2 through apache-airflow-client, with JWT handling and request counting.

Authentication: a given token, or a user and password exchanged at /auth/token for a JWT that
is renewed a minute before it expires (and once more on a 401). Every HTTP request is counted,
so the watcher can show (and the bench can measure) what a cycle costs Airflow.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime

from monitor.airflow.models import Dag, Run

log = logging.getLogger(__name__)

PAGE = 100  # Airflow's default [api] maximum_page_limit for GET lists
BATCH_PAGE = 1000  # the batch endpoint's body page_limit; pagination copes if Airflow caps it


class AirflowError(Exception):
    """Airflow cannot be read: unreachable, too slow, or refusing our credentials (one line)."""

    def __init__(self, message: str, auth: bool = False):
        super().__init__(message)
        self.auth = auth


def _jwt_expiry(token: str) -> float | None:
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return float(json.loads(base64.urlsafe_b64decode(payload))["exp"])
    except (IndexError, KeyError, ValueError, TypeError):
        return None


class AirflowRest:
    def __init__(self, url: str, username: str = "", password: str | None = None, token: str | None = None,
                 timeout: float = 10.0, verify_tls: bool = True):
        from airflow_client import client

        self.url, self.username, self._password, self.timeout = url.rstrip("/"), username, password, timeout
        self._fixed_token = token
        self._token: str | None = token
        self._expires: float | None = _jwt_expiry(token) if token else None
        self.requests = 0  # API requests (not token requests) since start
        self.token_requests = 0
        self._lock = threading.Lock()
        cfg = client.Configuration(host=self.url)
        cfg.verify_ssl = verify_tls
        cfg.retries = 1
        counter = self

        class CountingApiClient(client.ApiClient):
            def call_api(self, *args, **kwargs):
                with counter._lock:
                    counter.requests += 1
                return super().call_api(*args, **kwargs)

        self._client_mod = client
        self._cfg = cfg
        self.api = CountingApiClient(cfg)
        self.dags_api = client.DAGApi(self.api)
        self.runs_api = client.DagRunApi(self.api)
        self.versions_api = client.DagVersionApi(self.api)

    def __repr__(self) -> str:
        return f"AirflowRest({self.url}, user={self.username or '-'})"

    # ------------------------------------------------------------------ auth
    def _ensure_token(self, force: bool = False) -> None:
        if self._fixed_token:
            self._cfg.access_token = self._fixed_token
            return
        if not force and self._token and (self._expires is None or self._expires - time.time() > 60):
            return
        req = urllib.request.Request(
            f"{self.url}/auth/token", data=json.dumps({"username": self.username, "password": self._password}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        self.token_requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                token = json.load(r)["access_token"]
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise AirflowError(f"Airflow refused user {self.username!r} at /auth/token (HTTP {e.code})",
                                   auth=True) from None
            raise AirflowError(f"Airflow /auth/token answered HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            raise AirflowError(f"cannot reach Airflow at {self.url}: {_why(e)}") from None
        except (KeyError, ValueError):
            raise AirflowError("Airflow /auth/token returned no access_token") from None
        self._token, self._expires = token, _jwt_expiry(token)
        self._cfg.access_token = token

    def _call(self, fn, *args, **kwargs):
        """One API call with auth; Airflow's failures become AirflowError."""
        from urllib3.exceptions import HTTPError as Urllib3Error

        exc = self._client_mod.exceptions
        for attempt in (0, 1):
            self._ensure_token(force=attempt == 1)
            try:
                return fn(*args, _request_timeout=self.timeout, **kwargs)
            except exc.ApiException as e:
                if e.status in (401, 403) and attempt == 0 and not self._fixed_token:
                    continue  # token expired early or was revoked: renew once
                if e.status in (401, 403):
                    raise AirflowError(f"Airflow API refused our credentials (HTTP {e.status})", auth=True) from None
                raise AirflowError(f"Airflow API answered HTTP {e.status} {e.reason or ''}".strip()) from None
            except (Urllib3Error, OSError) as e:
                raise AirflowError(f"cannot reach Airflow API at {self.url}: {_why(e)}") from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ reads
    def dags(self) -> Iterator[Dag]:
        """Every non-stale DAG, PAGE per request."""
        offset = 0
        while True:
            page = self._call(self.dags_api.get_dags, limit=PAGE, offset=offset, exclude_stale=True,
                              order_by=["dag_id"])
            for d in page.dags:
                yield Dag(dag_id=d.dag_id, is_paused=bool(d.is_paused), tags=tuple(t.name for t in d.tags or ()),
                          next_run_after=d.next_dagrun_run_after, schedule=d.timetable_summary)
            offset += len(page.dags)
            if not page.dags or offset >= page.total_entries:
                return

    def runs(self, dag_ids: list[str], **filters) -> Iterator[Run]:
        """Runs of many DAGs in one request per page (POST /dags/~/dagRuns/list)."""
        if not dag_ids:
            return
        body_cls = self._client_mod.DAGRunsBatchBody
        offset = 0
        while True:
            body = body_cls(dag_ids=dag_ids, page_limit=BATCH_PAGE, page_offset=offset, order_by="id", **filters)
            page = self._call(self.runs_api.get_list_dag_runs_batch, "~", body)
            for r in page.dag_runs:
                yield to_run(r)
            offset += len(page.dag_runs)
            total = page.total_entries
            if not page.dag_runs or (total is not None and offset >= total) or (
                    total is None and len(page.dag_runs) < BATCH_PAGE):
                return

    def first_parsed(self, since: datetime) -> dict[str, datetime]:
        """When Airflow first parsed each DAG it first parsed after `since`: the creation of its first
        version (GET /dags/~/dagVersions?version_number=1, newest first, one request per 100 DAGs new
        since then). A DAG absent from the answer has been known to Airflow for longer."""
        out: dict[str, datetime] = {}
        offset = 0
        while True:
            page = self._call(self.versions_api.get_dag_versions, "~", version_number=1, order_by=["-id"],
                              limit=PAGE, offset=offset)
            versions = list(page.dag_versions or ())
            for v in versions:
                created = _utc(v.created_at)
                if created is not None and created >= since:
                    out.setdefault(v.dag_id, created)
            offset += len(versions)
            oldest = min((_utc(v.created_at) for v in versions if v.created_at), default=None)
            if not versions or oldest is None or oldest < since or offset >= (page.total_entries or 0):
                return out

    def latest_run(self, dag_id: str, state: str | None = None, order_by: str = "-run_after") -> Run | None:
        page = self._call(self.runs_api.get_dag_runs, dag_id, limit=1, order_by=[order_by],
                          state=[state] if state else None)
        return to_run(page.dag_runs[0]) if page.dag_runs else None


def _why(e: BaseException) -> str:
    """An unreachable API in words (connection refused, a name that does not resolve, a timeout), not the
    name of urllib3's exception class."""
    inner = getattr(e, "reason", None) or e  # MaxRetryError wraps the cause
    text = str(getattr(inner, "args", [""])[-1] if isinstance(getattr(inner, "args", None), tuple) and
               inner.args else inner)
    for needle, said in (("Connection refused", "connection refused"), ("Name or service not known",
                         "the host name does not resolve"), ("timed out", "timed out"),
                         ("No route to host", "no route to host"), ("CERTIFICATE_VERIFY_FAILED",
                         "its TLS certificate is not trusted (airflow.verify_tls)")):
        if needle.lower() in str(e).lower() or needle.lower() in text.lower():
            return f"{said} ({type(inner).__name__})"
    return f"{type(inner).__name__}: {text[:200]}"


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def to_run(r) -> Run:
    return Run(run_id=r.dag_run_id, dag_id=r.dag_id, state=getattr(r.state, "value", str(r.state)),
               run_type=getattr(r.run_type, "value", str(r.run_type)), run_after=_utc(r.run_after),
               start_date=_utc(r.start_date), end_date=_utc(r.end_date))
