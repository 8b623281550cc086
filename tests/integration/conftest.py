"""Fixtures that start real processes: the bridge (`airflow-monitor serve`) and Airflow."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from testkit.airflow import airflow_venv
from testkit.bridge import BridgeProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def bridge(tmp_path):
    started = []

    def start(*args, env=None, max_files=None, ca=None):
        b = BridgeProcess(tmp_path, *args, env=env, max_files=max_files, ca=ca)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture(scope="session")
def venv() -> Path:
    """The real Airflow venv; failing to build it fails the run (CI must test real Airflow)."""
    try:
        return airflow_venv()
    except subprocess.CalledProcessError as e:
        pytest.fail(f"could not create the Airflow venv: {e.stderr[-2000:]}")


PG_USER, PG_PASSWORD = "airflow_monitor", "monitor-test-pw"


def _psql(sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                          capture_output=True, text=True, timeout=60, cwd="/")


@pytest.fixture(scope="session")
def postgres():
    """Debian's PostgreSQL 15 cluster, started if it is down. Returns a function making a fresh database."""
    try:
        up = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, timeout=30).stdout
        if "online" not in up:
            subprocess.run(["pg_ctlcluster", "15", "main", "start"], check=True, capture_output=True, timeout=120)
        r = _psql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='{PG_USER}') THEN "
                  f"CREATE ROLE {PG_USER} LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}'; END IF; END$$;")
        r.check_returncode()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        msg = f"PostgreSQL could not be started here: {getattr(e, 'stderr', '') or e}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)

    def database(name: str) -> str:
        # a prefix keeps two checkouts testing at once on one machine out of each other's databases
        name = os.environ.get("AIRFLOW_MONITOR_TEST_DB_PREFIX", "") + name
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)").check_returncode()
        _psql(f"CREATE DATABASE {name} OWNER {PG_USER}").check_returncode()
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:5432/{name}"

    return database


class Stack:
    """One real Airflow 3.3 (SQLite, LocalExecutor, the test DAGs) emitting DogStatsD to one
    `airflow-monitor serve --sla-config --heal-config` (bridge + SLA watcher + healer in mode observe,
    Prometheus series only). The healer reads that Airflow's database and a local Kubernetes API
    (tests/servers/kube_api.py) where the release has no pods: it diagnoses that, and pages nobody."""

    def __init__(self, tmp: Path, venv: Path):
        from testkit.airflow import Airflow, statsd_env
        from testkit.servers.kube_api import KubeApiServer

        self.tmp = tmp
        self.airflow = Airflow(home=tmp / "airflow", venv=venv, env_extra={"SLA_SLOW_SECONDS": "25"})
        (tmp / "airflow-password").write_text("admin")
        self.sla_config = tmp / "stack-sla.yaml"
        self.sla_config.write_text(json.dumps({
            "airflow": {"url": self.airflow.api_url, "username": "admin",
                        "password_file": str(tmp / "airflow-password"), "timeout": "5s"},
            "watcher": {"interval": "2s", "state_file": str(tmp / "stack-sla.sqlite"), "blind_after": 1000},
            "watch": [{"tag": "sla", "rules": [{"max_age": "1h"}]},
                      {"dag_id": "team.sales_daily", "rules": [{"max_age": "1h"}]}],
        }))
        self.kube = KubeApiServer(tmp)
        (tmp / "stack-db-url").write_text(f"sqlite:///{self.airflow.home / 'airflow.db'}")
        self.heal_config = tmp / "stack-heal.yaml"
        self.heal_config.write_text(json.dumps({
            "kubernetes": {"namespace": "airflow", "kubeconfig": str(self.kube.kubeconfig(tmp / "kubeconfig"))},
            "airflow": {"release": "stack", "sql_alchemy_conn_file": str(tmp / "stack-db-url")},
            "healer": {"mode": "observe", "interval": "5s", "state_file": str(tmp / "stack-heal.sqlite")},
        }))
        self.bridge = BridgeProcess(tmp, "--sla-config", str(self.sla_config), "--heal-config", str(self.heal_config))
        self.airflow.env_extra.update(statsd_env(self.bridge.udp, "datadog"))

    def start(self) -> Stack:
        self.airflow.start()
        return self

    def stop(self) -> None:
        self.airflow.stop()
        self.bridge.stop()
        self.kube.close()


@pytest.fixture(scope="session")
def stack(venv, tmp_path_factory):
    """Started once per session; tests that only need an Airflow to read use `airflow`."""
    st = Stack(tmp_path_factory.mktemp("stack"), venv)
    try:
        st.start()
    except BaseException:
        st.stop()
        raise
    yield st
    st.stop()


@pytest.fixture(scope="session")
def airflow(stack):
    return stack.airflow
