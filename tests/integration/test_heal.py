"""The healer as a user runs it: `airflow-monitor heal run` against a Kubernetes API (the local server of
tests/servers/kube_api.py, which the real kubectl also talks to) whose scheduler, API server and DAG
processor pods are real Airflow 3.3.2 processes on PostgreSQL, paging a local OpsGenie.

Each scenario provokes a real fault: the LocalExecutor workers of the scheduler pod frozen (a real
stuck queue), a container over its memory limit (OOMKilled by the server's kubelet), worker pods
that no node can take (FailedScheduling), the API server refusing connections, a healer killed -9.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from testkit.airflow import REPO, Airflow, free_port
from testkit.servers.kube_api import KubeApiServer
from testkit.servers.opsgenie import OpsGenieServer

pytestmark = pytest.mark.integration

NS, RELEASE = "airflow", "af"
GENIE_KEY = "heal-genie-key"


def alias(subject: str, rule: str) -> str:
    return f"airflow-heal:{NS}/{RELEASE}:{subject}:{rule}"


class Release:
    """Airflow 3.3.2 on PostgreSQL, its components as Deployments of the test Kubernetes API."""

    def __init__(self, tmp: Path, venv: Path, db_url: str):
        self.tmp, self.venv = tmp, venv
        self.af = Airflow(home=tmp / "airflow", venv=venv, env_extra={
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url.replace("postgresql://", "postgresql+psycopg2://"),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.integration.kube_pod.hostname",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "3600",
            "PYTHONPATH": str(REPO),
        })
        self.db_url = db_url
        (tmp / "db-url").write_text(db_url)
        self.kube: KubeApiServer | None = None
        self.kubeconfig = tmp / "kubeconfig"
        self._freezing = threading.Event()
        self._freezer: threading.Thread | None = None

    def start(self) -> Release:
        af = self.af
        af.home.mkdir(parents=True, exist_ok=True)
        (af.home / "passwords.json").write_text(json.dumps({"admin": "admin"}))
        env = af.env()
        subprocess.run([str(self.venv / "bin" / "airflow"), "db", "migrate"], env=env, cwd=af.home, check=True,
                       capture_output=True, timeout=600)
        self.kube = KubeApiServer(self.tmp, base_env=env, grace=5.0)
        self.kube.kubeconfig(self.kubeconfig)
        airflow = str(self.venv / "bin" / "airflow")
        for comp, cmd in [("api-server", [airflow, "api-server", "--port", str(af.api_port)]),
                          ("dag-processor", [airflow, "dag-processor"]), ("scheduler", [airflow, "scheduler"])]:
            self.kube.cluster.deployment(NS, f"{RELEASE}-{comp}", {"tier": "airflow", "component": comp,
                                                                    "release": RELEASE},
                                         {"name": comp, "image": "apache/airflow:3.3.2", "command": cmd,
                                          "resources": {"limits": {"memory": "2Gi"}}})
        deadline = time.monotonic() + 240
        while True:
            try:
                af.token()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the API server pod did not come up: {self.pod_log('api-server')}") from None
                time.sleep(1)
        assert af.wait_run("probe_demo", af.trigger("probe_demo")) == "success", self.pod_log("scheduler")
        return self

    def pod_log(self, component: str) -> str:
        logs = sorted((self.tmp / "pod-logs").glob(f"{RELEASE}-{component}-*"))
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-40:]) if logs else "(no log)"

    def scheduler_pods(self) -> list[dict]:
        return [p for p in self.kube.pods(NS, "scheduler") if not p["metadata"].get("deletionTimestamp")]

    def freeze(self) -> list[int]:
        """SIGSTOP the LocalExecutor workers of every scheduler pod (tasks stay queued, none runs)."""
        pids = []
        for p in self.scheduler_pods():
            for pid in self.kube.cluster.processes(p["metadata"]["name"], "LocalExecutor"):
                os.kill(pid, signal.SIGSTOP)
                pids.append(pid)
        return pids

    def keep_frozen(self) -> None:
        """Freeze the workers of every new scheduler pod too: a stall that a restart does not cure."""
        self._freezing.set()

        def loop():
            while self._freezing.is_set():
                self.freeze()
                time.sleep(0.2)

        self._freezer = threading.Thread(target=loop, daemon=True)
        self._freezer.start()

    def thaw(self) -> None:
        self._freezing.clear()
        if self._freezer:
            self._freezer.join(timeout=5)
        for p in self.scheduler_pods():
            for pid in self.kube.cluster.processes(p["metadata"]["name"]):
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    def deletes(self) -> list[str]:
        return [path for method, path in self.kube.requests if method == "DELETE" and "/pods/" in path]

    def kubectl(self, *args: str) -> str:
        r = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.tmp / "kc"),
                            *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def stop(self) -> None:
        self._freezing.clear()
        if self.kube:
            self.kube.close()


class Healer:
    """One `airflow-monitor heal run` process with its own config file (and, with `sla`, the SLA watcher
    beside it, sharing its Lease)."""

    def __init__(self, release: Release, og: OpsGenieServer, name: str, mode: str = "act", sla: bool = False,
                 **over):
        self.port = free_port()
        doc = {
            "kubernetes": {"namespace": NS, "kubeconfig": str(release.kubeconfig), "timeout": "3s"},
            "airflow": {"release": RELEASE, "sql_alchemy_conn_file": str(release.tmp / "db-url")},
            "healer": {"mode": mode, "interval": "2s", "state_file": str(release.tmp / f"{name}.sqlite"),
                       "blind_after": 2, "components": ["scheduler", "api-server", "dag-processor"],
                       "runbook": "https://runbooks.example/airflow-heal"},
            "budget": {"per_component": 2, "window": "1h", "global": 5, "cooldown": "0s", "verify": "40s"},
            "thresholds": {"startup_grace": "15s", "pending_grace": "3s", "ready_grace": "5s", "storm_window": "5m"},
            "probe": {"queued_grace": "3s", "finished_window": "5s", "heartbeat": "10s"},
            "lease": {"name": "airflow-monitor-heal", "duration": "4s"},
            "notify": {"opsgenie": {"url": og.url}},
        }
        for k, v in over.items():
            doc[k] = {**doc.get(k, {}), **v}
        self.config = release.tmp / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(doc))
        self.log = open(release.tmp / f"{name}.log", "ab")
        self.env = {**os.environ, "AIRFLOW_MONITOR_OPSGENIE_API_KEY": GENIE_KEY, "POD_NAME": f"healer-{name}"}
        self.name = name
        extra = []
        if sla:
            (release.tmp / "airflow-password").write_text("admin")
            sla_cfg = release.tmp / f"{name}-sla.yaml"
            sla_cfg.write_text(yaml.safe_dump({
                "airflow": {"url": release.af.api_url, "username": "admin",
                            "password_file": str(release.tmp / "airflow-password"), "timeout": "5s"},
                "watcher": {"interval": "2s", "state_file": str(release.tmp / f"{name}-sla.sqlite")},
                "notify": {"opsgenie": {"url": og.url}},
                "watch": [{"dag_id": "sla_never", "rules": [{"max_age": "1h", "name": "replicas"}]}]}))
            extra = ["--sla-config", str(sla_cfg)]
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "heal", "run", "--config", str(self.config),
                                      "--metrics-listen", f"127.0.0.1:{self.port}", *extra], cwd=REPO, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()

    def value(self, name: str, **labels: str) -> float:
        """A sample's value (0 when absent, -1 when /metrics cannot be read)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = self.metrics()
        except OSError:
            return -1.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and s.labels == labels:
                    return s.value
        return 0.0

    def command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "monitor.cli", "heal", *args, "--config", str(self.config)],
                              cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def wait(pred, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(f"not within {timeout}s: {what}")


@pytest.fixture(scope="module")
def release(tmp_path_factory, venv, postgres):
    r = Release(tmp_path_factory.mktemp("heal"), venv, postgres("airflow_heal"))
    try:
        r.start()
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def og():
    """One OpsGenie for the module, as in real life: an alert opened in one scenario closes in the next."""
    s = OpsGenieServer(GENIE_KEY)
    yield s
    s.close()


@pytest.fixture
def healers():
    started: list[Healer] = []

    def start(*a, **kw) -> Healer:
        h = Healer(*a, **kw)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


def events_on(release: Release, pod: str) -> list[dict]:
    out = json.loads(release.kubectl("get", "events", "-n", NS, "-o", "json",
                                     "--field-selector", f"involvedObject.name={pod}"))
    return [e for e in out["items"] if e["reason"].startswith("AirflowMonitor")]


def test_observe_mode_writes_an_event_and_pages_but_restarts_nothing(release, og, healers):
    pod = release.scheduler_pods()[0]["metadata"]["name"]
    assert release.freeze(), "no LocalExecutor worker in the scheduler pod"
    release.run_id = release.af.trigger("probe_demo")
    h = healers(release, og, "main", mode="observe")
    page = og.wait(lambda s: next((p for p in s.pages if p["alias"] == alias(pod, "stuck_scheduler")), None), 120)
    assert "none running" in page["message"] and page["priority"] == "P2"
    assert "mode: observe" in page["description"]
    ev = wait(lambda: events_on(release, pod), 30, "an Event on the stuck scheduler pod")
    assert ev[0]["reason"] == "AirflowMonitorStuckScheduler" and ev[0]["type"] == "Warning"
    assert ev[0]["source"]["component"] == "airflow-monitor" and "none running" in ev[0]["message"]
    status = h.command("status")
    assert status.returncode == 0 and "stuck_scheduler" in status.stdout and pod in status.stdout, status.stdout
    time.sleep(5)
    assert release.deletes() == [] and [p["metadata"]["name"] for p in release.scheduler_pods()] == [pod]
    h.stop()


def test_a_stuck_scheduler_is_healed_by_one_restart(release, og, healers):
    """The same state file in mode act: one real restart, the queue drains, the observe-mode page closes."""
    old = release.scheduler_pods()[0]["metadata"]["name"]
    h = healers(release, og, "main", mode="act")
    wait(lambda: release.deletes(), 60, "the stuck scheduler pod deleted")
    assert release.deletes() == [f"/api/v1/namespaces/{NS}/pods/{old}"]
    assert release.af.wait_run("probe_demo", release.run_id, timeout=180) == "success", release.pod_log("scheduler")
    wait(lambda: h.value("airflow_monitor_heal_actions_total", rule="stuck_scheduler", outcome="healed") == 1, 90,
         "the restart verified as healed")
    assert len(release.deletes()) == 1
    new = release.scheduler_pods()[0]["metadata"]["name"]
    assert new != old
    restart = [e for e in events_on(release, old) if e.get("action") == "Restart"]
    assert restart and "delete pod" in restart[0]["message"], events_on(release, old)
    healed = wait(lambda: [e for e in events_on(release, new) if e["reason"] == "AirflowMonitorHealed"], 30,
                  "a Healed event")
    assert healed[0]["type"] == "Normal" and "task(s) ended since the restart" in healed[0]["message"]
    og.wait(lambda s: alias(old, "stuck_scheduler") in [a for a, _ in s.closes], 30)
    assert not [p for p in og.pages if p["alias"].endswith(":healing_exhausted")]
    status = json.loads(h.command("status", "--json").stdout)
    assert [a["outcome"] for a in status["actions"]] == ["healed"] and status["scheduler_restarts_left"] == 1
    pods = release.kubectl("get", "pods", "-n", NS, "-l", f"release={RELEASE},component=scheduler", "-o", "name")
    assert pods.split() == [f"pod/{new}"]
    from monitor import catalog

    seen = {line.split("{")[0].split(" ")[0] for line in h.metrics().splitlines() if line.startswith("airflow_")}
    assert seen <= catalog.service_series_names(), seen - catalog.service_series_names()


def test_a_stall_a_restart_does_not_cure_spends_the_budget_and_pages_once(release, og, healers):
    before = len(release.deletes())
    release.keep_frozen()
    try:
        run_id = release.af.trigger("probe_demo")
        h = healers(release, og, "exhaust", mode="act")
        page = og.wait(lambda s: next((p for p in s.pages if p["alias"] == alias("scheduler", "healing_exhausted")),
                                      None), 420)
        assert page["priority"] == "P1" and "budget spent" in page["message"]
        assert page["description"].count("delete pod") == 2 and "failed" in page["description"]
        time.sleep(8)  # four cycles past the cooldown: nothing more is restarted, nobody paged again
        assert len(release.deletes()) - before == 2
        assert [p["alias"] for p in og.pages].count(alias("scheduler", "healing_exhausted")) == 1
        assert h.value("airflow_monitor_heal_budget_remaining", component="scheduler") == 0
        assert h.value("airflow_monitor_heal_actions_total", rule="stuck_scheduler", outcome="failed") == 2
    finally:
        release.thaw()
    assert release.af.wait_run("probe_demo", run_id, timeout=240) == "success"
    og.wait(lambda s: alias("scheduler", "healing_exhausted") in [a for a, _ in s.closes], 90)
    assert len(release.deletes()) - before == 2


def test_worker_pods_that_cannot_be_scheduled_page_once_and_restart_nothing(release, og, healers):
    before = len(release.deletes())
    release.keep_frozen()
    manifest = release.tmp / "workers.yaml"
    manifest.write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": f"probe-demo-quick-{i}", "labels": {"release": RELEASE, "component": "worker",
                                                                   "tier": "airflow", "kubernetes_executor": "True"}},
         "spec": {"containers": [{"name": "base", "image": "apache/airflow:3.3.2",
                                  "resources": {"requests": {"cpu": "8"}}}]}} for i in range(3)]))
    try:
        release.kubectl("create", "--validate=false", "-f", str(manifest))  # the server validates (strict)
        time.sleep(4)  # older than pending_grace before the queue stalls
        run_id = release.af.trigger("probe_demo")
        healers(release, og, "blocked", mode="act")
        page = og.wait(lambda s: next((p for p in s.pages if p["alias"] == alias("worker", "queue_blocked")), None),
                       120)
        assert page["message"].startswith("[airflow-heal] 3 worker pods Pending for ")
        assert "0/6 nodes are available: 6 Insufficient cpu" in page["message"]
        time.sleep(6)
        assert len(release.deletes()) == before, "a restart for a cause a restart cannot fix"
        assert [p["alias"] for p in og.pages].count(alias("worker", "queue_blocked")) == 1
        ev = events_on(release, "probe-demo-quick-0")
        assert ev and ev[0]["reason"] == "AirflowMonitorQueueBlocked"
    finally:
        release.thaw()
    assert release.af.wait_run("probe_demo", run_id, timeout=240) == "success"
    og.wait(lambda s: alias("worker", "queue_blocked") in [a for a, _ in s.closes], 60)  # nothing queued any more
    release.kubectl("delete", "pod", "-n", NS, "-l", "component=worker", "--wait=false")
    assert len(release.deletes()) == before + 3


