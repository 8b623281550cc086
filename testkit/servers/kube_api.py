"""A local server implementing the documented subset of the Kubernetes API that the healer uses, for
tests: no registry ships an API server, so this stands in for one, and the real `kubectl` talks to it.

What it implements, as documented (kubernetes.io/docs/reference/using-api/api-concepts):
- discovery (/version, /api, /apis, /api/v1, /apis/{group}/{version}) so that kubectl finds the
  resources; bearer-token authentication (401 Status otherwise);
- pods: list (labelSelector with =, ==, !=, in, notin and existence; fieldSelector on metadata.name,
  metadata.namespace, status.phase, spec.nodeName), watch (ADDED/MODIFIED/DELETED lines), get,
  create, delete (DeleteOptions, preconditions.uid -> 409 Conflict), and Table responses for
  `kubectl get` (Accept: ...;as=Table;g=meta.k8s.io;v=v1);
- events (core/v1): list and watch with involvedObject.* field selectors, create (409 AlreadyExists);
- leases (coordination.k8s.io/v1): get, create, replace with metadata.resourceVersion (409
  Conflict when it is not the current one), list;
- deployments, replica sets and stateful sets (apps/v1): get, list, and merge/strategic-merge
  patch of a Deployment, after which its controller replaces its pods (a rollout restart).
Every request body is validated against Kubernetes' published JSON schemas (kubernetes-validate,
strict: unknown fields are refused) and refused with 422 Invalid, as the API server would.

The pods behind it are real processes: a Deployment's pods are started from its pod template's
command and env in their own process group (a "container"); a container whose process exits is
restarted with back-off (CrashLoopBackOff while waiting, restartCount and lastState as the kubelet
sets them); one whose process group grows over its memory limit is killed with SIGKILL and
reported OOMKilled, as the kernel's OOM killer and the kubelet would; deleting a pod sends SIGTERM
to its group, then SIGKILL after the grace period, and the Deployment's controller starts a new
pod. Pods that request more CPU than any node has stay Pending with PodScheduled=False
(Unschedulable) and a FailedScheduling Event, as the scheduler reports them.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
import kubernetes_validate
import referencing
from kubernetes_validate.utils import schema_contents

K8S_VERSION = "1.32.0"
PAGE = 4096


def now_ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


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


POD_FIELDS = {"metadata.name", "metadata.namespace", "status.phase", "spec.nodeName", "spec.restartPolicy"}
EVENT_FIELDS = {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                "reason", "reportingComponent", "source", "type", "metadata.name", "metadata.namespace"}


def parse_quantity(q) -> float:
    """CPU or memory quantities: 500m, 2, 64Mi, 1Gi, 100M."""
    s = str(q)
    units = {"m": 1e-3, "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "Ti": 1024 ** 4, "k": 1e3, "M": 1e6,
             "G": 1e9, "T": 1e12}
    for u in sorted(units, key=len, reverse=True):
        if s.endswith(u):
            return float(s[: -len(u)]) * units[u]
    return float(s)


# ---------------------------------------------------------------------------- the "kubelet"
class Container:
    """One pod's one container as a real process group, restarted the way the kubelet does."""

    def __init__(self, cluster: Cluster, pod: dict, spec: dict, logdir: Path):
        self.cluster, self.pod, self.spec, self.logdir = cluster, pod, spec, logdir
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.last: dict | None = None  # lastState.terminated
        self.waiting: dict | None = None
        self.started_at = ""
        self.stopping = False
        limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
        self.memory_limit = parse_quantity(limit) if limit else None
        self.oom = False

    def start(self) -> None:
        env = dict(self.cluster.base_env or os.environ)  # a container gets its own env, not the host's
        meta = self.pod["metadata"]
        env.update({"POD_NAME": meta["name"], "POD_NAMESPACE": meta["namespace"], "HOSTNAME": meta["name"]})
        for e in self.spec.get("env") or []:
            if "value" in e:
                env[e["name"]] = str(e["value"])
            elif (e.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[e["name"]] = meta["name"]
        cmd = list(self.spec.get("command") or []) + list(self.spec.get("args") or [])
        log = open(self.logdir / f"{meta['name']}.{self.spec['name']}.log", "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.cluster.workdir)
        log.close()
        self.started_at, self.waiting, self.oom = now_ts(), None, False

    def group_rss(self) -> int:
        if self.proc is None:
            return 0
        total = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getpgid(int(pid)) != self.proc.pid:
                    continue
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except (OSError, ProcessLookupError, ValueError):
                continue
        return total

    def kill_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float) -> None:
        """SIGTERM to the group, SIGKILL after the grace period (a frozen process stays frozen through
        SIGTERM, as in a real container, and is killed at the end of the grace period)."""
        self.stopping = True
        if self.proc is None:
            return
        self.kill_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.1)
        self.kill_group(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def tick(self) -> bool:
        """Check the process; restart it with back-off when it ended. True if something changed."""
        if self.stopping or self.proc is None:
            return False
        if self.memory_limit and self.proc.poll() is None and self.group_rss() > self.memory_limit:
            self.oom = True
            self.kill_group(signal.SIGKILL)
            self.proc.wait(timeout=10)
        code = self.proc.poll()
        if code is None:
            return False
        if self.waiting is None:
            # ended now: record it, then wait (back-off doubles from 1 s, capped at 10 s here)
            self.kill_group(signal.SIGKILL)  # the container's other processes go with it
            exit_code = 137 if self.oom else (128 - code if code < 0 else code)
            reason = "OOMKilled" if self.oom else ("Completed" if code == 0 else "Error")
            self.last = {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": self.started_at,
                                        "finishedAt": now_ts()}}
            backoff = min(10.0, 1.0 * 2 ** min(self.restarts, 4))
            self.waiting = {"reason": "CrashLoopBackOff", "until": time.monotonic() + backoff,
                            "message": f"back-off {int(backoff)}s restarting failed container={self.spec['name']} "
                                       f"pod={self.pod['metadata']['name']}"}
            return True
        if time.monotonic() >= self.waiting["until"]:
            self.restarts += 1
            self.start()
            return True
        return False

    def status(self) -> dict:
        running = self.proc is not None and self.proc.poll() is None and self.waiting is None
        st: dict = {"name": self.spec["name"], "image": self.spec.get("image", ""), "imageID": "",
                    "restartCount": self.restarts, "ready": running, "started": running}
        if running:
            st["state"] = {"running": {"startedAt": self.started_at}}
        elif self.waiting is not None:
            st["state"] = {"waiting": {k: v for k, v in self.waiting.items() if k in ("reason", "message")}}
        else:
            st["state"] = {"waiting": {"reason": "ContainerCreating"}}
        if self.last:
            st["lastState"] = self.last
        return st


