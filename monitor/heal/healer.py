"""The healer cycle: observe (Kubernetes API + metadata DB) -> diagnose (pure rules) -> verify earlier
restarts -> restart within the budget, or page -> deliver.

Do no harm:
- Only the holder of the Lease speaks (Events, restarts, pages), and it asks the Lease immediately
  before each of them: a replica that stopped being leader mid-cycle does nothing more.
- Nothing is done on a guess: when the Kubernetes API or the database cannot be read no action is
  taken; a scheduler pod no job pairs with (while a live job pairs with no pod) is `misconfigured`.
- A restart is an eviction (policy/v1, so PodDisruptionBudgets hold; a refusal is a page, never
  forced), with the pod's uid as a precondition. It is verified by identity: healed means a pod of the
  component that did not exist before (another uid), healthy, and the queue moving.
- What was spent, what is being verified and what was paged live in the cluster (monitor.heal.state),
  so the next leader continues with the same budget and pages nothing twice.

When the healer cannot see (the API server or the database) for `blind_after` cycles it pages once,
straight to the notifiers (its state may be out of reach too), and closes that page when it sees again.
So does a state it cannot read (corrupted, edited by hand): it restarts nothing and pages nothing else
until it can, since its budget and its open alerts are unknown.

Time is the API server's clock (monitor.kube.client.ClusterClock): the times kept in the state are
judged alike by every replica. A page closes once its diagnosis has been gone for `resolve_after`
(a crash-looping container runs for a moment between back-offs; that is no recovery).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from monitor.alerting.alerts import Alerts, DirectPage
from monitor.alerting.notice import Notice
from monitor.alerting.store import STORE_ERRORS
from monitor.heal import budget as budgets
from monitor.heal.config import HealConfig
from monitor.heal.observe import DbView, HeartbeatWatch, read_db, watched
from monitor.heal.rules import Diagnosis, Observation, diagnose, needs_events
from monitor.kube.client import KubeError
from monitor.kube.models import Pod, cluster_text
from monitor.probe.db import SourceError

log = logging.getLogger(__name__)

BLIND = ("_healer", "blind")
STATE = ("_healer", "state")
EXHAUSTED = "healing_exhausted"
BLOCKED = "healing_blocked"
EVENT_REASONS = {"stuck_scheduler": "StuckScheduler", "queue_blocked": "QueueBlocked", "restart_storm": "RestartStorm",
                 "oom_killed": "OOMKilled", "crash_loop": "CrashLoop", "no_ready_pod": "NoReadyPod",
                 "queued_timeout": "QueuedTimeout", "misconfigured": "Misconfigured", EXHAUSTED: "HealingExhausted",
                 BLOCKED: "HealingBlocked"}
TITLES = {"open": "Airflow unhealthy", "close": "Airflow recovered", "remind": "Airflow still unhealthy"}
HISTORY = 64  # restart-count samples kept per container
DB_RULES = {"stuck_scheduler", "queue_blocked", "queued_timeout", "misconfigured"}


class NotLeader(Exception):
    """The Lease was lost during the cycle: nothing more is done."""


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
    event_lists: int = 0  # cycles that had to list Events
    internal_errors: int = 0  # cycles that failed on a bug (counted blind)
    state_broken_cycles: int = 0


class Healer:
    def __init__(self, cfg: HealConfig, kube, alerts: Alerts, lease=None):
        self.cfg, self.kube, self.alerts, self.lease = cfg, kube, alerts, lease
        self.state = alerts.store  # the healer's state in the cluster (monitor.heal.state.HealState)
        self.notifiers = alerts.notifiers
        self.diagnoses: list[Diagnosis] = []
        self.pods: list[Pod] = []
        self.db_view: DbView | None = None
        self.stats = Stats()
        self.actions: Counter[tuple[str, str]] = Counter()  # (rule, outcome)
        self.leader = False
        self._led = False  # leader when the current blind episode began
        self._blind_page = DirectPage(self.notifiers, "healer blind")  # past the state, which may be out of reach
        self._state_page = DirectPage(self.notifiers, "healer state")
        self.clock = getattr(kube, "clock", None)  # the API server's (ClusterClock); else this process's
        self.watching = True  # heal run: heartbeats judged as watched (HeartbeatWatch); a one-time look: False
        self._beats = HeartbeatWatch()
        self._absent: dict[tuple[str, str], float] = {}  # open alert -> when its diagnosis was first gone
        self._refusals: Counter[str] = Counter()  # component -> restarts refused in a row (transient errors)
        self._history: dict[tuple[str, str], deque] = {}
        self._unready_since: dict[str, datetime] = {}
        self._wait_until: dict[str, float] = {}  # component -> a PodDisruptionBudget's Retry-After
        self.event_watch = None  # monitor.kube.events.EventWatch: Events from a list-and-watch cache
        self.import_from = ""  # a 0.1.0 state file to bring into the cluster state, by the first leader
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"{self.cfg.namespace}/{self.cfg.release}"

    def alias(self, subject: str, rule: str) -> str:
        return f"airflow-heal:{self.where}:{subject}:{rule}"

    def time(self) -> float:
        return self.clock.time() if self.clock is not None else time.time()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    @property
    def is_leader(self) -> bool:
        """Now, not as of the cycle's start (a hung cycle's replica stops counting itself leader)."""
        return self.lease.leader if self.lease is not None else True

    @property
    def blind(self) -> bool:
        return self.stats.consecutive_blind >= self.cfg.blind_after

    def problem(self) -> str:
        """'' while the healer can work; else why not (for /-/ready)."""
        if self.state.broken:
            return f"healer state cannot be used: {self.state.broken}"
        return f"healer blind: {self.stats.blind_reason}" if self.blind else ""

    def _may_act(self) -> None:
        """Asked immediately before every side effect: a replica that lost the Lease does nothing more."""
        if self.lease is not None and not self.lease.leader:
            raise NotLeader()

    # ------------------------------------------------------------------ observe
    def _remember(self, pods: list[Pod], now: datetime) -> None:
        live = set()
        for p in pods:
            for c in p.containers:
                key = (p.uid or p.name, c.name)
                live.add(key)
                h = self._history.setdefault(key, deque(maxlen=HISTORY))
                if not h or h[-1][1] != c.restarts or (now - h[-1][0]).total_seconds() > 60:
                    h.append((now, c.restarts))
        for key in set(self._history) - live:
            del self._history[key]
        for comp in self.cfg.settings.components:
            if any(p.ready for p in pods if p.component == comp and not p.deleting and not p.finished):
                self._unready_since.pop(comp, None)
            else:
                self._unready_since.setdefault(comp, now)

    def observe(self, now: datetime) -> tuple[Observation, str, str]:
        """(observation, kubernetes error, database error); a failure of any other kind (a bug, a reply
        no one foresaw) is counted and taken as not seeing: nothing is done on it."""
        try:
            return self._observe(now)
        except Exception as e:  # noqa: BLE001
            self.stats.internal_errors += 1
            log.exception("healer: the observation failed")
            return Observation(now=now), f"internal error: {type(e).__name__}: {cluster_text(str(e), 200)}", ""

    def _observe(self, now: datetime) -> tuple[Observation, str, str]:
        db_err = ""
        try:
            pods = self.kube.pods()
        except KubeError as e:
            self.stats.kube_errors += 1
            return Observation(now=now), str(e), "not read (Kubernetes first)"
        # Terminating scheduler pods are paired too (their jobs are known), and not judged
        sched = [p for p in pods if p.component == "scheduler" and p.phase == "Running"]
        dbv: DbView | None = None
        pending = [a.at for a in self._pending_all()]
        try:
            dbv = read_db(self.cfg.db_url, sched, self.cfg.thresholds, self.cfg.settings.queued_timeout_window,
                          now=now, timeout=min(10.0, self.cfg.kube_timeout),
                          since=datetime.fromtimestamp(min(pending), UTC) if pending else None)
        except SourceError as e:
            self.stats.db_errors += 1
            db_err = f"metadata database: {e}"
        if dbv is not None and self.watching:
            watched(dbv, self._beats, time.monotonic(), self.cfg.thresholds)
        self._remember(pods, now)
        history = {(p.name, c.name): tuple(self._history.get((p.uid or p.name, c.name), ()))
                   for p in pods for c in p.containers}
        obs = Observation(
            now=now, pods=tuple(pods), schedulers=dbv.schedulers if dbv else {},
            unpaired_jobs=dbv.unpaired_jobs if dbv else (), queued=dbv.queued if dbv else None,
            queued_timeouts=dbv.queued_timeouts if dbv else (), restart_history=history,
            unready_since=dict(self._unready_since))
        want = needs_events(obs, self.cfg.settings)
        if want:
            self.stats.event_lists += 1
            try:
                w = self.event_watch
                cached = w is not None and w.ready(wait=4 * self.cfg.kube_timeout)
                events = w.events(want) if cached else self.kube.events(want)
            except KubeError as e:
                self.stats.kube_errors += 1
                return Observation(now=now), str(e), ""
            obs = Observation(**{**{f: getattr(obs, f) for f in Observation.__dataclass_fields__
                                    if f != "events_of"}, "events": tuple(events)})
        self.pods, self.db_view = pods, dbv
        return obs, "", db_err

    # ------------------------------------------------------------------ the cycle
    def cycle(self, now: datetime | None = None, apply: bool = True) -> list[Diagnosis]:
        with self._lock:
            started = time.monotonic()
            try:
                return self._cycle(now or self.now(), apply)
            finally:
                self.stats.cycles += 1
                self.stats.last_duration = time.monotonic() - started

    def _cycle(self, now: datetime, apply: bool) -> list[Diagnosis]:
        self.leader = self.lease.leader if (self.lease is not None and apply) else (self.lease is None)
        if apply or not self.state.doc:
            self.state.refresh()
        obs, kube_err, db_err = self.observe(now)
        # what is shown of a diagnosis is data from the cluster and the database: made safe once more here
        self.diagnoses = [] if kube_err else [replace(d, reason=cluster_text(d.reason, 600))
                                              for d in diagnose(obs, self.cfg.settings)]
        blind_why = kube_err or db_err
        if blind_why and not self.stats.consecutive_blind:
            self._led = self.leader
        self.stats.consecutive_blind = self.stats.consecutive_blind + 1 if blind_why else 0
        self.stats.blind_reason = blind_why
        if blind_why:
            log.warning("healer cannot see (%d cycle(s) in a row), no action: %s", self.stats.consecutive_blind,
                        blind_why)
        if not apply:
            return self.diagnoses
        # the blind page goes straight to the notifiers (the state may be out of reach): from the leader, or
        # from the replica that led when it lost the API server (it cannot renew; no standby sees more)
        if self.leader or self._led:
            self._page_blind(now)
        if not self.leader:
            return self.diagnoses
        if self._state_unusable(now):
            return self.diagnoses
        try:
            self._apply(obs, now, kube_err, db_err)
            self.deliver()
        except NotLeader:
            log.warning("healer: the Lease was lost during the cycle; nothing more is done")
        except STORE_ERRORS as e:
            self.state.fail(e)
            log.error("healer state cannot be written: %s", self.state.broken)
        return self.diagnoses

    def _state_unusable(self, now: datetime) -> bool:
        """True while the state cannot be read or written: nothing is restarted (the budget is unknown) nor
        paged through it (its open alerts are unknown); after blind_after cycles one page says so,
        straight to the notifiers, with what is diagnosed meanwhile; closed when the state works again."""
        if not self.state.broken:
            self.stats.state_broken_cycles = 0
            if self._state_page.paged:
                self._state_page.send("close", self._state_notice(now, "resolved: the healer state works again"))
            return False
        self.stats.state_broken_cycles += 1
        log.error("healer state cannot be used, nothing is restarted or paged through it: %s", self.state.broken)
        if self.stats.state_broken_cycles >= self.cfg.blind_after and not self._state_page.paged:
            self._state_page.send("open", self._state_notice(now))
        return True

    def _state_notice(self, now: datetime, note: str = "") -> Notice:
        diag = [f"- {d.rule} {d.subject}: {d.reason}" for d in self.diagnoses[:10]]
        return self._notice(*STATE, "state", f"healer state unusable: {self.state.broken}",
                            "\n".join([f"airflow-monitor's healer for {self.where} cannot use its state "
                                       f"({self.state.broken}). Its budget and its open alerts are unknown, so it "
                                       "restarts nothing and pages nothing else until the state can be used. Fix "
                                       "the ConfigMap, or delete it to start afresh (the restarts spent and the "
                                       "open alerts are forgotten: an alert still open elsewhere is paged again).",
                                       "Diagnosed meanwhile:" if diag else "Diagnosed meanwhile: nothing", *diag]),
                            self.cfg.priority, now, note=note)

    def _apply(self, obs: Observation, now: datetime, kube_err: str, db_err: str) -> None:
        if kube_err:
            return  # nothing is known: no action, nothing resolved
        if self.import_from:
            from monitor.heal.state import import_file

            self._may_act()
            import_file(self.import_from, self.state, [n.name for n in self.notifiers])
            self.import_from = ""
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
                if not self._heal(d, obs, now):
                    exhausted.add(d.component)
                continue
            pageable.add(d.key)
            self._open(d.subject, d.rule, d.rule, d.reason, self._description(d), self.cfg.priority, now,
                       pods=d.pods, diagnosis=d)
        # close what is no longer diagnosed, once it has stayed so for resolve_after (what cannot be seen
        # without the database stays as it is)
        diagnosed = {d.component for d in self.diagnoses if d.restartable}
        ts = now.timestamp()
        still = set()
        for key in (opened := self.alerts.open_alerts()):
            subject, rule = key
            if key == BLIND or key in pageable:
                still.add(key)
                continue
            if rule == EXHAUSTED:
                why = f"{subject} is healthy again"
                gone = subject not in exhausted and not db_err and not self._pending(subject)
            elif rule == BLOCKED:
                why = f"{subject} is healthy again"
                gone = subject not in diagnosed and not db_err
            else:
                why = "no longer diagnosed"
                gone = not (db_err and rule in DB_RULES)
            if not gone:
                still.add(key)
                continue
            since = self._absent.setdefault(key, ts)
            if ts - since >= self.cfg.resolve_after:
                self._resolve(key, why if not self.cfg.resolve_after else
                              f"{why} (for {int(ts - since)}s)", now)
        for key in list(self._absent):
            if key in still or key not in opened:
                del self._absent[key]
        for comp in set(self._refusals) - diagnosed:
            del self._refusals[comp]

    # ------------------------------------------------------------------ healing
    def _pending_all(self) -> list:
        try:
            return [a for a in self.state.actions(self.time() - self.cfg.budget.window - self.cfg.budget.verify)
                    if a.outcome == "pending"]
        except STORE_ERRORS:
            return []  # the cycle says so

    def _pending(self, component: str) -> list:
        return [a for a in self._pending_all() if a.component == component]

    def _heal(self, d: Diagnosis, obs: Observation, now: datetime) -> bool:
        """Restart for a restartable diagnosis if the budget allows; False when healing is exhausted."""
        ts = now.timestamp()
        if self._pending(d.component):
            return True  # an earlier restart is being verified
        rows = self.state.actions(ts - self.cfg.budget.window)
        allow = budgets.allowance([r.budget_action() for r in rows], d.component, ts, self.cfg.budget,
                                  self._wait_until.get(d.component, 0.0))
        pod = next((p for p in obs.pods if p.name == d.subject and not p.deleting), None)
        if pod is None:
            return True  # gone meanwhile: the next cycle sees its successor
        if not allow.allowed and not allow.exhausted:
            log.info("healer: %s: %s; waiting", d.subject, allow.why)
            return True
        if not allow.allowed:
            self._exhausted(d, rows, allow.why, now)
            return False
        before = tuple(p.uid for p in obs.pods if p.component == d.component and p.uid)
        restart = self.cfg.restart
        workload = None
        if restart == "rollout":
            try:
                workload = self.kube.workload(pod)
            except KubeError as e:
                return self._refused(d, pod, f"rollout restart of pod {pod.name}'s workload", e, before, now)
            if workload.why_not:
                self._blocked(d, pod, workload.why_not, now)
                return True
        what = {"evict": f"evict pod {pod.name}", "delete": f"delete pod {pod.name}",
                "rollout": f"rollout restart {workload.kind}/{workload.name}" if workload else ""}[restart]
        self._may_act()
        self._event(pod, EVENT_REASONS[d.rule], f"airflow-monitor: {d.reason}; action: {what} "
                    f"({allow.left - 1} more allowed in {int(self.cfg.budget.window // 60)}m)", "Restart")
        self._may_act()
        try:
            if restart == "evict":
                self.kube.evict(pod.name, pod.uid)
            elif restart == "delete":
                self.kube.delete_pod(pod.name, pod.uid)
            else:
                self.kube.rollout_restart(workload)
        except KubeError as e:
            return self._refused(d, pod, what, e, before, now)
        self._refusals.pop(d.component, None)
        self.state.record(d.component, pod.name, d.rule, what, d.reason, ts + self.cfg.budget.verify, now=ts,
                          uid=pod.uid, before=before)
        self.actions[(d.rule, "started")] += 1
        log.warning("healer: %s: %s (verify within %.0fs)", what, d.reason, self.cfg.budget.verify)
        return True

    def _refused(self, d: Diagnosis, pod: Pod, what: str, e: KubeError, before: tuple[str, ...],
                 now: datetime) -> bool:
        """A restart the API server did not take. Nothing restarted costs no budget and is never called
        exhausted: a PodDisruptionBudget, an admission policy or RBAC (403), two PodDisruptionBudgets on
        the pod (500) say no until a person changes something: paged, not forced; a busy or failing API
        server (429 without a budget, 5xx, a timeout, a broken connection) is tried again next cycle,
        and paged after three refusals in a row. Where the request may have gone through all the same
        (a timeout, a 5xx), the pod is read: gone or replaced means it did, and it is checked as a restart."""
        ts = now.timestamp()
        text = str(e)
        pdb = next((c.split("disruption budget ", 1)[1].split(" ", 1)[0] for c in e.causes
                    if "disruption budget " in c.lower()), None)
        if e.status in (404, 409):  # gone, or already replaced (the uid precondition): nothing to spend
            log.info("healer: %s: the pod was already replaced (%s)", what, e)
            return True
        if e.retry_after:
            self._wait_until[d.component] = ts + float(e.retry_after)
        permanent = ""
        if e.status == 429 and (pdb is not None or "disruption budget" in text.lower()):
            permanent = f"blocked by PodDisruptionBudget {pdb}" if pdb else "blocked by a PodDisruptionBudget"
        elif e.status == 500 and "more than one poddisruptionbudget" in text.lower():
            permanent = "more than one PodDisruptionBudget selects the pod, which the Eviction API refuses"
        elif e.status == 403:
            permanent = "refused by the API server (403: an admission policy or the healer's RBAC)"
        elif e.status in (400, 422):
            permanent = f"refused by the API server ({e.status})"
        if permanent:
            if (d.component, BLOCKED) not in self.alerts.open_alerts():  # recorded and counted once an episode
                self.state.record(d.component, pod.name, d.rule, what, d.reason, ts, "blocked", text, now=ts,
                                  uid=pod.uid, before=before)
                self.actions[(d.rule, "blocked")] += 1
            # asked again only after the cooldown (a PodDisruptionBudget may allow it by then), not every
            # cycle: each refused eviction is a write in the API server's audit log
            self._wait_until[d.component] = max(self._wait_until.get(d.component, 0.0),
                                                ts + max(self.cfg.budget.cooldown, self.cfg.interval))
            self._blocked(d, pod, permanent, now, "; ".join(e.causes) or text)
            return True
        if self._went_through(pod):
            log.warning("healer: %s: %s, yet the pod was replaced: checked as a restart", what, e)
            self._refusals.pop(d.component, None)
            self.state.record(d.component, pod.name, d.rule, what, d.reason, ts + self.cfg.budget.verify, now=ts,
                              uid=pod.uid, before=before)
            self.actions[(d.rule, "started")] += 1
            return True
        self._refusals[d.component] += 1
        n = self._refusals[d.component]
        self.actions[(d.rule, "error")] += 1
        log.warning("healer: %s refused (%d in a row; tried again next cycle): %s", what, n, e)
        if n == 1:
            self.state.record(d.component, pod.name, d.rule, what, d.reason, ts, "refused", text, now=ts,
                              uid=pod.uid, before=before)
        if n >= 3:
            self._blocked(d, pod, f"the API server refused {n} restarts in a row", now, text)
        return True

    def _went_through(self, pod: Pod) -> bool:
        """Did a restart whose answer was an error happen all the same? The pod gone, replaced (another
        uid) or Terminating says yes; a pod that cannot be read says nothing (no)."""
        try:
            cur = self.kube.pod(pod.name)
        except KubeError:
            return False
        if cur is None:
            return True
        meta = cur.get("metadata") or {}
        return meta.get("uid") != pod.uid or bool(meta.get("deletionTimestamp"))

    def _blocked(self, d: Diagnosis, pod: Pod, why: str, now: datetime, detail: str = "") -> None:
        message = f"cannot restart {d.component} pod {pod.name}, not forced: {why}"
        desc = "\n".join([f"airflow-monitor would restart {pod.name} in {self.where} ({d.reason}), and did not: {why}"
                          + (f" ({detail})." if detail else "."),
                          "Nothing is forced: a person decides (resume the workload, relax the budget, or restart "
                          "the pod by hand).", *([f"Runbook: {self.cfg.runbook}"] if self.cfg.runbook else [])])
        if self._open(d.component, BLOCKED, d.rule, message, desc, self.cfg.priority, now, pods=(pod.name,),
                      diagnosis=d):
            log.error("healer: %s", message)

    def _healed(self, obs: Observation, a, final: bool) -> tuple[str, str]:
        """(why the component counts as healed, '' if not (yet); why not, at the end of the window).
        Healed: a pod of the component that did not exist before the restart (another uid) runs with a
        healthy verdict, and the queue moved: a task ended since the restart or one is running; at the
        end of the verify window an empty queue also counts (tasks the old scheduler held are reset to
        scheduled for a moment, so an empty queue proves nothing earlier)."""
        dbv = self.db_view
        before = set(filter(None, a.before.split(","))) | {a.uid}
        new = [p for p in obs.pods if p.component == a.component and p.uid not in before and not p.deleting]
        healthy = [p for p in new if p.phase == "Running" and (v := obs.schedulers.get(p.name)) is not None
                   and v.status == "healthy"]
        old = next((p for p in obs.pods if p.uid == a.uid), None)
        if dbv is None:
            return "", ""
        if dbv.finished_since:
            moved = f"{dbv.finished_since} task(s) ended since the restart"
        elif dbv.running:
            moved = f"{dbv.running} task(s) running"
        elif final and dbv.queued == 0 and dbv.scheduled == 0:
            moved = "nothing queued or scheduled at the end of the verify window"
        else:
            moved = ""
        stuck = any(d.rule == "stuck_scheduler" and d.component == a.component for d in self.diagnoses)
        if moved and healthy and not stuck:
            v = obs.schedulers[healthy[0].name]
            return f"{moved}; new scheduler pod {healthy[0].name} (uid {healthy[0].uid[:8]}): {v.reason}", ""
        if old is not None and old.deleting:
            since = f" since {old.deleted_at:%H:%M:%SZ}" if old.deleted_at else ""
            return "", (f"pod {old.name} is stuck Terminating{since}, so its successor cannot start (a StatefulSet "
                        f"keeps one pod per ordinal); check its node (kubectl get pod {old.name} -o wide)")
        if not new:
            return "", f"no new {a.component} pod appeared after the restart"
        if not healthy:
            return "", f"the new {a.component} pod {new[0].name} is not healthy"
        if dbv.scheduled and not dbv.queued:
            return "", (f"{dbv.scheduled} task(s) scheduled, none queued, running or ended since the restart "
                        "(the new scheduler does not queue them)")
        return "", "the queue did not move within the verify window"

    def _verify(self, obs: Observation, now: datetime) -> None:
        ts = now.timestamp()
        for a in self.state.actions(ts - self.cfg.budget.window - self.cfg.budget.verify):
            if a.outcome != "pending":
                continue
            final = ts >= a.verify_by
            why, why_not = self._healed(obs, a, final)
            if why:
                self._may_act()
                self.state.settle(a.id, "healed", why, ts)
                self.actions[(a.rule, "healed")] += 1
                log.info("healer: %s healed %s: %s", a.what, a.component, why)
                before = set(filter(None, a.before.split(","))) | {a.uid}
                new = next((p for p in obs.pods if p.component == a.component and p.uid not in before
                            and not p.deleting), None)
                if new is not None:
                    self._event(new, "Healed", f"airflow-monitor: the queue moves again after {a.what} ({why})",
                                "Verify", warning=False)
            elif final:
                self._may_act()
                self.state.settle(a.id, "failed", why_not, ts)
                self.actions[(a.rule, "failed")] += 1
                log.warning("healer: %s did not heal %s within %.0fs: %s", a.what, a.component,
                            self.cfg.budget.verify, why_not)

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
        self._may_act()
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

    def _notice(self, subject: str, rule: str, reason: str, message: str, desc: str, priority: str, now: datetime,
                note: str = "", d: Diagnosis | None = None) -> Notice:
        details = {"release": self.where, "component": d.component if d else subject, "rule": rule,
                   **({"pods": ",".join(d.pods[:10])} if d and d.pods else {}),
                   **({k: cluster_text(str(v)) for k, v in d.details.items() if v is not None} if d else {})}
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
        if (subject, rule) in self.alerts.open_alerts():
            self.alerts.update(notice)
            return False
        self._may_act()
        opened = self.alerts.open(notice, now.timestamp())
        if opened:
            log.warning("healer: paged %s/%s: %s", subject, rule, message)
            by_name = {p.name: p for p in self.pods}
            for name in pods[:5]:
                if name in by_name:
                    self._event(by_name[name], EVENT_REASONS.get(rule, "Diagnosis"), f"airflow-monitor: {message}",
                                "Diagnose")
        return opened

    def _resolve(self, key: tuple[str, str], why: str, now: datetime) -> None:
        subject, rule = key
        notice = self._notice(subject, rule, "resolved", f"{subject} {rule}: {why}", "", self.cfg.priority, now,
                              note=f"resolved: {why}")
        self._may_act()
        if self.alerts.resolve(notice, now.timestamp()):
            log.info("healer: resolved %s/%s: %s", subject, rule, why)

    def _blind_notice(self, now: datetime, note: str = "") -> Notice:
        why = self.stats.blind_reason or "it sees again"
        return self._notice(*BLIND, "blind", f"healer blind: {why}",
                            f"airflow-monitor's healer cannot read what it needs for {self.where} for "
                            f"{self.stats.consecutive_blind} cycles: {why}. Nothing is diagnosed or restarted "
                            "meanwhile.", self.cfg.priority, now, note=note)

    def _page_blind(self, now: datetime) -> None:
        """Open the blind page on every notifier once per episode, straight (not through the state, which
        may be out of reach too); close it when the healer sees again."""
        if self.blind:
            action = "open"
        elif self.stats.consecutive_blind == 0:
            action = "close"
            if not self._blind_page.paged:
                self._led = False  # the episode is over
                return
        else:
            return  # blind, not for blind_after cycles yet
        self._blind_page.send(action, self._blind_notice(now, "" if action == "open" else
                                                         "resolved: the healer sees again"))
        if action == "close" and not self._blind_page.paged:
            self._led = False

    def deliver(self) -> None:
        if self.state.broken or (self.lease is not None and not self.lease.leader):
            return
        try:
            self.alerts.deliver()
        except STORE_ERRORS as e:
            self.state.fail(e)

    def prune(self, older_than: float) -> None:
        """Forget old closed alerts and settled actions: only the leader writes the state."""
        if self.lease is None or self.lease.leader:
            self.state.prune(older_than)

    def close(self) -> None:
        """On a clean stop: hand the Lease over at once."""
        if self.event_watch is not None:
            self.event_watch.stop()
        if self.lease is not None:
            self.lease.release()
