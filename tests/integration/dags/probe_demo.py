"""One quick task, for the probe's stall test."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

with DAG(dag_id="probe_demo", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):

    @task
    def quick() -> int:
        return 1

    quick()
