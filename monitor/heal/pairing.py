"""Which scheduler job is which pod's: pure pairing of the metadata database's running scheduler jobs
(their `hostname`) with the scheduler pods the Kubernetes API lists.

Airflow records in `job.hostname` what `[core] hostname_callable` returns in the scheduler's pod:
- the pod's name (the default, socket.getfqdn), or its FQDN `<pod>.<subdomain>.<namespace>.svc...`
  for a StatefulSet's pods, cut to 63 characters when the name is longer, without a '-' or '.' it
  would end on (as the kubelet cuts a pod's hostname);
- the pod's IP (airflow.utils.net.get_host_ip_address, set so the API server can fetch logs by IP);
- the node's name for a pod on the host's network.
A job pairs with the one pod that any of these names; a job that would pair with two pods pairs with
none (never a guess), and the healer treats a pod no job pairs with, while a live job pairs with no
pod, as a pairing it cannot make (`misconfigured`), not as a scheduler without a heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from monitor.kube.models import Pod

HOSTNAME_MAX = 63


@dataclass(frozen=True)
class Job:
    id: int
    hostname: str
    heartbeat: datetime | None = None


def _matches(hostname: str, pod: Pod) -> bool:
    h = hostname.strip().lower()
    if not h:
        return False
    if h in (ip.lower() for ip in pod.ips):
        return True
    first = h.split(".", 1)[0]
    names = {pod.name.lower(), (pod.hostname or pod.name).lower()}
    if first in names:
        return True
    if any(len(n) > HOSTNAME_MAX and n[:HOSTNAME_MAX].rstrip("-.") == first for n in names):
        return True  # a pod name over 63 characters, cut by the kubelet (and a '-' or '.' it ends on dropped)
    return pod.host_network and bool(pod.node) and first == pod.node.split(".", 1)[0].lower()


def _when(job: Job) -> float:
    return job.heartbeat.timestamp() if job.heartbeat else 0.0


def pair(jobs: list[Job], pods: list[Pod]) -> tuple[dict[str, Job], list[Job]]:
    """(pod name -> the freshest job that pairs with it, the jobs that pair with no single pod). Pods on
    their way out (Terminating) are paired too: their jobs are known, not loose."""
    paired: dict[str, Job] = {}
    loose: list[Job] = []
    for job in jobs:
        hits = [p for p in pods if _matches(job.hostname, p)]
        if len(hits) != 1:
            loose.append(job)
            continue
        cur = paired.get(hits[0].name)
        if cur is None or _when(job) > _when(cur):
            paired[hits[0].name] = job
    return paired, loose
