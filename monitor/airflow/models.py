"""Airflow's data as the service reads it (REST API v2): DAGs and their runs. Plain values, no I/O;
the SLA rules take them as input, monitor.airflow.rest produces them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Run:
    run_id: str
    state: str  # queued | running | success | failed
    run_type: str  # scheduled | manual | backfill | asset_triggered | ...
    run_after: datetime
    start_date: datetime | None = None
    end_date: datetime | None = None
    dag_id: str = ""


@dataclass(frozen=True)
class Dag:
    dag_id: str
    is_paused: bool = False
    tags: tuple[str, ...] = ()
    next_run_after: datetime | None = None  # Airflow's next_dagrun_run_after
    schedule: str | None = None  # Airflow's timetable_summary, None when unscheduled
