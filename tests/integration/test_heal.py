"""The healer as a user runs it: `airflow-monitor heal run` against a Kubernetes API (the local server of
testkit/servers/kube_api.py, which the real kubectl also talks to) whose scheduler, API server and DAG
processor pods are real Airflow 3.3.2 processes on PostgreSQL, paging a local OpsGenie.

The release is laid out as the official chart lays out a LocalExecutor Airflow: the scheduler is a
StatefulSet (`af-scheduler-0`, the same name after every restart, a new uid), and Airflow records the
pod's IP as its hostname (`[core] hostname_callable = ...get_host_ip_address`, as many Kubernetes users
set it). Each healer runs with a token bound to the Role the chart renders for it, and the server refuses
anything that Role does not grant; the module ends by checking that every rule of it was used.

Each scenario provokes a real fault: the LocalExecutor workers of the scheduler pod frozen (a real stuck
queue), a PodDisruptionBudget that allows no eviction, a container over its memory limit (OOMKilled by
the server's kubelet), worker pods that no node can take, a scheduler whose jobs cannot be paired, the
API server refusing connections, a healer killed -9, two healers whose clocks are 24 s apart.
"""

from __future__ import annotations

import functools
import json
import os
import re
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
from tests.integration.tools import tool

pytestmark = pytest.mark.integration

NS, RELEASE = "airflow", "af"
GENIE_KEY = "heal-genie-key"
POD_IP = "tests.integration.kube_pod.pod_ip"
CHART = REPO / "helm" / "airflow-monitor"


def alias(subject: str, rule: str) -> str:
    return f"airflow-heal:{NS}/{RELEASE}:{subject}:{rule}"


@functools.cache
def chart_role(restart: str, lease: str) -> tuple:
    """The rules of the Role the chart renders for the healer with these settings (helm template)."""
    values = {"heal": {"enabled": True, "namespace": NS, "config": {
        "airflow": {"release": RELEASE}, "healer": {"restart": restart}, "lease": {"name": lease}}},
        "secrets": {"sqlAlchemyConn": {"name": "af-metadata", "key": "connection"}}}
    out = subprocess.run([tool("helm"), "template", "mon", str(CHART), "--namespace", "monitoring", "-f", "-"],
                         input=yaml.safe_dump(values), capture_output=True, text=True, timeout=120, check=True)
    role = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Role")
    return tuple(json.dumps(r, sort_keys=True) for r in role["rules"])


