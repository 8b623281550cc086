"""Example DAG for the integration tests: a dotted dag_id, a task group, a success and a failure."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, TaskGroup, task

with DAG(
    dag_id="team.sales_daily",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["monitor-test"],
):

    with TaskGroup(group_id="extract"):

        @task(task_id="load")
        def load() -> int:
            return 42

        loaded = load()

    @task(task_id="boom")
    def boom() -> None:
        raise RuntimeError("this task fails on purpose")

    loaded >> boom()
