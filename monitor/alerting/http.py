"""One JSON request over HTTP(S) with the standard library, its outcome as Retry/Refused."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from monitor.alerting import Refused, Retry
from monitor.redact import redact

RETRY_STATUS = {401, 403, 408, 409, 425, 429}  # a key can be fixed; 409/425: try again later


def request(method: str, url: str, body: dict | None = None, headers: dict | None = None,
            timeout: float = 10.0) -> tuple[int, dict | str]:
    """Send; return (status, parsed body) for 2xx, raise Retry or Refused otherwise.

    Error messages name the status and the service's own words, never the headers (keys).
    """
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Accept": "application/json",
                                          "User-Agent": "airflow-monitor", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read().decode(errors="replace")
            status = r.status
    except urllib.error.HTTPError as e:
        # redact first, then cut: a key quoted back across the cut would leave its prefix
        text = redact(e.read(65536).decode(errors="replace")).replace("\n", " ")[:300]
        after = e.headers.get("Retry-After") if e.headers else None
        msg = f"HTTP {e.code} from {_host(url)}: {text}"
        if e.code >= 500 or e.code in RETRY_STATUS:
            try:
                wait = float(after) if after else None
            except ValueError:
                wait = None
            raise Retry(msg, wait) from None
        raise Refused(msg) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Retry(f"cannot reach {_host(url)}: {redact(str(reason))}") from None
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, raw


def _host(url: str) -> str:
    """host[:port] of a URL, never its userinfo."""
    return urllib.parse.urlparse(url).netloc.rpartition("@")[2]


def post_accepted(url: str, body: dict, headers: dict, timeout: float, service: str) -> str:
    """POST to an API that accepts asynchronously (OpsGenie, JSM): 202 or a requestId; returns the id."""
    status, reply = request("POST", url, body, headers, timeout)
    request_id = reply.get("requestId", "") if isinstance(reply, dict) else ""
    if status != 202 and not request_id:
        raise Refused(f"unexpected HTTP {status} from {service} without a requestId")
    return request_id
