"""The cluster behind the local Kubernetes API server (kube_api.py): its objects, and the controllers a
real cluster runs, each doing what the real one does, awkward parts included.

- **kubelet**: a pod's containers are real processes, each in its own process group. Init containers
  run one after the other before the main containers (a sidecar, an init container with
  restartPolicy Always, starts and keeps running); until they are done the pod is Pending and its main
  containers wait in PodInitializing. A container whose process exits is restarted with back-off
  (CrashLoopBackOff, Init:CrashLoopBackOff), restartCount and lastState as the kubelet keeps them. One
  whose process group grows over its memory limit is killed and reported OOMKilled. An image that
  cannot be pulled (a name under `unpullable/`) waits in ErrImagePull then ImagePullBackOff, with
  the kubelet's Failed and BackOff Warnings. Each pod gets its own IP (127.0.x.y, given to its
  processes as POD_IP, as the downward API's status.podIP). Deleting a pod sends SIGTERM to its
  groups, then SIGKILL after the grace period; on a node marked down the pod stays Terminating.
- **kube-scheduler**: a pod that asks for more CPU than a node has stays Pending with PodScheduled=False
  (Unschedulable) and a FailedScheduling Event written as kube-scheduler writes it, through
  events.k8s.io: no count, no lastTimestamp, the repeats in `series`; it retries every few seconds.
- **Deployment controller**: a ReplicaSet per pod template; pods `<rs>-<5 chars>`; a changed template
  (a rollout restart) rolls the old pods away; a paused Deployment rolls nothing.
- **StatefulSet controller**: pods `<name>-<ordinal>` with spec.hostname and subdomain and the
  StatefulSet's labels; a deleted pod comes back under the same name with a new uid, and never
  while its predecessor still exists (one pod per ordinal: one stuck Terminating blocks it).
  RollingUpdate replaces pods whose revision is old, highest ordinal first; OnDelete never does.
- **Events** written by the kubelet are core/v1 and a repeat updates the same object (count,
  lastTimestamp).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

UNPULLABLE = "unpullable/"  # images under this prefix cannot be pulled


def now_ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_quantity(q) -> float:
    """CPU or memory quantities: 500m, 2, 64Mi, 1Gi, 100M."""
    s = str(q)
    units = {"m": 1e-3, "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "Ti": 1024 ** 4, "k": 1e3, "M": 1e6,
             "G": 1e9, "T": 1e12}
    for u in sorted(units, key=len, reverse=True):
        if s.endswith(u):
            return float(s[: -len(u)]) * units[u]
    return float(s)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------- the "kubelet"
class Container:
    """One pod's one container as a real process group, restarted the way the kubelet does."""

    def __init__(self, cluster: Cluster, pod: dict, spec: dict, kind: str = "main"):
        self.cluster, self.pod, self.spec, self.kind = cluster, pod, spec, kind
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.last: dict | None = None  # lastState.terminated
        self.waiting: dict | None = None
        self.terminated: dict | None = None  # state.terminated (an init container that completed)
        self.started_at = ""
        self.stopping = False
        self.pulls = 0
        limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
        self.memory_limit = parse_quantity(limit) if limit else None
        self.oom = False

    @property
    def image(self) -> str:
        return str(self.spec.get("image") or "")

    @property
    def runnable(self) -> bool:
        return bool(self.spec.get("command")) and not self.image.startswith(UNPULLABLE)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.waiting is None

    @property
    def completed(self) -> bool:
        return self.terminated is not None and self.terminated.get("exitCode") == 0

    def start(self) -> None:
        env = dict(self.cluster.base_env or os.environ)  # a container gets its own env, not the host's
        meta, st = self.pod["metadata"], self.pod["status"]
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                  "metadata.uid": meta["uid"], "status.podIP": st.get("podIP", ""), "spec.nodeName":
                  self.pod["spec"].get("nodeName", ""), "status.hostIP": st.get("hostIP", "")}
        env.update({"POD_NAME": meta["name"], "POD_NAMESPACE": meta["namespace"], "POD_IP": st.get("podIP", ""),
                    "HOSTNAME": self.pod["spec"].get("hostname") or meta["name"]})
        for e in self.spec.get("env") or []:
            if "value" in e:
                env[e["name"]] = str(e["value"])
            elif (path := ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")) in fields:
                env[e["name"]] = fields[path]
        cmd = list(self.spec.get("command") or []) + list(self.spec.get("args") or [])
        log = open(self.cluster.logdir / f"{meta['name']}.{self.spec['name']}.log", "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.cluster.workdir)
        log.close()
        self.started_at, self.waiting, self.oom, self.terminated = now_ts(), None, False, None

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

    def _pull(self) -> bool:
        """An image that cannot be pulled: ErrImagePull, then ImagePullBackOff, with the kubelet's events."""
        if not self.image.startswith(UNPULLABLE):
            return True
        if self.waiting is not None and time.monotonic() < self.waiting.get("until", 0):
            return False
        self.pulls += 1
        ns, pod = self.pod["metadata"]["namespace"], self.pod
        if self.waiting is None or self.waiting["reason"] == "ImagePullBackOff":
            msg = (f'failed to pull and unpack image "{self.image}": failed to resolve reference "{self.image}": '
                   f'{self.image}: not found')
            self.waiting = {"reason": "ErrImagePull", "message": f"rpc error: code = NotFound desc = {msg}",
                            "until": time.monotonic() + 1.0}
            self.cluster.event(ns, pod, "Failed", f'Failed to pull image "{self.image}": rpc error: code = NotFound '
                               f"desc = {msg}", "Warning")
        else:
            backoff = min(10.0, 2.0 ** min(self.pulls, 4))
            self.waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{self.image}"',
                            "until": time.monotonic() + backoff}
            self.cluster.event(ns, pod, "BackOff", f'Back-off pulling image "{self.image}"', "Warning")
        return False

    def tick(self) -> bool:
        """Start, watch, restart with back-off. True if something changed."""
        if self.stopping:
            return False
        if self.proc is None:
            if not self.runnable:
                before = dict(self.waiting or {})
                if self.image.startswith(UNPULLABLE):
                    self._pull()
                return (self.waiting or {}) != before
            self.start()
            return True
        if self.memory_limit and self.proc.poll() is None and self.group_rss() > self.memory_limit:
            self.oom = True
            self.kill_group(signal.SIGKILL)
            self.proc.wait(timeout=10)
        code = self.proc.poll()
        if code is None or self.terminated is not None:
            return False
        if self.waiting is None:
            # ended now: record it; an init container that completed stays terminated, else back-off
            self.kill_group(signal.SIGKILL)  # the container's other processes go with it
            exit_code = 137 if self.oom else (128 - code if code < 0 else code)
            reason = "OOMKilled" if self.oom else ("Completed" if code == 0 else "Error")
            term = {"exitCode": exit_code, "reason": reason, "startedAt": self.started_at, "finishedAt": now_ts()}
            if self.kind == "init" and exit_code == 0:
                self.terminated = term
                return True
            self.last = {"terminated": term}
            backoff = min(10.0, 1.0 * 2 ** min(self.restarts, 4))
            meta = self.pod["metadata"]
            self.waiting = {"reason": "CrashLoopBackOff", "until": time.monotonic() + backoff,
                            "message": f"back-off {int(backoff)}s restarting failed container={self.spec['name']} "
                                       f"pod={meta['name']}_{meta['namespace']}({meta['uid']})"}
            return True
        if time.monotonic() >= self.waiting["until"]:
            self.restarts += 1
            self.start()
            return True
        return False

    def status(self, initializing: bool = False) -> dict:
        running = self.running
        st: dict = {"name": self.spec["name"], "image": self.image, "imageID": "", "restartCount": self.restarts,
                    "ready": running if self.kind != "init" else self.completed, "started": running}
        if self.terminated is not None:
            st["state"] = {"terminated": self.terminated}
        elif running:
            st["state"] = {"running": {"startedAt": self.started_at}}
        elif self.waiting is not None:
            st["state"] = {"waiting": {k: v for k, v in self.waiting.items() if k in ("reason", "message")}}
        else:
            st["state"] = {"waiting": {"reason": "PodInitializing" if initializing else "ContainerCreating"}}
        st["lastState"] = self.last or {}
        return st


class PodRuntime:
    """A pod's containers on its node: init containers one after the other, then the main ones."""

    def __init__(self, cluster: Cluster, pod: dict):
        spec = pod["spec"]
        self.init = [Container(cluster, pod, c, "sidecar" if c.get("restartPolicy") == "Always" else "init")
                     for c in spec.get("initContainers") or []]
        self.main = [Container(cluster, pod, c) for c in spec.get("containers") or []]

    @property
    def all(self) -> list[Container]:
        return [*self.init, *self.main]

    def initialized(self) -> bool:
        return all(c.completed or (c.kind == "sidecar" and c.running) for c in self.init)

    def tick(self) -> bool:
        changed = False
        for c in self.init:
            if c.completed:
                continue
            changed |= c.tick()
            if not (c.completed or (c.kind == "sidecar" and c.running)):
                return changed  # the next one waits for this one
        for c in self.main:
            changed |= c.tick()
        return changed

    def status(self, pod: dict) -> dict:
        init_done = self.initialized()
        mains = [c.status(initializing=not init_done) for c in self.main]
        out = {"containerStatuses": mains}
        if self.init:
            out["initContainerStatuses"] = [c.status() for c in self.init]
        return out

    def stop(self, grace: float) -> None:
        for c in reversed(self.all):
            c.stop(grace)


# ---------------------------------------------------------------------------- the cluster
class Objects(dict):
    """(kind, namespace, name) -> object, with an index by kind, so that listing one kind of a cluster of
    60,000 objects does not walk the others."""

    def __init__(self):
        super().__init__()
        self.kinds: dict[str, dict[tuple[str, str], dict]] = {}

    def __setitem__(self, key, obj) -> None:
        super().__setitem__(key, obj)
        self.kinds.setdefault(key[0], {})[(key[1], key[2])] = obj

    def pop(self, key, default=None):
        self.kinds.get(key[0], {}).pop((key[1], key[2]), None)
        return super().pop(key, default)

    def of(self, kind: str) -> dict[tuple[str, str], dict]:
        return self.kinds.get(kind, {})


class Cluster:
    """Objects by (kind, namespace, name), a resourceVersion counter, a change log for watches, and the
    controllers (scheduler, kubelet, Deployment and StatefulSet controllers) as one background thread."""

    def __init__(self, workdir: Path, nodes: int = 6, node_cpu: float = 2.0, base_env: dict | None = None,
                 grace: float = 5.0):
        self.workdir = workdir
        self.logdir = workdir / "pod-logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.nodes, self.node_cpu, self.grace = nodes, node_cpu, grace
        self.base_env = base_env or {}
        self.objects = Objects()
        self.runtimes: dict[str, PodRuntime] = {}  # pod uid -> its containers
        self.nodes_down: set[str] = set()  # nodes whose kubelet never confirms a pod's end (Terminating for good)
        self.pdb_lagging: set[str] = set()  # PodDisruptionBudgets the disruption controller has not processed yet
        self.rv = 1000
        self._ips = 3 * 256  # 127.0.3.0 upwards: each pod its own loopback address
        self.cond = threading.Condition()
        self.log: list[tuple[int, str, str, dict]] = []  # (rv, kind, type, object)
        self._stop = threading.Event()
        self._sched_retry: dict[str, float] = {}  # pod uid -> when kube-scheduler tries again
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

    def modified(self, kind: str, obj: dict) -> None:
        with self.cond:
            self._bump(kind, "MODIFIED", obj)

    def get(self, kind: str, ns: str, name: str) -> dict | None:
        return self.objects.get((kind, ns, name))

    def items(self, kind: str, ns: str | None) -> list[dict]:
        """The objects of a kind (in a namespace), in key order (namespace/name), as the API server lists them."""
        return [o for (n, _), o in sorted(self.objects.of(kind).items()) if ns is None or n == ns]

    def remove(self, kind: str, ns: str, name: str) -> dict | None:
        with self.cond:
            obj = self.objects.pop((kind, ns, name), None)
            if obj is not None:
                self._bump(kind, "DELETED", obj)
            return obj

    # -- pods
    def _ip(self) -> str:
        self._ips += 1
        return f"127.0.{self._ips // 256}.{self._ips % 256 or 1}"

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
        pod["status"] = {"phase": "Pending", "conditions": [], "qosClass": "Burstable"}
        self.put("Pod", pod)
        with self.cond:
            self._schedule(pod)
        return pod

    def _schedule(self, pod: dict) -> None:
        need = sum(parse_quantity(((c.get("resources") or {}).get("requests") or {}).get("cpu", 0))
                   for c in pod["spec"].get("containers", []))
        meta = pod["metadata"]
        if pod["spec"].get("schedulingGates"):
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated",
                                            "message": "Scheduling is blocked due to non-empty scheduling gates",
                                            "lastProbeTime": None, "lastTransitionTime": now_ts()}]
            self._bump("Pod", "MODIFIED", pod)
            return
        if need > self.node_cpu:
            msg = (f"0/{self.nodes} nodes are available: {self.nodes} Insufficient cpu. preemption: 0/{self.nodes} "
                   f"nodes are available: {self.nodes} No preemption victims found for incoming pod.")
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                            "message": msg, "lastProbeTime": None, "lastTransitionTime": now_ts()}]
            self._bump("Pod", "MODIFIED", pod)
            self.scheduler_event(meta["namespace"], pod, "FailedScheduling", msg)
            self._sched_retry[meta["uid"]] = time.monotonic() + 5.0
            return
        node = f"node-{1 + int(_hash(meta['name']), 16) % self.nodes}"
        pod["spec"]["nodeName"] = node
        host_ip = f"10.0.1.{20 + int(node.rsplit('-', 1)[1])}"
        ip = host_ip if pod["spec"].get("hostNetwork") else self._ip()
        st = pod["status"]
        st.update({"hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": ip, "podIPs": [{"ip": ip}],
                   "startTime": now_ts()})
        st["conditions"] = [{"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                             "lastTransitionTime": now_ts()}]
        self.scheduler_event(meta["namespace"], pod, "Scheduled", f"Successfully assigned {meta['namespace']}/"
                             f"{meta['name']} to {node}", "Normal")
        self.runtimes[meta["uid"]] = PodRuntime(self, pod)
        self.runtimes[meta["uid"]].tick()
        self._refresh(pod)

    def _refresh(self, pod: dict) -> None:
        rt = self.runtimes.get(pod["metadata"]["uid"])
        st = pod["status"]
        if rt is None:
            return
        statuses = rt.status(pod)
        init_done = rt.initialized()
        started = init_done and all(c.proc is not None for c in rt.main)
        phase = "Running" if started else "Pending"
        ready = started and all(s["ready"] for s in statuses["containerStatuses"])
        before = (st.get("phase"), st.get("containerStatuses"), st.get("initContainerStatuses"))
        if (phase, statuses["containerStatuses"], statuses.get("initContainerStatuses")) == before:
            return
        st["phase"] = phase
        st.update(statuses)
        conds = {c["type"]: c for c in st.get("conditions", [])}
        word = "True" if ready else "False"
        for t, v in (("PodReadyToStartContainers", "True"), ("Initialized", "True" if init_done else "False"),
                     ("Ready", word), ("ContainersReady", word)):
            if conds.get(t, {}).get("status") != v:
                c = {"type": t, "status": v, "lastProbeTime": None, "lastTransitionTime": now_ts()}
                if v == "False" and t in ("Ready", "ContainersReady"):
                    c["reason"] = "ContainersNotReady"
                if v == "False" and t == "Initialized":
                    c["reason"] = "ContainersNotInitialized"
                conds[t] = c
        order = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
        st["conditions"] = [conds[t] for t in order if t in conds]
        self._bump("Pod", "MODIFIED", pod)

    def delete_pod(self, ns: str, name: str, grace: float | None = None) -> dict | None:
        with self.cond:
            pod = self.get("Pod", ns, name)
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                return pod
            g = self.grace if grace is None else grace
            pod["metadata"]["deletionTimestamp"] = now_ts()
            pod["metadata"]["deletionGracePeriodSeconds"] = int(g)
            self._bump("Pod", "MODIFIED", pod)
        if pod["spec"].get("nodeName") in self.nodes_down:
            return pod  # its kubelet never confirms: Terminating until the node returns (or a force delete)
        if pod["spec"].get("containers"):
            self.event(ns, pod, "Killing", f"Stopping container {pod['spec']['containers'][0]['name']}", "Normal")
        threading.Thread(target=self._terminate, args=(pod, g), daemon=True).start()
        return pod

    def _terminate(self, pod: dict, grace: float) -> None:
        rt = self.runtimes.pop(pod["metadata"]["uid"], None)
        if rt is not None:
            rt.stop(grace)
        self.remove("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])

    # -- events
    def event(self, ns: str, obj: dict, reason: str, message: str, typ: str = "Normal",
              component: str = "kubelet") -> None:
        """A core/v1 Event as the kubelet writes it: a repeat updates the same object (count, lastTimestamp)."""
        meta = obj["metadata"]
        with self.cond:
            for e in self.items("Event", ns):
                io = e["involvedObject"]
                if (io.get("uid"), e["reason"], e["message"], e["source"].get("component")) == \
                        (meta.get("uid", ""), reason, message, component):
                    e["count"] = e.get("count", 1) + 1
                    e["lastTimestamp"] = now_ts()
                    self._bump("Event", "MODIFIED", e)
                    return
        source = {"component": component, **({"host": obj["spec"]["nodeName"]} if component == "kubelet"
                                              and obj.get("spec", {}).get("nodeName") else {})}
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": ns},
              "involvedObject": {"kind": obj.get("kind", "Pod"), "namespace": ns, "name": meta["name"],
                                 "uid": meta.get("uid", ""), "apiVersion": obj.get("apiVersion", "v1"),
                                 "resourceVersion": meta.get("resourceVersion", "")},
              "reason": reason, "message": message, "source": source,
              "firstTimestamp": now_ts(), "lastTimestamp": now_ts(), "count": 1, "type": typ, "eventTime": None,
              "reportingComponent": component, "reportingInstance": source.get("host", "")}
        self.put("Event", ev)

    def scheduler_event(self, ns: str, pod: dict, reason: str, message: str, typ: str = "Warning") -> None:
        """kube-scheduler's Event, written through events.k8s.io/v1 (the core view: no count, no
        lastTimestamp, an empty source; a repeat goes into `series`)."""
        meta = pod["metadata"]
        with self.cond:
            for e in self.items("Event", ns):
                if e["involvedObject"].get("uid") == meta["uid"] and e["reason"] == reason \
                        and e.get("reportingComponent") == "default-scheduler":
                    s = e.get("series") or {"count": 1}
                    e["series"] = {"count": s["count"] + 1, "lastObservedTime": micro_ts()}
                    e["message"] = message
                    self._bump("Event", "MODIFIED", e)
                    return
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": ns},
              "involvedObject": {"kind": "Pod", "namespace": ns, "name": meta["name"], "uid": meta["uid"],
                                 "apiVersion": "v1", "resourceVersion": meta.get("resourceVersion", "")},
              "reason": reason, "message": message, "source": {}, "firstTimestamp": None, "lastTimestamp": None,
              "type": typ, "eventTime": micro_ts(), "action": "Scheduling", "reportingComponent": "default-scheduler",
              "reportingInstance": "default-scheduler-control-plane-1"}
        self.put("Event", ev)

    # -- Deployments
    def remove_deployment(self, ns: str, name: str) -> None:
        dep = self.remove("Deployment", ns, name)
        if dep is None:
            return
        for p in self.items("Pod", ns):
            if any(o.get("name", "").startswith(name + "-") for o in p["metadata"].get("ownerReferences", [])):
                self.delete_pod(ns, p["metadata"]["name"], 1.0)

    def deployment(self, ns: str, name: str, labels: dict, container: dict, replicas: int = 1,
                   init_containers: list | None = None) -> dict:
        from testkit.servers.kube_api import validate

        spec = {"containers": [container], **({"initContainers": init_containers} if init_containers else {})}
        dep = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": name, "namespace": ns, "labels": dict(labels), "generation": 1},
               "spec": {"replicas": replicas, "selector": {"matchLabels": dict(labels)},
                        "template": {"metadata": {"labels": dict(labels)}, "spec": spec}},
               "status": {"replicas": 0, "observedGeneration": 1}}
        validate(dep)
        self.put("Deployment", dep)
        with self.cond:
            self._reconcile(dep)
        return dep

    def _replica_set(self, dep: dict) -> dict:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        template = dep["spec"]["template"]
        rs_name = f"{name}-{_hash(template)[:9]}"
        rs = self.get("ReplicaSet", ns, rs_name)
        if rs is None:
            labels = {**template["metadata"]["labels"], "pod-template-hash": rs_name.rsplit("-", 1)[1]}
            rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                  "metadata": {"name": rs_name, "namespace": ns, "labels": labels,
                               "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                                    "uid": dep["metadata"]["uid"], "controller": True,
                                                    "blockOwnerDeletion": True}]},
                  "spec": {"replicas": dep["spec"]["replicas"], "selector": {"matchLabels": labels},
                           "template": {**copy.deepcopy(template), "metadata": {
                               **copy.deepcopy(template["metadata"]), "labels": labels}}}}
            self.put("ReplicaSet", rs)
        return rs

    def _reconcile(self, dep: dict) -> None:
        if dep["spec"].get("paused"):
            return  # a paused Deployment rolls nothing
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

    # -- StatefulSets
    def statefulset(self, ns: str, name: str, labels: dict, container: dict, replicas: int = 1,
                    service_name: str | None = None, update_strategy: str = "RollingUpdate",
                    init_containers: list | None = None) -> dict:
        from testkit.servers.kube_api import validate

        spec = {"containers": [container], **({"initContainers": init_containers} if init_containers else {})}
        sts = {"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": name, "namespace": ns, "labels": dict(labels), "generation": 1},
               "spec": {"replicas": replicas, "serviceName": service_name or name,
                        "podManagementPolicy": "OrderedReady",
                        "selector": {"matchLabels": dict(labels)}, "updateStrategy": {"type": update_strategy},
                        "template": {"metadata": {"labels": dict(labels)}, "spec": spec}},
               "status": {"replicas": 0, "observedGeneration": 1}}
        validate(sts)
        self.put("StatefulSet", sts)
        with self.cond:
            self._reconcile_sts(sts)
        return sts

    def _reconcile_sts(self, sts: dict) -> None:
        ns, name = sts["metadata"]["namespace"], sts["metadata"]["name"]
        template = sts["spec"]["template"]
        revision = f"{name}-{_hash(template)}"
        pods = []
        for ordinal in range(sts["spec"]["replicas"]):
            pname = f"{name}-{ordinal}"
            pod = self.get("Pod", ns, pname)
            if pod is None:  # one pod per ordinal: the successor only once its predecessor is gone
                labels = {**template["metadata"]["labels"], "apps.kubernetes.io/pod-index": str(ordinal),
                          "controller-revision-hash": revision, "statefulset.kubernetes.io/pod-name": pname}
                body = {"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": pname, "generateName": f"{name}-", "labels": labels,
                                     "annotations": dict(template["metadata"].get("annotations") or {})},
                        "spec": {**copy.deepcopy(template["spec"]), "hostname": pname,
                                 "subdomain": sts["spec"]["serviceName"]}}
                pod = self.create_pod(ns, body, {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                                                 "uid": sts["metadata"]["uid"], "controller": True,
                                                 "blockOwnerDeletion": True})
            pods.append(pod)
        if sts["spec"].get("updateStrategy", {}).get("type", "RollingUpdate") == "RollingUpdate":
            old = [p for p in pods if p["metadata"]["labels"].get("controller-revision-hash") != revision
                   and not p["metadata"].get("deletionTimestamp")]
            if old and not any(p["metadata"].get("deletionTimestamp") for p in pods):
                victim = max(old, key=lambda p: int(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"]))
                threading.Thread(target=self.delete_pod, args=(ns, victim["metadata"]["name"]), daemon=True).start()
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        ready = sum(1 for p in live if any(c["type"] == "Ready" and c["status"] == "True"
                                           for c in p["status"].get("conditions", [])))
        st = sts.setdefault("status", {})
        if (st.get("replicas"), st.get("readyReplicas"), st.get("updateRevision")) != (len(live), ready, revision):
            st.update({"replicas": len(live), "readyReplicas": ready, "currentRevision": revision,
                       "updateRevision": revision, "observedGeneration": sts["metadata"].get("generation", 1)})
            self._bump("StatefulSet", "MODIFIED", sts)

    def remove_statefulset(self, ns: str, name: str) -> None:
        sts = self.remove("StatefulSet", ns, name)
        if sts is None:
            return
        for p in self.items("Pod", ns):
            if any(o.get("uid") == sts["metadata"]["uid"] for o in p["metadata"].get("ownerReferences", [])):
                self.delete_pod(ns, p["metadata"]["name"], 1.0)

    # -- PodDisruptionBudgets
    def disruptions_allowed(self, pdb: dict) -> tuple[int, int, int, int]:
        """(allowed, healthy, desired healthy, expected) as the disruption controller computes them."""
        from testkit.servers.kube_api import match_labels

        spec = pdb["spec"]
        sel = ",".join(f"{k}={v}" for k, v in (spec.get("selector", {}).get("matchLabels") or {}).items())
        ns = pdb["metadata"]["namespace"]
        pods = [p for p in self.items("Pod", ns) if match_labels(sel, p["metadata"].get("labels") or {})
                and not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") not in
                ("Succeeded", "Failed")]
        healthy = sum(1 for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                             for c in p["status"].get("conditions", [])))
        expected = len(pods)

        def count(v) -> int:
            s = str(v)
            return -(-expected * int(s[:-1]) // 100) if s.endswith("%") else int(s)

        if "minAvailable" in spec:
            desired = count(spec["minAvailable"])
        else:
            desired = max(0, expected - count(spec.get("maxUnavailable", 1)))
        return max(0, healthy - desired), healthy, desired, expected

    # -- the control loop
    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            with self.cond:
                for pod in list(self.objects.of("Pod").values()):
                    uid = pod["metadata"]["uid"]
                    if pod["metadata"].get("deletionTimestamp"):
                        continue
                    rt = self.runtimes.get(uid)
                    if rt is None:
                        if uid in self._sched_retry and time.monotonic() >= self._sched_retry[uid]:
                            del self._sched_retry[uid]
                            self._schedule(pod)
                        continue
                    before = [(c, c.waiting) for c in rt.all]
                    rt.tick()
                    for c, was in before:
                        if c.waiting is not None and c.waiting is not was and c.last \
                                and c.waiting.get("reason") == "CrashLoopBackOff" and (was is None or was.get(
                                    "reason") != "CrashLoopBackOff"):
                            t = c.last["terminated"]
                            if t["reason"] == "OOMKilled":
                                self.event(pod["metadata"]["namespace"], pod, "OOMKilling",
                                           f"Memory cgroup out of memory: Killed process of container "
                                           f"{c.spec['name']}", "Warning")
                            self.event(pod["metadata"]["namespace"], pod, "BackOff",
                                       f"Back-off restarting failed container {c.spec['name']} in pod "
                                       f"{pod['metadata']['name']}_{pod['metadata']['namespace']}"
                                       f"({pod['metadata']['uid']})", "Warning")
                    self._refresh(pod)
                for dep in self.items("Deployment", None):
                    self._reconcile(dep)
                for sts in self.items("StatefulSet", None):
                    self._reconcile_sts(sts)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        for rt in list(self.runtimes.values()):
            rt.stop(0.5)
        self.runtimes.clear()

    def processes(self, pod_name: str, needle: str = "") -> list[int]:
        """PIDs in a pod's process groups whose command line contains `needle`."""
        pod = next((p for p in self.items("Pod", None) if p["metadata"]["name"] == pod_name), None)
        if pod is None:
            return []
        rt = self.runtimes.get(pod["metadata"]["uid"])
        groups = {c.proc.pid for c in (rt.all if rt else []) if c.proc}
        out = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getpgid(int(pid)) in groups and needle in Path(f"/proc/{pid}/cmdline").read_bytes().replace(
                        b"\0", b" ").decode():
                    out.append(int(pid))
            except (OSError, ProcessLookupError):
                continue
        return out
