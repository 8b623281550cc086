"""The watcher cycle: read Airflow -> evaluate every (DAG, rule) -> open/close alerts -> deliver.

Requests per steady cycle: the DAG list (one per 100 DAGs) plus two batch requests for runs
(finished since the last cycle, and still active). When Airflow cannot be read for
`blind_after` cycles in a row, one "watcher blind" alert is opened instead of judging DAGs on
stale knowledge; DAG alerts are left as they are until the watcher sees again.

When the state file cannot be used (corrupted, unreadable), nothing can be judged safely: the
watcher says so on /metrics (airflow_monitor_sla_state_broken), in its readiness, and with one
page of its own that does not go through the state's outbox (sent straight to each notifier,
retried each cycle, closed when the file works again).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from monitor.airflow.models import Dag
from monitor.airflow.rest import AirflowError
from monitor.alerting.alerts import Alerts, DirectPage
from monitor.alerting.notice import Notice
from monitor.sla import windows
from monitor.sla.config import Mute, SLAConfig
from monitor.sla.history import ACTIVE, OVERLAP, RunHistory
from monitor.sla.rules import Rule, Verdict, evaluate

log = logging.getLogger(__name__)

BLIND = ("_watcher", "blind")


@dataclass
class Judgement:
    dag: Dag
    rule: Rule
    verdict: Verdict
    muted: Mute | None = None  # breached, but a `mutes:` entry says page nobody until it ends


@dataclass
class CycleStats:
    cycles: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    last_error: str = ""
    last_duration: float = 0.0
    last_requests: int = 0
    last_ok_at: float = 0.0
    opened: int = 0
    resolved: int = 0
    state_errors: int = 0
    extra: dict = field(default_factory=dict)


def alias(dag_id: str, rule: str) -> str:
    return f"airflow-sla:{dag_id}:{rule}"


class Watcher:
    def __init__(self, cfg: SLAConfig, rest, alerts: Alerts):
        self.cfg, self.rest, self.alerts = cfg, rest, alerts
        self.state = alerts.store  # the SLA state file (monitor.sla.state.SLAState)
        self.notifiers = alerts.notifiers
        self.history = RunHistory()
        self.judgements: dict[tuple[str, str], Judgement] = {}
        self.stats = CycleStats()
        self._watermark: datetime | None = None
        self._lock = threading.Lock()  # one cycle at a time
        self._state_page = DirectPage(self.notifiers, "SLA state")  # the "state broken" page, past the outbox
        self._state_told = False  # the broken state file is logged once per episode
        # when Airflow first parsed a DAG new to the watcher (a UTC timestamp; 0.0: longer ago than new_dag_grace)
        self.first_parsed: dict[str, float] = {}
        # with replicas (beside the healer): only the holder of the healer's Lease pages; a standby judges,
        # so that its /metrics and status are right, and takes over when the holder's lease runs out
        self.lease = None

    # ------------------------------------------------------------------ reading Airflow
    def _lookback(self, rules: list[Rule], now: datetime) -> timedelta:
        need = timedelta(seconds=self.cfg.lookback)
        for r in rules:
            if r.kind == "max_age":
                need = max(need, timedelta(seconds=r.seconds))
            elif r.kind == "deadline":
                start, _ = windows.last_deadlines(r.cron, r.tz, now)
                need = max(need, now - start + timedelta(days=1))
        return need

    def _read(self, now: datetime) -> dict[str, tuple[Dag, list[Rule]]]:
        watched: dict[str, tuple[Dag, list[Rule]]] = {}
        for dag in self.rest.dags():
            rules = self.cfg.rules_for(dag)
            if rules:
                watched[dag.dag_id] = (dag, rules)
        ids = set(watched)
        self.history.forget(ids)
        new = sorted(i for i in ids if not self.history.known(i))
        old = sorted(ids - set(new))
        seen: set[tuple[str, str]] = set()
        if new:
            since = now - self._lookback([r for i in new for r in watched[i][1]], now)
            for run in self.rest.runs(new, end_date_gte=since):
                self.history.add(run)
                seen.add((run.dag_id, run.run_id))
        if old:
            since = (self._watermark or now) - OVERLAP
            for run in self.rest.runs(old, end_date_gte=since):
                self.history.add(run)
                seen.add((run.dag_id, run.run_id))
        for run in self.rest.runs(sorted(ids), states=list(ACTIVE)):
            self.history.add(run)
            seen.add((run.dag_id, run.run_id))
        self.history.settle_active(ids, seen)
        for dag_id in new:
            # older than the look-back: one request per such DAG, on its first cycle only
            if not self.history.has_success(dag_id):
                last = self.rest.latest_run(dag_id, state="success", order_by="-end_date")
                self.history.note_last_success(dag_id, last.end_date if last else None)
                if last is not None and not self.history.has_runs(dag_id):
                    self.history.add(last)
            if not self.history.has_runs(dag_id):
                latest = self.rest.latest_run(dag_id)
                if latest is not None:
                    self.history.add(latest)
                self.history.note_ever_ran(dag_id, latest is not None)
            self.history.track(dag_id)
        self.history.prune(now - timedelta(seconds=self.cfg.lookback))
        self._watermark = now
        return watched

    # ------------------------------------------------------------------ one cycle
    def cycle(self, now: datetime | None = None, apply: bool = True) -> list[Judgement]:
        """Read and judge; with apply, also open/close alerts and deliver. AirflowError is
        handled here (blind) when applying, raised otherwise."""
        with self._lock:
            if apply and self.lease is not None and not self.lease.leader:
                try:
                    return self._cycle(now or datetime.now(UTC), False)
                except (AirflowError, sqlite3.Error) as e:
                    log.debug("SLA standby could not judge: %s", e)
                    return list(self.judgements.values())
            return self._cycle(now or datetime.now(UTC), apply)

    def _cycle(self, now: datetime, apply: bool) -> list[Judgement]:
        t0, r0 = time.perf_counter(), self.rest.requests + self.rest.token_requests
        self.stats.cycles += 1
        try:
            if apply and self.state.broken:
                self.state.retry()
            judged = self._judge(now, apply)
            if apply and self._state_told and not self.state.broken:
                self._state_told = False
                log.info("SLA state file works again")
            if apply and self._state_page.paged and not self.state.broken:
                self._page_state("close", now)
            return judged
        except sqlite3.Error as e:
            if not apply:
                raise
            self._state_failed(e, now)
            return list(self.judgements.values())
        finally:
            self.stats.last_duration = time.perf_counter() - t0
            self.stats.last_requests = self.rest.requests + self.rest.token_requests - r0

    def _judge(self, now: datetime, apply: bool) -> list[Judgement]:
        try:
            judgements = self._evaluate(now)
            self._grace_and_mutes(judgements, now, apply)
        except AirflowError as e:
            if not apply:
                raise
            self._blind(str(e), now)
            self.alerts.deliver()
            return list(self.judgements.values())
        self.judgements = judgements
        if not apply:
            return list(judgements.values())
        self._apply(now)
        self.stats.consecutive_errors = 0
        self.stats.last_error = ""
        self.stats.last_ok_at = time.time()
        for n in self.notifiers:
            if hasattr(n, "heartbeat"):
                n.heartbeat()
        self.alerts.deliver()
        return list(judgements.values())

    def _evaluate(self, now: datetime) -> dict[tuple[str, str], Judgement]:
        """Read Airflow and judge every watched DAG's rules (AirflowError when it cannot be read)."""
        watched = self._read(now)
        judgements: dict[tuple[str, str], Judgement] = {}
        for dag, rules in watched.values():
            hist = self.history.history(dag.dag_id)
            for rule in rules:
                judgements[(dag.dag_id, rule.name)] = Judgement(dag, rule, evaluate(dag, hist, rule, now))
        for dag_id in sorted(self.cfg.explicit_dag_ids() - set(watched)):
            dag = Dag(dag_id)
            for w in self.cfg.watches:
                if w.selector == "dag_id" and w.value == dag_id:
                    for rule in w.rules:
                        judgements.setdefault((dag_id, rule.name), Judgement(dag, rule, Verdict(
                            True, "not_found", f"DAG {dag_id} is not in Airflow (deleted, renamed or not parsed)")))
        return judgements

    def _learn_first_parsed(self, dag_ids: list[str], now: datetime) -> None:
        """Ask Airflow, once per DAG, when it first parsed it (one request per 100 DAGs it parsed within
        new_dag_grace): only DAGs Airflow has just seen get the new-DAG grace."""
        unknown = [d for d in dag_ids if d not in self.first_parsed]
        if not unknown:
            return
        if len(self.first_parsed) > 100_000:
            self.first_parsed.clear()
        since = now - timedelta(seconds=self.cfg.new_dag_grace)
        found = self.rest.first_parsed(since)
        for d in unknown:
            self.first_parsed[d] = found[d].timestamp() if d in found else 0.0

    def _grace_and_mutes(self, judgements: dict[tuple[str, str], Judgement], now: datetime, apply: bool) -> None:
        """Grace belongs to DAGs Airflow itself has just seen: a breached DAG that came to the watcher after its
        first cycle (a DAG there at the first cycle is judged: installing the watcher starts no grace), and
        that Airflow first parsed less than new_dag_grace ago, is not judged yet (a new deployment pages
        nobody while it settles); an old DAG new only to the config is judged at once. A dag_id Airflow does
        not know is not_found once the watcher has looked for it for not_found_grace (one DAG-processor
        interval: a file just deployed is parsed by then). A breach under a mute is shown, not paged.
        Raises AirflowError (asking Airflow when it first parsed a DAG)."""
        ts = now.timestamp()
        try:
            seen = self.state.first_seen(sorted({d for d, _ in judgements}), ts, record=apply)
        except sqlite3.Error:
            if apply:
                raise
            seen = {}
        newcomers = sorted({d for (d, _), j in judgements.items() if j.verdict.breached and seen.get(d, 0.0)
                            and j.verdict.reason != "not_found"})
        if newcomers and self.cfg.new_dag_grace > 0:
            self._learn_first_parsed(newcomers, now)
        for (dag_id, rule), j in judgements.items():
            if not j.verdict.breached:
                continue
            if j.verdict.reason == "not_found":
                looked = seen.get(dag_id, 0.0)
                if looked and ts - looked < self.cfg.not_found_grace:
                    until = datetime.fromtimestamp(looked + self.cfg.not_found_grace, UTC)
                    j.verdict = Verdict(False, "grace", f"DAG {dag_id} is not in Airflow yet; not_found from "
                                        f"{until:%Y-%m-%d %H:%M:%S} UTC unless Airflow parses it by then",
                                        {"grace_until": until.isoformat(), "would_be": "not_found"})
                    continue
            elif seen.get(dag_id, 0.0):
                first = self.first_parsed.get(dag_id, 0.0)
                if first and ts - first < self.cfg.new_dag_grace:
                    until = datetime.fromtimestamp(first + self.cfg.new_dag_grace, UTC)
                    parsed = datetime.fromtimestamp(first, UTC)
                    j.verdict = Verdict(False, "grace", f"new DAG {dag_id} (Airflow first parsed it at "
                                        f"{parsed:%Y-%m-%d %H:%M} UTC), judged from {until:%Y-%m-%d %H:%M} UTC "
                                        f"(would be: {j.verdict.message})", {"grace_until": until.isoformat()})
                    continue
            j.muted = self.cfg.mute_for(dag_id, rule, now)

    # ------------------------------------------------------------------ alerts
    def _notice(self, j: Judgement, now: datetime, note: str = "", resolved: bool = False) -> Notice:
        dag_id, rule, v = j.dag.dag_id, j.rule, j.verdict
        link = f"{self.cfg.airflow.url}/dags/{dag_id}"
        window = rule.describe()
        details = {"dag_id": dag_id, "rule": rule.name, "window": window, "reason": v.reason,
                   "airflow": link, **({"runbook": rule.runbook} if rule.runbook else {}),
                   **{k: str(x) for k, x in v.details.items()}}
        desc = [v.message, f"Rule: {rule.name} ({window})", f"Airflow: {link}"]
        if rule.runbook:
            desc.append(f"Runbook: {rule.runbook}")
        # a resolve says which DAG meets which rule again: its verdict ("last success 1s ago") does not
        message = f"[SLA] {dag_id} meets {rule.name} ({window}) again: {v.message}" if resolved else \
            f"[SLA] {v.message}"
        return Notice(alias=alias(dag_id, rule.name), subject=dag_id, rule=rule.name, reason=v.reason,
                      message=message, description="\n".join(desc), priority=rule.priority,
                      responders=tuple(rule.responders), tags=("airflow-sla", *rule.tags), entity=dag_id,
                      runbook=rule.runbook, details=details, note=note, at=now.isoformat(), summary=v.message)

    def _apply(self, now: datetime) -> None:
        ts = now.timestamp()
        open_alerts = self.alerts.open_alerts()
        if BLIND in open_alerts:
            self._resolve_blind(now)
        for key, j in self.judgements.items():
            current = open_alerts.get(key)
            if j.verdict.breached and j.muted is not None:
                continue  # shown (sla status, /metrics), paged to nobody; an open alert stays as it is
            if j.verdict.breached:
                if current is None:
                    if self.alerts.open(self._notice(j, now), ts):
                        self.stats.opened += 1
                        log.warning("SLA breached: %s/%s: %s", *key, j.verdict.message)
                else:
                    if current.reason != j.verdict.reason or current.message != j.verdict.message:
                        self.alerts.update(self._notice(j, now))
                    if self.cfg.renotify and ts - current.notified_at >= self.cfg.renotify:
                        self.alerts.remind(self._notice(j, now, note="still breached: " + j.verdict.message), ts)
            elif current is not None:
                self._close(self._notice(j, now, note=f"resolved: {j.dag.dag_id} meets {j.rule.name} again: "
                                                      f"{j.verdict.message}", resolved=True), ts)
        for key, row in open_alerts.items():
            if key != BLIND and key not in self.judgements:
                dag_id, rule = key
                self._close(Notice(alias=alias(dag_id, rule), subject=dag_id, rule=rule, reason="unwatched",
                                   message=f"[SLA] {dag_id} is no longer watched by rule {rule}", priority=row.priority,
                                   note="resolved: no longer watched (config changed or DAG removed)",
                                   at=now.isoformat()), ts)

    def _close(self, notice: Notice, ts: float) -> None:
        if self.alerts.resolve(notice, ts):
            self.stats.resolved += 1
            log.info("SLA resolved: %s/%s: %s", *notice.key, notice.note)

    BLIND_TITLES = {"open": "SLA watcher blind", "close": "SLA watcher sees Airflow again",
                    "remind": "SLA watcher still blind"}

    def _blind_notice(self, message: str, now: datetime, note: str = "", seeing: bool = False) -> Notice:
        url = self.cfg.airflow.url
        if seeing:  # the close: what it says must not be "blind"
            return Notice(alias=f"airflow-sla:watcher-blind:{url}", subject=BLIND[0], rule=BLIND[1], reason="blind",
                          message=f"[SLA] the watcher reads Airflow at {url} again; DAG SLAs are judged again",
                          priority=self.cfg.blind_priority, tags=("airflow-sla", "watcher"), entity="airflow-monitor",
                          details={"airflow": url}, note=note, at=now.isoformat(), titles=self.BLIND_TITLES)
        return Notice(alias=f"airflow-sla:watcher-blind:{url}", subject=BLIND[0], rule=BLIND[1],
                      reason="blind", message=f"[SLA] watcher blind: {message}",
                      description=f"The airflow-monitor SLA watcher cannot read Airflow at {url} for "
                                  f"{self.stats.consecutive_errors} cycles; DAG SLAs are not being judged and no SLA "
                                  f"alert is opened or closed until it can.\nLast error: {message}",
                      priority=self.cfg.blind_priority, responders=tuple(self.cfg.blind_responders),
                      tags=("airflow-sla", "watcher"), entity="airflow-monitor",
                      details={"airflow": url, "error": message}, note=note, at=now.isoformat(),
                      summary=message, titles=self.BLIND_TITLES)

    def _blind(self, message: str, now: datetime) -> None:
        self.stats.errors += 1
        self.stats.consecutive_errors += 1
        self.stats.last_error = message
        log.error("cannot read Airflow (%d in a row): %s", self.stats.consecutive_errors, message)
        if self.stats.consecutive_errors >= self.cfg.blind_after:
            if self.alerts.open(self._blind_notice(message, now), now.timestamp()):
                self.stats.opened += 1
                log.error("watcher blind: alert opened")

    def _resolve_blind(self, now: datetime) -> None:
        notice = self._blind_notice("", now, note=f"resolved: the watcher reads Airflow at {self.cfg.airflow.url} "
                                    "again", seeing=True)
        self._close(notice, now.timestamp())

    # ------------------------------------------------------------------ the state file
    def deliver(self) -> None:
        """One outbox pass (the delivery loop's), unless the state file cannot be used (or a standby)."""
        if self.state.broken or (self.lease is not None and not self.lease.leader):
            return
        try:
            self.alerts.deliver()
        except sqlite3.Error as e:
            self._state_failed(e, datetime.now(UTC))

    def _state_failed(self, err: Exception, now: datetime) -> None:
        self.state.fail(err)
        self.stats.state_errors += 1
        if not self._state_told:
            self._state_told = True
            log.error("SLA state file cannot be used, DAG SLAs are not judged until it is repaired or "
                      "removed (retried each cycle): %s", self.state.broken)
        self._page_state("open", now)

    def _state_notice(self, now: datetime, note: str = "") -> Notice:
        why = self.state.broken or "the state file works again"
        return Notice(alias=f"airflow-sla:watcher-state:{self.cfg.airflow.url}", subject="_watcher", rule="state",
                      reason="state_broken", message="[SLA] watcher cannot use its state file",
                      description=f"The airflow-monitor SLA watcher cannot use its state file ({why}). DAG SLAs "
                                  "are not judged and no SLA alert is opened or closed until it is repaired or "
                                  "removed; removing it forgets which alerts are open.",
                      priority=self.cfg.blind_priority, responders=tuple(self.cfg.blind_responders),
                      tags=("airflow-sla", "watcher"), entity="airflow-monitor",
                      details={"state_file": self.cfg.state_file, "error": why}, note=note, at=now.isoformat(),
                      titles={"open": "SLA watcher state file broken", "close": "SLA watcher state file works again",
                              "remind": "SLA watcher state file still broken"})

    def _page_state(self, action: str, now: datetime) -> None:
        """Open (or close) the state page on every notifier, straight, without the outbox."""
        note = "resolved: the state file works again" if action == "close" else ""
        self._state_page.send(action, self._state_notice(now, note))

    def problem(self) -> str:
        """Why the watcher cannot do its work ("" if it can): its readiness."""
        return f"SLA state file cannot be used: {self.state.broken}" if self.state.broken else ""

    @property
    def blind(self) -> bool:
        return self.stats.consecutive_errors >= self.cfg.blind_after
