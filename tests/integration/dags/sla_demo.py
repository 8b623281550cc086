"""DAGs for the SLA watcher tests: one that succeeds, one that fails until a marker file
exists (so a rerun can fix it), one never triggered, one that sleeps (for max_duration)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pendulum
from airflow.sdk import DAG, task

START = pendulum.datetime(2026, 1, 1, tz="UTC")
FIXED = Path(os.environ.get("AIRFLOW_HOME", "/tmp")) / "sla_fixed"

with DAG(dag_id="sla_ok", schedule=None, start_date=START, catchup=False, tags=["sla"]):

    @task
    def ok() -> int:
        return 1

    ok()

with DAG(dag_id="sla_fail", schedule=None, start_date=START, catchup=False, tags=["sla"]):

    @task
    def flaky() -> None:
        if not FIXED.exists():
            raise RuntimeError("upstream data missing (create $AIRFLOW_HOME/sla_fixed to fix)")

    flaky()

with DAG(dag_id="sla_never", schedule=None, start_date=START, catchup=False, tags=["sla"]):

    @task
    def never() -> int:
        return 1

    never()

with DAG(dag_id="sla_slow", schedule=None, start_date=START, catchup=False):

    @task
    def slow() -> None:
        time.sleep(float(os.environ.get("SLA_SLOW_SECONDS", "90")))

    slow()