def test_an_oom_killed_component_is_paged_with_its_memory_limit(release, og, healers):
    hog = [sys.executable, "-c", "import time; x = bytearray(300 * 2**20); x[::4096] = b'x' * len(x[::4096]); "
           "time.sleep(60)"]
    release.kube.cluster.deployment(NS, f"{RELEASE}-triggerer", {"tier": "airflow", "component": "triggerer",
                                                                 "release": RELEASE},
                                    {"name": "triggerer", "image": "apache/airflow:3.3.2", "command": hog,
                                     "resources": {"limits": {"memory": "64Mi"}}})
    healers(release, og, "oom", mode="observe")
    page = og.wait(lambda s: next((p for p in s.pages if p["alias"].endswith(":oom_killed")), None), 90)
    assert "was OOMKilled" in page["message"] and "(memory limit 64Mi)" in page["message"]
    pod = page["details"]["pods"]
    assert page["alias"] == alias(pod, "oom_killed")
    described = release.kubectl("describe", "pod", "-n", NS, pod)
    assert "OOMKilled" in described and "AirflowMonitorOOMKilled" in described


def test_two_healers_only_the_lease_holder_speaks_and_a_standby_takes_over(release, og, healers):
    """Continues with the crash-looping triggerer of the previous test: two replicas, one voice, for the
    healer and for the SLA watcher beside it (a DAG that never ran breaches its max_age)."""
    a = healers(release, og, "replica-a", mode="observe", sla=True)
    b = healers(release, og, "replica-b", mode="observe", sla=True)
    sla_alias = "airflow-sla:sla_never:replicas"

    def sla_creates() -> int:
        return len([r for r in og.requests if r[1] == "/v2/alerts" and r[2].get("alias") == sla_alias])

    def holder() -> str:
        return release.kubectl("get", "lease", "airflow-monitor-heal", "-n", NS, "-o",
                               "jsonpath={.spec.holderIdentity}")

    wait(lambda: holder().startswith("healer-replica-"), 30, "a lease holder")
    first = holder()
    wait(lambda: a.value("airflow_monitor_heal_leader") + b.value("airflow_monitor_heal_leader") == 1, 30,
         "exactly one leader")
    leader, standby = (a, b) if first.startswith("healer-replica-a") else (b, a)
    time.sleep(6)
    ours = [e for e in release.kube.events(NS) if e.get("reportingComponent") == "airflow-monitor"
            and e["reportingInstance"].startswith("healer-replica")]
    assert ours and {e["reportingInstance"] for e in ours} <= {first}, "only the holder writes Events"
    assert standby.value("airflow_monitor_heal_leader") == 0
    og.wait(lambda s: sla_creates() >= 1, 60)
    time.sleep(5)
    assert sla_creates() == 1, "the standby's SLA watcher pages nobody"
    assert standby.value("airflow_sla_breached", dag_id="sla_never", rule="replicas", priority="P3",
                         reason="never_run") == 1, "a standby still judges"
    leader.proc.kill()  # kill -9: no release of the lease
    leader.proc.wait()
    wait(lambda: holder().startswith(f"healer-{standby.name}"), 20, "the standby takes the lease over")
    assert wait(lambda: standby.value("airflow_monitor_heal_leader") == 1, 10, "the standby leads")
    og.wait(lambda s: sla_creates() == 2, 30)  # the new leader's own state: OpsGenie dedupes on the alias
    assert [p["alias"] for p in og.pages].count(sla_alias) == 1
    release.kube.cluster.remove_deployment(NS, f"{RELEASE}-triggerer")


