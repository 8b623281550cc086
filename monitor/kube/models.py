"""What the Kubernetes API says about an Airflow release, as plain values: its pods (with their
containers' states) and the Events about them. monitor.kube.client reads them; the healer's rules
take them as input. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


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


@dataclass(frozen=True)
class Pod:
    name: str
    component: str
    phase: str = "Running"  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool = True
    created: datetime | None = None
    deleting: bool = False
    containers: tuple[Container, ...] = ()
    unschedulable: str = ""  # the PodScheduled=False condition's message
    uid: str = ""


@dataclass(frozen=True)
class Event:
    object_name: str
    reason: str
    message: str
    last: datetime | None = None
    count: int = 1
    type: str = "Normal"