class Release:
    """Airflow 3.3.2 on PostgreSQL, its components as workloads of the test Kubernetes API."""

    def __init__(self, tmp: Path, venv: Path, db_url: str):
        self.tmp, self.venv = tmp, venv
        self.af = Airflow(home=tmp / "airflow", venv=venv, env_extra={
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url.replace("postgresql://", "postgresql+psycopg2://"),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": POD_IP,
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "3600",
            "PYTHONPATH": str(REPO),
        })
        self.db_url = db_url
        (tmp / "db-url").write_text(db_url)
        self.kube: KubeApiServer | None = None
        self.kubeconfig = tmp / "kubeconfig"
        self.tokens: dict[tuple, str] = {}
        self._freezing = threading.Event()
        self._freezer: threading.Thread | None = None

    def scheduler_container(self, callable_: str = POD_IP) -> dict:
        return {"name": "scheduler", "image": "apache/airflow:3.3.2",
                "command": [str(self.venv / "bin" / "airflow"), "scheduler"],
                "env": [{"name": "AIRFLOW__CORE__HOSTNAME_CALLABLE", "value": callable_}],
                "resources": {"limits": {"memory": "2Gi"}}}

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
        labels = {"tier": "airflow", "release": RELEASE}
        for comp, cmd in [("api-server", [airflow, "api-server", "--port", str(af.api_port)]),
                          ("dag-processor", [airflow, "dag-processor"])]:
            self.kube.cluster.deployment(NS, f"{RELEASE}-{comp}", {**labels, "component": comp},
                                         {"name": comp, "image": "apache/airflow:3.3.2", "command": cmd,
                                          "resources": {"limits": {"memory": "2Gi"}}})
        # the official chart's LocalExecutor layout: the scheduler is a StatefulSet
        self.kube.cluster.statefulset(NS, f"{RELEASE}-scheduler", {**labels, "component": "scheduler"},
                                      self.scheduler_container())
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

    def token(self, restart: str, lease: str) -> str:
        """A token bound to the Role the chart renders for a healer with this restart mode and Lease."""
        key = (restart, lease)
        if key not in self.tokens:
            self.tokens[key] = self.kube.grant([json.loads(r) for r in chart_role(restart, lease)],
                                               "system:serviceaccount:monitoring:mon-airflow-monitor-heal")
        return self.tokens[key]

    def pod_log(self, component: str) -> str:
        logs = sorted((self.tmp / "pod-logs").glob(f"{RELEASE}-{component}-*"), key=lambda p: p.stat().st_mtime)
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-40:]) if logs else "(no log)"

    def scheduler_pods(self) -> list[dict]:
        return [p for p in self.kube.pods(NS, "scheduler") if not p["metadata"].get("deletionTimestamp")]

    def scheduler(self, ready: bool = True, timeout: float = 120) -> dict:
        """The scheduler pod (waiting for one that is Running and ready)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.scheduler_pods():
                conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
                if not ready or conds.get("Ready") == "True":
                    return p
            time.sleep(0.5)
        raise TimeoutError(f"no ready scheduler pod: {self.pod_log('scheduler')}")

    def job_hostnames(self) -> list[str]:
        import psycopg2

        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT hostname FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' "
                        "ORDER BY latest_heartbeat DESC")
            return [r[0] for r in cur.fetchall()]

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

    def restarts(self) -> list[str]:
        """The restarts the API server was asked for: evictions and pod deletions."""
        return [path for method, path in self.kube.requests
                if (method == "POST" and path.endswith("/eviction")) or (method == "DELETE" and "/pods/" in path)]

    def kubectl(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.tmp / "kc"),
                            *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 or not check, r.stderr
        return r.stdout if r.returncode == 0 else ""

    def stop(self) -> None:
        self._freezing.clear()
        if self.kube:
            self.kube.close()


class Healer:
    """One `airflow-monitor heal run` process with its own config file and a token bound to the chart's Role
    (and, with `sla`, the SLA watcher beside it, sharing its Lease; with `faketime`, a clock that is off)."""

    def __init__(self, release: Release, og: OpsGenieServer, name: str, mode: str = "act", sla: bool = False,
                 lease: str = "", restart: str = "evict", faketime: str = "", **over):
        self.port = free_port()
        self.lease = lease or f"airflow-monitor-heal-{name}"
        self.token = release.token(restart, self.lease)
        kubeconfig = release.kube.kubeconfig(release.tmp / f"{name}.kubeconfig", token=self.token)
        doc = {
            "kubernetes": {"namespace": NS, "kubeconfig": str(kubeconfig), "timeout": "3s"},
            "airflow": {"release": RELEASE, "sql_alchemy_conn_file": str(release.tmp / "db-url")},
            "healer": {"mode": mode, "interval": "2s", "restart": restart, "blind_after": 2, "resolve_after": "3s",
                       "components": ["scheduler", "api-server", "dag-processor"],
                       "runbook": "https://runbooks.example/airflow-heal"},
            "budget": {"per_component": 2, "window": "1h", "global": 5, "cooldown": "0s", "verify": "40s"},
            "thresholds": {"startup_grace": "15s", "pending_grace": "3s", "ready_grace": "5s", "storm_window": "5m"},
            "probe": {"queued_grace": "3s", "finished_window": "5s", "heartbeat": "10s"},
            "lease": {"name": self.lease, "duration": "4s"},
            "notify": {"opsgenie": {"url": og.url}},
        }
        for k, v in over.items():
            doc[k] = {**doc.get(k, {}), **v}
        self.config = release.tmp / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(doc))
        self.log_path = release.tmp / f"{name}.log"
        self.log = open(self.log_path, "ab")
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
        if faketime:  # the library itself (the `faketime` command forks: kill -9 would hit it, not the healer)
            # (wall clock only, as two nodes differ; libfaketime 0.9.10 breaks Python's timed waits on a faked
            # monotonic clock, and the healer calls no time.sleep, which it breaks with DONT_FAKE_MONOTONIC)
            self.env.update(LD_PRELOAD=libfaketime(), FAKETIME=faketime, DONT_FAKE_MONOTONIC="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "heal", "run", "--config",
                                      str(self.config), "--metrics-listen", f"127.0.0.1:{self.port}", *extra],
                                     cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
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
                              cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def libfaketime() -> str:
    """Debian's libfaketime (package faketime, installed by scripts/system-deps.sh)."""
    tool("faketime")
    hits = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    assert hits, "libfaketime is not where Debian puts it"
    return str(hits[0])


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


