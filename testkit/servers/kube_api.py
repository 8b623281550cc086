"""A local server implementing the documented subset of the Kubernetes API that the healer uses, for
tests: no registry ships an API server, so this stands in for one, and the real `kubectl` talks to it.
The cluster behind it (kube_cluster.py) runs real processes as pods and controllers that behave as
the real ones do.

What it implements, as documented (kubernetes.io/docs/reference/using-api/api-concepts), in the shapes
a v1.31 kube-apiserver sends (../shared/fixtures/kubernetes):
- discovery (/version, /api, /apis, /api/v1, /apis/{group}/{version}) so that kubectl finds the
  resources; bearer-token authentication (401 Status otherwise), and **RBAC**: a token may be bound to
  the rules of a Role (the chart's, rendered): every other request is refused 403 Forbidden with the
  API server's message, and every rule used is recorded, so a missing or an unused rule shows;
- lists with labelSelector (=, ==, !=, in, notin, existence) and fieldSelector, **paginated** (`limit`,
  an opaque `continue` token, `remainingItemCount` without selectors; a token past its time is
  410 Expired, which the client must answer with a fresh list); items carry no kind/apiVersion;
  watch (ADDED/MODIFIED/DELETED lines); Tables for `kubectl get`;
- pods: get, create, delete (DeleteOptions, preconditions.uid -> 409 Conflict), and the **eviction**
  subresource (policy/v1): a PodDisruptionBudget that allows no disruption answers 429
  TooManyRequests with a DisruptionBudget cause (and Retry-After while the budget is being processed);
- events (core/v1, kube-scheduler's in the events.k8s.io shape), leases and ConfigMaps (create, get,
  replace with metadata.resourceVersion: 409 Conflict when it is not the current one),
  poddisruptionbudgets, deployments/statefulsets (get, patch: a rollout restart), replica sets (get);
- every request body validated against Kubernetes' published JSON schemas (kubernetes-validate,
  strict: unknown fields refused) and refused with 422 Invalid, as the API server would;
- faults: `down` (every connection reset) and `hang` (requests accepted, never answered).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import secrets
import ssl
import threading
import time
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
import kubernetes_validate
import referencing
from kubernetes_validate.utils import schema_contents

from testkit.servers.base import dispatching_handler
from testkit.servers.kube_cluster import Cluster, now_ts

K8S_VERSION = "1.32.0"
CONTINUE_TTL = 300.0  # seconds a continue token stays valid (etcd compaction, in real life)

__all__ = ["KubeApiServer", "Cluster", "now_ts", "validate", "match_labels", "Rbac"]


class Invalid(Exception):
    pass


def validate(body: dict) -> None:
    """Strict validation of a typed object against the published schema (unknown fields refused)."""
    try:
        kubernetes_validate.validate(body, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise Invalid(f"{body.get('kind')} is invalid: {e.message}") from None
    except kubernetes_validate.SchemaNotFoundError:
        raise Invalid(f"no schema for {body.get('apiVersion')} {body.get('kind')}") from None


def validate_as(schema: str, body: dict) -> None:
    """Validation against one schema file of the strict set, e.g. deleteoptions-meta-v1."""
    d = f"kubernetes-json-schema/v{K8S_VERSION}-local-strict"
    s = schema_contents(f"{d}/{schema}.json", K8S_VERSION)
    defs = schema_contents(f"{d}/_definitions.json", K8S_VERSION)
    registry = referencing.Registry()
    registry = referencing.Resource.from_contents(s) @ registry
    registry = referencing.Resource.from_contents(defs) @ registry
    try:
        jsonschema.validators.Draft202012Validator(s, registry=registry).validate(body)
    except jsonschema.ValidationError as e:
        raise Invalid(f"{schema} is invalid: {e.message}") from None


def status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, **({"details": details} if details else {}), "code": code}


# ---------------------------------------------------------------------------- selectors
_REQ = re.compile(r"^\s*(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(sel: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in sel:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def match_labels(sel: str, labels: dict) -> bool:
    for part in _split_selector(sel or ""):
        m = _REQ.match(part)
        if not m:
            raise Invalid(f"unable to parse requirement: {part!r}")
        neg, key, op, val, setop, values = m.groups()
        have = labels.get(key)
        if op in ("=", "=="):
            ok = have == val
        elif op == "!=":
            ok = have != val
        elif setop:
            vals = {v.strip() for v in values.split(",")}
            ok = (have in vals) if setop == "in" else (have not in vals)
        else:
            ok = (key in labels) != bool(neg)
            neg = ""
        if neg and op:
            raise Invalid(f"unable to parse requirement: {part!r}")
        if not ok:
            return False
    return True


def field_value(obj: dict, path: str):
    cur = obj
    for p in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def match_fields(sel: str, obj: dict, allowed: set[str]) -> bool:
    for part in _split_selector(sel or ""):
        m = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise Invalid(f"invalid field selector {part!r}")
        key, op, val = m.groups()
        if key not in allowed:
            raise Invalid(f'field label not supported: {key}')
        have = field_value(obj, key)
        have = "" if have is None else str(have)
        if (have == val) != (op in ("=", "==")):
            return False
    return True


POD_FIELDS = {"metadata.name", "metadata.namespace", "status.phase", "spec.nodeName", "spec.restartPolicy",
              "status.podIP", "spec.schedulerName", "spec.serviceAccountName"}
EVENT_FIELDS = {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                "reason", "reportingComponent", "source", "type", "metadata.name", "metadata.namespace"}


# ---------------------------------------------------------------------------- RBAC
class Rbac:
    """The rules of a Role (rbac.authorization.k8s.io/v1), as the API server's authorizer reads them."""

    def __init__(self, rules: list[dict], subject: str = "system:serviceaccount:airflow:healer"):
        self.rules, self.subject = rules, subject

    def allows(self, verb: str, group: str, resource: str, name: str) -> int | None:
        """The index of the first rule that allows it, or None."""
        for i, r in enumerate(self.rules):
            if (verb in r.get("verbs", []) or "*" in r.get("verbs", [])) and \
                    (group in r.get("apiGroups", []) or "*" in r.get("apiGroups", [])) and \
                    (resource in r.get("resources", []) or "*" in r.get("resources", [])) and \
                    (not r.get("resourceNames") or name in r["resourceNames"]):
                return i
        return None


