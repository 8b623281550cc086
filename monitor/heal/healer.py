"""The healer cycle: observe (Kubernetes API + metadata DB) -> diagnose (pure rules) -> verify earlier
actions -> act within the budget, or page -> deliver.

Only the holder of the Lease speaks: it writes Events, restarts and pages; a standby observes,
so its /metrics and `heal status` are right, and takes over when the holder's lease runs out.
Nothing is done blind: when the Kubernetes API or the database cannot be read no action is taken,
and after `blind_after` such cycles one "healer blind" alert is opened, closed when it sees again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime

from monitor.alerting.alerts import Alerts
from monitor.alerting.notice import Notice
from monitor.heal import budget as budgets
from monitor.heal.config import HealConfig
from monitor.heal.observe import DbView, read_db, read_kube
from monitor.heal.rules import Diagnosis, Observation, diagnose
from monitor.kube.client import KubeError
from monitor.kube.models import Pod
from monitor.probe.db import SourceError

log = logging.getLogger(__name__)

BLIND = ("_healer", "blind")
EXHAUSTED = "healing_exhausted"
EVENT_REASONS = {"stuck_scheduler": "StuckScheduler", "queue_blocked": "QueueBlocked", "restart_storm": "RestartStorm",
                 "oom_killed": "OOMKilled", "crash_loop": "CrashLoop", "no_ready_pod": "NoReadyPod",
                 "queued_timeout": "QueuedTimeout", EXHAUSTED: "HealingExhausted"}
TITLES = {"open": "Airflow unhealthy", "close": "Airflow recovered", "remind": "Airflow still unhealthy"}
HISTORY = 64  # restart-count samples kept per container


@dataclass
class Stats:
    cycles: int = 0
    kube_errors: int = 0
    db_errors: int = 0
    consecutive_blind: int = 0
    blind_reason: str = ""
    last_duration: float = 0.0
    events_created: int = 0
    events_failed: int = 0


class Healer:
    def __init__(self, cfg: HealConfig, kube, alerts: Alerts, lease=None):
        self.cfg, self.kube, self.alerts, self.lease = cfg, kube, alerts, lease
        self.state = alerts.store  # the healer's state file (monitor.heal.state.HealState)
        self.notifiers = alerts.notifiers
        self.diagnoses: list[Diagnosis] = []
        self.pods: list[Pod] = []
        self.db_view: DbView | None = None
        self.stats = Stats()
        self.actions: Counter[tuple[str, str]] = Counter()  # (rule, outcome)
        self.leader = False
        self._led = False  # leader at the last Lease check that reached the API server
        self._history: dict[tuple[str, str], deque] = {}
        self._unready_since: dict[str, datetime] = {}
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"{self.cfg.namespace}/{self.cfg.release}"

    def alias(self, subject: str, rule: str) -> str:
        return f"airflow-heal:{self.where}:{subject}:{rule}"

    @property
    def blind(self) -> bool:
        return self.stats.consecutive_blind >= self.cfg.blind_after

    def problem(self) -> str:
        """'' while the healer can work; else why not (for /-/ready)."""
        if self.state.broken:
            return f"healer state file cannot be used: {self.state.broken}"
        return f"healer blind: {self.stats.blind_reason}" if self.blind else ""

    # ------------------------------------------------------------------ observe
    def _remember(self, pods: list[Pod], now: datetime) -> None:
        live = set()
        for p in pods:
            for c in p.containers:
                key = (p.name, c.name)
                live.add(key)
                h = self._history.setdefault(key, deque(maxlen=HISTORY))
                if not h or h[-1][1] != c.restarts or (now - h[-1][0]).total_seconds() > 60:
                    h.append((now, c.restarts))
        for key in set(self._history) - live:
            del self._history[key]
        for comp in self.cfg.settings.components:
            if any(p.ready for p in pods if p.component == comp and not p.deleting):
                self._unready_since.pop(comp, None)
            else:
                self._unready_since.setdefault(comp, now)

    def observe(self, now: datetime) -> tuple[Observation, str, str]:
        """(observation, kubernetes error, database error)."""
        kube_err = db_err = ""
        try:
            kv = read_kube(self.kube)
        except KubeError as e:
            self.stats.kube_errors += 1
            return Observation(now=now), str(e), "not read (Kubernetes first)"
        sched = [p.name for p in kv.pods if p.component == "scheduler" and not p.deleting and p.phase == "Running"]
        dbv: DbView | None = None
        pending = [a.at for a in self._pending_all()]
        try:
            dbv = read_db(self.cfg.db_url, sched, self.cfg.thresholds, self.cfg.settings.queued_timeout_window,
                          now=now, timeout=min(10.0, self.cfg.kube_timeout),
                          since=datetime.fromtimestamp(min(pending), UTC) if pending else None)
        except SourceError as e:
            self.stats.db_errors += 1
            db_err = f"metadata database: {e}"
        self._remember(kv.pods, now)
        self.pods, self.db_view = kv.pods, dbv
        obs = Observation(
            now=now, pods=tuple(kv.pods), events=tuple(kv.events),
            schedulers=dbv.schedulers if dbv else {}, queued=dbv.queued if dbv else None,
            queued_timeouts=dbv.queued_timeouts if dbv else (),
            restart_history={k: tuple(v) for k, v in self._history.items()},
            unready_since=dict(self._unready_since))
        return obs, kube_err, db_err

    # ------------------------------------------------------------------ the cycle
    def cycle(self, now: datetime | None = None, apply: bool = True) -> list[Diagnosis]:
        with self._lock:
            started = time.monotonic()
            try:
                return self._cycle(now or datetime.now(UTC), apply)
            finally:
                self.stats.cycles += 1
                self.stats.last_duration = time.monotonic() - started

    def _cycle(self, now: datetime, apply: bool) -> list[Diagnosis]:
        self.leader = self.lease.leader if (self.lease is not None and apply) else (self.lease is None)
        if self.lease is None or not self.lease.last_error:
            self._led = self.leader
        obs, kube_err, db_err = self.observe(now)
        self.diagnoses = diagnose(obs, self.cfg.settings)
        blind_why = kube_err or db_err
        self.stats.consecutive_blind = self.stats.consecutive_blind + 1 if blind_why else 0
        self.stats.blind_reason = blind_why
        if blind_why:
            log.warning("healer cannot see (%d cycle(s) in a row), no action: %s", self.stats.consecutive_blind,
                        blind_why)
        # a leader that lost the API server cannot renew its Lease; it still says it is blind (a page,
        # not an action: no standby can see more than it can), and acts on nothing
        speak = self.leader or (bool(kube_err) and self._led)
        if not (apply and speak):
            return self.diagnoses
        if self.state.broken and not self.state.retry():
            log.error("healer state file cannot be used, nothing is acted on or paged: %s", self.state.broken)
            return self.diagnoses
        try:
            self._apply(obs, now, kube_err, db_err)
        except sqlite3.Error as e:
            self.state.fail(e)
            log.error("healer state file failed: %s", self.state.broken)
        self.deliver()
        return self.diagnoses

    def _apply(self, obs: Observation, now: datetime, kube_err: str, db_err: str) -> None:
        if kube_err or db_err:
            if self.blind:
                self._open(BLIND[0], BLIND[1], "blind", f"healer blind: {kube_err or db_err}",
                           self._blind_description(kube_err or db_err), self.cfg.priority, now, pods=())
        else:
            self._resolve(BLIND, "sees again", now)
        if kube_err:
            return  # nothing is known: no action, nothing resolved
        acting = self.cfg.mode == "act" and not db_err
        if not db_err:
            self._verify(obs, now)
        pageable: set[tuple[str, str]] = set()
        exhausted: set[str] = set()
        open_alerts = self.alerts.open_alerts()
        for d in self.diagnoses:
            if d.restartable and self.cfg.mode == "act":
                if not acting:
                    continue
                if (d.component, EXHAUSTED) in open_alerts:
                    exhausted.add(d.component)
                    continue
                if self._heal(d, obs, now):
                    continue
                exhausted.add(d.component)
                continue
            pageable.add(d.key)
            self._open(d.subject, d.rule, d.rule, d.reason, self._description(d), self.cfg.priority, now,
                       pods=d.pods, diagnosis=d)
        # close what is no longer diagnosed (what cannot be seen without the database stays as it is)
        db_rules = {"stuck_scheduler", "queue_blocked", "queued_timeout"}
        for key in open_alerts:
            subject, rule = key
            if key == BLIND or key in pageable:
                continue
            if rule == EXHAUSTED:
                if subject not in exhausted and not db_err and not self._pending(subject):
                    self._resolve(key, f"{subject} is healthy again", now)
                continue
            if db_err and rule in db_rules:
                continue
            self._resolve(key, "no longer diagnosed", now)

    # ------------------------------------------------------------------ healing
    def _pending_all(self) -> list:
        try:
            return [a for a in self.state.actions(time.time() - self.cfg.budget.window - self.cfg.budget.verify)
                    if a.outcome == "pending"]
        except sqlite3.Error:
            return []  # the cycle says so

    def _pending(self, component: str) -> list:
        return [a for a in self._pending_all() if a.component == component]

    def _heal(self, d: Diagnosis, obs: Observation, now: datetime) -> bool:
        """Restart for a restartable diagnosis if the budget allows; False when healing is exhausted."""
        ts = now.timestamp()
        if self._pending(d.component):
            return True  # an earlier restart is being verified
        rows = self.state.actions(ts - self.cfg.budget.window)
        allow = budgets.allowance([r.budget_action() for r in rows], d.component, ts, self.cfg.budget)
        pod = next((p for p in obs.pods if p.name == d.subject), None)
        if not allow.allowed and not allow.exhausted:
            log.info("healer: %s: %s; waiting", d.subject, allow.why)
            return True
        if not allow.allowed or pod is None:
            self._exhausted(d, rows, allow.why or "the pod is gone", now)
            return False
        what = (f"rollout restart of the workload of pod {pod.name}" if self.cfg.restart == "rollout"
                else f"delete pod {pod.name}")
        self._event(pod, EVENT_REASONS[d.rule], f"airflow-monitor: {d.reason}; action: {what} "
                    f"({allow.left - 1} more allowed in {int(self.cfg.budget.window // 60)}m)", "Restart")
        try:
            if self.cfg.restart == "rollout":
                what = f"rollout restart {self.kube.rollout_restart(pod.name)}"
            else:
                self.kube.delete_pod(pod.name, pod.uid)
        except KubeError as e:
            if e.status in (404, 409):  # gone, or already replaced (the uid precondition): nothing to spend
                log.info("healer: %s: the pod was already replaced (%s)", what, e)
                return True
            self.state.record(d.component, pod.name, d.rule, what, d.reason, ts, "error", str(e), now=ts)
            self.actions[(d.rule, "error")] += 1
            log.error("healer: %s failed: %s", what, e)
            self._exhausted(d, self.state.actions(ts - self.cfg.budget.window), f"the restart failed: {e}", now)
            return False
        self.state.record(d.component, pod.name, d.rule, what, d.reason, ts + self.cfg.budget.verify, now=ts)
        self.actions[(d.rule, "started")] += 1
        log.warning("healer: %s: %s (verify within %.0fs)", what, d.reason, self.cfg.budget.verify)
        return True

    def _healed(self, obs: Observation, component: str, acted_pod: str, final: bool) -> str:
        """Why the component counts as healed, or '' if it does not (yet): a scheduler other than the
        one restarted runs with a healthy verdict, and the queue moved: a task ended since the restart
        or one is running; at the end of the verify window, an empty queue also counts (tasks the old
        scheduler held are reset to scheduled for a moment, so an empty queue proves nothing earlier)."""
        dbv = self.db_view
        if dbv is None:
            return ""
        if dbv.finished_since:
            moved = f"{dbv.finished_since} task(s) ended since the restart"
        elif dbv.running:
            moved = f"{dbv.running} task(s) running"
        elif final and dbv.queued == 0:
            moved = "nothing queued at the end of the verify window"
        else:
            return ""
        fresh = [p for p in obs.pods if p.component == component and p.name != acted_pod and not p.deleting
                 and p.phase == "Running"]
        for p in fresh:
            v = obs.schedulers.get(p.name)
            if v is not None and v.status == "healthy" and not any(
                    d.rule == "stuck_scheduler" and d.component == component for d in self.diagnoses):
                return f"{moved}; scheduler pod {p.name}: {v.reason}"
        return ""

    def _verify(self, obs: Observation, now: datetime) -> None:
        ts = now.timestamp()
        for a in self.state.actions(ts - self.cfg.budget.window - self.cfg.budget.verify):
            if a.outcome != "pending":
                continue
            final = ts >= a.verify_by
            why = self._healed(obs, a.component, a.pod, final)
            if why:
                self.state.settle(a.id, "healed", why, ts)
                self.actions[(a.rule, "healed")] += 1
                log.info("healer: %s healed %s: %s", a.what, a.component, why)
                new = next((p for p in obs.pods if p.component == a.component and p.name != a.pod
                            and not p.deleting), None)
                if new is not None:
                    self._event(new, "Healed", f"airflow-monitor: the queue moves again after {a.what} ({why})",
                                "Verify", warning=False)
            elif final:
                self.state.settle(a.id, "failed", "the queue did not move within the verify window", ts)
                self.actions[(a.rule, "failed")] += 1
                log.warning("healer: %s did not heal %s within %.0fs", a.what, a.component, self.cfg.budget.verify)

    def _exhausted(self, d: Diagnosis, rows: list, why: str, now: datetime) -> None:
        tried = [f"{datetime.fromtimestamp(r.at, UTC):%H:%M:%SZ} {r.what}: {r.outcome}"
                 + (f" ({r.detail})" if r.detail else "") for r in rows if r.component == d.component]
        message = f"healing exhausted for {d.component} ({why}): {d.reason}"
        desc = "\n".join([f"airflow-monitor stopped restarting {d.component} in {self.where}: {why}.",
                          f"Diagnosis ({d.rule}): {d.reason}",
                          "Tried:" if tried else "Tried: nothing", *(f"- {t}" for t in tried),
                          "A restart does not fix this: a person has to look. Nothing more is restarted until "
                          "the component is healthy again."])
        if self._open(d.component, EXHAUSTED, d.rule, message, desc, self.cfg.exhausted_priority, now,
                      pods=d.pods, diagnosis=d):
            self.actions[(d.rule, "exhausted")] += 1
            log.error("healer: %s", message)

    # ------------------------------------------------------------------ Events and pages
    def _event(self, pod: Pod, reason: str, message: str, action: str, warning: bool = True) -> None:
        try:
            self.kube.event(pod, f"AirflowMonitor{reason}", message, action, warning)
            self.stats.events_created += 1
        except KubeError as e:
            self.stats.events_failed += 1
            log.warning("healer: %s", e)

    def _description(self, d: Diagnosis) -> str:
        lines = [d.reason, f"Rule: {d.rule}; component: {d.component}; release: {self.where}"]
        if d.pods:
            lines.append("Pods: " + ", ".join(d.pods[:10]) + (" ..." if len(d.pods) > 10 else ""))
        if d.restartable:
            lines.append("mode: observe, so airflow-monitor restarts nothing (mode: act would restart it)")
        else:
            lines.append("A restart does not fix this; airflow-monitor restarts nothing for it.")
        if self.cfg.runbook:
            lines.append(f"Runbook: {self.cfg.runbook}")
        return "\n".join(lines)

    def _blind_description(self, why: str) -> str:
        return (f"airflow-monitor's healer cannot read what it needs for {self.where} for "
                f"{self.stats.consecutive_blind} cycles: {why}. Nothing is diagnosed or restarted meanwhile.")

    def _notice(self, subject: str, rule: str, reason: str, message: str, desc: str, priority: str, now: datetime,
                note: str = "", d: Diagnosis | None = None) -> Notice:
        details = {"release": self.where, "component": d.component if d else subject, "rule": rule,
                   **({"pods": ",".join(d.pods[:10])} if d and d.pods else {}),
                   **({k: str(v) for k, v in d.details.items() if v is not None} if d else {})}
        return Notice(alias=self.alias(subject, rule), subject=subject, rule=rule, reason=reason,
                      message=f"[airflow-heal] {message}", description=desc, priority=priority,
                      responders=tuple(self.cfg.responders), tags=("airflow-heal", *self.cfg.tags),
                      entity=self.where, runbook=self.cfg.runbook, details=details, note=note, at=now.isoformat(),
                      titles=TITLES, service_check="airflow.heal", dd_tags=self._dd_tags(subject, rule),
                      entity_title=f"{subject} in {self.where}", summary=message)

    def _dd_tags(self, subject: str, rule: str) -> tuple[str, ...]:
        return (f"subject:{subject}", f"rule:{rule}", f"kube_namespace:{self.cfg.namespace}",
                f"release:{self.cfg.release}")

    def _open(self, subject: str, rule: str, reason: str, message: str, desc: str, priority: str, now: datetime,
              pods: tuple[str, ...], diagnosis: Diagnosis | None = None) -> bool:
        notice = self._notice(subject, rule, reason, message, desc, priority, now, d=diagnosis)
        opened = self.alerts.open(notice, now.timestamp())
        if opened:
            log.warning("healer: paged %s/%s: %s", subject, rule, message)
            by_name = {p.name: p for p in self.pods}
            for name in pods[:5]:
                if name in by_name:
                    self._event(by_name[name], EVENT_REASONS.get(rule, "Diagnosis"), f"airflow-monitor: {message}",
                                "Diagnose")
        else:
            self.alerts.update(notice)
        return opened

    def _resolve(self, key: tuple[str, str], why: str, now: datetime) -> None:
        subject, rule = key
        notice = self._notice(subject, rule, "resolved", f"{subject} {rule}: {why}", "", self.cfg.priority, now,
                              note=f"resolved: {why}")
        if self.alerts.resolve(notice, now.timestamp()):
            log.info("healer: resolved %s/%s: %s", subject, rule, why)

    def deliver(self) -> None:
        if not (self.leader or self._led) or self.state.broken:
            return
        try:
            self.alerts.deliver()
        except sqlite3.Error as e:
            self.state.fail(e)

    def close(self) -> None:
        """On a clean stop: hand the Lease over at once."""
        if self.lease is not None:
            self.lease.release()
