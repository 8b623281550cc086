"""The watcher on /metrics: one series per (DAG, rule) and the watcher's own health."""

from __future__ import annotations

import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from monitor.alerting.exposition import delivery_families


class SLACollector:
    def __init__(self, watcher):
        self.w = watcher

    def collect(self):
        w = self.w
        breached = GaugeMetricFamily("airflow_sla_breached", "1 while a watched DAG breaches an SLA rule, else 0",
                                     labels=["dag_id", "rule", "priority", "reason"])
        since = GaugeMetricFamily("airflow_sla_seconds_since_success",
                                  "Seconds since the DAG's latest successful run ended (absent: never)",
                                  labels=["dag_id"])
        muted = GaugeMetricFamily("airflow_sla_muted", "1 while a breached (DAG, rule) is muted by the SLA config "
                                  "(shown, not paged)", labels=["dag_id", "rule"])
        now = time.time()
        seen = set()
        for (dag_id, rule), j in sorted(w.judgements.items()):
            breached.add_metric([dag_id, rule, j.rule.priority, j.verdict.reason], 1.0 if j.verdict.breached else 0.0)
            if j.muted is not None:
                muted.add_metric([dag_id, rule], 1.0)
            if dag_id not in seen:
                seen.add(dag_id)
                last = w.history.last_success(dag_id)
                if last is not None:
                    since.add_metric([dag_id], max(0.0, now - last.timestamp()))
        yield breached
        yield muted
        yield since
        s = w.stats
        yield GaugeMetricFamily("airflow_monitor_sla_blind", "1 while the watcher cannot read Airflow",
                                value=1.0 if w.blind else 0.0)
        yield GaugeMetricFamily("airflow_monitor_sla_state_broken",
                                "1 while the watcher cannot use its state file (nothing is judged or paged)",
                                value=1.0 if w.state.broken else 0.0)
        yield CounterMetricFamily("airflow_monitor_sla_state_errors", "Operations on the state file that failed",
                                  value=s.state_errors)
        yield CounterMetricFamily("airflow_monitor_sla_cycles", "Watcher cycles run", value=s.cycles)
        yield CounterMetricFamily("airflow_monitor_sla_cycle_errors", "Cycles that could not read Airflow",
                                  value=s.errors)
        yield GaugeMetricFamily("airflow_monitor_sla_cycle_duration_seconds", "Wall time of the latest cycle",
                                value=s.last_duration)
        yield GaugeMetricFamily("airflow_monitor_sla_cycle_requests", "Airflow API requests of the latest cycle",
                                value=s.last_requests)
        yield GaugeMetricFamily("airflow_monitor_sla_watched_dags", "DAGs matched by the SLA config",
                                value=len(seen))
        yield from delivery_families("airflow_monitor_sla", w.alerts)