# ---------------------------------------------------------------------------- Tables for kubectl get
def _age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    s = int((datetime.now(UTC) - datetime.fromisoformat(ts.replace("Z", "+00:00"))).total_seconds())
    return f"{s}s" if s < 120 else f"{s // 60}m"


def table(kind: str, items: list[dict], rv: str) -> dict:
    if kind == "Pod":
        cols = ["Name", "Ready", "Status", "Restarts", "Age"]
        rows = []
        for p in items:
            cs = p["status"].get("containerStatuses", [])
            init = p["status"].get("initContainerStatuses", [])
            waiting = next((c["state"]["waiting"]["reason"] for c in cs if "waiting" in c.get("state", {})
                            and c["state"]["waiting"]["reason"] != "PodInitializing"), None)
            init_waiting = next((c["state"]["waiting"]["reason"] for c in init if "waiting" in c.get("state", {})),
                                None)
            phase = ("Terminating" if p["metadata"].get("deletionTimestamp") else
                     (f"Init:{init_waiting}" if init_waiting else None) or waiting or p["status"]["phase"])
            ready = f"{sum(1 for c in cs if c.get('ready'))}/{len(p['spec']['containers'])}"
            rows.append([p["metadata"]["name"], ready, phase, sum(c.get("restartCount", 0) for c in cs),
                         _age(p["metadata"].get("creationTimestamp"))])
    elif kind == "Event":
        cols = ["Last Seen", "Type", "Reason", "Object", "Message"]
        rows = [[_age(e.get("lastTimestamp") or (e.get("series") or {}).get("lastObservedTime")
                      or e.get("eventTime")), e.get("type", ""), e.get("reason", ""),
                 f"{e['involvedObject'].get('kind', '').lower()}/{e['involvedObject'].get('name', '')}",
                 e.get("message", "")] for e in items]
    else:
        cols = ["Name", "Age"]
        rows = [[o["metadata"]["name"], _age(o["metadata"].get("creationTimestamp"))] for o in items]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": [{"name": c, "type": "integer" if c == "Restarts" else "string", "format":
                                   "name" if c == "Name" else "", "description": c, "priority": 0} for c in cols],
            "rows": [{"cells": r, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                             "metadata": o["metadata"]}} for r, o in zip(rows, items, strict=True)]}


