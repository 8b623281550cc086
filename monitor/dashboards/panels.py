"""What the dashboards show, as data: rows of panels whose queries name metrics by their
catalog entry (statsd name), so a rename in the catalog renames every query.

`p(name)` is the Prometheus sample name of a catalog metric (counters end in _total, timers
give `_bucket` etc. through `part`); `svc(name)` is one of the service's own series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor import catalog


def _metric(statsd_name: str) -> catalog.Metric:
    for m in catalog.load():
        if m.name == statsd_name:
            return m
    raise KeyError(f"{statsd_name} is not in the catalog")


def p(statsd_name: str, part: str = "") -> str:
    m = _metric(statsd_name)
    if m.type == "counter":
        return m.prometheus + "_total"
    if m.type == "timer":
        return m.prometheus + (f"_{part}" if part else "")
    return m.prometheus


def svc(name: str) -> str:
    if name not in catalog.service_series_names():
        raise KeyError(f"{name} is not in monitor/catalog/service.yaml")
    return name


def dd(statsd_name: str, suffix: str = "") -> str:
    """The Datadog name the bridge forwards for a catalog metric (timers: .avg, .95percentile ...)."""
    return _metric(statsd_name).datadog + suffix


def ddtag(statsd_name: str, label: str) -> str:
    """The Datadog tag the bridge sends for one of a catalog metric's Prometheus labels."""
    m = _metric(statsd_name)
    return m.datadog_tag(m.labels.get(label) or m.optional_labels.get(label) or label)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat
    description: str = ""
    width: int = 8


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def p95(bucket: str, by: str = "") -> str:
    return f"histogram_quantile(0.95, sum by (le{', ' + by if by else ''}) (rate({bucket}[$__rate_interval])))"


