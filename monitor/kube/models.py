"""What the Kubernetes API says about an Airflow release, as plain values: its pods (with their
containers' states, init containers and sidecars included) and the Warning Events about them.
monitor.kube.client reads them from the API's JSON; the healer's rules take them as input. No I/O.

Text that comes from the cluster (a container's waiting message, an Event's message, a pod's
status message) is data written by whoever can create pods or Events: it passes through
`cluster_text` before it is kept, so it cannot forge a log line, mention a whole chat channel or
slip a link into a page.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

TEXT_MAX = 400  # characters kept of one message from the cluster
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]+")
_MENTION = re.compile(r"@(channel|here|everyone|all|group)\b", re.IGNORECASE)
_SCHEME = re.compile(r"\b(https?|ftp|file|javascript|data|vbscript|mailto|slack|tel)\s*:", re.IGNORECASE)


def cluster_text(text: str | None, limit: int = TEXT_MAX) -> str:
    """A message from the cluster (or the database) made safe to log, page and write back: the lookalikes
    Unicode folds to ASCII (＠here, ＜!channel＞) folded first, control characters, invisible ones and
    line breaks become spaces, chat markup (<!channel>, <@U123>, <http://x|y>) loses its brackets,
    markdown links their `](`, @here-style mentions and URL schemes (with or without //) are defanged,
    and it is cut to `limit` characters."""
    if not text:
        return ""
    s = unicodedata.normalize("NFKC", str(text))
    s = _CONTROL.sub(" ", s)
    s = s.replace("<", "‹").replace(">", "›").replace("](", "] (")
    s = _MENTION.sub(lambda m: "@\u2060" + m.group(1), s)  # a word joiner: no channel-wide ping
    s = _SCHEME.sub(lambda m: f"{m.group(1)}[:]", s)  # no clickable link
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."  # ASCII: one wide character doubles a str's size


@dataclass(frozen=True)
class Container:
    name: str
    ready: bool = True
    restarts: int = 0
    waiting_reason: str = ""
    waiting_message: str = ""
    last_reason: str = ""  # lastState.terminated (or state.terminated) reason: OOMKilled, Error, Completed
    last_exit_code: int | None = None
    last_finished: datetime | None = None
    memory_limit: str = ""
    kind: str = "main"  # main | init | sidecar (an init container with restartPolicy: Always)
    started: datetime | None = None  # state.running.startedAt: when the kubelet last (re)started it

    @property
    def shown(self) -> str:
        """How kubectl names a waiting state: Init:ImagePullBackOff for an init container."""
        return f"Init:{self.waiting_reason}" if self.kind == "init" and self.waiting_reason else self.waiting_reason


@dataclass(frozen=True)
class Pod:
    name: str
    component: str
    phase: str = "Running"  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool = True
    created: datetime | None = None
    deleting: bool = False
    containers: tuple[Container, ...] = ()  # main containers, then init containers and sidecars
    unschedulable: str = ""  # the PodScheduled=False condition's message
    uid: str = ""
    ips: tuple[str, ...] = ()  # status.podIPs (podIP first)
    hostname: str = ""  # spec.hostname (a StatefulSet's pods have one)
    subdomain: str = ""  # spec.subdomain (the StatefulSet's serviceName)
    node: str = ""  # spec.nodeName
    host_network: bool = False
    reason: str = ""  # status.reason: Evicted, NodeLost, ...
    message: str = ""  # status.message
    owner_kind: str = ""  # the controller: StatefulSet, ReplicaSet, Job, ...
    owner_name: str = ""
    gated: bool = False  # PodScheduled=False with reason SchedulingGated (spec.schedulingGates)
    deleted_at: datetime | None = None  # metadata.deletionTimestamp

    @property
    def started(self) -> datetime | None:
        """When the pod last (re)started: its creation, or a main container's later (re)start by the kubelet."""
        times = [t for t in (self.created, *(c.started for c in self.containers if c.kind == "main")) if t]
        return max(times, default=None)

    @property
    def finished(self) -> bool:
        """Succeeded or Failed (an evicted pod is Failed): it will never be ready again."""
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class Event:
    object_name: str
    reason: str
    message: str
    last: datetime | None = None  # lastTimestamp, or series.lastObservedTime, or eventTime
    count: int = 1  # count, or series.count
    type: str = "Normal"
    object_uid: str = ""  # involvedObject.uid: a pod recreated under its name is another object