# ---------------------------------------------------------------------------- discovery
RESOURCES = {
    # (group/version) -> [(plural, kind, namespaced, verbs)]
    "v1": [("pods", "Pod", True, ["create", "delete", "get", "list", "watch"]),
           ("pods/eviction", "Eviction", True, ["create"]),
           ("events", "Event", True, ["create", "get", "list", "watch"]),
           ("configmaps", "ConfigMap", True, ["create", "delete", "get", "list", "update", "watch"]),
           ("namespaces", "Namespace", False, ["get", "list"])],
    "coordination.k8s.io/v1": [("leases", "Lease", True, ["create", "get", "list", "update", "watch"])],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True, ["create", "delete", "get", "list"])],
    "apps/v1": [("deployments", "Deployment", True, ["get", "list", "patch", "watch"]),
                ("replicasets", "ReplicaSet", True, ["get", "list"]),
                ("statefulsets", "StatefulSet", True, ["get", "list", "patch"])],
}
KINDS = {plural: kind for rs in RESOURCES.values() for plural, kind, _, _ in rs if "/" not in plural}
GROUP_OF = {kind: gv for gv, rs in RESOURCES.items() for plural, kind, _, _ in rs if "/" not in plural}
PLURAL = {kind: plural for plural, kind in KINDS.items()}


def resource_list(gv: str) -> dict:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": [{"name": p, "singularName": "" if "/" in p else k.lower(), "namespaced": n, "kind": k,
                           "verbs": v} for p, k, n, v in RESOURCES[gv]]}


# ---------------------------------------------------------------------------- the HTTP server
def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (client-go sends a bearer token only over TLS), valid from a day ago, as
    a real API server's is: a client whose clock is behind (a skewed node) must not find it "not yet valid"."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    cert, key = workdir / "apiserver.crt", workdir / "apiserver.key"
    if not cert.exists():
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
        now = dt.datetime.now(dt.UTC)
        import ipaddress

        c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
             .not_valid_after(now + dt.timedelta(days=2))
             .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                         x509.DNSName("localhost")]), critical=False)
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(k, hashes.SHA256()))
        key.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption()))
        cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    return cert, key


