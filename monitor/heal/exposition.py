"""The healer on /metrics: what it diagnoses, what it did, what it may still do, and its own health."""

from __future__ import annotations

import sqlite3

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from monitor.alerting.exposition import delivery_families
from monitor.heal import budget as budgets
from monitor.heal.rules import RULES

RESTARTABLE_COMPONENTS = ("scheduler",)
OUTCOMES = ("started", "healed", "failed", "blocked", "error", "exhausted")


class HealCollector:
    def __init__(self, healer):
        self.h = healer

    def collect(self):
        h = self.h
        active = GaugeMetricFamily("airflow_monitor_heal_diagnoses", "Diagnoses active now, by rule",
                                   labels=["rule"])
        counts = {r: 0 for r in RULES}
        one = GaugeMetricFamily("airflow_monitor_heal_diagnosis", "1 for each active diagnosis (rule, component and "
                                "the pod or component it is about)", labels=["rule", "component", "subject"])
        for d in h.diagnoses:
            counts[d.rule] += 1
            one.add_metric([d.rule, d.component, d.subject], 1.0)
        for r, n in counts.items():
            active.add_metric([r], n)
        yield active
        yield one
        acts = CounterMetricFamily("airflow_monitor_heal_actions", "Healing steps by rule and outcome (started: a "
                                   "restart made; healed/failed: its check; blocked: refused until a person acts, "
                                   "e.g. a PodDisruptionBudget; error: refused by a busy or failing API server, "
                                   "tried again; exhausted: paged a person)", labels=["rule", "outcome"])
        for (rule, outcome), n in sorted(h.actions.items()):
            acts.add_metric([rule, outcome], n)
        yield acts
        left = GaugeMetricFamily("airflow_monitor_heal_budget_remaining", "Restarts the budget still allows per "
                                 "component within its window (absent while the healer's state cannot be read: "
                                 "unknown)", labels=["component"])
        try:
            now = h.time()
            rows = [] if h.state.broken else h.state.actions(now - h.cfg.budget.window)
            for comp in RESTARTABLE_COMPONENTS if not h.state.broken else ():
                left.add_metric([comp], budgets.left([r.budget_action() for r in rows], comp, now, h.cfg.budget))
        except sqlite3.Error:
            pass
        yield left
        s = h.stats
        yield GaugeMetricFamily("airflow_monitor_heal_leader", "1 while this replica holds the Lease (acts and pages)",
                                value=1.0 if h.is_leader else 0.0)
        yield GaugeMetricFamily("airflow_monitor_heal_blind", "1 while the healer cannot read Kubernetes, the "
                                "database or its own state for blind_after cycles (no action is taken)",
                                value=1.0 if h.blind or h.stats.state_broken_cycles >= h.cfg.blind_after else 0.0)
        yield GaugeMetricFamily("airflow_monitor_heal_acting", "1 in mode act, 0 in mode observe",
                                value=1.0 if h.cfg.mode == "act" else 0.0)
        yield CounterMetricFamily("airflow_monitor_heal_cycles", "Healer cycles run", value=s.cycles)
        errs = CounterMetricFamily("airflow_monitor_heal_read_errors", "Cycles that could not read a source",
                                   labels=["source"])
        errs.add_metric(["kubernetes"], s.kube_errors)
        errs.add_metric(["database"], s.db_errors)
        yield errs
        ev = CounterMetricFamily("airflow_monitor_heal_events", "Kubernetes Events written on pods", labels=["outcome"])
        ev.add_metric(["created"], s.events_created)
        ev.add_metric(["failed"], s.events_failed)
        yield ev
        yield GaugeMetricFamily("airflow_monitor_heal_cycle_duration_seconds", "Wall time of the latest cycle",
                                value=s.last_duration)
        yield GaugeMetricFamily("airflow_monitor_heal_state_broken", "1 while the healer cannot use its state "
                                "(the ConfigMap beside its Lease): it restarts nothing",
                                value=1.0 if h.state.broken else 0.0)
        yield from delivery_families("airflow_monitor_heal", h.alerts)