def events_on(release: Release, pod: str, uid: str | None = None) -> list[dict]:
    out = json.loads(release.kubectl("get", "events", "-n", NS, "-o", "json",
                                     "--field-selector", f"involvedObject.name={pod}"))
    return [e for e in out["items"] if e["reason"].startswith("AirflowMonitor")
            and (uid is None or e["involvedObject"].get("uid") == uid)]


def test_a_healthy_scheduler_paired_by_its_pod_ip_is_left_alone(release, og, healers):
    """job.hostname is the pod's IP (hostname_callable = get_host_ip_address): the healer pairs them and
    restarts nothing; before, it read "no running scheduler job" and deleted a healthy scheduler."""
    pod = release.scheduler()
    ip = pod["status"]["podIP"]
    assert wait(lambda: ip in release.job_hostnames(), 60, "the scheduler's job records its pod's IP")
    h = healers(release, og, "healthy", mode="act")
    wait(lambda: h.value("airflow_monitor_heal_leader") == 1 and h.value("airflow_monitor_heal_cycles_total") >= 4,
         60, "four cycles as leader")
    assert release.restarts() == []
    assert h.value("airflow_monitor_heal_diagnoses", rule="stuck_scheduler") == 0
    out = h.command("check", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["diagnoses"] == []


def test_observe_mode_writes_an_event_and_pages_but_restarts_nothing(release, og, healers):
    pod = release.scheduler()["metadata"]
    assert release.freeze(), "no LocalExecutor worker in the scheduler pod"
    release.run_id = release.af.trigger("probe_demo")
    h = healers(release, og, "main", mode="observe")
    page = og.wait(lambda s: next((p for p in s.pages if p["alias"] == alias(pod["name"], "stuck_scheduler")),
                                  None), 120)
    assert "none running" in page["message"] and page["priority"] == "P2"
    assert "mode: observe" in page["description"]
    ev = wait(lambda: events_on(release, pod["name"], pod["uid"]), 30, "an Event on the stuck scheduler pod")
    assert ev[0]["reason"] == "AirflowMonitorStuckScheduler" and ev[0]["type"] == "Warning"
    assert ev[0]["source"]["component"] == "airflow-monitor" and "none running" in ev[0]["message"]
    status = h.command("status")
    assert status.returncode == 0 and "stuck_scheduler" in status.stdout and pod["name"] in status.stdout, status.stdout
    time.sleep(5)
    assert release.restarts() == [] and release.scheduler_pods()[0]["metadata"]["uid"] == pod["uid"]
    h.stop()


def test_a_stuck_statefulset_scheduler_is_healed_by_one_eviction_verified_by_its_new_uid(release, og, healers):
    """The same Lease and state in mode act: one eviction; the StatefulSet brings af-scheduler-0 back under
    its name with a new uid; the queue drains; verified `healed`; the observe-mode page closes."""
    old = release.scheduler()["metadata"]
    h = healers(release, og, "main", mode="act")
    wait(lambda: release.restarts(), 60, "the stuck scheduler pod evicted")
    assert release.restarts() == [f"/api/v1/namespaces/{NS}/pods/{old['name']}/eviction"]
    assert release.af.wait_run("probe_demo", release.run_id, timeout=180) == "success", release.pod_log("scheduler")
    wait(lambda: h.value("airflow_monitor_heal_actions_total", rule="stuck_scheduler", outcome="healed") == 1, 90,
         "the restart verified as healed")
    assert len(release.restarts()) == 1
    new = release.scheduler()["metadata"]
    assert new["name"] == old["name"] == f"{RELEASE}-scheduler-0" and new["uid"] != old["uid"]
    restart = [e for e in events_on(release, old["name"], old["uid"]) if e.get("action") == "Restart"]
    assert restart and "evict pod" in restart[0]["message"]
    healed = wait(lambda: [e for e in events_on(release, new["name"], new["uid"]) if e["reason"] ==
                           "AirflowMonitorHealed"], 30, "a Healed event on the new pod")
    # healed as soon as the queue moves: a task of the run ended, or (a look earlier) runs
    assert healed[0]["type"] == "Normal" and re.search(r"\d+ task\(s\) (ended since the restart|running)",
                                                       healed[0]["message"]), healed[0]["message"]
    assert new["uid"][:8] in healed[0]["message"]
    og.wait(lambda s: alias(old["name"], "stuck_scheduler") in [a for a, _ in s.closes], 30)
    assert not [p for p in og.pages if p["alias"].endswith(":healing_exhausted")]
    status = json.loads(h.command("status", "--json").stdout)
    assert [a["outcome"] for a in status["actions"]] == ["healed"] and status["scheduler_restarts_left"] == 1
    state = json.loads(release.kubectl("get", "configmap", f"{h.lease}-state", "-n", NS, "-o", "json"))
    assert json.loads(state["data"]["state.json"])["actions"][0]["uid"] == old["uid"]
    from monitor import catalog

    seen = {line.split("{")[0].split(" ")[0] for line in h.metrics().splitlines() if line.startswith("airflow_")}
    assert seen <= catalog.service_series_names(), seen - catalog.service_series_names()


def test_a_pod_disruption_budget_blocks_the_restart_it_is_paged_and_nothing_is_forced(release, og, healers):
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
           "metadata": {"name": "af-scheduler-pdb"},
           "spec": {"minAvailable": 1, "selector": {"matchLabels": {"component": "scheduler", "release": RELEASE}}}}
    (release.tmp / "pdb.yaml").write_text(yaml.safe_dump(pdb))
    release.kubectl("create", "--validate=false", "-n", NS, "-f", str(release.tmp / "pdb.yaml"))
    pod = release.scheduler()["metadata"]
    release.freeze()
    run_id = release.af.trigger("probe_demo")
    h = healers(release, og, "pdb", mode="act")
    page = og.wait(lambda s: next((p for p in s.pages if p["alias"] == alias("scheduler", "healing_blocked")), None),
                   120)
    assert "not forced: blocked by PodDisruptionBudget af-scheduler-pdb" in page["message"]
    assert "needs 1 healthy pods and has 1 currently" in page["description"]
    time.sleep(5)
    assert release.scheduler_pods()[0]["metadata"]["uid"] == pod["uid"], "nothing forced past the budget"
    assert [p["alias"] for p in og.pages].count(alias("scheduler", "healing_blocked")) == 1
    assert h.value("airflow_monitor_heal_budget_remaining", component="scheduler") == 2, "a refusal spends nothing"
    release.kubectl("delete", "poddisruptionbudget", "af-scheduler-pdb", "-n", NS)  # a person lets it go
    wait(lambda: h.value("airflow_monitor_heal_actions_total", rule="stuck_scheduler", outcome="healed") == 1, 180,
         "healed once the budget allows the eviction")
    assert release.af.wait_run("probe_demo", run_id, timeout=180) == "success"
    og.wait(lambda s: alias("scheduler", "healing_blocked") in [a for a, _ in s.closes], 60)


