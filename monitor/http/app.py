"""The routes every one of our HTTP ports has, written once: /metrics, /-/healthy, /-/ready (and a
service's own extras, such as the bridge's /-/ready/sla and the lifecycle-gated POST /-/reload).

- /-/healthy: 200 while the process can do its work (the kubelet's liveness probe); 503 with why
  not, for instance a cycle that has not completed for several intervals.
- /-/ready: 200 once it can serve (the snapshot applied, the state file usable); 503 with why not.
- Without valid credentials (basic auth on), the probe paths answer with their status and one
  word; the reason is for an authenticated caller.
- POST or PUT /-/reload: 403 unless the lifecycle API is enabled (as statsd_exporter's
  --web.enable-lifecycle); the answer's body says what happened, failure included.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

from monitor.http.server import Request, Response, text

Probe = Callable[[], str]  # "" when fine, else one line saying why not


def _probe(req: Request, why: str, bad: str) -> Response:
    if why:
        return text(503, why if req.authed else bad)
    return text(200, "OK")


class Service:
    def __init__(self, metrics: Callable[[Request], Response], *, ready: Probe = lambda: "",
                 healthy: Probe = lambda: "", index: str = "airflow-monitor",
                 reload: Callable[[], tuple[bool | None, str]] | None = None, lifecycle: bool = False,
                 probes: dict[str, Callable[[Request], Response]] | None = None,
                 pages: dict[str, Callable[[Request], Response]] | None = None):
        self.metrics, self.ready, self.healthy = metrics, ready, healthy
        self.index, self.reload, self.lifecycle = index, reload, lifecycle
        self.probes = probes or {}  # more probe paths (GET, answered from the probe pool)
        self.pages = pages or {}  # more GET paths (behind basic auth, as /metrics is), such as /-/dropped

    def __call__(self, req: Request) -> Response:
        if req.method in ("GET", "HEAD"):
            if req.path == "/metrics":
                return self.metrics(req)
            if req.path == "/-/healthy":
                return _probe(req, self.healthy(), "unhealthy")
            if req.path == "/-/ready":
                return _probe(req, self.ready(), "not ready")
            if req.path in self.probes:
                return self.probes[req.path](req)
            if req.path in self.pages:
                return self.pages[req.path](req)
            if req.path == "/":
                return text(200, self.index)
            return text(404, "not found")
        if req.method in ("POST", "PUT") and req.path == "/-/reload" and self.reload is not None:
            if not self.lifecycle:
                return text(403, "Lifecycle API is not enabled (--web-enable-lifecycle); SIGHUP reloads")
            ok, message = self.reload()  # ok None: it could not be asked (503)
            return text(200 if ok else 503 if ok is None else 500, message)
        return text(405 if req.path in ("/metrics", "/-/healthy", "/-/ready") else 404,
                    f"{req.method} {req.path}: not supported")

    @property
    def probe_paths(self) -> frozenset[str]:
        return frozenset({"/-/healthy", "/-/ready", *self.probes})


def registry_metrics(registry) -> Callable[[Request], Response]:
    """/metrics of a prometheus_client registry: the format the scraper asks for, gzip when it takes it."""
    from prometheus_client.exposition import choose_encoder

    def metrics(req: Request) -> Response:
        encoder, content_type = choose_encoder(req.header("accept"))
        body = encoder(registry)
        headers = []
        if "gzip" in req.header("accept-encoding"):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        return Response(200, body, content_type=content_type, headers=headers)

    return metrics


class HttpCollector:
    """A server's refusals on /metrics as `<prefix>_http_refused_total{reason}` (and its web config's)."""

    def __init__(self, prefix: str, server):
        self.prefix, self.server = prefix, server

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        from monitor.http.server import REFUSALS

        refused = CounterMetricFamily(f"{self.prefix}_http_refused", "HTTP connections or requests refused or cut, "
                                      "by reason", labels=["reason"])
        counts = dict(self.server.stats.refused)
        for reason in sorted(set(REFUSALS) | set(counts)):
            refused.add_metric([reason], counts.get(reason, 0))
        yield refused
        web = self.server.web
        yield CounterMetricFamily(f"{self.prefix}_web_config_refused", "Changes of the web config file refused "
                                  "(invalid, or turning TLS or basic auth off); the last config stays",
                                  value=web.refused if web is not None else 0)