OVERVIEW = (
    Row("Scheduler", (
        Panel("Scheduler heartbeats", (q(f"sum(rate({p('scheduler_heartbeat')}[$__rate_interval]))", "heartbeats/s"),),
              "ops", description="Zero means no scheduler is alive (or its statsd does not reach the bridge)."),
        Panel("Scheduler loop duration (p95)",
              (q(p95(p("scheduler.scheduler_loop_duration", "bucket")), "p95"),), "s"),
        Panel("Queued vs running tasks", (
            q(f"sum by (executor) ({p('executor.queued_tasks')})", "queued {{executor}}"),
            q(f"sum by (executor) ({p('executor.running_tasks')})", "running {{executor}}"),
            q(f"sum by (executor) ({p('executor.open_slots')})", "open slots {{executor}}")), "short",
            description="Queued tasks with none running for minutes is a stuck executor."),
        Panel("Pool slots", (
            q(f"max by (pool) ({p('pool.open_slots')})", "open {{pool}}"),
            q(f"max by (pool) ({p('pool.running_slots')})", "running {{pool}}"),
            q(f"max by (pool) ({p('pool.starving_tasks')})", "starving {{pool}}")), "short"),
        Panel("DAG runs running", (q(f"max({p('scheduler.dagruns.running')})", "running"),), "short", "stat"),
    )),
    Row("Tasks and DAG runs", (
        Panel("Task outcomes", (q(f"sum by (state) (increase({p('ti.finish')}[$__range]))", "{{state}}"),),
              "short", "stat"),
        Panel("DAG-run outcomes",
              (q(f"sum by (state) (increase({p('dagrun.duration.success', 'count')}[$__range]))", "{{state}}"),),
              "short", "stat"),
        Panel("Task finishes by state", (
            q(f"sum by (state) (rate({p('ti.finish')}[$__rate_interval]))", "{{state}}"),), "ops"),
        Panel("DAG-run duration (p95) by DAG",
              (q(p95(p("dagrun.duration.success", "bucket"), "dag_id"), "{{dag_id}}"),), "s"),
        Panel("Task duration (p95) by DAG",
              (q(p95(p("task.duration", "bucket"), "dag_id"), "{{dag_id}}"),), "s"),
    )),
    Row("DAG processing and triggerer", (
        Panel("DAG import errors", (q(f"max({p('dag_processing.import_errors')})", "import errors"),), "short",
              "stat"),
        Panel("Total DAG parse time", (q(f"max({p('dag_processing.total_parse_time')})", "parse time"),), "s"),
        Panel("Triggerer capacity left",
              (q(f"min by (hostname) ({p('triggerer.capacity_left')})", "{{hostname}}"),), "short"),
    )),
    Row("SLA watcher", (
        Panel("SLA breaches", (q(f"sum({svc('airflow_sla_breached')})", "breached"),), "short", "stat",
              description="Rules breached now (airflow-monitor sla status has the detail)."),
        Panel("Breached rules",
              (q(f"max by (dag_id, rule, reason) ({svc('airflow_sla_breached')}) == 1", "{{dag_id}} {{rule}}"),),
              "short"),
        Panel("Time since last success",
              (q(f"max by (dag_id) ({svc('airflow_sla_seconds_since_success')})", "{{dag_id}}"),), "s"),
        Panel("Watcher blind", (q(f"max({svc('airflow_monitor_sla_blind')})", "blind"),), "short", "stat"),
    )),
    Row("Healer", (
        Panel("Diagnoses by rule", (q(f"sum by (rule) ({svc('airflow_monitor_heal_diagnoses')})", "{{rule}}"),),
              "short", description="What the healer diagnoses now (airflow-monitor heal status has the detail)."),
        Panel("Scheduler restarts left", (q(f"min({svc('airflow_monitor_heal_budget_remaining')}"
                                            '{component="scheduler"})', "left"),), "short", "stat",
              description="Restarts the budget still allows in its window; 0 with a stuck scheduler pages."),
        Panel("Restarts and their outcomes", (
            q(f"sum by (outcome) (increase({svc('airflow_monitor_heal_actions_total')}[$__range]))", "{{outcome}}"),
            q(f"sum(rate({svc('airflow_monitor_heal_cycles_total')}[$__rate_interval])) * 60", "cycles/min")),
            "short"),
        Panel("Healer leader and blind", (q(f"max({svc('airflow_monitor_heal_leader')})", "leader"),
                                          q(f"max({svc('airflow_monitor_heal_blind')})", "blind")), "short", "stat"),
    )),
    Row("airflow-monitor bridge", (
        Panel("Statsd lines/s", (q(f"sum(rate({svc('airflow_monitor_bridge_lines_total')}[$__rate_interval]))",
                                   "lines/s"),), "ops"),
        Panel("Rejected or dropped samples", (
            q(f"sum by (reason) (rate({svc('airflow_monitor_bridge_dropped_total')}[$__rate_interval]))",
              "dropped {{reason}}"),
            q(f"sum by (reason) (rate({svc('airflow_monitor_bridge_parse_errors_total')}[$__rate_interval]))",
              "parse error {{reason}}")), "ops",
            description="legacy_twin and tagless_twin are Airflow's duplicate samples, dropped on purpose."),
        Panel("Series in the bridge", (q(f"sum({svc('airflow_monitor_bridge_series')})", "series"),), "short"),
        Panel("Airflow metrics arriving", (
            q(f"sum by (metric) (rate({svc('airflow_monitor_bridge_metric_samples_total')}[$__rate_interval]))",
              "{{metric}}"),
            q(f"sum by (metric) (increase({svc('airflow_monitor_bridge_metric_samples_total')}[1h])) == 0 "
              f"and on (metric) avg_over_time((sum by (metric) (increase("
              f"{svc('airflow_monitor_bridge_metric_samples_total')}[1h])) > bool 0)[7d:1h]) >= 0.9",
              "stopped: {{metric}}")), "ops",
            description="Samples/s of each Airflow metric; a `stopped:` series is one that arrived in 90 % "
                        "of the hours of the past week and not in the last (alert AirflowMetricStoppedArriving)."),
    )),
)