def test_a_stall_a_restart_does_not_cure_spends_the_budget_and_pages_once(release, og, healers):
    before = len(release.restarts())
    release.keep_frozen()
    try:
        run_id = release.af.trigger("probe_demo")
        # a frozen scheduler never heals: a short verify fails each restart sooner (the suite's time)
        h = healers(release, og, "exhaust", mode="act", budget={"verify": "20s"})
        page = og.wait(lambda s: next((p for p in s.pages if p["alias"] == alias("scheduler", "healing_exhausted")),
                                      None), 420)
        assert page["priority"] == "P1" and "budget spent" in page["message"]
        assert page["description"].count("evict pod") == 2 and "failed" in page["description"]
        time.sleep(8)  # four cycles past the cooldown: nothing more is restarted, nobody paged again
        assert len(release.restarts()) - before == 2
        assert [p["alias"] for p in og.pages].count(alias("scheduler", "healing_exhausted")) == 1
        assert h.value("airflow_monitor_heal_budget_remaining", component="scheduler") == 0
        assert h.value("airflow_monitor_heal_actions_total", rule="stuck_scheduler", outcome="failed") == 2
    finally:
        release.thaw()
    assert release.af.wait_run("probe_demo", run_id, timeout=240) == "success"
    og.wait(lambda s: alias("scheduler", "healing_exhausted") in [a for a, _ in s.closes], 90)
    assert len(release.restarts()) - before == 2


