"""The demo's DAGs: one that succeeds, one that fails, one that runs late."""

from __future__ import annotations

import os
import time

import pendulum
from airflow.sdk import DAG, task

START = pendulum.datetime(2026, 1, 1, tz="UTC")

with DAG(dag_id="demo_ok", schedule=None, start_date=START, catchup=False, tags=["demo"]):

    @task
    def load_orders() -> int:
        return 42

    load_orders()

with DAG(dag_id="demo_fail", schedule=None, start_date=START, catchup=False, tags=["demo"]):

    @task(retries=0)
    def load_invoices() -> None:
        raise RuntimeError("upstream file invoices.csv is missing")

    load_invoices()

with DAG(dag_id="demo_late", schedule=None, start_date=START, catchup=False, tags=["demo"]):

    @task
    def slow_report() -> None:
        time.sleep(float(os.environ.get("DEMO_LATE_SECONDS", "35")))

    slow_report()