# ---------------------------------------------------------------------------- the cluster
class Cluster:
    """Objects by (kind, namespace, name), a resourceVersion counter, a change log for watches, and the
    controllers (scheduler, kubelet, Deployment controller) as one background thread."""

    def __init__(self, workdir: Path, nodes: int = 6, node_cpu: float = 2.0, base_env: dict | None = None,
                 grace: float = 5.0):
        self.workdir = workdir
        self.logdir = workdir / "pod-logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.nodes, self.node_cpu, self.grace = nodes, node_cpu, grace
        self.base_env = base_env or {}
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.containers: dict[str, list[Container]] = {}  # pod uid -> containers
        self.rv = 1000
        self.cond = threading.Condition()
        self.log: list[tuple[int, str, str, dict]] = []  # (rv, kind, type, object)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="kube-controllers", daemon=True)
        self.thread.start()

    # -- storage
    def _bump(self, kind: str, typ: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.log.append((self.rv, kind, typ, copy.deepcopy(obj)))
        del self.log[:-5000]
        self.cond.notify_all()

    def put(self, kind: str, obj: dict, typ: str = "ADDED") -> dict:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_ts())
        with self.cond:
            self.objects[(kind, meta["namespace"], meta["name"])] = obj
            self._bump(kind, typ, obj)
        return obj

    def get(self, kind: str, ns: str, name: str) -> dict | None:
        return self.objects.get((kind, ns, name))

    def items(self, kind: str, ns: str | None) -> list[dict]:
        return [o for (k, n, _), o in sorted(self.objects.items()) if k == kind and (ns is None or n == ns)]

    def remove(self, kind: str, ns: str, name: str) -> dict | None:
        with self.cond:
            obj = self.objects.pop((kind, ns, name), None)
            if obj is not None:
                self._bump(kind, "DELETED", obj)
            return obj

    # -- pods
    def create_pod(self, ns: str, pod: dict, owner: dict | None = None) -> dict:
        pod = copy.deepcopy(pod)
        meta = pod.setdefault("metadata", {})
        meta["namespace"] = ns
        if not meta.get("name"):
            meta["name"] = (meta.get("generateName") or "pod-") + secrets.token_hex(3)[:5]
        if owner is not None:
            meta["ownerReferences"] = [owner]
        pod.setdefault("spec", {}).setdefault("restartPolicy", "Always")
        pod["spec"].setdefault("terminationGracePeriodSeconds", int(self.grace))
        pod["status"] = {"phase": "Pending", "conditions": [], "startTime": now_ts()}
        self.put("Pod", pod)
        with self.cond:
            self._schedule(pod)
        return pod

    def _schedule(self, pod: dict) -> None:
        need = sum(parse_quantity(((c.get("resources") or {}).get("requests") or {}).get("cpu", 0))
                   for c in pod["spec"].get("containers", []))
        meta = pod["metadata"]
        if need > self.node_cpu:
            msg = (f"0/{self.nodes} nodes are available: {self.nodes} Insufficient cpu. preemption: 0/{self.nodes} "
                   f"nodes are available: {self.nodes} No preemption victims found for incoming pod.")
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                            "message": msg, "lastTransitionTime": now_ts()}]
            self._bump("Pod", "MODIFIED", pod)
            self.event(meta["namespace"], pod, "FailedScheduling", msg, "Warning", "default-scheduler")
            return
        pod["spec"]["nodeName"] = f"node-{1 + hash(meta['name']) % self.nodes}"
        pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_ts()}]
        self.event(meta["namespace"], pod, "Scheduled", f"Successfully assigned {meta['namespace']}/{meta['name']} "
                   f"to {pod['spec']['nodeName']}", "Normal", "default-scheduler")
        if all(c.get("command") for c in pod["spec"]["containers"]):
            cs = [Container(self, pod, c, self.logdir) for c in pod["spec"]["containers"]]
            self.containers[meta["uid"]] = cs
            for c in cs:
                c.start()
            self._refresh(pod)
        else:  # no command: an image we cannot run here; it stays in ContainerCreating
            self._refresh(pod)

    def _refresh(self, pod: dict) -> None:
        cs = self.containers.get(pod["metadata"]["uid"])
        st = pod["status"]
        if cs is None:
            if pod["spec"].get("nodeName"):
                st["containerStatuses"] = [{"name": c["name"], "image": c.get("image", ""), "imageID": "",
                                            "ready": False, "restartCount": 0, "started": False,
                                            "state": {"waiting": {"reason": "ContainerCreating"}}}
                                           for c in pod["spec"]["containers"]]
            return
        statuses = [c.status() for c in cs]
        ready = all(s["ready"] for s in statuses)
        if statuses != st.get("containerStatuses") or st.get("phase") != "Running":
            st["phase"] = "Running"
            st["containerStatuses"] = statuses
            conds = [c for c in st.get("conditions", []) if c["type"] not in ("Ready", "ContainersReady")]
            word = "True" if ready else "False"
            conds += [{"type": "Ready", "status": word, "lastTransitionTime": now_ts()},
                      {"type": "ContainersReady", "status": word, "lastTransitionTime": now_ts()}]
            st["conditions"] = conds
            self._bump("Pod", "MODIFIED", pod)

    def delete_pod(self, ns: str, name: str, grace: float | None = None) -> dict | None:
        with self.cond:
            pod = self.get("Pod", ns, name)
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                return pod
            pod["metadata"]["deletionTimestamp"] = now_ts()
            pod["metadata"]["deletionGracePeriodSeconds"] = int(self.grace if grace is None else grace)
            self._bump("Pod", "MODIFIED", pod)
        self.event(ns, pod, "Killing", f"Stopping container {pod['spec']['containers'][0]['name']}", "Normal",
                   "kubelet")
        threading.Thread(target=self._terminate, args=(pod, self.grace if grace is None else grace),
                         daemon=True).start()
        return pod

    def _terminate(self, pod: dict, grace: float) -> None:
        for c in self.containers.pop(pod["metadata"]["uid"], []):
            c.stop(grace)
        self.remove("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])

    # -- events
    def event(self, ns: str, obj: dict, reason: str, message: str, typ: str = "Normal",
              component: str = "kubelet") -> None:
        meta = obj["metadata"]
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": ns},
              "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", "Pod"),
                                 "name": meta["name"], "namespace": ns, "uid": meta.get("uid", "")},
              "reason": reason, "message": message, "type": typ, "source": {"component": component},
              "firstTimestamp": now_ts(), "lastTimestamp": now_ts(), "count": 1, "reportingComponent": component,
              "reportingInstance": ""}
        self.put("Event", ev)

    # -- workloads
    def remove_deployment(self, ns: str, name: str) -> None:
        dep = self.remove("Deployment", ns, name)
        if dep is None:
            return
        for p in self.items("Pod", ns):
            if any(o.get("name", "").startswith(name + "-") for o in p["metadata"].get("ownerReferences", [])):
                self.delete_pod(ns, p["metadata"]["name"], 1.0)

    def deployment(self, ns: str, name: str, labels: dict, container: dict, replicas: int = 1) -> dict:
        dep = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": name, "namespace": ns, "labels": dict(labels), "generation": 1},
               "spec": {"replicas": replicas, "selector": {"matchLabels": dict(labels)},
                        "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": [container]}}},
               "status": {"replicas": 0, "observedGeneration": 1}}
        validate(dep)
        self.put("Deployment", dep)
        with self.cond:
            self._reconcile(dep)
        return dep

    def _replica_set(self, dep: dict) -> dict:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        template = dep["spec"]["template"]
        h = format(abs(hash(json.dumps(template, sort_keys=True))) % 16 ** 10, "010x")
        rs_name = f"{name}-{h}"
        rs = self.get("ReplicaSet", ns, rs_name)
        if rs is None:
            rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                  "metadata": {"name": rs_name, "namespace": ns, "labels": dict(template["metadata"]["labels"]),
                               "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                                    "uid": dep["metadata"]["uid"], "controller": True}]},
                  "spec": {"replicas": dep["spec"]["replicas"],
                           "selector": {"matchLabels": dict(template["metadata"]["labels"])},
                           "template": copy.deepcopy(template)}}
            self.put("ReplicaSet", rs)
        return rs

    def _reconcile(self, dep: dict) -> None:
        rs = self._replica_set(dep)
        ns = dep["metadata"]["namespace"]
        owned = [p for p in self.items("Pod", ns) if any(o.get("uid") == rs["metadata"]["uid"]
                                                         for o in p["metadata"].get("ownerReferences", []))]
        others = [p for p in self.items("Pod", ns)
                  if any(o.get("kind") == "ReplicaSet" and o.get("uid") != rs["metadata"]["uid"]
                         and o.get("name", "").startswith(dep["metadata"]["name"] + "-")
                         for o in p["metadata"].get("ownerReferences", []))]
        live = [p for p in owned if not p["metadata"].get("deletionTimestamp")]
        for _ in range(dep["spec"]["replicas"] - len(live)):
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"generateName": rs["metadata"]["name"] + "-",
                                "labels": dict(rs["spec"]["template"]["metadata"]["labels"]),
                                "annotations": dict(rs["spec"]["template"]["metadata"].get("annotations") or {})},
                   "spec": copy.deepcopy(rs["spec"]["template"]["spec"])}
            self.create_pod(ns, pod, {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs["metadata"]["name"],
                                      "uid": rs["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True})
        for p in others:  # an older template: rolled away
            if not p["metadata"].get("deletionTimestamp"):
                threading.Thread(target=self.delete_pod, args=(ns, p["metadata"]["name"]), daemon=True).start()
        ready = sum(1 for p in live if any(c["type"] == "Ready" and c["status"] == "True"
                                           for c in p["status"].get("conditions", [])))
        st = dep.setdefault("status", {})
        if (st.get("replicas"), st.get("readyReplicas")) != (len(live), ready):
            st.update({"replicas": len(live), "readyReplicas": ready, "observedGeneration":
                       dep["metadata"].get("generation", 1)})
            self._bump("Deployment", "MODIFIED", dep)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            with self.cond:
                for pod in self.items("Pod", None):
                    cs = self.containers.get(pod["metadata"]["uid"])
                    if cs is None or pod["metadata"].get("deletionTimestamp"):
                        continue
                    changed = False
                    for c in cs:
                        before = c.waiting
                        if c.tick():
                            changed = True
                            if c.waiting is not None and before is None and c.last:
                                t = c.last["terminated"]
                                if t["reason"] == "OOMKilled":
                                    self.event(pod["metadata"]["namespace"], pod, "OOMKilling",
                                               f"Memory cgroup out of memory: Killed process of container "
                                               f"{c.spec['name']}", "Warning")
                                self.event(pod["metadata"]["namespace"], pod, "BackOff",
                                           f"Back-off restarting failed container {c.spec['name']} in pod "
                                           f"{pod['metadata']['name']}", "Warning")
                    del changed
                    self._refresh(pod)
                for dep in self.items("Deployment", None):
                    self._reconcile(dep)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        for cs in list(self.containers.values()):
            for c in cs:
                c.stop(0.5)
        self.containers.clear()

    def processes(self, pod_name: str, needle: str = "") -> list[int]:
        """PIDs in a pod's process groups whose command line contains `needle`."""
        pod = next((p for p in self.items("Pod", None) if p["metadata"]["name"] == pod_name), None)
        if pod is None:
            return []
        groups = {c.proc.pid for c in self.containers.get(pod["metadata"]["uid"], []) if c.proc}
        out = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getpgid(int(pid)) in groups and needle in Path(f"/proc/{pid}/cmdline").read_bytes().replace(
                        b"\0", b" ").decode():
                    out.append(int(pid))
            except (OSError, ProcessLookupError):
                continue
        return out


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
            waiting = next((c["state"]["waiting"]["reason"] for c in cs if "waiting" in c.get("state", {})), None)
            phase = "Terminating" if p["metadata"].get("deletionTimestamp") else (waiting or p["status"]["phase"])
            ready = f"{sum(1 for c in cs if c.get('ready'))}/{len(p['spec']['containers'])}"
            rows.append([p["metadata"]["name"], ready, phase, sum(c.get("restartCount", 0) for c in cs),
                         _age(p["metadata"].get("creationTimestamp"))])
    elif kind == "Event":
        cols = ["Last Seen", "Type", "Reason", "Object", "Message"]
        rows = [[_age(e.get("lastTimestamp")), e.get("type", ""), e.get("reason", ""),
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
           ("events", "Event", True, ["create", "get", "list", "watch"]),
           ("namespaces", "Namespace", False, ["get", "list"])],
    "coordination.k8s.io/v1": [("leases", "Lease", True, ["create", "get", "list", "update", "watch"])],
    "apps/v1": [("deployments", "Deployment", True, ["get", "list", "patch", "watch"]),
                ("replicasets", "ReplicaSet", True, ["get", "list"]),
                ("statefulsets", "StatefulSet", True, ["get", "list", "patch"])],
}
KINDS = {plural: kind for rs in RESOURCES.values() for plural, kind, _, _ in rs}
GROUP_OF = {kind: gv for gv, rs in RESOURCES.items() for _, kind, _, _ in rs}


def resource_list(gv: str) -> dict:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": [{"name": p, "singularName": k.lower(), "namespaced": n, "kind": k, "verbs": v}
                          for p, k, n, v in RESOURCES[gv]]}


# ---------------------------------------------------------------------------- the HTTP server
def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made with openssl (client-go sends a bearer token only over TLS)."""
    cert, key = workdir / "apiserver.crt", workdir / "apiserver.key"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=kube-apiserver", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


class KubeApiServer:
    def __init__(self, workdir: Path, token: str = "", **cluster):
        import ssl

        self.token = token or secrets.token_hex(16)
        self.cert, key = self_signed(workdir)
        self.cluster = Cluster(workdir, **cluster)
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.bodies: list[tuple[str, str, dict]] = []
        self.down = False  # while True, every request is refused at the socket (connection reset)
        self.namespaces = {"airflow"}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                server.handle(self, "GET")

            def do_POST(self):
                server.handle(self, "POST")

            def do_PUT(self):
                server.handle(self, "PUT")

            def do_PATCH(self):
                server.handle(self, "PATCH")

            def do_DELETE(self):
                server.handle(self, "DELETE")

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

    def kubeconfig(self, path: Path, namespace: str = "airflow") -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority-data":
                                                      base64.b64encode(self.cert.read_bytes()).decode()}}],
            "users": [{"name": "healer", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "healer", "namespace": namespace}}],
        }))
        return path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.cluster.close()

    def events(self, ns: str = "airflow", reason_prefix: str = "") -> list[dict]:
        return [e for e in self.cluster.items("Event", ns) if e.get("reason", "").startswith(reason_prefix)]

    def pods(self, ns: str = "airflow", component: str | None = None) -> list[dict]:
        return [p for p in self.cluster.items("Pod", ns)
                if component is None or p["metadata"].get("labels", {}).get("component") == component]

    # -- plumbing
    def _send(self, h, code: int, body: dict, ctype: str = "application/json") -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
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
        url = urlparse(h.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append((method, url.path))
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(h, 401, status(401, "Unauthorized", "Unauthorized"))
        try:
            body = self._body(h) if method in ("POST", "PUT", "PATCH", "DELETE") else {}
            if body:
                self.bodies.append((method, url.path, body))
            return self._route(h, method, url.path, q, body)
        except Invalid as e:
            return self._send(h, 422, status(422, "Invalid", str(e)))

    def _route(self, h, method: str, path: str, q: dict, body: dict) -> None:
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
        m = re.fullmatch(r"/(?:api/v1|apis/([^/]+/[^/]+))(?:/namespaces/([^/]+))?/([a-z]+)(?:/([^/]+))?", path)
        if not m or m[3] not in KINDS:
            return self._send(h, 404, status(404, "NotFound", f"the server could not find the requested resource "
                                                              f"({method} {path})"))
        gv, ns, plural, name = m[1] or "v1", m[2], m[3], m[4]
        kind = KINDS[plural]
        if GROUP_OF[kind] != gv:
            return self._send(h, 404, status(404, "NotFound", f"no {plural} in {gv}"))
        if name is None:
            if method == "GET":
                return self._list(h, kind, ns, q)
            if method == "POST" and ns:
                return self._create(h, kind, ns, body)
        elif ns:
            if method == "GET":
                obj = self.cluster.get(kind, ns, name)
                if obj is None:
                    return self._send(h, 404, status(404, "NotFound", f'{plural} "{name}" not found'))
                return self._send(h, 200, obj)
            if method == "DELETE" and kind == "Pod":
                return self._delete_pod(h, ns, name, body)
            if method == "PUT" and kind == "Lease":
                return self._replace_lease(h, ns, name, body)
            if method == "PATCH" and kind in ("Deployment", "StatefulSet"):
                return self._patch(h, kind, ns, name, body)
        return self._send(h, 405, status(405, "MethodNotAllowed", f"{method} is not supported on {path}"))

    def _list(self, h, kind: str, ns: str | None, q: dict) -> None:
        allowed = POD_FIELDS if kind == "Pod" else EVENT_FIELDS if kind == "Event" else {"metadata.name",
                                                                                          "metadata.namespace"}

        def wanted(o: dict) -> bool:
            return (match_labels(q.get("labelSelector", ""), o["metadata"].get("labels") or {})
                    and match_fields(q.get("fieldSelector", ""), o, allowed))

        if q.get("watch") in ("1", "true"):
            return self._watch(h, kind, ns, wanted, q)
        with self.cluster.cond:
            items = [copy.deepcopy(o) for o in self.cluster.items(kind, ns) if wanted(o)]
            rv = str(self.cluster.rv)
        accept = h.headers.get("Accept", "")
        if "as=Table" in accept:
            return self._send(h, 200, table(kind, items, rv))
        gv = GROUP_OF[kind]
        for o in items:
            o.setdefault("apiVersion", gv)
            o.setdefault("kind", kind)
        return self._send(h, 200, {"apiVersion": gv, "kind": f"{kind}List", "metadata": {"resourceVersion": rv},
                                   "items": items})

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

        try:
            with self.cluster.cond:
                since = int(q.get("resourceVersion") or 0)
                if not since:
                    for o in self.cluster.items(kind, ns):
                        if wanted(o):
                            chunk({"type": "ADDED", "object": o})
                    since = self.cluster.rv
            while time.monotonic() < deadline and not self.down:
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
            return self._send(h, 409, status(409, "AlreadyExists", f'{kind.lower()}s "{meta["name"]}" already exists'))
        if kind == "Event" and (body.get("involvedObject") or {}).get("namespace") not in (None, ns):
            raise Invalid("Event.involvedObject.namespace: does not match event.namespace")
        if kind == "Lease":
            spec = body.get("spec") or {}
            if spec.get("leaseDurationSeconds") is not None and spec["leaseDurationSeconds"] <= 0:
                raise Invalid("Lease.spec.leaseDurationSeconds: must be greater than 0")
        obj = copy.deepcopy(body)
        obj["metadata"] = {**meta, "namespace": ns}
        obj["metadata"].pop("resourceVersion", None)
        return self._send(h, 201, self.cluster.put(kind, obj))

    def _replace_lease(self, h, ns: str, name: str, body: dict) -> None:
        validate(body)
        with self.cluster.cond:
            cur = self.cluster.get("Lease", ns, name)
            if cur is None:
                return self._send(h, 404, status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found'))
            want = (body.get("metadata") or {}).get("resourceVersion")
            if not want:
                raise Invalid("metadata.resourceVersion: Invalid value: 0x0: must be specified for an update")
            if want != cur["metadata"]["resourceVersion"]:
                return self._send(h, 409, status(409, "Conflict", f'Operation cannot be fulfilled on '
                                                 f'leases.coordination.k8s.io "{name}": the object has been modified; '
                                                 f'please apply your changes to the latest version and try again'))
            obj = copy.deepcopy(body)
            obj["metadata"] = {**cur["metadata"], **{k: v for k, v in obj["metadata"].items()
                                                     if k in ("labels", "annotations")}}
            self.cluster.objects[("Lease", ns, name)] = obj
            self.cluster._bump("Lease", "MODIFIED", obj)
        return self._send(h, 200, obj)

    def _delete_pod(self, h, ns: str, name: str, body: dict) -> None:
        if body:
            validate_as("deleteoptions-meta-v1", body)
        pod = self.cluster.get("Pod", ns, name)
        if pod is None:
            return self._send(h, 404, status(404, "NotFound", f'pods "{name}" not found'))
        want = (body.get("preconditions") or {}).get("uid")
        if want and want != pod["metadata"]["uid"]:
            return self._send(h, 409, status(409, "Conflict", f"Precondition failed: UID in precondition: {want}, "
                                             f"UID in object meta: {pod['metadata']['uid']}"))
        grace = body.get("gracePeriodSeconds")
        return self._send(h, 200, self.cluster.delete_pod(ns, name, None if grace is None else float(grace)))

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
                return self._send(h, 404, status(404, "NotFound", f'{kind.lower()}s.apps "{name}" not found'))
            new = merge(copy.deepcopy(cur), body)
            validate(new)
            if new["spec"] != cur["spec"]:
                new["metadata"]["generation"] = cur["metadata"].get("generation", 1) + 1
            self.cluster.objects[(kind, ns, name)] = new
            self.cluster._bump(kind, "MODIFIED", new)
            if kind == "Deployment":
                self.cluster._reconcile(new)
        return self._send(h, 200, new)