def test_jobs_that_cannot_be_paired_with_pods_are_paged_as_misconfigured_and_never_restarted(release, og, healers):
    """The scheduler's hostname_callable returns neither its pod's name nor its IP: which job is which pod's
    cannot be told, so nothing is restarted, healthy or frozen, and a person is told how to fix it."""
    release.kube.cluster.statefulset(NS, f"{RELEASE}-scheduler", {"tier": "airflow", "release": RELEASE,
                                                                   "component": "scheduler"},
                                     release.scheduler_container("tests.integration.kube_pod.elsewhere"))
    wait(lambda: "airflow-scheduler-host.internal" in release.job_hostnames()[:1], 180,
         "the rolled scheduler's job records the unpairable hostname")
    release.scheduler()
    before = len(release.restarts())
    h = healers(release, og, "pairing", mode="act", thresholds={"startup_grace": "10s"})
    page = og.wait(lambda s: next((p for p in s.pages if p["alias"] == alias("scheduler", "misconfigured")), None),
                   120)
    assert "cannot pair scheduler jobs (hostnames airflow-scheduler-host.internal)" in page["message"]
    out = h.command("check", "--json")
    assert out.returncode == 4, out.stdout + out.stderr
    assert [d["rule"] for d in json.loads(out.stdout)["diagnoses"]] == ["misconfigured"]
    release.freeze()
    try:
        time.sleep(12)  # frozen past queued_grace: still no restart of a scheduler it cannot place
        assert len(release.restarts()) == before
        assert [p["alias"] for p in og.pages].count(alias("scheduler", "misconfigured")) == 1
    finally:
        release.thaw()
        release.kube.cluster.statefulset(NS, f"{RELEASE}-scheduler", {"tier": "airflow", "release": RELEASE,
                                                                       "component": "scheduler"},
                                         release.scheduler_container())
    wait(lambda: release.scheduler()["status"]["podIP"] in release.job_hostnames()[:1], 180, "paired again")
    og.wait(lambda s: alias("scheduler", "misconfigured") in [a for a, _ in s.closes], 60)


