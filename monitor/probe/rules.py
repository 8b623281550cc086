"""Health rules as pure functions over an observation. No I/O, no clock: `now` is in the observation.

The verdict of each check is one of:
  healthy       - the check passed
  unhealthy     - the component should be restarted
  unknown       - the data could not be read (an outage); restarting would not fix that
  misconfigured - the probe cannot work until a person fixes its settings (credentials, database,
                  URL, driver); it fails by default, so that the startup probe stops the rollout
                  and `kubectl describe` shows the reason in the pod's events
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# Defaults, and why:
# - heartbeat: Airflow's own [scheduler] scheduler_health_check_threshold (30 s), what
#   `airflow jobs check` and the /health endpoint use.
# - queued_grace 300 s: longer than a normal queue wait (a Kubernetes pod start, a busy Celery
#   queue) and shorter than Airflow's [scheduler] task_queued_timeout (600 s), which never fires
#   when the scheduler itself is the stuck part.
# - finished_window 300 s: with nothing running, no task ended for 5 minutes while tasks waited
#   5 minutes: the queue is not moving.
HEARTBEAT_THRESHOLD = 30.0
QUEUED_GRACE = 300.0
FINISHED_WINDOW = 300.0
CHECKS = ("heartbeat", "stuck_queue")
# what applies to each component: only the scheduler has a task queue
APPLIES = {"scheduler": ("heartbeat", "stuck_queue"), "triggerer": ("heartbeat",), "dag-processor": ("heartbeat",)}


@dataclass(frozen=True)
class Thresholds:
    heartbeat: float = HEARTBEAT_THRESHOLD
    queued_grace: float = QUEUED_GRACE
    finished_window: float = FINISHED_WINDOW


@dataclass(frozen=True)
class Observation:
    now: datetime
    component: str = "scheduler"  # scheduler | triggerer | dag-processor
    job_id: int | None = None  # the newest running job of this type (on this host with --local)
    hostname: str | None = None
    heartbeat: datetime | None = None
    queued_stuck: int | None = None  # tasks queued for longer than the grace period
    oldest_queued: datetime | None = None
    queued: int | None = None
    running: int | None = None
    finished_recently: int | None = None  # None: not needed, not asked


@dataclass(frozen=True)
class Verdict:
    status: str  # healthy | unhealthy | unknown
    check: str  # heartbeat | stuck_queue | source | all
    reason: str
    details: dict = field(default_factory=dict)

    def exit_code(self, on_unknown: str = "ok", on_misconfigured: str = "fail") -> int:
        if self.status == "unhealthy" or (self.status == "unknown" and on_unknown == "fail"):
            return 1
        if self.status == "misconfigured" and on_misconfigured == "fail":
            return 1
        return 0


def _age(now: datetime, t: datetime | None) -> float | None:
    return None if t is None else (now - t).total_seconds()


def check_heartbeat(obs: Observation, th: Thresholds) -> Verdict:
    where = f" on {obs.hostname}" if obs.hostname else ""
    if obs.job_id is None:
        return Verdict("unhealthy", "heartbeat", f"no running {obs.component} job{where}")
    age = _age(obs.now, obs.heartbeat)
    details = {"job_id": obs.job_id, "heartbeat_age_seconds": None if age is None else round(age, 1)}
    if age is None:
        return Verdict("unhealthy", "heartbeat", f"{obs.component} job {obs.job_id}{where} never heartbeat", details)
    if age > th.heartbeat:
        return Verdict("unhealthy", "heartbeat", f"{obs.component} job {obs.job_id}{where} last heartbeat "
                       f"{age:.0f}s ago (threshold {th.heartbeat:.0f}s)", details)
    return Verdict("healthy", "heartbeat", f"{obs.component} job {obs.job_id}{where} heartbeat {age:.0f}s ago", details)


def needs_finished(obs: Observation) -> bool:
    """Whether the stuck-queue check needs the (costlier) finished-recently count."""
    return bool(obs.queued_stuck) and obs.running == 0


def check_stuck_queue(obs: Observation, th: Thresholds) -> Verdict:
    details = {"queued": obs.queued, "queued_over_grace": obs.queued_stuck, "running": obs.running,
               "finished_recently": obs.finished_recently}
    if obs.queued_stuck is None or obs.running is None:
        return Verdict("unknown", "stuck_queue", "task counts not available", details)
    if obs.queued_stuck == 0:
        return Verdict("healthy", "stuck_queue", f"no task queued over {th.queued_grace:.0f}s", details)
    if obs.running > 0:
        return Verdict("healthy", "stuck_queue", f"{obs.queued_stuck} queued over {th.queued_grace:.0f}s "
                       f"but {obs.running} running", details)
    if obs.finished_recently is None:
        return Verdict("unknown", "stuck_queue", "finished-task count not available", details)
    if obs.finished_recently > 0:
        return Verdict("healthy", "stuck_queue", f"{obs.queued_stuck} queued over {th.queued_grace:.0f}s, "
                       f"none running, {obs.finished_recently} finished in the last "
                       f"{th.finished_window:.0f}s", details)
    oldest = _age(obs.now, obs.oldest_queued)
    details["oldest_queued_seconds"] = None if oldest is None else round(oldest, 1)
    old = f" (oldest {oldest:.0f}s)" if oldest is not None else ""
    return Verdict("unhealthy", "stuck_queue",
                   f"{obs.queued_stuck} task(s) queued over {th.queued_grace:.0f}s{old}, none running, "
                   f"none finished in the last {th.finished_window:.0f}s", details)


def evaluate(obs: Observation, th: Thresholds, checks: tuple[str, ...] = CHECKS) -> Verdict:
    """The checks that apply to the component; the first unhealthy one wins, then the first
    unknown, else healthy."""
    checks = tuple(c for c in checks if c in APPLIES.get(obs.component, CHECKS))
    verdicts = []
    if "heartbeat" in checks:
        verdicts.append(check_heartbeat(obs, th))
    if "stuck_queue" in checks:
        verdicts.append(check_stuck_queue(obs, th))
    for status in ("unhealthy", "unknown"):
        for v in verdicts:
            if v.status == status:
                return Verdict(v.status, v.check, v.reason, {k: x for d in verdicts for k, x in d.details.items()})
    reason = "; ".join(v.reason for v in verdicts) or "no checks"
    return Verdict("healthy", "all", reason, {k: x for d in verdicts for k, x in d.details.items()})