class KubeApiServer:
    def __init__(self, workdir: Path, token: str = "", **cluster):
        self.token = token or secrets.token_hex(16)  # the cluster admin's (the tests', kubectl's)
        self.cert, key = self_signed(workdir)
        self.cluster = Cluster(workdir, **cluster)
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.bodies: list[tuple[str, str, dict]] = []
        self.down = False  # while True, every request is refused at the socket (connection reset)
        self.hang = threading.Event()  # while set, every request is accepted and never answered
        self.namespaces = {"airflow"}
        self.roles: dict[str, Rbac] = {}  # token -> the Role it is bound to (others: the admin, or 401)
        self.used: dict[str, set[int]] = {}  # token -> indexes of the rules that allowed a request
        self.forbidden: list[tuple[str, str, str, str, str]] = []  # (token user, verb, group, resource, name)
        self.continue_ttl = CONTINUE_TTL
        self._cache: dict[tuple[str, str, str], tuple[str, bytes]] = {}  # list items as JSON, by resourceVersion
        self._snapshots: dict[str, tuple[str, list]] = {}  # a paginated list's objects, by its continue tokens
        Handler = dispatching_handler(self, ("GET", "POST", "PUT", "PATCH", "DELETE"), "HTTP/1.1")

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):  # the TLS handshake in the connection's own thread
                sock, addr = self.socket.accept()
                return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

            def finish_request(self, request, client_address):
                try:
                    request.settimeout(30)
                    request.do_handshake()
                except (OSError, ssl.SSLError):
                    return
                super().finish_request(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def grant(self, rules: list[dict], subject: str = "system:serviceaccount:airflow:airflow-monitor-heal") -> str:
        """A token bound to these RBAC rules (a ServiceAccount's, through its RoleBinding)."""
        token = secrets.token_hex(16)
        self.roles[token] = Rbac(rules, subject)
        self.used[token] = set()
        return token

    def unused_rules(self, token: str) -> list[dict]:
        return [r for i, r in enumerate(self.roles[token].rules) if i not in self.used[token]]

    def kubeconfig(self, path: Path, namespace: str = "airflow", token: str = "") -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority-data":
                                                      base64.b64encode(self.cert.read_bytes()).decode()}}],
            "users": [{"name": "user", "user": {"token": token or self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user", "namespace": namespace}}],
        }))
        return path

    def close(self) -> None:
        self.hang.clear()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.cluster.close()

    def events(self, ns: str = "airflow", reason_prefix: str = "") -> list[dict]:
        return [e for e in self.cluster.items("Event", ns) if e.get("reason", "").startswith(reason_prefix)]

    def pods(self, ns: str = "airflow", component: str | None = None) -> list[dict]:
        return [p for p in self.cluster.items("Pod", ns)
                if component is None or p["metadata"].get("labels", {}).get("component") == component]

    # -- plumbing
    def _send(self, h, code: int, body: dict | bytes, ctype: str = "application/json",
              headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _body(self, h) -> dict:
        n = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(n) if n else b""
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise Invalid("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise Invalid("the request body is not an object")
        return body

    def handle(self, h, method: str) -> None:
        if self.down:
            h.close_connection = True
            try:
                h.connection.shutdown(2)
            except OSError:
                pass
            return
        while self.hang.is_set():  # accepted, read, never answered (a hung API server or a black hole)
            time.sleep(0.2)
            h.close_connection = True
        url = urlparse(h.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append((method, url.path))
        auth = h.headers.get("Authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if token != self.token and token not in self.roles:
            return self._send(h, 401, status(401, "Unauthorized", "Unauthorized"))
        try:
            body = self._body(h) if method in ("POST", "PUT", "PATCH", "DELETE") else {}
            if body:
                self.bodies.append((method, url.path, body))
            return self._route(h, method, url.path, q, body, token)
        except Invalid as e:
            return self._send(h, 422, status(422, "Invalid", str(e)))

    def _authorize(self, h, token: str, verb: str, gv: str, resource: str, name: str, ns: str | None) -> bool:
        if token == self.token:
            return True
        role = self.roles[token]
        group = "" if gv == "v1" else gv.split("/")[0]
        i = role.allows(verb, group, resource, name)
        if i is not None:
            self.used[token].add(i)
            return True
        self.forbidden.append((role.subject, verb, group, resource, name))
        base = resource.split("/")[0]
        what = f'{base} "{name}"' if name else base
        self._send(h, 403, status(403, "Forbidden", f'{what} is forbidden: User "{role.subject}" cannot {verb} '
                                  f'resource "{resource}" in API group "{group}" in the namespace "{ns}"',
                                  {"name": name, "kind": base} if name else {"kind": base}))
        return False

    def _route(self, h, method: str, path: str, q: dict, body: dict, token: str) -> None:
        if path == "/version":
            return self._send(h, 200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"})
        if path == "/api":
            return self._send(h, 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.removeprefix("https://")}]})
        if path == "/apis":
            groups = [{"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                       "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}}
                      for gv in RESOURCES if "/" in gv]
            return self._send(h, 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if path == "/api/v1":
            return self._send(h, 200, resource_list("v1"))
        m = re.fullmatch(r"/apis/([^/]+)/([^/]+)", path)
        if m and f"{m[1]}/{m[2]}" in RESOURCES:
            return self._send(h, 200, resource_list(f"{m[1]}/{m[2]}"))
        m = re.fullmatch(r"/api/v1/namespaces(?:/([^/]+))?", path)
        if m and method == "GET":
            if m[1]:
                return self._send(h, 200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": m[1]},
                                           "status": {"phase": "Active"}})
            return self._send(h, 200, {"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in sorted(self.namespaces)]})
        m = re.fullmatch(r"/(?:api/v1|apis/([^/]+/[^/]+))(?:/namespaces/([^/]+))?/([a-z]+)(?:/([^/]+))?(?:/([a-z]+))?",
                         path)
        if not m or m[3] not in KINDS:
            return self._send(h, 404, status(404, "NotFound", f"the server could not find the requested resource "
                                                              f"({method} {path})"))
        gv, ns, plural, name, sub = m[1] or "v1", m[2], m[3], m[4], m[5]
        kind = KINDS[plural]
        if GROUP_OF[kind] != gv:
            return self._send(h, 404, status(404, "NotFound", f"no {plural} in {gv}"))
        if sub:
            if (plural, sub, method) != ("pods", "eviction", "POST") or not ns:
                return self._send(h, 404, status(404, "NotFound", f"the server could not find the requested "
                                                                  f"resource ({method} {path})"))
            if not self._authorize(h, token, "create", gv, "pods/eviction", name, ns):
                return None
            return self._evict(h, ns, name, body)
        verb = {"GET": "get" if name else ("watch" if q.get("watch") in ("1", "true") else "list"),
                "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        if not self._authorize(h, token, verb, gv, plural, name or "", ns):
            return None
        if name is None:
            if method == "GET":
                return self._list(h, kind, ns, q)
            if method == "POST" and ns:
                return self._create(h, kind, ns, body)
        elif ns:
            if method == "GET":
                obj = self.cluster.get(kind, ns, name)
                if obj is None:
                    return self._send(h, 404, status(404, "NotFound", f'{plural} "{name}" not found',
                                                     {"name": name, "kind": plural}))
                return self._send(h, 200, obj)
            if method == "DELETE" and kind == "Pod":
                return self._delete_pod(h, ns, name, body)
            if method == "DELETE" and kind in ("PodDisruptionBudget", "ConfigMap"):
                gone = self.cluster.remove(kind, ns, name)
                return self._send(h, 200 if gone else 404, gone or status(404, "NotFound", f'{plural} "{name}" '
                                                                                           "not found"))
            if method == "PUT" and kind in ("Lease", "ConfigMap"):
                return self._replace(h, kind, ns, name, body)
            if method == "PATCH" and kind in ("Deployment", "StatefulSet"):
                return self._patch(h, kind, ns, name, body)
        return self._send(h, 405, status(405, "MethodNotAllowed", f"{method} is not supported on {path}"))

    # -- lists
    def _item_json(self, kind: str, o: dict) -> bytes:
        """An object as a list item (no kind, no apiVersion), cached by its resourceVersion."""
        meta = o["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        cached = self._cache.get(key)
        if cached is not None and cached[0] == meta.get("resourceVersion"):
            return cached[1]
        data = json.dumps({k: v for k, v in o.items() if k not in ("kind", "apiVersion")}).encode()
        self._cache[key] = (meta.get("resourceVersion"), data)
        return data

    def _list(self, h, kind: str, ns: str | None, q: dict) -> None:
        allowed = POD_FIELDS if kind == "Pod" else EVENT_FIELDS if kind == "Event" else {"metadata.name",
                                                                                          "metadata.namespace"}
        lsel, fsel = q.get("labelSelector", ""), q.get("fieldSelector", "")

        def wanted(o: dict) -> bool:
            return (match_labels(lsel, o["metadata"].get("labels") or {})
                    and match_fields(fsel, o, allowed))

        if q.get("watch") in ("1", "true"):
            return self._watch(h, kind, ns, wanted, q)
        limit = int(q.get("limit") or 0)
        start, snap = "", None
        if q.get("continue"):
            try:
                tok = json.loads(base64.urlsafe_b64decode(q["continue"] + "=="))
                start, issued, snap = tok["start"], float(tok["t"]), tok.get("s")
            except (ValueError, KeyError, TypeError):
                return self._send(h, 400, status(400, "BadRequest", "continue key is not valid: illegal base64 data"))
            if time.time() - issued > self.continue_ttl:
                self._snapshots.pop(snap, None)
                fresh = base64.urlsafe_b64encode(json.dumps({"v": "meta.k8s.io/v1", "rv": -1, "start": start,
                                                             "t": time.time()}).encode()).decode().rstrip("=")
                body = status(410, "Expired", "The provided continue parameter is too old to display a consistent "
                              "list result. You can start a new list without the continue parameter, or use the "
                              "continue token in this response to retrieve the remainder of the results. Continuing "
                              "with the provided token results in an inconsistent list - objects that were created, "
                              "modified, or deleted between the time the first chunk was returned and now may show "
                              "up in the list.")
                body["metadata"] = {"continue": fresh}
                return self._send(h, 410, body)
        with self.cluster.cond:
            # a list continued is read from the snapshot its first page was (a consistent list at one
            # resourceVersion, as etcd serves it); the first page takes one
            if snap in self._snapshots:
                rv, objs = self._snapshots[snap]
                objs = [o for o in objs if f"{o['metadata']['namespace']}/{o['metadata']['name']}" > start]
            else:
                objs = [o for o in self.cluster.items(kind, ns)
                        if f"{o['metadata']['namespace']}/{o['metadata']['name']}" > start and wanted(o)]
                rv = str(self.cluster.rv)
                if limit and len(objs) > limit:
                    snap = secrets.token_hex(6)
                    self._snapshots[snap] = (rv, objs)
            if "as=Table" not in h.headers.get("Accept", ""):
                page = objs[:limit] if limit else objs
                items = [self._item_json(kind, o) for o in page]
            else:
                page = [copy.deepcopy(o) for o in (objs[:limit] if limit else objs)]
        if "as=Table" in h.headers.get("Accept", ""):
            return self._send(h, 200, table(kind, page, rv))
        meta: dict = {"resourceVersion": rv}
        if limit and len(objs) > limit:
            last = page[-1]["metadata"]
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(
                {"v": "meta.k8s.io/v1", "rv": int(rv), "start": f"{last['namespace']}/{last['name']}",
                 "t": time.time(), "s": snap}).encode()).decode().rstrip("=")
            if not lsel and not fsel:
                meta["remainingItemCount"] = len(objs) - limit
        elif snap:
            self._snapshots.pop(snap, None)  # the last page: the snapshot is done with
        while len(self._snapshots) > 64:  # lists abandoned midway
            self._snapshots.pop(next(iter(self._snapshots)))
        gv = GROUP_OF[kind]
        data = (b'{"kind":"%sList","apiVersion":"%s","metadata":%s,"items":[' % (kind.encode(), gv.encode(),
                                                                                   json.dumps(meta).encode())
                + b",".join(items) + b"]}")
        return self._send(h, 200, data)

    def _watch(self, h, kind: str, ns: str | None, wanted, q: dict) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        deadline = time.monotonic() + float(q.get("timeoutSeconds") or 300)

        def chunk(obj: dict) -> None:
            data = (json.dumps(obj) + "\n").encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        bookmarks = q.get("allowWatchBookmarks") in ("1", "true")
        next_bookmark = time.monotonic() + 10
        try:
            with self.cluster.cond:
                since = int(q.get("resourceVersion") or 0)
                oldest = self.cluster.log[0][0] if self.cluster.log else self.cluster.rv
                if since and since < oldest - 1:  # the change log no longer reaches back that far
                    chunk({"type": "ERROR", "object": status(410, "Expired", f"too old resource version: {since} "
                                                                              f"({oldest - 1})")})
                    h.wfile.write(b"0\r\n\r\n")
                    h.close_connection = True
                    return
                if not since:
                    for o in self.cluster.items(kind, ns):
                        if wanted(o):
                            chunk({"type": "ADDED", "object": o})
                    since = self.cluster.rv
            while time.monotonic() < deadline and not self.down:
                if bookmarks and time.monotonic() >= next_bookmark:  # as the API server sends them (about 1/min)
                    next_bookmark = time.monotonic() + 10
                    with self.cluster.cond:  # the store's current version: the watcher may resume from it
                        since = max(since, self.cluster.rv)
                    chunk({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": GROUP_OF[kind],
                                                          "metadata": {"resourceVersion": str(since)}}})
                with self.cluster.cond:
                    self.cluster.cond.wait(timeout=1.0)
                    news = [(rv, t, o) for rv, k, t, o in self.cluster.log
                            if rv > since and k == kind and (ns is None or o["metadata"]["namespace"] == ns)]
                for rv, t, o in news:
                    since = rv
                    if wanted(o):
                        chunk({"type": t, "object": o})
            h.wfile.write(b"0\r\n\r\n")
        except (OSError, ValueError):
            pass
        h.close_connection = True

    # -- writes
    def _create(self, h, kind: str, ns: str, body: dict) -> None:
        validate(body)
        meta = body.get("metadata") or {}
        if meta.get("namespace") not in (None, ns):
            raise Invalid(f"the namespace of the object ({meta['namespace']}) does not match the namespace on the "
                          f"request ({ns})")
        if kind == "Pod":
            return self._send(h, 201, self.cluster.create_pod(ns, body))
        if not meta.get("name"):
            raise Invalid(f"{kind}.metadata.name: Required value")
        if self.cluster.get(kind, ns, meta["name"]) is not None:
            return self._send(h, 409, status(409, "AlreadyExists", f'{PLURAL[kind]} "{meta["name"]}" already exists',
                                             {"name": meta["name"], "kind": PLURAL[kind]}))
        if kind == "Event" and (body.get("involvedObject") or {}).get("namespace") not in (None, ns):
            raise Invalid("Event.involvedObject.namespace: does not match event.namespace")
        if kind == "Lease":
            spec = body.get("spec") or {}
            if spec.get("leaseDurationSeconds") is not None and spec["leaseDurationSeconds"] <= 0:
                raise Invalid("Lease.spec.leaseDurationSeconds: must be greater than 0")
        obj = copy.deepcopy(body)
        obj["metadata"] = {**meta, "namespace": ns}
        obj["metadata"].pop("resourceVersion", None)
        if kind == "PodDisruptionBudget":
            obj["metadata"]["generation"] = 1
        return self._send(h, 201, self.cluster.put(kind, obj))

    def _replace(self, h, kind: str, ns: str, name: str, body: dict) -> None:
        """PUT with metadata.resourceVersion: compare-and-swap (409 Conflict on a stale version)."""
        validate(body)
        group = GROUP_OF[kind].split("/")[0] if "/" in GROUP_OF[kind] else ""
        qualified = f"{PLURAL[kind]}{'.' + group if group else ''}"
        with self.cluster.cond:
            cur = self.cluster.get(kind, ns, name)
            if cur is None:
                return self._send(h, 404, status(404, "NotFound", f'{qualified} "{name}" not found'))
            want = (body.get("metadata") or {}).get("resourceVersion")
            if not want:
                raise Invalid("metadata.resourceVersion: Invalid value: 0x0: must be specified for an update")
            if want != cur["metadata"]["resourceVersion"]:
                return self._send(h, 409, status(409, "Conflict", f'Operation cannot be fulfilled on {qualified} '
                                                 f'"{name}": the object has been modified; please apply your changes '
                                                 f'to the latest version and try again',
                                                 {"name": name, "group": group, "kind": PLURAL[kind]}))
            obj = copy.deepcopy(body)
            obj["metadata"] = {**cur["metadata"], **{k: v for k, v in obj["metadata"].items()
                                                     if k in ("labels", "annotations")}}
            self.cluster.objects[(kind, ns, name)] = obj
            self.cluster._bump(kind, "MODIFIED", obj)
        return self._send(h, 200, obj)

    def _delete_pod(self, h, ns: str, name: str, body: dict) -> None:
        if body:
            validate_as("deleteoptions-meta-v1", body)
        pod = self.cluster.get("Pod", ns, name)
        if pod is None:
            return self._send(h, 404, status(404, "NotFound", f'pods "{name}" not found', {"name": name,
                                                                                           "kind": "pods"}))
        want = (body.get("preconditions") or {}).get("uid")
        if want and want != pod["metadata"]["uid"]:
            return self._send(h, 409, self._uid_conflict(name, want, pod["metadata"]["uid"]))
        grace = body.get("gracePeriodSeconds")
        return self._send(h, 200, self.cluster.delete_pod(ns, name, None if grace is None else float(grace)))

    @staticmethod
    def _uid_conflict(name: str, want: str, have: str) -> dict:
        return status(409, "Conflict", f'Operation cannot be fulfilled on Pod "{name}": the UID in the precondition '
                      f"({want}) does not match the UID in record ({have}). The object might have been deleted and "
                      "then recreated", {"name": name, "kind": "Pod"})

    def _evict(self, h, ns: str, name: str, body: dict) -> None:
        """POST pods/{name}/eviction: as the API server's eviction REST handler does it."""
        validate(body)
        pod = self.cluster.get("Pod", ns, name)
        if pod is None:
            return self._send(h, 404, status(404, "NotFound", f'pods "{name}" not found', {"name": name,
                                                                                           "kind": "pods"}))
        opts = body.get("deleteOptions") or {}
        want = (opts.get("preconditions") or {}).get("uid")
        if want and want != pod["metadata"]["uid"]:
            return self._send(h, 409, self._uid_conflict(name, want, pod["metadata"]["uid"]))
        done = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
        if pod["status"].get("phase") in ("Succeeded", "Failed") or pod["metadata"].get("deletionTimestamp"):
            self.cluster.delete_pod(ns, name)
            return self._send(h, 201, done)
        pdbs = [p for p in self.cluster.items("PodDisruptionBudget", ns) if match_labels(
            ",".join(f"{k}={v}" for k, v in (p["spec"].get("selector", {}).get("matchLabels") or {}).items()),
            pod["metadata"].get("labels") or {})]
        if len(pdbs) > 1:
            return self._send(h, 500, status(500, "InternalError", "This pod has more than one PodDisruptionBudget, "
                                             "which the eviction subresource does not support."))
        if pdbs:
            pdb = pdbs[0]
            pname = pdb["metadata"]["name"]
            cause = "Cannot evict pod as it would violate the pod's disruption budget."
            if pname in self.cluster.pdb_lagging:
                return self._send(h, 429, status(429, "TooManyRequests", cause, {"causes": [
                    {"reason": "DisruptionBudget", "message": f"The disruption budget {pname} is still being "
                                                              "processed by the server."}], "retryAfterSeconds": 10}),
                                  headers={"Retry-After": "10"})
            allowed, healthy, desired, _ = self.cluster.disruptions_allowed(pdb)
            if allowed < 1:
                return self._send(h, 429, status(429, "TooManyRequests", cause, {"causes": [
                    {"reason": "DisruptionBudget", "message": f"The disruption budget {pname} needs {desired} "
                                                              f"healthy pods and has {healthy} currently"}]}))
        grace = opts.get("gracePeriodSeconds")
        self.cluster.delete_pod(ns, name, None if grace is None else float(grace))
        return self._send(h, 201, done)

    def _patch(self, h, kind: str, ns: str, name: str, body: dict) -> None:
        ctype = h.headers.get("Content-Type", "")
        if ctype.split(";")[0] not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            return self._send(h, 415, status(415, "UnsupportedMediaType", "the body of the request was in an "
                                             "unknown format - accepted media types include: "
                                             "application/merge-patch+json, application/strategic-merge-patch+json"))

        def merge(a, b):
            if not isinstance(b, dict):
                return b
            out = dict(a) if isinstance(a, dict) else {}
            for k, v in b.items():
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = merge(out.get(k), v)
            return out

        with self.cluster.cond:
            cur = self.cluster.get(kind, ns, name)
            if cur is None:
                return self._send(h, 404, status(404, "NotFound", f'{PLURAL[kind]}.apps "{name}" not found'))
            new = merge(copy.deepcopy(cur), body)
            validate(new)
            if new["spec"] != cur["spec"]:
                new["metadata"]["generation"] = cur["metadata"].get("generation", 1) + 1
            self.cluster.objects[(kind, ns, name)] = new
            self.cluster._bump(kind, "MODIFIED", new)
            if kind == "Deployment":
                self.cluster._reconcile(new)
            else:
                self.cluster._reconcile_sts(new)
        return self._send(h, 200, new)