def test_an_unreachable_api_server_means_no_action_and_one_blind_alert(release, og, healers):
    before = len(release.deletes())
    h = healers(release, og, "blind", mode="act")
    wait(lambda: h.value("airflow_monitor_heal_leader") == 1, 30, "the healer leads")
    release.kube.down = True
    try:
        page = og.wait(lambda s: next((p for p in s.pages if p["alias"] == alias("_healer", "blind")), None), 60)
        assert "cannot list pods" in page["message"]
        time.sleep(6)
        assert [p["alias"] for p in og.pages].count(alias("_healer", "blind")) == 1
    finally:
        release.kube.down = False
    og.wait(lambda s: alias("_healer", "blind") in [a for a, _ in s.closes], 60)
    assert len(release.deletes()) == before


def test_tasks_failed_by_task_queued_timeout_are_told_by_heal_check(release, og, healers):
    """The scheduler records each task it fails for [scheduler] task_queued_timeout in the log table
    (event 'stuck in queued tries exceeded'); such a row, as Airflow writes it, is one diagnosis."""
    import psycopg2

    with psycopg2.connect(release.db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO log (dttm, dag_id, task_id, map_index, event, extra) VALUES (now(), 'probe_demo', "
                    "'quick', -1, 'stuck in queued tries exceeded', 'Task was requeued more than 2 times and will "
                    "be failed.') RETURNING id")
        row = cur.fetchone()[0]
    try:
        h = Healer(release, og, "check", mode="observe")
        h.stop()
        out = h.command("check", "--json")
        assert out.returncode == 1, out.stdout + out.stderr
        diag = json.loads(out.stdout)["diagnoses"]
        assert [d["rule"] for d in diag] == ["queued_timeout"], diag
        assert "probe_demo.quick" in diag[0]["reason"] and "task_queued_timeout" in diag[0]["reason"]
    finally:
        with psycopg2.connect(release.db_url) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM log WHERE id = %s", (row,))
    assert h.command("check").returncode == 0
