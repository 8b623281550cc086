"""Start and drive a real Apache Airflow 3.x for the integration tests (and the bench recorder).

Airflow runs from the cached venv made by scripts/airflow-venv.sh, as `airflow standalone`
in its own process group (setsid) with its own ports, SQLite and LocalExecutor by default.
Only the standard library is used here, so the bench can import it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "tests" / "integration" / "dags"


def airflow_venv() -> Path:
    """The cached Airflow venv, created on first use (minutes on a fresh machine)."""
    out = subprocess.run(
        [str(REPO / "scripts" / "airflow-venv.sh")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Airflow:
    """One running Airflow. Use start(), then trigger()/wait_run(), then stop()."""

    home: Path
    venv: Path = field(default_factory=airflow_venv)
    env_extra: dict[str, str] = field(default_factory=dict)
    dags_folder: Path = DAGS
    api_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    _token: str | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        pw = self.home / "passwords.json"
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pw),
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            }
        )
        env.update(self.env_extra)
        return env

    def start(self, timeout: float = 240) -> Airflow:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({"admin": "admin"}))
        log = open(self.home / "standalone.log", "ab")
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "airflow"), "standalone"],
            env=self.env(),
            cwd=self.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"airflow standalone exited: {self.log_tail()}")
            try:
                self.token()
                return self
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(1)
        raise TimeoutError(f"Airflow API not up after {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        p = self.home / "standalone.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:]) if p.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)  # frozen processes cannot act on SIGTERM
        except ProcessLookupError:
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=20)
                # standalone can leave its children behind: wait for the group to be empty
                for _ in range(40):
                    os.killpg(self.proc.pid, 0)
                    time.sleep(0.25)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                if sig == signal.SIGKILL:
                    break
                continue
        self.proc = None

    # --- REST API v2 -----------------------------------------------------------------
    def token(self) -> str:
        if self._token is None:
            req = urllib.request.Request(
                f"{self.api_url}/auth/token",
                data=json.dumps({"username": "admin", "password": "admin"}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=5) as r:
                self._token = json.load(r)["access_token"]
        return self._token

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"{self.api_url}/api/v2{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token()}"},
            method=method,
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def wait_dag(self, dag_id: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.api("GET", f"/dags/{dag_id}")
                return
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout}s: {self.log_tail()}")

    def trigger(self, dag_id: str) -> str:
        self.wait_dag(dag_id)
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None})
        return run["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            state = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(1)
        raise TimeoutError(f"run {dag_id}/{run_id} still {state} after {timeout}s")

    def processes(self, needle: str) -> list[int]:
        """PIDs in Airflow's process group whose command line contains `needle`."""
        out = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if self.proc and os.getpgid(int(pid)) == self.proc.pid:
                    if needle in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode():
                        out.append(int(pid))
            except (OSError, ProcessLookupError):
                continue
        return out

    def signal(self, needle: str, sig: int) -> list[int]:
        pids = self.processes(needle)
        for pid in pids:
            os.kill(pid, sig)
        return pids

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def second_scheduler(af: Airflow, env_extra: dict[str, str], log: Path):
    """Another `airflow scheduler` on `af`'s home and database (HA schedulers), stopped on the way out:
    SIGTERM, then SIGKILL (a scheduler may take long to end its executor). Its log's tail is printed
    when the block fails."""
    proc = subprocess.Popen([str(af.venv / "bin" / "airflow"), "scheduler"], env={**af.env(), **env_extra},
                            cwd=af.home, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    except BaseException:
        print(log.read_text()[-3000:])
        raise
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def pods_in(metrics: dict, pods: set[str]) -> bool:
    """Both HA schedulers' own gauges are in `metrics` (BridgeProcess.wait_for's view), told by their pod label."""
    return all({dict(k).get("pod") for k in metrics.get(name, {})} >= pods
               for name in ("airflow_executor_open_slots", "airflow_scheduler_heartbeat_total"))


def statsd_env(port: int, mode: str) -> dict[str, str]:
    """Airflow's [metrics] settings for one emission mode: plain, datadog or influxdb."""
    env = {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(port),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
    }
    if mode == "datadog":
        env["AIRFLOW__METRICS__STATSD_DATADOG_ENABLED"] = "True"
    elif mode == "influxdb":
        env["AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED"] = "True"
    elif mode != "plain":
        raise ValueError(f"unknown emission mode {mode!r}")
    return env


def otel_env(port: int, instance: str = "", interval_ms: int = 2000) -> dict[str, str]:
    """Airflow's OpenTelemetry metrics pointed at the bridge's OTLP port, the way Airflow 3.2+ wants it
    configured: `[metrics] otel_on` and the standard OTEL_* variables (its otel_host/otel_port settings
    are deprecated); statsd off, which would win over OpenTelemetry."""
    env = {
        "AIRFLOW__METRICS__STATSD_ON": "False",
        "AIRFLOW__METRICS__OTEL_ON": "True",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{port}/v1/metrics",
        "OTEL_METRIC_EXPORT_INTERVAL": str(interval_ms),
    }
    if instance:
        env["OTEL_RESOURCE_ATTRIBUTES"] = f"service.instance.id={instance}"
    return env
