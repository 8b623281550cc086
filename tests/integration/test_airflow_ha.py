"""Two real schedulers (Airflow 3.3.2, PostgreSQL) send DogStatsD to one bridge, each with its own
constant `pod` tag, as helm/airflow-values.yaml sets it from the downward API; legacy names are off
(`[metrics] legacy_names_on = False`), so only the tagged names arrive.

Without the tag both schedulers write the same gauge series and overwrite each other; with it each
scheduler has its own series, and what the dashboards and rules compute across them (sum of
executor slots, per-pod heartbeats) is right.
"""

from __future__ import annotations

import pytest
import yaml

from testkit.airflow import REPO, Airflow, pods_in, second_scheduler, statsd_env
from testkit.bridge import BridgeProcess

pytestmark = pytest.mark.integration
DAG = "team.sales_daily"
PARALLELISM = 4  # the harness's AIRFLOW__CORE__PARALLELISM: each LocalExecutor's slots


def pod_tag_env(pod: str) -> dict[str, str]:
    """What the official chart's extraEnv in helm/airflow-values.yaml gives a pod named `pod`: the
    kubelet expands $(POD_NAME) from the downward API, as done here by hand."""
    extra = yaml.safe_load(yaml.safe_load((REPO / "helm" / "airflow-values.yaml").read_text())["extraEnv"])
    env = {}
    for e in extra:
        value = e.get("value")
        if value is None:
            assert e["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, e
            value = pod
        env[e["name"]] = value.replace("$(POD_NAME)", pod)
    return env


@pytest.fixture(scope="module")
def ha(tmp_path_factory, venv, postgres):
    tmp = tmp_path_factory.mktemp("airflow-ha")
    url = postgres("airflow_ha").replace("postgresql://", "postgresql+psycopg2://")
    bridge = BridgeProcess(tmp)
    common = {**statsd_env(bridge.udp, "datadog"), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
              "AIRFLOW__METRICS__LEGACY_NAMES_ON": "False"}
    af = Airflow(home=tmp / "airflow", venv=venv, env_extra={**common, **pod_tag_env("airflow-scheduler-0")})
    try:
        af.start()
        with second_scheduler(af, pod_tag_env("airflow-scheduler-1"), tmp / "scheduler-1.log"):
            state = af.wait_run(DAG, af.trigger(DAG))
            assert state == "failed", "boom fails on purpose"
            pods = {"airflow-scheduler-0", "airflow-scheduler-1"}
            yield bridge.wait_for(lambda m: pods_in(m, pods), timeout=90)
    except BaseException:
        print(af.log_tail(80))
        raise
    finally:  # never leave an Airflow running for the rest of the session
        af.stop()
        bridge.stop()


def test_each_scheduler_has_its_own_gauges_and_their_sum_is_right(ha):
    slots = ha["airflow_executor_open_slots"]
    by_pod = {dict(k)["pod"]: v for k, v in slots.items() if dict(k).get("pod", "").startswith("airflow-scheduler")}
    assert set(by_pod) == {"airflow-scheduler-0", "airflow-scheduler-1"}, slots
    assert all(0 < v <= PARALLELISM for v in by_pod.values()), by_pod
    # the dashboards' `sum by (executor)` across pods: both executors' capacity, not one's
    assert sum(by_pod.values()) > PARALLELISM, by_pod
    for k in ha["airflow_scheduler_heartbeat_total"]:
        assert dict(k)["pod"].startswith("airflow-"), "every heartbeat series says whose it is"


def test_with_legacy_names_off_the_tagged_names_carry_the_ids(ha):
    fin = ha["airflow_ti_finish_total"]
    assert sum(v for k, v in fin.items() if dict(k)["dag_id"] == DAG and dict(k)["state"] == "success") == 1
    assert sum(v for k, v in fin.items() if dict(k)["task_id"] == "boom" and dict(k)["state"] == "failed") == 1
    dropped = {dict(k)["reason"]: v for k, v in ha.get("airflow_monitor_bridge_dropped_total", {}).items()}
    assert "legacy_twin" not in dropped, "Airflow sent no legacy names, so none was dropped"
    assert not ha.get("airflow_monitor_bridge_parse_errors_total")