def test_worker_pods_that_cannot_be_scheduled_page_once_and_restart_nothing(release, og, healers):
    before = len(release.restarts())
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
        assert len(release.restarts()) == before, "a restart for a cause a restart cannot fix"
        assert [p["alias"] for p in og.pages].count(alias("worker", "queue_blocked")) == 1
        ev = events_on(release, "probe-demo-quick-0")
        assert ev and ev[0]["reason"] == "AirflowMonitorQueueBlocked"
        sched = wait(lambda: [e for e in release.kube.events(NS, "FailedScheduling") if e["involvedObject"]["name"]
                              == "probe-demo-quick-0" and (e.get("series") or {}).get("count", 0) >= 2], 30,
                     "kube-scheduler's retries, in its events.k8s.io series")
        assert "count" not in sched[0] and sched[0]["lastTimestamp"] is None, "kube-scheduler's shape"
    finally:
        release.thaw()
    assert release.af.wait_run("probe_demo", run_id, timeout=240) == "success"
    og.wait(lambda s: alias("worker", "queue_blocked") in [a for a, _ in s.closes], 60)  # nothing queued any more
    release.kubectl("delete", "pod", "-n", NS, "-l", "component=worker", "--wait=false")


def test_an_init_container_that_cannot_pull_and_an_oom_killed_component_are_paged(release, og, healers):
    """The chart's triggerer with a git-sync init container whose image cannot be pulled: the pod stays
    Pending, its main container in PodInitializing, and the page names Init:ImagePullBackOff (kubectl's
    word, built from initContainerStatuses). Then a triggerer over its memory limit: OOMKilled, paged with
    its limit."""
    labels = {"tier": "airflow", "release": RELEASE, "component": "triggerer"}
    release.kube.cluster.deployment(NS, f"{RELEASE}-triggerer", labels,
                                    {"name": "triggerer", "image": "apache/airflow:3.3.2",
                                     "command": [sys.executable, "-c", "import time; time.sleep(600)"]},
                                    init_containers=[{"name": "git-sync-init",
                                                      "image": "unpullable/git-sync/git-sync:v4.3.9"}])
    h = healers(release, og, "oom", mode="observe", healer={"components": ["triggerer"]})
    page = og.wait(lambda s: next((p for p in s.pages if p["alias"] == alias("triggerer", "no_ready_pod")), None),
                   90)
    assert "Init:ImagePullBackOff" in page["message"] or "Init:ErrImagePull" in page["message"], page["message"]
    release.kube.cluster.remove_deployment(NS, f"{RELEASE}-triggerer")
    hog = [sys.executable, "-c", "import time; x = bytearray(300 * 2**20); x[::4096] = b'x' * len(x[::4096]); "
           "time.sleep(60)"]
    release.kube.cluster.deployment(NS, f"{RELEASE}-triggerer", labels,
                                    {"name": "triggerer", "image": "apache/airflow:3.3.2", "command": hog,
                                     "resources": {"limits": {"memory": "64Mi"}}})
    page = og.wait(lambda s: next((p for p in s.pages if p["alias"].endswith(":oom_killed")), None), 90)
    assert "was OOMKilled" in page["message"] and "(memory limit 64Mi)" in page["message"]
    pod = page["details"]["pods"]
    assert page["alias"] == alias(pod, "oom_killed")
    described = release.kubectl("describe", "pod", "-n", NS, pod)
    assert "OOMKilled" in described and "AirflowMonitorOOMKilled" in described
    assert h.value("airflow_monitor_heal_diagnoses", rule="oom_killed") == 1