DAG_VAR = "dag_id"
PER_DAG = (
    Row("DAG $dag_id", (
        Panel("Run outcomes", (
            q(f'sum by (state) (increase({p("dagrun.duration.success", "count")}{{dag_id="$dag_id"}}[$__range]))',
              "{{state}}"),), "short", "stat"),
        Panel("Run duration (p50, p95)", (
            q(f'histogram_quantile(0.5, sum by (le) (rate({p("dagrun.duration.success", "bucket")}'
              f'{{dag_id="$dag_id"}}[$__rate_interval])))', "p50"),
            q(f'histogram_quantile(0.95, sum by (le) (rate({p("dagrun.duration.success", "bucket")}'
              f'{{dag_id="$dag_id"}}[$__rate_interval])))', "p95")), "s"),
        Panel("Task outcomes by task", (
            q(f'sum by (task_id, state) (increase({p("ti.finish")}{{dag_id="$dag_id"}}[$__range]))',
              "{{task_id}} {{state}}"),), "short"),
        Panel("Task duration (p95) by task", (
            q(f'histogram_quantile(0.95, sum by (le, task_id) (rate({p("task.duration", "bucket")}'
              f'{{dag_id="$dag_id"}}[$__rate_interval])))', "{{task_id}}"),), "s"),
        Panel("SLA state", (
            q(f'max by (rule, reason) ({svc("airflow_sla_breached")}{{dag_id="$dag_id"}})', "{{rule}} {{reason}}"),),
            "short"),
        Panel("Time since last success", (
            q(f'max({svc("airflow_sla_seconds_since_success")}{{dag_id="$dag_id"}})', "since success"),), "s",
            "stat"),
    )),
)
DAG_VAR_QUERY = f"label_values({p('dagrun.duration.success', 'count')}, dag_id)"

# Datadog: the names the bridge forwards (agent or agentless), per widget
DATADOG_WIDGETS = (
    ("Scheduler heartbeats", f"sum:{dd('scheduler_heartbeat')}{{*}}.as_count()"),
    ("Scheduler loop duration (avg, ms)", f"avg:{dd('scheduler.scheduler_loop_duration', '.avg')}{{*}}"),
    ("Queued tasks", f"sum:{dd('executor.queued_tasks')}{{*}} by {{{ddtag('executor.queued_tasks', 'executor')}}}"),
    ("Running tasks", f"sum:{dd('executor.running_tasks')}{{*}} by {{{ddtag('executor.running_tasks', 'executor')}}}"),
    ("Open pool slots", f"max:{dd('pool.open_slots')}{{*}} by {{{ddtag('pool.open_slots', 'pool')}}}"),
    ("Task finishes by state", f"sum:{dd('ti.finish')}{{*}} by {{state}}.as_count()"),
    ("Successful DAG runs", f"sum:{dd('dagrun.duration.success', '.count')}{{*}} by {{dag_id}}.as_count()"),
    ("Failed DAG runs", f"sum:{dd('dagrun.duration.failed', '.count')}{{*}} by {{dag_id}}.as_count()"),
    ("DAG-run duration p95 (ms)", f"max:{dd('dagrun.duration.success', '.95percentile')}{{*}} by {{dag_id}}"),
    ("Task duration avg (ms)", f"avg:{dd('task.duration', '.avg')}{{*}} by {{dag_id}}"),
    ("DAG import errors", f"max:{dd('dag_processing.import_errors')}{{*}}"),
    ("Total DAG parse time", f"max:{dd('dag_processing.total_parse_time')}{{*}}"),
    ("Triggerer capacity left",
     f"min:{dd('triggerer.capacity_left')}{{*}} by {{{ddtag('triggerer.capacity_left', 'hostname')}}}"),
)
