"""Diagnosis rules as pure functions over one observation of an Airflow release. No I/O, no clock.

An observation is what the Kubernetes API (the release's pods and their Events) and the metadata
database (each scheduler's heartbeat and queue, through the probe's own queries) said at `now`.
Each rule yields Diagnoses: a named rule, the component and the object it is about, one line a
person can act on, and whether a restart can fix it. Only `stuck_scheduler` is restartable: every
other cause (pods that cannot be scheduled or pulled, a missing Secret, OOM, a crash loop) comes
back after a restart, so it is paged instead. And nothing is restarted on a guess: a scheduler pod
whose job cannot be told apart (its hostname pairs with no pod while a live job pairs with none)
is `misconfigured`, paged, never restarted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitor.kube.models import Container, Event, Pod
from monitor.probe.rules import Verdict

COMPONENTS = ("scheduler", "api-server", "triggerer", "dag-processor", "worker")
# container waiting reasons (main or init containers) that no restart of the scheduler can cure
BLOCKED_WAITING = ("ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName", "ImageInspectError",
                   "RegistryUnavailable", "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                   "CreatePodSandboxError")
# the Warnings that say why a pod cannot start (kube-scheduler, kubelet, attachdetach-controller)
BLOCKED_EVENTS = ("FailedScheduling", "FailedMount", "FailedAttachVolume", "FailedCreatePodSandBox", "Failed")
# every Event reason a rule reads: the Event cache keeps these alone
EVENT_REASONS = (*BLOCKED_EVENTS, "Unhealthy")
RULES = ("misconfigured", "stuck_scheduler", "queue_blocked", "restart_storm", "oom_killed", "crash_loop",
         "no_ready_pod", "queued_timeout")


@dataclass(frozen=True)
class Settings:
    components: tuple[str, ...] = ("scheduler", "api-server", "triggerer", "dag-processor")
    startup_grace: float = 180.0  # a scheduler pod younger than this is not judged stuck (its job is starting)
    pending_grace: float = 300.0  # a worker pod Pending this long blocks the queue
    storm_restarts: int = 3  # restarts ...
    storm_window: float = 900.0  # ... within this many seconds make a restart storm
    oom_window: float = 3600.0  # an OOMKill this recent is reported
    ready_grace: float = 300.0  # a component without a ready pod for this long is reported
    queued_timeout_window: float = 3600.0


@dataclass(frozen=True)
class Observation:
    now: datetime
    pods: tuple[Pod, ...] = ()
    events: tuple[Event, ...] = ()
    # the probe's verdict per scheduler pod, for the job paired with it (monitor.heal.pairing); absent:
    # the database was not read. A pod no job pairs with has a heartbeat verdict with details unpaired=True
    schedulers: dict[str, Verdict] = field(default_factory=dict)
    # running scheduler jobs with a fresh heartbeat that pair with no pod: their hostnames
    unpaired_jobs: tuple[str, ...] = ()
    queued: int | None = None  # tasks queued, all schedulers together; None: database not read
    queued_timeouts: tuple[tuple[str, str], ...] = ()  # (dag_id, task_id) failed by task_queued_timeout
    # (pod, container) -> [(when, restartCount)] from earlier cycles, oldest first
    restart_history: dict[tuple[str, str], tuple[tuple[datetime, int], ...]] = field(default_factory=dict)
    unready_since: dict[str, datetime] = field(default_factory=dict)  # component -> first seen with no ready pod
    # derived: the events of each object (by uid; by name for an Event without one), so that a rule
    # looks up a pod's events in O(1), and a pod recreated under the same name has none of its predecessor's
    events_of: dict[str, tuple[Event, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, list[Event]] = {}
        for e in self.events:
            index.setdefault(e.object_uid or f"name:{e.object_name}", []).append(e)
        object.__setattr__(self, "events_of", {k: tuple(v) for k, v in index.items()})

    def events_about(self, pod: Pod) -> tuple[Event, ...]:
        return self.events_of.get(pod.uid, ()) + self.events_of.get(f"name:{pod.name}", ())


@dataclass(frozen=True)
class Diagnosis:
    rule: str
    component: str
    subject: str  # the pod, or the component when the diagnosis is about all of it
    reason: str
    restartable: bool = False
    pods: tuple[str, ...] = ()  # the pods it is about (Events go there)
    details: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.subject, self.rule)


def _ago(now: datetime, t: datetime | None) -> float | None:
    return None if t is None else (now - t).total_seconds()


def _dur(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _last_event(obs: Observation, pod: Pod, reasons: tuple[str, ...]) -> Event | None:
    hits = [e for e in obs.events_about(pod) if e.reason in reasons]
    return max(hits, key=lambda e: e.last or datetime.min.replace(tzinfo=obs.now.tzinfo), default=None)


def _live(obs: Observation, component: str) -> list[Pod]:
    return [p for p in obs.pods if p.component == component and not p.deleting]


# ---------------------------------------------------------------------- queue blocked outside the scheduler
def _blocked_why(obs: Observation, pod: Pod, s: Settings) -> str | None:
    """Why a worker pod cannot run, or None if it is not blocked (yet)."""
    for c in pod.containers:
        if c.waiting_reason in BLOCKED_WAITING or (c.kind == "init" and c.waiting_reason == "CrashLoopBackOff"):
            return f"{c.shown}: {c.waiting_message}".rstrip(": ")
    if pod.phase != "Pending":
        return None
    age = _ago(obs.now, pod.created)
    if age is not None and age < s.pending_grace:
        return None
    if pod.gated:
        return "SchedulingGated: its scheduling gates were never removed (spec.schedulingGates)"
    if pod.unschedulable:
        return pod.unschedulable
    ev = _last_event(obs, pod, BLOCKED_EVENTS)
    if ev is not None:
        return ev.message
    return "Pending, no reason given"


def queue_blocked(obs: Observation, s: Settings) -> list[Diagnosis]:
    workers = _live(obs, "worker")
    blocked = [(p, why) for p in workers if (why := _blocked_why(obs, p, s)) is not None]
    if not blocked or obs.queued == 0:
        return []
    pending = [p for p, _ in blocked if p.phase == "Pending"]
    oldest = max((_ago(obs.now, p.created) or 0.0 for p, _ in blocked), default=0.0)
    reasons: dict[str, int] = {}
    for _, why in blocked:
        reasons[why] = reasons.get(why, 0) + 1
    top = max(reasons, key=lambda r: reasons[r])
    n = len(blocked)
    what = f"{n} worker pod{'s' if n > 1 else ''} " + (
        f"Pending for {_dur(oldest)}" if len(pending) == n else "cannot start")
    queued = f"; {obs.queued} task(s) queued" if obs.queued else ""
    return [Diagnosis("queue_blocked", "worker", "worker", f"{what}: {top}{queued}", False,
                      tuple(p.name for p, _ in blocked), {"blocked_pods": n, "reason": top, "queued": obs.queued})]


# ---------------------------------------------------------------------- the scheduler's own queue
def _unpaired(obs: Observation, s: Settings) -> list[Pod]:
    """Running scheduler pods, past their start, that no running scheduler job pairs with."""
    out = []
    for pod in _live(obs, "scheduler"):
        v = obs.schedulers.get(pod.name)
        age = _ago(obs.now, pod.started)
        if v is not None and v.details.get("unpaired") and pod.phase == "Running" and (age is None
                                                                                        or age >= s.startup_grace):
            out.append(pod)
    return out


def no_pods(obs: Observation) -> list[Diagnosis]:
    """Not one pod of the release: the healer looks in the wrong place (namespace, release label), or
    Airflow is gone; either way it sees nothing it could judge, and says so."""
    if obs.pods:
        return []
    return [Diagnosis("misconfigured", "scheduler", "release",
                      "no pod of the release at all (labels release=<airflow.release>, component=scheduler|"
                      "api-server|...): check airflow.release and kubernetes.namespace, or Airflow is not running",
                      False, (), {"pods": 0})]


def misconfigured(obs: Observation, s: Settings) -> list[Diagnosis]:
    """Scheduler pods and live scheduler jobs that do not pair: which job is which pod's is unknown, so
    nothing is restarted (a healthy scheduler would be), and a person is told how to fix the pairing."""
    pods = _unpaired(obs, s)
    if not pods or not obs.unpaired_jobs:
        return []
    hosts = ", ".join(obs.unpaired_jobs[:5]) + (" ..." if len(obs.unpaired_jobs) > 5 else "")
    names = ", ".join(f"{p.name} ({', '.join(p.ips) or 'no IP'})" for p in pods[:5])
    return [Diagnosis("misconfigured", "scheduler", "scheduler",
                      f"cannot pair scheduler jobs (hostnames {hosts}) with pods ({names}); nothing is restarted: "
                      "set [core] hostname_callable to airflow.utils.net.getfqdn (the pod name, Airflow's default) "
                      "or airflow.utils.net.get_host_ip_address (the pod IP)", False, tuple(p.name for p in pods),
                      {"job_hostnames": ",".join(obs.unpaired_jobs[:10])})]


def stuck_scheduler(obs: Observation, s: Settings, blocked: bool) -> list[Diagnosis]:
    out = []
    # a live job we cannot place: an unpaired pod may be healthy, and a paired one may be paired with a
    # stale job of its name while its own is that one: no scheduler is restarted on such a guess
    guessing = bool(obs.unpaired_jobs)
    for pod in _live(obs, "scheduler"):
        v = obs.schedulers.get(pod.name)
        if v is None or v.status != "unhealthy" or pod.phase != "Running":
            continue
        if v.details.get("unpaired") and guessing:
            continue  # misconfigured says why; never a restart
        age = _ago(obs.now, pod.started)
        if age is not None and age < s.startup_grace:
            continue  # a new (or just restarted) scheduler: its job and its queue are still starting
        if blocked and v.check == "stuck_queue":
            continue  # the queue is blocked outside the scheduler: queue_blocked says why; no restart
        reason = f"scheduler pod {pod.name}: {v.reason}"
        if guessing:
            hosts = ", ".join(obs.unpaired_jobs[:3])
            reason += (f"; not restarted: a live scheduler job pairs with no pod (hostnames {hosts}), so which job "
                       "is this pod's is not certain")
        out.append(Diagnosis("stuck_scheduler", "scheduler", pod.name, reason, not guessing, (pod.name,),
                             {"check": v.check, **v.details}))
    return out


# ---------------------------------------------------------------------- restarts, OOM, crash loops
def _restarts_within(obs: Observation, pod: Pod, c: Container, window: float) -> int:
    """Restarts of a container within the window: the count now minus the count at the window's
    start (from earlier cycles); a pod created within the window counts from zero."""
    since = obs.now - timedelta(seconds=window)
    if pod.created is not None and pod.created >= since:
        return c.restarts
    base = None
    for when, count in obs.restart_history.get((pod.name, c.name), ()):
        if when <= since or base is None:
            base = count
        if when > since:
            break
    return max(0, c.restarts - (c.restarts if base is None else base))


def restarts(obs: Observation, s: Settings) -> list[Diagnosis]:
    out = []
    for pod in obs.pods:
        if pod.component == "worker" or pod.deleting:
            continue
        for c in pod.containers:
            where = f"{pod.component} pod {pod.name}" + (
                f" {'init container' if c.kind == 'init' else 'sidecar' if c.kind == 'sidecar' else 'container'} "
                f"{c.name}" if len(pod.containers) > 1 else "")
            last = f"{c.last_reason or 'unknown'}" + (f", exit {c.last_exit_code}" if c.last_exit_code is not None
                                                      else "")
            n = _restarts_within(obs, pod, c, s.storm_window)
            if n >= s.storm_restarts:
                probe = _last_event(obs, pod, ("Unhealthy",))  # in EVENT_REASONS
                said = f"; last probe: {probe.message}" if probe else ""
                out.append(Diagnosis("restart_storm", pod.component, pod.name,
                                     f"{where} restarted {n} times in {_dur(s.storm_window)}; last termination: "
                                     f"{last}{said}", False, (pod.name,),
                                     {"restarts": n, "last_reason": c.last_reason}))
            oom_age = _ago(obs.now, c.last_finished)
            if c.last_reason == "OOMKilled" and (oom_age is None or oom_age <= s.oom_window):
                limit = f" (memory limit {c.memory_limit})" if c.memory_limit else " (no memory limit)"
                when = f" {_dur(oom_age)} ago" if oom_age is not None else ""
                out.append(Diagnosis("oom_killed", pod.component, pod.name,
                                     f"{where} was OOMKilled{when}{limit}: raise its memory or lower its load",
                                     False, (pod.name,), {"memory_limit": c.memory_limit}))
            if c.waiting_reason == "CrashLoopBackOff":
                msg = f": {c.waiting_message}" if c.waiting_message else ""
                out.append(Diagnosis("crash_loop", pod.component, pod.name,
                                     f"{where} is in {c.shown} (last termination: {last}){msg}", False,
                                     (pod.name,), {"restarts": c.restarts}))
    return out


# ---------------------------------------------------------------------- components without a ready pod
def no_ready_pod(obs: Observation, s: Settings) -> list[Diagnosis]:
    out = []
    for comp in s.components:
        pods = [p for p in _live(obs, comp) if not p.finished]  # an evicted or completed pod never comes back
        if any(p.ready for p in pods):
            continue
        since = obs.unready_since.get(comp)
        age = _ago(obs.now, since)
        if age is None or age < s.ready_grace:
            continue
        if pods:
            what = f"{len(pods)} pod(s), none ready"
        else:  # what is left of it: pods on their way out, or evicted or completed ones
            gone = [p for p in obs.pods if p.component == comp]
            dying = [p for p in gone if p.deleting]
            done = [p for p in gone if not p.deleting and p.finished]
            what = (f"no live pod ({', '.join(_gone_why(p) for p in (dying + done)[:3])})" if gone
                    else "no pod at all")
        why = ""
        for p in pods:
            waiting = next((c for c in p.containers if c.waiting_reason and c.waiting_reason != "PodInitializing"),
                           None)
            if waiting:
                why = f" ({p.name}: {waiting.shown})"
                break
            if p.gated:
                why = f" ({p.name}: SchedulingGated)"
                break
            if p.unschedulable:
                why = f" ({p.name}: {p.unschedulable})"
                break
        out.append(Diagnosis("no_ready_pod", comp, comp, f"{comp}: {what} for {_dur(age)}{why}", False,
                             tuple(p.name for p in pods), {"pods": len(pods)}))
    return out


def _gone_why(p: Pod) -> str:
    if p.deleting:
        return f"{p.name} Terminating" + (f" since {p.deleted_at:%H:%M:%SZ}" if p.deleted_at else "")
    return f"{p.name} {p.reason or p.phase}"


# ---------------------------------------------------------------------- tasks failed by task_queued_timeout
def queued_timeout(obs: Observation, s: Settings) -> list[Diagnosis]:
    if not obs.queued_timeouts:
        return []
    n = len(obs.queued_timeouts)
    names = sorted({f"{d}.{t}" for d, t in obs.queued_timeouts})
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [Diagnosis("queued_timeout", "scheduler", "scheduler",
                      f"{n} task(s) failed by [scheduler] task_queued_timeout in the last "
                      f"{_dur(s.queued_timeout_window)} (never ran): {shown}", False, (), {"failed": n})]


def diagnose(obs: Observation, s: Settings) -> list[Diagnosis]:
    """Every diagnosis of one observation, sorted by rule and subject."""
    if not obs.pods:
        return no_pods(obs)
    blocked = queue_blocked(obs, s)
    out = [*misconfigured(obs, s), *blocked, *stuck_scheduler(obs, s, bool(blocked)), *restarts(obs, s),
           *no_ready_pod(obs, s), *queued_timeout(obs, s)]
    return sorted(out, key=lambda d: (RULES.index(d.rule), d.subject))


def needs_events(obs: Observation, s: Settings) -> list[Pod]:
    """The pods whose Warning Events a rule would read: worker pods Pending past their grace with no
    reason in their own status, and components' pods that restart (for their last probe message).
    Listing Events is the costly read of a big cluster; a healthy release needs none."""
    out = []
    for p in obs.pods:
        if p.deleting:
            continue
        if p.component == "worker":
            age = _ago(obs.now, p.created)
            if p.phase == "Pending" and (age is None or age >= s.pending_grace) and not p.unschedulable \
                    and not p.gated and not any(c.waiting_reason in BLOCKED_WAITING for c in p.containers):
                out.append(p)
        elif any(_restarts_within(obs, p, c, s.storm_window) >= s.storm_restarts for c in p.containers):
            out.append(p)
    return out
