"""Talking to the Kubernetes API with the `kubernetes` package: the release's pods and their Events,
deleting a pod or restarting its workload, and writing Events of our own.

Everything the healer reads comes back as the plain types of monitor.kube.models; every failure is a
KubeError with one line (status and the API's own message), so the healer can tell "cannot see"
(no action, count a blind cycle) from a refused write.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime

from monitor.kube.models import Container, Event, Pod

log = logging.getLogger(__name__)

COMPONENT_LABEL, RELEASE_LABEL = "component", "release"  # the official Airflow chart's labels
SOURCE = "airflow-monitor"


class KubeError(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def api_error(what: str, e: Exception) -> KubeError:
    from kubernetes.client.exceptions import ApiException

    if isinstance(e, ApiException):
        msg = e.reason or ""
        try:
            import json

            msg = json.loads(e.body or "{}").get("message") or msg
        except (ValueError, AttributeError):
            pass
        return KubeError(f"{what}: HTTP {e.status}: {' '.join(str(msg).split())}", e.status)
    return KubeError(f"{what}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")


def load_api_client(kubeconfig: str = "", context: str = ""):
    """An ApiClient from a kubeconfig (file, context) or, with neither, the pod's service account."""
    from kubernetes import client, config

    try:
        if kubeconfig or context:
            return config.new_client_from_config(config_file=kubeconfig or None, context=context or None)
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException as e:
        where = kubeconfig or "the in-cluster service account (set kubernetes.kubeconfig outside a cluster)"
        raise KubeError(f"cannot load Kubernetes credentials from {where}: {e}") from None
    except OSError as e:
        raise KubeError(f"cannot read kubeconfig {kubeconfig}: {e.strerror or e}") from None


def _container(status, spec) -> Container:
    state, last = status.state, status.last_state
    term = (state.terminated if state and state.terminated else None) or (last.terminated if last else None)
    waiting = state.waiting if state and state.waiting else None
    limits = (spec.resources.limits or {}) if spec is not None and spec.resources else {}
    return Container(
        name=status.name, ready=bool(status.ready), restarts=int(status.restart_count or 0),
        waiting_reason=(waiting.reason or "") if waiting else "", waiting_message=(waiting.message or "") if waiting
        else "", last_reason=(term.reason or "") if term else "",
        last_exit_code=term.exit_code if term else None, last_finished=term.finished_at if term else None,
        memory_limit=str(limits.get("memory") or ""))


def to_pod(p) -> Pod:
    labels = p.metadata.labels or {}
    conds = {c.type: c for c in (p.status.conditions or [])} if p.status else {}
    sched = conds.get("PodScheduled")
    unschedulable = (sched.message or sched.reason or "") if sched is not None and sched.status == "False" else ""
    specs = {c.name: c for c in (p.spec.containers or [])} if p.spec else {}
    statuses = (p.status.container_statuses or []) if p.status else []
    ready = conds.get("Ready")
    return Pod(name=p.metadata.name, component=labels.get(COMPONENT_LABEL, ""), uid=p.metadata.uid or "",
               phase=(p.status.phase if p.status else "") or "Unknown",
               ready=ready is not None and ready.status == "True", created=p.metadata.creation_timestamp,
               deleting=p.metadata.deletion_timestamp is not None, unschedulable=unschedulable,
               containers=tuple(_container(s, specs.get(s.name)) for s in statuses))


def to_event(e) -> Event:
    when = e.last_timestamp or e.event_time or e.first_timestamp or (e.metadata.creation_timestamp if e.metadata
                                                                     else None)
    return Event(object_name=e.involved_object.name or "", reason=e.reason or "", message=e.message or "",
                 last=when, count=int(e.count or 1), type=e.type or "Normal")


class Kube:
    def __init__(self, api_client, namespace: str, release: str, timeout: float = 10.0, identity: str = SOURCE):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.namespace, self.release, self.timeout, self.identity = namespace, release, timeout, identity

    def pods(self) -> list[Pod]:
        try:
            got = self.core.list_namespaced_pod(self.namespace, label_selector=f"{RELEASE_LABEL}={self.release}",
                                                _request_timeout=self.timeout)
        except Exception as e:  # noqa: BLE001 - ApiException, urllib3 errors, timeouts
            raise api_error(f"cannot list pods in {self.namespace}", e) from None
        return [to_pod(p) for p in got.items]

    def events(self) -> list[Event]:
        try:
            # every reason the rules read (FailedScheduling, FailedMount, Unhealthy, BackOff ...) is a Warning
            got = self.core.list_namespaced_event(self.namespace, field_selector="involvedObject.kind=Pod,type=Warning",
                                                  _request_timeout=self.timeout)
        except Exception as e:  # noqa: BLE001
            raise api_error(f"cannot list events in {self.namespace}", e) from None
        return [to_event(e) for e in got.items]

    def delete_pod(self, name: str, uid: str = "") -> None:
        """Delete one pod; with its uid as a precondition, a pod that was already replaced is left alone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.core.delete_namespaced_pod(name, self.namespace, body=body, _request_timeout=self.timeout)
        except Exception as e:  # noqa: BLE001
            raise api_error(f"cannot delete pod {name}", e) from None

    def rollout_restart(self, pod: str) -> str:
        """`kubectl rollout restart` of the Deployment or StatefulSet that owns a pod; returns kind/name."""
        try:
            p = self.core.read_namespaced_pod(pod, self.namespace, _request_timeout=self.timeout)
            owner = next((o for o in p.metadata.owner_references or [] if o.controller), None)
            if owner is None:
                raise KubeError(f"pod {pod} has no controller to restart; use restart: delete")
            kind, name = owner.kind, owner.name
            if kind == "ReplicaSet":
                rs = self.apps.read_namespaced_replica_set(name, self.namespace, _request_timeout=self.timeout)
                dep = next((o for o in rs.metadata.owner_references or [] if o.controller), None)
                if dep is None or dep.kind != "Deployment":
                    raise KubeError(f"replica set {name} is not owned by a Deployment; use restart: delete")
                kind, name = "Deployment", dep.name
            patch = {"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": _ts(datetime.now(UTC))}}}}}
            if kind == "Deployment":
                self.apps.patch_namespaced_deployment(name, self.namespace, patch, _request_timeout=self.timeout)
            elif kind == "StatefulSet":
                self.apps.patch_namespaced_stateful_set(name, self.namespace, patch, _request_timeout=self.timeout)
            else:
                raise KubeError(f"pod {pod} is owned by a {kind}, which has no rollout restart; use restart: delete")
            return f"{kind}/{name}"
        except KubeError:
            raise
        except Exception as e:  # noqa: BLE001
            raise api_error(f"cannot restart the workload of pod {pod}", e) from None

    def event(self, pod: Pod, reason: str, message: str, action: str, warning: bool = True) -> None:
        """A core/v1 Event on a pod: `kubectl describe pod` and `kubectl get events` show it."""
        now = datetime.now(UTC)
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod.name}.{secrets.token_hex(8)}", "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": SOURCE}},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "namespace": self.namespace,
                               **({"uid": pod.uid} if pod.uid else {})},
            "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
            "source": {"component": SOURCE}, "reportingComponent": SOURCE, "reportingInstance": self.identity,
            "action": action, "firstTimestamp": _ts(now), "lastTimestamp": _ts(now),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(self.namespace, body, _request_timeout=self.timeout)
        except Exception as e:  # noqa: BLE001
            raise api_error(f"cannot create an event on pod {pod.name}", e) from None