def test_failover_keeps_the_budget_and_the_alerts_and_only_the_holder_speaks(release, og, healers):
    """Two replicas, one voice (for the healer and the SLA watcher beside it). Replica A spends a restart and
    holds an open alert (the crash-looping triggerer of the previous test); after kill -9, B leads with the
    same state: one restart left, no second page, and it resolves what A opened."""
    hog = [sys.executable, "-c", "import time; x = bytearray(300 * 2**20); x[::4096] = b'x' * len(x[::4096]); "
           "time.sleep(60)"]
    release.kube.cluster.deployment(NS, f"{RELEASE}-triggerer", {"tier": "airflow", "release": RELEASE,
                                                                 "component": "triggerer"},
                                    {"name": "triggerer", "image": "apache/airflow:3.3.2", "command": hog,
                                     "resources": {"limits": {"memory": "64Mi"}}})
    a = healers(release, og, "replica-a", mode="act", sla=True, lease="airflow-monitor-heal-replicas",
                healer={"components": ["scheduler", "triggerer"]})
    b = healers(release, og, "replica-b", mode="act", sla=True, lease="airflow-monitor-heal-replicas",
                healer={"components": ["scheduler", "triggerer"]})
    sla_alias = "airflow-sla:sla_never:replicas"

    def holder() -> str:
        return release.kubectl("get", "lease", "airflow-monitor-heal-replicas", "-n", NS, "-o",
                               "jsonpath={.spec.holderIdentity}", check=False)  # not there yet: ""

    wait(lambda: holder().startswith("healer-replica-"), 30, "a lease holder")
    first = holder()
    wait(lambda: a.value("airflow_monitor_heal_leader") + b.value("airflow_monitor_heal_leader") == 1, 30,
         "exactly one leader")
    leader, standby = (a, b) if first.startswith("healer-replica-a") else (b, a)
    oom = og.wait(lambda s: next((p for p in s.pages if p["alias"].endswith(":oom_killed")
                                  and p["alias"] not in [x for x, _ in s.closes]), None), 90)
    ours = [e for e in release.kube.events(NS) if e.get("reportingComponent") == "airflow-monitor"
            and e["reportingInstance"].startswith("healer-replica")]
    assert {e["reportingInstance"] for e in ours} <= {first}, "only the holder writes Events"
    og.wait(lambda s: sla_alias in [p["alias"] for p in s.pages], 60)
    assert standby.value("airflow_sla_breached", dag_id="sla_never", rule="replicas", priority="P3",
                         reason="never_run") == 1, "a standby still judges"
    # the leader spends one restart on a stuck scheduler; kill -9 before the check of it is done
    before = len(release.restarts())
    release.keep_frozen()
    try:
        release.af.trigger("probe_demo")
        wait(lambda: len(release.restarts()) > before, 180, "the leader evicts the stuck scheduler")
        leader.proc.kill()  # kill -9: no release of the Lease
        leader.proc.wait()
        wait(lambda: holder().startswith(f"healer-{standby.name}"), 30, "the standby takes the Lease over")
        wait(lambda: standby.value("airflow_monitor_heal_leader") == 1, 30, "the standby leads")
        assert wait(lambda: standby.value("airflow_monitor_heal_budget_remaining", component="scheduler") == 1, 30,
                    "the new leader has the budget the old one left")
    finally:
        release.thaw()
    pages = [p["alias"] for p in og.pages]
    assert pages.count(oom["alias"]) == 1, "no second page after the failover"
    release.kube.cluster.remove_deployment(NS, f"{RELEASE}-triggerer")
    og.wait(lambda s: oom["alias"] in [x for x, _ in s.closes], 90)  # B resolves what A opened
    assert [p["alias"] for p in og.pages].count(sla_alias) == 1


