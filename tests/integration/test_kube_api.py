"""The healer's Kubernetes side against the local API server, without Airflow: the Lease's election
rules, a pod delete's uid precondition, a rollout restart, the server's refusals of bodies the real
API server refuses, and kubectl reading what the healer wrote."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit.servers.kube_api import KubeApiServer

pytestmark = pytest.mark.integration


@pytest.fixture
def kube(tmp_path):
    s = KubeApiServer(tmp_path)
    yield s
    s.close()


def api(server, tmp_path):
    from monitor.kube.client import load_api_client

    return load_api_client(str(server.kubeconfig(tmp_path / "kubeconfig")))


def test_one_lease_holder_at_a_time_and_takeover_only_after_expiry(kube, tmp_path):
    from monitor.kube.lease import Lease

    client = api(kube, tmp_path)
    a, b = Lease(client, "airflow", "am", 2, "a"), Lease(client, "airflow", "am", 2, "b")
    assert a.tick() and not b.tick() and a.tick()
    assert a.leader and not b.leader
    # a stops renewing (as after kill -9): b sees the record change once more (a's last renewal), and
    # takes over only after a whole lease duration in which it saw no change, on its own clock
    assert not b.tick()
    time.sleep(1.0)
    assert not b.tick(), "half a duration without a change is not enough"
    time.sleep(1.5)
    assert b.tick() and b.leader
    assert not a.tick() and not a.leader
    lease = kube.cluster.get("Lease", "airflow", "am")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    b.release()  # a clean stop hands over at once
    assert a.tick()


def test_a_stale_write_gets_409_and_loses(kube, tmp_path):
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    from monitor.kube.lease import Lease

    c = api(kube, tmp_path)
    a = Lease(c, "airflow", "am", 2, "a")
    assert a.tick()
    coord = k8s.CoordinationV1Api(c)
    cur = coord.read_namespaced_lease("am", "airflow")
    a.tick()  # the resourceVersion moves on
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "am", "namespace": "airflow", "resourceVersion": cur.metadata.resource_version},
            "spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 2}}
    with pytest.raises(ApiException) as e:
        coord.replace_namespaced_lease("am", "airflow", body)
    assert e.value.status == 409
    # a field the schema does not know is refused, as by the real server (sent raw: the client checks first)
    import json
    import ssl
    import urllib.error
    import urllib.request

    bad = {**body, "metadata": {"name": "x"}, "spec": {"holder": "x"}}
    req = urllib.request.Request(f"{kube.url}/apis/coordination.k8s.io/v1/namespaces/airflow/leases",
                                 data=json.dumps(bad).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {kube.token}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(kube.cert)), timeout=10)
    status = json.loads(raw.value.read())
    assert raw.value.code == 422 and status["reason"] == "Invalid" and "'holder' was unexpected" in status["message"]


def test_delete_with_a_stale_uid_is_refused_and_rollout_restart_replaces_the_pod(kube, tmp_path):
    from monitor.kube.client import Kube, KubeError

    kube.cluster.deployment("airflow", "af-scheduler", {"release": "af", "component": "scheduler"},
                            {"name": "scheduler", "image": "apache/airflow:3.3.2",
                             "command": [sys.executable, "-c", "import time; time.sleep(600)"]})
    k = Kube(api(kube, tmp_path), "airflow", "af")
    pod = k.pods()[0]
    assert pod.phase == "Running" and pod.component == "scheduler"
    with pytest.raises(KubeError, match="HTTP 409: Operation cannot be fulfilled on Pod .* UID in the precondition"):
        k.delete_pod(pod.name, "not-its-uid")
    w = k.workload(pod)
    assert (w.kind, w.name, w.why_not) == ("Deployment", "af-scheduler", "")
    assert k.rollout_restart(w) == "Deployment/af-scheduler"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = [p.name for p in k.pods() if not p.deleting]
        if names and pod.name not in names:
            break
        time.sleep(0.2)
    assert names and pod.name not in names, "the rollout replaced the pod"
    k.event(k.pods()[0], "AirflowMonitorTest", "seen by kubectl", "Diagnose")
    out = subprocess.run(["kubectl", "--kubeconfig", str(tmp_path / "kubeconfig"), "--cache-dir",
                          str(tmp_path / "kc"), "get", "events", "-n", "airflow"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "AirflowMonitorTest" in out.stdout and "seen by kubectl" in out.stdout, out.stderr


def test_a_pod_watch_streams_what_the_controllers_do(kube, tmp_path):
    from kubernetes import client as k8s
    from kubernetes import watch

    core = k8s.CoreV1Api(api(kube, tmp_path))
    kube.cluster.deployment("airflow", "af-triggerer", {"release": "af", "component": "triggerer"},
                            {"name": "triggerer", "image": "apache/airflow:3.3.2",
                             "command": [sys.executable, "-c", "import time; time.sleep(600)"]})
    seen = []
    for ev in watch.Watch().stream(core.list_namespaced_pod, "airflow", label_selector="component=triggerer",
                                   timeout_seconds=3):
        seen.append((ev["type"], ev["object"].status.phase))
        if ev["type"] == "ADDED":
            kube.cluster.delete_pod("airflow", ev["object"].metadata.name, 0.5)
    types = [t for t, _ in seen]
    assert types[0] == "ADDED" and "MODIFIED" in types and "DELETED" in types, seen


def test_serve_runs_the_healer_beside_the_bridge(kube, tmp_path):
    """`serve --heal-config`: the healer's series join the bridge's /metrics; with a database it cannot
    read (a SQLite file without Airflow's tables) it takes the Lease, acts on nothing and says why."""
    import yaml

    from testkit.bridge import BridgeProcess

    kube.kubeconfig(tmp_path / "kubeconfig")
    (tmp_path / "db-url").write_text(f"sqlite:///{tmp_path / 'not-airflow.db'}")
    import sqlite3

    sqlite3.connect(tmp_path / "not-airflow.db").close()
    cfg = tmp_path / "heal.yaml"
    cfg.write_text(yaml.safe_dump({
        "kubernetes": {"namespace": "airflow", "kubeconfig": str(tmp_path / "kubeconfig")},
        "airflow": {"release": "af", "sql_alchemy_conn_file": str(tmp_path / "db-url")},
        "healer": {"mode": "act", "interval": "1s", "state_file": str(tmp_path / "heal.sqlite"),
                   "components": ["scheduler"]}}))
    b = BridgeProcess(tmp_path, "--heal-config", str(cfg))
    try:
        m = b.wait_for(lambda m: m.get("airflow_monitor_heal_read_errors_total", {}).get((("source", "database"),),
                                                                                          0) >= 3, timeout=30)
        assert m["airflow_monitor_heal_leader"][()] == 1 and m["airflow_monitor_heal_acting"][()] == 1
        assert m["airflow_monitor_heal_blind"][()] == 1
        assert "airflow_monitor_bridge_lines_total" in m
        assert not [p for meth, p in kube.requests if meth == "DELETE"]
        assert kube.cluster.get("Lease", "airflow", "airflow-monitor-heal-af")["spec"]["holderIdentity"]
    finally:
        b.stop()
    assert kube.cluster.get("Lease", "airflow", "airflow-monitor-heal-af")["spec"]["holderIdentity"] == "", \
        "a clean stop hands the Lease over"


def test_a_statefulset_pod_comes_back_under_its_name_with_a_new_uid_and_evictions_respect_its_budget(kube, tmp_path):
    """The official chart's LocalExecutor layout: <release>-scheduler-0. An eviction a PodDisruptionBudget
    refuses is a 429 naming the budget (with Retry-After while it is processed); one it allows replaces the
    pod under the same name, with a new uid, and only once the old one is gone."""
    from monitor.kube.client import Kube, KubeError

    kube.cluster.statefulset("airflow", "af-scheduler", {"release": "af", "component": "scheduler"},
                             {"name": "scheduler", "image": "apache/airflow:3.3.2",
                              "command": [sys.executable, "-c", "import time; time.sleep(600)"]})
    k = Kube(api(kube, tmp_path), "airflow", "af")
    deadline = time.monotonic() + 30
    while not (pods := [p for p in k.pods() if p.ready]) and time.monotonic() < deadline:
        time.sleep(0.2)
    (old,) = pods
    assert old.name == "af-scheduler-0" and old.owner_kind == "StatefulSet" and old.hostname == "af-scheduler-0"
    assert old.ips and old.ips[0].startswith("127.0.")
    kube.cluster.put("PodDisruptionBudget", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "af-scheduler-pdb", "namespace": "airflow", "generation": 1},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"component": "scheduler"}}}})
    with pytest.raises(KubeError) as e:
        k.evict(old.name, old.uid)
    assert e.value.status == 429 and e.value.reason == "TooManyRequests" and e.value.retry_after is None
    assert e.value.causes == ("The disruption budget af-scheduler-pdb needs 1 healthy pods and has 1 currently",)
    kube.cluster.pdb_lagging.add("af-scheduler-pdb")
    with pytest.raises(KubeError) as e:
        k.evict(old.name, old.uid)
    assert e.value.retry_after == 10 and "still being processed" in e.value.causes[0]
    kube.cluster.remove("PodDisruptionBudget", "airflow", "af-scheduler-pdb")
    with pytest.raises(KubeError, match="HTTP 409"):
        k.evict(old.name, "a-stale-uid")
    k.evict(old.name, old.uid)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = [p for p in k.pods() if not p.deleting]
        if new and new[0].uid != old.uid and new[0].ready:
            break
        time.sleep(0.2)
    assert new[0].name == old.name and new[0].uid != old.uid and new[0].created >= old.created
    # a StatefulSet with updateStrategy OnDelete, and a paused Deployment: no rollout restart would restart them
    kube.cluster.statefulset("airflow", "af-triggerer", {"release": "af", "component": "triggerer"},
                             {"name": "triggerer", "image": "apache/airflow:3.3.2",
                              "command": [sys.executable, "-c", "import time; time.sleep(600)"]},
                             update_strategy="OnDelete")
    deadline = time.monotonic() + 30
    while not (trig := [p for p in k.pods() if p.component == "triggerer"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "updateStrategy OnDelete" in k.workload(trig[0]).why_not


def test_lists_are_paginated_relisted_on_410_and_rbac_refuses_what_the_role_does_not_grant(kube, tmp_path):
    from monitor.kube.client import PAGE, Kube, KubeError, load_api_client

    with kube.cluster.cond:
        for i in range(PAGE * 2 + 7):
            labels = {"release": "af", "component": "worker"}
            kube.cluster.put("Pod", {"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"etl-task-{i:05d}", "namespace": "airflow", "labels": labels},
                "spec": {"containers": [{"name": "base", "image": "x"}]}, "status": {"phase": "Pending"}})
    k = Kube(api(kube, tmp_path), "airflow", "af")
    pods = k.pods()
    assert len(pods) == PAGE * 2 + 7
    assert sum(1 for m, p in kube.requests if p.endswith("/pods")) >= 3, "one request per page"
    kube.continue_ttl = 0  # every continue token is already too old: the first page is read again, then it gives up
    with pytest.raises(KubeError, match="410"):
        k.pods()
    kube.continue_ttl = 300
    rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    token = kube.grant(rules)
    limited = Kube(load_api_client(str(kube.kubeconfig(tmp_path / "limited", token=token))), "airflow", "af")
    assert len(limited.pods()) == PAGE * 2 + 7
    with pytest.raises(KubeError) as e:
        limited.delete_pod("etl-task-00000")
    assert e.value.status == 403 and 'cannot delete resource "pods" in API group ""' in str(e.value)
    assert kube.unused_rules(token) == []


def test_a_configmap_is_written_with_compare_and_swap(kube, tmp_path):
    from monitor.errors import WriteConflict
    from monitor.kube.client import Kube
    from monitor.kube.configmap import ConfigMapDoc

    k = Kube(api(kube, tmp_path), "airflow", "af")
    a, b = ConfigMapDoc(k, "am-state"), ConfigMapDoc(k, "am-state")
    assert a.read() == ({}, "")
    v1 = a.write({"n": 1}, "")
    doc, v = b.read()
    assert doc == {"n": 1} and v == v1
    a.write({"n": 2}, v1)
    with pytest.raises(WriteConflict):
        b.write({"n": 3}, v1)  # stale: b read version v1, a wrote since
    assert a.read()[0] == {"n": 2}


@pytest.fixture(scope="module")
def floor_python():
    """The oldest `kubernetes` client airflow-monitor supports (30.1.0), in a venv of its own."""
    from testkit.airflow import REPO

    out = subprocess.run([str(REPO / "scripts" / "kube-floor-venv.sh")], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return str(Path(out.stdout.strip().splitlines()[-1]) / "bin" / "python")


@pytest.mark.parametrize("client", ["newest", "floor"])
def test_a_hung_api_server_cannot_hang_heal_check(kube, tmp_path, client, request):
    """An API server that accepts and never answers: every call ends within its timeout (a (connect,
    read) tuple, which every client version honours; urllib3's retries off), on the newest client and
    on the oldest one we support, so `heal check` ends, says it is blind (exit 3), and names the call."""
    import json
    import sqlite3

    import yaml

    python = sys.executable if client == "newest" else request.getfixturevalue("floor_python")
    version = subprocess.run([python, "-c", "import kubernetes; print(kubernetes.__version__)"], capture_output=True,
                             text=True, timeout=60).stdout.strip()
    assert (version == "30.1.0") == (client == "floor"), version
    kube.kubeconfig(tmp_path / "kubeconfig")
    sqlite3.connect(tmp_path / "airflow.db").close()
    (tmp_path / "db-url").write_text(f"sqlite:///{tmp_path / 'airflow.db'}")
    cfg = tmp_path / "heal.yaml"
    cfg.write_text(yaml.safe_dump({
        "kubernetes": {"namespace": "airflow", "kubeconfig": str(tmp_path / "kubeconfig"), "timeout": "3s"},
        "airflow": {"release": "af", "sql_alchemy_conn_file": str(tmp_path / "db-url")}}))
    kube.hang.set()
    try:
        out = subprocess.run([python, "-m", "monitor.cli", "heal", "check", "--json", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    finally:
        kube.hang.clear()
    assert out.returncode == 3, out.stdout + out.stderr
    blind = json.loads(out.stdout)["blind"]
    assert "cannot list pods in airflow" in blind and "timed out" in blind.lower(), blind
    assert "Retrying" not in out.stderr


def test_the_event_cache_lists_then_watches_and_relists_on_410(kube, tmp_path):
    """Warning Events kept as an informer keeps them: one list, then a watch that applies each change (a
    new Event, a repeat, a deletion); when the server's change log no longer reaches the cache's version
    (410 in the watch), a fresh list."""
    from monitor.kube.client import Kube
    from monitor.kube.events import EventWatch
    from monitor.kube.models import Pod

    c = kube.cluster
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w-1", "namespace": "airflow", "uid": "u-1",
                                                            "labels": {"release": "af", "component": "worker"}},
           "spec": {"containers": [{"name": "base", "image": "x"}]}, "status": {"phase": "Pending"}}
    c.put("Pod", pod)
    c.event("airflow", pod, "FailedMount", 'MountVolume.SetUp failed for volume "a" : secret "s" not found', "Warning")
    w = EventWatch(Kube(api(kube, tmp_path), "airflow", "af"), watch_seconds=1).start()  # reconnects every second
    me = [Pod(name="w-1", component="worker", uid="u-1")]

    def until(pred, what):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.1)
        raise TimeoutError(what)

    until(lambda: w.fresh and len(w.events(me)) == 1, "the first list")
    c.event("airflow", pod, "FailedMount", 'MountVolume.SetUp failed for volume "a" : secret "s" not found', "Warning")
    until(lambda: w.events(me) and w.events(me)[0].count == 2, "the repeat, through the watch")
    c.scheduler_event("airflow", pod, "FailedScheduling", "0/6 nodes are available: 6 Insufficient cpu.")
    until(lambda: len(w.events(me)) == 2, "kube-scheduler's Event, through the watch")
    assert w.relists == 1
    with c.cond:  # the server's change log moves past the cache's version while its watch is away
        for i in range(6000):
            c._bump("ConfigMap", "MODIFIED", {"metadata": {"name": f"x{i}", "namespace": "airflow"}})
    until(lambda: w.relists >= 2, "a fresh list after the 410 of a watch from a version the log no longer has")
    name = next(e["metadata"]["name"] for e in c.items("Event", "airflow") if e["reason"] == "FailedMount")
    c.remove("Event", "airflow", name)
    until(lambda: len(w.events(me)) == 1, "the deletion, through the watch")
    w.stop()


def test_a_paused_deployment_is_refused_for_a_rollout_restart(kube, tmp_path):
    from monitor.kube.client import Kube

    kube.cluster.deployment("airflow", "af-scheduler", {"release": "af", "component": "scheduler"},
                            {"name": "scheduler", "image": "apache/airflow:3.3.2",
                             "command": [sys.executable, "-c", "import time; time.sleep(600)"]})
    k = Kube(api(kube, tmp_path), "airflow", "af")
    deadline = time.monotonic() + 30
    while not (pods := k.pods()) and time.monotonic() < deadline:
        time.sleep(0.2)
    dep = kube.cluster.get("Deployment", "airflow", "af-scheduler")
    dep["spec"]["paused"] = True
    kube.cluster.modified("Deployment", dep)
    w = k.workload(pods[0])
    assert w.kind == "Deployment" and "is paused (spec.paused)" in w.why_not
