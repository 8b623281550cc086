"""The healer's Kubernetes side against the local API server, without Airflow: the Lease's election
rules, a pod delete's uid precondition, a rollout restart, the server's refusals of bodies the real
API server refuses, and kubectl reading what the healer wrote."""

from __future__ import annotations

import subprocess
import sys
import time

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
    time.sleep(2.5)  # a stops renewing (as after kill -9): b takes over once the lease has run out
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
    with pytest.raises(KubeError, match="HTTP 409: Precondition failed"):
        k.delete_pod(pod.name, "not-its-uid")
    assert k.rollout_restart(pod.name) == "Deployment/af-scheduler"
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
        assert kube.cluster.get("Lease", "airflow", "airflow-monitor")["spec"]["holderIdentity"]
    finally:
        b.stop()
    assert kube.cluster.get("Lease", "airflow", "airflow-monitor")["spec"]["holderIdentity"] == "", \
        "a clean stop hands the Lease over"