def test_clocks_24s_apart_never_give_two_leaders(release, og, healers):
    """client-go's rule: a standby judges expiry on its own monotonic clock, from when it saw the record
    change; with one replica 12 s ahead and one 12 s behind, the holder never changes while it renews, and
    after kill -9 the other takes over within the lease duration and a renew period."""
    lease = "airflow-monitor-heal-skew"
    a = healers(release, og, "skew-a", mode="observe", lease=lease, faketime="+12s")
    b = healers(release, og, "skew-b", mode="observe", lease=lease, faketime="-12s")

    def spec() -> dict:
        return json.loads(release.kubectl("get", "lease", lease, "-n", NS, "-o", "json", check=False) or "{}"
                          ).get("spec", {})

    wait(lambda: spec().get("holderIdentity", "").startswith("healer-skew-"), 30, "a lease holder")
    first = spec()["holderIdentity"]
    deadline = time.monotonic() + 16  # four lease durations
    while time.monotonic() < deadline:
        s = spec()
        assert s["holderIdentity"] == first and s.get("leaseTransitions", 0) == 0, s
        assert a.value("airflow_monitor_heal_leader") + b.value("airflow_monitor_heal_leader") <= 1
        time.sleep(0.5)
    holder_h, other = (a, b) if first.startswith("healer-skew-a") else (b, a)
    holder_h.proc.kill()
    holder_h.proc.wait()
    # (expected within the duration and a renew period, 4.5 s; a busy machine may take longer, never for ever)
    wait(lambda: spec()["holderIdentity"].startswith(f"healer-{other.name}"), 30, "the other takes over")
    assert spec()["leaseTransitions"] == 1


def test_an_unreachable_api_server_means_no_action_and_one_blind_alert(release, og, healers):
    before = len(release.restarts())
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
    assert len(release.restarts()) == before


def test_tasks_failed_by_task_queued_timeout_are_told_by_heal_check(release, og, healers):
    """The scheduler records each task it fails for [scheduler] task_queued_timeout in the log table
    (event 'stuck in queued tries exceeded'); such a row, as Airflow writes it, is one diagnosis. `heal
    check` needs no notifier secret and writes nothing."""
    import psycopg2

    with psycopg2.connect(release.db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO log (dttm, dag_id, task_id, map_index, event, extra) VALUES (now(), 'probe_demo', "
                    "'quick', -1, 'stuck in queued tries exceeded', 'Task was requeued more than 2 times and will "
                    "be failed.') RETURNING id")
        row = cur.fetchone()[0]
    try:
        h = Healer(release, og, "check", mode="observe")
        h.stop()
        h.env.pop("AIRFLOW_MONITOR_OPSGENIE_API_KEY")  # read-only: no notifier secret needed
        writes = len([m for m, _ in release.kube.requests if m in ("POST", "PUT", "PATCH", "DELETE")])
        out = h.command("check", "--json")
        assert out.returncode == 1, out.stdout + out.stderr
        diag = json.loads(out.stdout)["diagnoses"]
        assert [d["rule"] for d in diag] == ["queued_timeout"], diag
        assert "probe_demo.quick" in diag[0]["reason"] and "task_queued_timeout" in diag[0]["reason"]
        assert len([m for m, _ in release.kube.requests if m in ("POST", "PUT", "PATCH", "DELETE")]) == writes
        assert "Retrying" not in out.stderr
    finally:
        with psycopg2.connect(release.db_url) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM log WHERE id = %s", (row,))
    assert h.command("check").returncode == 0


def test_every_request_was_within_the_charts_role_and_every_rule_of_it_was_used(release):
    """Run last: every healer of this module used a token bound to the Role the chart renders for it; the
    server refused nothing (a missing rule would have been a 403), and every rule of the evict Role was
    used by some scenario (an extra rule would show here)."""
    assert release.kube.forbidden == [], release.kube.forbidden
    evict = [t for (restart, _), t in release.tokens.items() if restart == "evict"]
    used = set().union(*(release.kube.used[t] for t in evict))
    n_rules = len(chart_role("evict", "x"))
    assert used == set(range(n_rules)), [json.loads(chart_role("evict", "x")[i])
                                         for i in sorted(set(range(n_rules)) - used)]
