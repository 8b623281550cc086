"""Talking to the Kubernetes API with the `kubernetes` package: the release's pods and their Warning
Events, evicting or deleting a pod (or restarting its workload), writing Events of our own.

Built for a cluster as big as a shared Airflow's (10,000 KubernetesExecutor worker pods, 50,000
Events): the components are listed by label, the worker pods only when Pending (a field selector),
Events only when some pod needs explaining; every list is paginated (`limit`/`continue`, relisted
on 410 Expired) and read as plain JSON into the few fields the rules use (monitor.kube.models),
never into the library's full object models.

Every call ends within its timeout on every supported `kubernetes` version: a (connect, read)
tuple (a float was ignored before 36.0), and urllib3's retries off (they made each timeout four
times longer). A read timeout bounds each wait for bytes, not the whole answer, so an answer is read
in pieces against a deadline (the socket's timeout is what is left of it): an API server, or a proxy
in front of it, that trickles a reply ends the call at its timeout too. Reads are retried once on a
connection error or an answer cut short, writes never. Every failure is a KubeError of one line
(status and the API's own message).

The API server's clock (the Date header of its answers) is the healer's clock for what it keeps
in the cluster (`ClusterClock`): every replica judges the times in the shared state (a restart's
time, a cooldown, a verify deadline) on the same clock, whatever its own node's says.
"""

from __future__ import annotations

import http.client
import json
import logging
import secrets
import statistics
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from sys import intern

from monitor.kube.models import Container, Event, Pod, cluster_text

log = logging.getLogger(__name__)

COMPONENT_LABEL, RELEASE_LABEL = "component", "release"  # the official Airflow chart's labels
COMPONENTS = ("scheduler", "api-server", "triggerer", "dag-processor")
SOURCE = "airflow-monitor"
PAGE = 500  # items per list request
EVENT_SELECTOR = "involvedObject.kind=Pod,type=Warning"  # every reason the rules read is a Warning
EVENT_TEXT = 256  # characters kept of an Event's message (the recorder allows 1,024; the cache holds 50,000)


def json_object(text) -> dict:
    """JSON text that must be an object; ValueError says what it is instead ("not JSON", ...)."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


class KubeError(Exception):
    def __init__(self, message: str, status: int | None = None, reason: str = "", causes: tuple = (),
                 retry_after: float | None = None):
        super().__init__(message)
        self.status, self.reason, self.causes, self.retry_after = status, reason, causes, retry_after


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(v) -> datetime | None:
    if not v:
        return None
    try:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    except ValueError:
        return None


def api_error(what: str, e: Exception) -> KubeError:
    """One line for any failure of a call: the API's Status (reason, causes, Retry-After) when there is one."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(e, ApiException):
        msg, reason, causes, after = e.reason or "", "", (), None
        try:
            st = json.loads(e.body or "{}")
            msg = st.get("message") or msg
            reason = st.get("reason") or ""
            details = st.get("details") or {}
            causes = tuple(cluster_text(c.get("message")) for c in details.get("causes") or [] if c.get("message"))
            after = details.get("retryAfterSeconds")
        except (ValueError, AttributeError, TypeError):
            pass
        header = (e.headers or {}).get("Retry-After") if hasattr(e, "headers") else None
        if after is None and header:
            try:
                after = float(header)
            except ValueError:
                pass
        return KubeError(f"{what}: HTTP {e.status}: {cluster_text(msg, 300)}", e.status, reason, causes, after)
    return KubeError(f"{what}: {type(e).__name__}: {cluster_text(str(e), 300)}")


class ClusterClock:
    """The API server's clock, from the Date header of its answers (whole seconds; the offset is the
    median of the last samples, each taken at the middle of its request): `time()` is what the API
    server's clock says now. Before any answer it is this process's own clock."""

    SAMPLES = 15

    def __init__(self):
        self._samples: deque[float] = deque(maxlen=self.SAMPLES)
        self.offset = 0.0

    def saw(self, date: str | None, sent: float, received: float) -> None:
        if not date:
            return
        try:
            server = parsedate_to_datetime(date).timestamp() + 0.5  # the header's second, on average
        except (TypeError, ValueError, IndexError, OverflowError):
            return
        self._samples.append(server - (sent + received) / 2)
        self.offset = statistics.median(self._samples)

    def time(self) -> float:
        return time.time() + self.offset

    __call__ = time

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)


def load_api_client(kubeconfig: str = "", context: str = ""):
    """An ApiClient from a kubeconfig (file, context) or, with neither, the pod's service account,
    with urllib3's retries off (a retry per call is ours to decide)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if kubeconfig or context:
            config.load_kube_config(config_file=kubeconfig or None, context=context or None,
                                    client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException as e:
        where = kubeconfig or "the in-cluster service account (set kubernetes.kubeconfig outside a cluster)"
        raise KubeError(f"cannot load Kubernetes credentials from {where}: {e}") from None
    except OSError as e:
        raise KubeError(f"cannot read kubeconfig {kubeconfig}: {e.strerror or e}") from None
    cfg.retries = False
    return client.ApiClient(cfg)


def read_body(resp, deadline: float, timeout: float) -> bytes:
    """An answer's body (urllib3, not preloaded), read in pieces of at most one wait for bytes each, the
    socket's timeout set to what is left before `deadline` (monotonic) before each: TimeoutError past
    it. The connection goes back to the pool when the body was read whole, and is closed otherwise."""
    fp = getattr(resp, "_fp", None)  # http.client's response: read1() waits for bytes once
    conn = getattr(resp, "_connection", None) or getattr(resp, "connection", None)
    sock = getattr(conn, "sock", None)
    if fp is None or not hasattr(fp, "read1"):  # not urllib3's: read it as it is
        return resp.read()
    chunks, whole = [], False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline")
            if sock is not None:
                sock.settimeout(min(left, timeout))
            try:
                piece = fp.read1(65536)
            except OSError as e:  # socket.timeout included
                if "timed out" in str(e) or isinstance(e, TimeoutError):
                    raise TimeoutError("deadline") from None
                raise
            if not piece:
                if getattr(fp, "length", None):  # the connection ended before Content-Length said it would
                    raise http.client.IncompleteRead(b"".join(chunks), fp.length)
                break
            chunks.append(piece)
        whole = True
    finally:
        if whole:
            resp.release_conn()
        else:
            resp.close()
    body = b"".join(chunks)
    encoding = str(resp.headers.get("Content-Encoding") or "").lower()
    if encoding in ("gzip", "deflate"):
        body = zlib.decompress(body, 47 if encoding == "gzip" else 15)
    return body


# ---------------------------------------------------------------------- JSON -> models
def _container(st: dict, spec: dict | None, kind: str) -> Container:
    state, last = st.get("state") or {}, st.get("lastState") or {}
    term = state.get("terminated") or last.get("terminated")
    waiting = state.get("waiting") or {}
    limits = ((spec or {}).get("resources") or {}).get("limits") or {}
    return Container(
        name=str(st.get("name") or ""), ready=bool(st.get("ready")), restarts=int(st.get("restartCount") or 0),
        waiting_reason=str(waiting.get("reason") or ""), waiting_message=cluster_text(waiting.get("message")),
        last_reason=str((term or {}).get("reason") or ""),
        last_exit_code=(term or {}).get("exitCode") if term else None,
        last_finished=parse_time((term or {}).get("finishedAt")), memory_limit=str(limits.get("memory") or ""),
        kind=kind, started=parse_time((state.get("running") or {}).get("startedAt")))


def to_pod(p: dict) -> Pod:
    meta, spec, status = p.get("metadata") or {}, p.get("spec") or {}, p.get("status") or {}
    labels = meta.get("labels") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    sched = conds.get("PodScheduled") or {}
    gated = sched.get("status") == "False" and sched.get("reason") == "SchedulingGated"
    unschedulable = cluster_text(sched.get("message") or sched.get("reason")) if sched.get("status") == "False" else ""
    main_specs = {c.get("name"): c for c in spec.get("containers") or []}
    init_specs = {c.get("name"): c for c in spec.get("initContainers") or []}
    containers = [_container(s, main_specs.get(s.get("name")), "main") for s in status.get("containerStatuses") or []]
    for s in status.get("initContainerStatuses") or []:
        ispec = init_specs.get(s.get("name")) or {}
        containers.append(_container(s, ispec, "sidecar" if ispec.get("restartPolicy") == "Always" else "init"))
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), {})
    ips = [i.get("ip") for i in status.get("podIPs") or [] if i.get("ip")]
    if status.get("podIP") and status["podIP"] not in ips:
        ips.insert(0, status["podIP"])
    ready = conds.get("Ready") or {}
    return Pod(name=str(meta.get("name") or ""), component=str(labels.get(COMPONENT_LABEL) or ""),
               uid=str(meta.get("uid") or ""), phase=str(status.get("phase") or "Unknown"),
               ready=ready.get("status") == "True", created=parse_time(meta.get("creationTimestamp")),
               deleting=bool(meta.get("deletionTimestamp")), deleted_at=parse_time(meta.get("deletionTimestamp")),
               unschedulable=unschedulable, containers=tuple(containers), ips=tuple(ips),
               hostname=str(spec.get("hostname") or ""), subdomain=str(spec.get("subdomain") or ""),
               node=str(spec.get("nodeName") or ""), host_network=bool(spec.get("hostNetwork")),
               reason=str(status.get("reason") or ""), message=cluster_text(status.get("message")),
               owner_kind=str(owner.get("kind") or ""), owner_name=str(owner.get("name") or ""), gated=gated)


def to_event(e: dict) -> Event:
    """A core/v1 Event, also the core view of an events.k8s.io Event (kube-scheduler's): those keep
    their repeats in `series` (count, lastObservedTime) and have no count or lastTimestamp."""
    series = e.get("series") or {}
    when = (parse_time(series.get("lastObservedTime")) or parse_time(e.get("lastTimestamp"))
            or parse_time(e.get("eventTime")) or parse_time(e.get("firstTimestamp"))
            or parse_time((e.get("metadata") or {}).get("creationTimestamp")))
    obj = e.get("involvedObject") or {}
    # interned: a pod's Events share its name and uid, and many pods share a message ("0/6 nodes are
    # available: ..." for every Pending worker), so a cache of 50,000 Events stays small
    return Event(object_name=intern(str(obj.get("name") or "")), object_uid=intern(str(obj.get("uid") or "")),
                 reason=intern(str(e.get("reason") or "")), message=intern(cluster_text(e.get("message"), EVENT_TEXT)),
                 last=when,
                 count=int(series.get("count") or e.get("count") or 1), type=intern(str(e.get("type") or "Normal")))


@dataclass(frozen=True)
class Workload:
    kind: str  # Deployment | StatefulSet
    name: str
    why_not: str = ""  # "" when a rollout restart would work, else one line saying why not


class Kube:
    def __init__(self, api_client, namespace: str, release: str, timeout: float = 10.0, identity: str = SOURCE,
                 components: tuple[str, ...] = COMPONENTS):
        from kubernetes import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.namespace, self.release, self.timeout, self.identity = namespace, release, timeout, identity
        self.components = components
        self.requests = 0  # API calls made (for the bench and /metrics)
        self.clock = ClusterClock()

    @property
    def _t(self) -> tuple[float, float]:
        return (min(self.timeout, 10.0), self.timeout)  # (connect, read): honoured by every client version

    # ------------------------------------------------------------------ reads
    def _call(self, what: str, fn, *args, retry: bool = True, **kw):
        """One API call with our timeout; a read is tried once more on a connection error. With
        _preload_content=False the answer's body is not read yet: `json()` reads it."""
        from kubernetes.client.exceptions import ApiException

        for attempt in (0, 1):
            self.requests += 1
            sent = time.time()
            try:
                resp = fn(*args, _request_timeout=self._t, **kw)
            except ApiException as e:
                raise api_error(what, e) from None
            except Exception as e:  # noqa: BLE001 - urllib3 errors, timeouts, TLS
                if not retry or attempt == 1 or "timeout" in type(e).__name__.lower():
                    raise api_error(what, e) from None
                continue
            headers = getattr(resp, "headers", None)
            if headers is not None:
                self.clock.saw(headers.get("Date"), sent, time.time())
            return resp
        raise AssertionError("unreachable")

    def json(self, what: str, fn, *args, retry: bool = True, **kw) -> dict:
        """One call, its answer read whole within the timeout and parsed; a read whose answer broke off
        is tried once more."""
        for attempt in (0, 1):
            deadline = time.monotonic() + self.timeout
            resp = self._call(what, fn, *args, retry=retry, _preload_content=False, **kw)
            try:
                body = read_body(resp, deadline, self.timeout)
            except TimeoutError:
                raise KubeError(f"{what}: no whole answer within {self.timeout:g}s (kubernetes.timeout)") from None
            except Exception as e:  # noqa: BLE001 - the connection broke off mid-answer
                if retry and attempt == 0:
                    continue
                raise api_error(what, e) from None
            try:
                return json_object(body)
            except ValueError as e:
                raise KubeError(f"{what}: the API server's answer is {e}") from None
        raise AssertionError("unreachable")

    def _list(self, what: str, fn, **kw) -> Iterator[dict]:
        """Every item of a paginated list, as plain JSON; relisted from the start on 410 Expired."""
        for item, _ in self.list_with_version(what, fn, **kw):
            if item is not None:
                yield item

    def list_with_version(self, what: str, fn, **kw) -> Iterator[tuple[dict | None, str]]:
        """(item, the list's resourceVersion) for every item of a paginated list, and (None, version) for
        an empty one: a watch starts from that version. Relisted from the start on 410 Expired."""
        for _ in range(3):
            token, seen, rv = None, 0, ""
            try:
                while True:
                    page = self.json(what, fn, self.namespace, limit=PAGE, _continue=token, **kw)
                    meta = page.get("metadata") or {}
                    rv = rv or str(meta.get("resourceVersion") or "")
                    for item in page.get("items") or []:
                        seen += 1
                        yield item, rv
                    token = meta.get("continue")
                    if not token:
                        if not seen:
                            yield None, rv
                        return
            except KubeError as e:
                if e.status == 410 and token:  # the continue token expired: start again
                    if seen:
                        raise KubeError(f"{what}: the list changed while it was read (410 Expired); "
                                        "read again next cycle", 410) from None
                    continue
                raise
        raise KubeError(f"{what}: 410 Expired three times in a row")

    def pods(self) -> list[Pod]:
        """The release's components (every phase) and its worker pods that are Pending."""
        comps = ",".join(self.components)
        sel = f"{RELEASE_LABEL}={self.release},{COMPONENT_LABEL} in ({comps})"
        out = [to_pod(p) for p in self._list(f"cannot list pods in {self.namespace}", self.core.list_namespaced_pod,
                                             label_selector=sel)]
        workers = f"{RELEASE_LABEL}={self.release},{COMPONENT_LABEL}=worker"
        out += [to_pod(p) for p in self._list(f"cannot list pods in {self.namespace}",
                                              self.core.list_namespaced_pod, label_selector=workers,
                                              field_selector="status.phase=Pending")]
        return out

    def events(self, pods: list[Pod]) -> list[Event]:
        """The Warning Events about these pods (matched by uid: a pod recreated under the same name is
        another object); every reason the rules read (FailedScheduling, FailedMount, Unhealthy ...) is
        a Warning."""
        if not pods:
            return []
        uids, names = {p.uid for p in pods if p.uid}, {p.name for p in pods}
        out = []
        for e in self._list(f"cannot list events in {self.namespace}", self.core.list_namespaced_event,
                            field_selector=EVENT_SELECTOR):
            obj = e.get("involvedObject") or {}
            uid = obj.get("uid")
            if (uid in uids) if uid else (obj.get("name") in names):
                out.append(to_event(e))
        return out

    def pod(self, name: str) -> dict | None:
        try:
            return self.json(f"cannot read pod {name}", self.core.read_namespaced_pod, name, self.namespace)
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    # ------------------------------------------------------------------ restarts
    def evict(self, name: str, uid: str) -> None:
        """Evict a pod through the Eviction API (policy/v1), so its PodDisruptionBudget is respected; the
        uid precondition leaves a pod that was already replaced alone (409)."""
        body = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": name, "namespace": self.namespace},
                "deleteOptions": {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}}}
        self._call(f"cannot evict pod {name}", self.core.create_namespaced_pod_eviction, name, self.namespace, body,
                   retry=False)

    def delete_pod(self, name: str, uid: str = "") -> None:
        """Delete one pod (restart: delete; no PodDisruptionBudget is consulted); with its uid as a
        precondition, a pod that was already replaced is left alone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            body["preconditions"] = {"uid": uid}
        self._call(f"cannot delete pod {name}", self.core.delete_namespaced_pod, name, self.namespace, body=body,
                   retry=False)

    def workload(self, pod: Pod) -> Workload:
        """The Deployment or StatefulSet that owns a pod, and whether `kubectl rollout restart` would
        restart it (not for a paused Deployment, nor a StatefulSet with updateStrategy OnDelete)."""
        kind, name = pod.owner_kind, pod.owner_name
        if not kind:
            return Workload("", "", f"pod {pod.name} has no controller to restart; use restart: evict")
        if kind == "ReplicaSet":
            rs = self._call(f"cannot read replica set {name}", self.apps.read_namespaced_replica_set, name,
                            self.namespace)
            dep = next((o for o in rs.metadata.owner_references or [] if o.controller), None)
            if dep is None or dep.kind != "Deployment":
                return Workload("", "", f"replica set {name} is not owned by a Deployment; use restart: evict")
            d = self._call(f"cannot read deployment {dep.name}", self.apps.read_namespaced_deployment, dep.name,
                           self.namespace)
            why = (f"Deployment {dep.name} is paused (spec.paused): a rollout restart would change nothing; "
                   "resume it or use restart: evict") if d.spec.paused else ""
            return Workload("Deployment", dep.name, why)
        if kind == "StatefulSet":
            s = self._call(f"cannot read statefulset {name}", self.apps.read_namespaced_stateful_set, name,
                           self.namespace)
            strategy = (s.spec.update_strategy.type if s.spec.update_strategy else "") or "RollingUpdate"
            why = (f"StatefulSet {name} has updateStrategy OnDelete: a rollout restart replaces no pod; "
                   "use restart: evict") if strategy == "OnDelete" else ""
            return Workload("StatefulSet", name, why)
        return Workload(kind, name, f"pod {pod.name} is owned by a {kind}, which has no rollout restart; "
                        "use restart: evict")

    def rollout_restart(self, w: Workload) -> str:
        """`kubectl rollout restart` of a Deployment or StatefulSet; returns kind/name."""
        patch = {"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": _ts(datetime.now(UTC))}}}}}
        fn = self.apps.patch_namespaced_deployment if w.kind == "Deployment" else \
            self.apps.patch_namespaced_stateful_set
        self._call(f"cannot restart {w.kind} {w.name}", fn, w.name, self.namespace, patch, retry=False)
        return f"{w.kind}/{w.name}"

    # ------------------------------------------------------------------ Events of our own
    def event(self, pod: Pod, reason: str, message: str, action: str, warning: bool = True) -> None:
        """A core/v1 Event on a pod: `kubectl describe pod` and `kubectl get events` show it."""
        now = datetime.now(UTC)
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod.name}.{secrets.token_hex(8)}", "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": SOURCE}},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "namespace": self.namespace,
                               **({"uid": pod.uid} if pod.uid else {})},
            "reason": reason, "message": cluster_text(message, 1024), "type": "Warning" if warning else "Normal",
            "source": {"component": SOURCE}, "reportingComponent": SOURCE, "reportingInstance": self.identity,
            "action": action, "firstTimestamp": _ts(now), "lastTimestamp": _ts(now), "count": 1,
        }
        self._call(f"cannot create an event on pod {pod.name}", self.core.create_namespaced_event, self.namespace,
                   body, retry=False)
