"""What the healer reads from what a real cluster sends: the objects of tests/fixtures/kubernetes (a v1.31
cluster running the official Airflow chart) through monitor.kube.client's readers, the pairing of
scheduler jobs with pods, the sanitising of cluster text, the state kept in a ConfigMap, the watchdog."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.heal.pairing import Job, pair
from monitor.heal.rules import Observation, Settings, diagnose, needs_events
from monitor.kube.client import to_event, to_pod
from monitor.kube.models import Pod, cluster_text
from monitor.probe.rules import Verdict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kubernetes"  # its README says what each shows


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_a_statefulset_scheduler_and_its_recreation_are_two_pods_with_one_name():
    old, new = to_pod(fixture("pod-scheduler-statefulset-running.json")), \
        to_pod(fixture("pod-scheduler-statefulset-recreated.json"))
    assert old.name == new.name == "airflow-scheduler-0" and old.uid != new.uid
    assert old.owner_kind == "StatefulSet" and old.hostname == "airflow-scheduler-0"
    assert old.subdomain == "airflow-scheduler" and old.ips == ("10.244.3.17",)
    init = [c for c in old.containers if c.kind == "init"]
    assert [c.name for c in init] == ["wait-for-airflow-migrations"] and init[0].last_reason == "Completed"
    assert old.ready and old.phase == "Running"


def test_an_init_container_that_cannot_pull_is_what_kubectl_calls_init_imagepullbackoff():
    p = to_pod(fixture("pod-worker-init-imagepullbackoff.json"))
    (init,) = [c for c in p.containers if c.kind == "init"]
    assert init.shown == "Init:ImagePullBackOff" and p.phase == "Pending"
    now = p.created + timedelta(minutes=10)
    obs = Observation(now=now, pods=(p,), queued=3, schedulers={})
    (d,) = diagnose(obs, Settings(components=()))
    assert d.rule == "queue_blocked" and "Init:ImagePullBackOff: Back-off pulling image" in d.reason


def test_an_evicted_pod_is_not_counted_for_readiness_and_a_crash_loop_is_named():
    ev = to_pod(fixture("pod-evicted.json"))
    assert ev.finished and ev.reason == "Evicted" and "low on resource: memory" in ev.message
    crash = to_pod(fixture("pod-scheduler-deployment-crashloop.json"))
    (c,) = [c for c in crash.containers if c.kind == "main"]
    assert c.waiting_reason == "CrashLoopBackOff" and c.restarts == 5 and crash.phase == "Running"
    assert crash.owner_kind == "ReplicaSet"
    oom = to_pod(fixture("pod-oomkilled.json"))
    assert any(c.last_reason == "OOMKilled" and c.memory_limit == "1Gi" for c in oom.containers)


def test_kube_schedulers_events_keep_their_repeats_in_series():
    (e,) = [to_event(i) for i in fixture("events-k8s-io-failedscheduling.json")["items"]]
    assert e.count == 7 and e.last == datetime(2025, 3, 14, 2, 35, 47, 118406, tzinfo=UTC)
    assert e.object_uid == "2c4e6a8c-0e1f-4b3d-9f5a-7b9d1f3a5c64" and e.type == "Warning"
    mount = to_event(fixture("event-core-failedmount.json"))
    assert mount.count == 9 and mount.last == datetime(2025, 3, 14, 2, 13, 30, tzinfo=UTC)
    attach = to_event(fixture("event-core-failedattachvolume-multiattach.json"))
    assert attach.reason == "FailedAttachVolume" and attach.object_uid.startswith("d41f7a2c")


def test_events_of_a_recreated_pod_are_not_its_predecessors():
    """Multi-Attach on the recreated airflow-scheduler-0: matched by uid, it belongs to the new pod only."""
    old, new = to_pod(fixture("pod-scheduler-statefulset-running.json")), \
        to_pod(fixture("pod-scheduler-statefulset-recreated.json"))
    attach = to_event(fixture("event-core-failedattachvolume-multiattach.json"))
    obs = Observation(now=datetime.now(UTC), pods=(old, new), events=(attach,))
    assert obs.events_about(new) == (attach,) and obs.events_about(old) == ()


def pod(name: str, ips=(), hostname="", node="", host_network=False) -> Pod:
    return Pod(name=name, component="scheduler", ips=tuple(ips), hostname=hostname, node=node,
               host_network=host_network, uid=f"uid-{name}")


NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("hostname, pods, paired", [
    ("airflow-scheduler-0", [pod("airflow-scheduler-0")], "airflow-scheduler-0"),  # socket.getfqdn's default
    ("airflow-scheduler-0.airflow-scheduler.airflow.svc.cluster.local",
     [pod("airflow-scheduler-0", hostname="airflow-scheduler-0")], "airflow-scheduler-0"),  # a StatefulSet's FQDN
    ("10.244.3.17", [pod("airflow-scheduler-0", ips=["10.244.3.17"])], "airflow-scheduler-0"),  # get_host_ip_address
    ("fd00::3:17", [pod("s-0", ips=["10.244.3.17", "fd00::3:17"])], "s-0"),  # any of podIPs
    ("k8s-worker-03", [pod("s-0", node="k8s-worker-03", host_network=True)], "s-0"),  # hostNetwork: the node
    ("k8s-worker-03", [pod("s-0", node="k8s-worker-03")], None),  # not on the host's network: not the node's
    ("k8s-worker-03", [pod("s-0", node="k8s-worker-03", host_network=True),
                       pod("s-1", node="k8s-worker-03", host_network=True)], None),  # two on one node: no guess
    ("a" * 63, [pod("a" * 70)], "a" * 70),  # a name over 63 characters, cut by the kernel (Airflow 36326)
    ("10.244.9.9", [pod("s-0", ips=["10.244.3.17"])], None),
])
def test_jobs_pair_with_pods_by_name_fqdn_ip_or_node_and_never_by_guess(hostname, pods, paired):
    got, loose = pair([Job(1, hostname, NOW)], pods)
    assert (next(iter(got), None)) == paired
    assert (loose == []) == (paired is not None)


HEALTHY = Verdict("healthy", "all", "fine")
UNPAIRED = Verdict("unhealthy", "heartbeat", "no running scheduler job pairs with pod s-0", {"unpaired": True})


def test_a_pod_no_live_job_pairs_with_is_misconfigured_and_never_restarted():
    p = Pod(name="s-0", component="scheduler", created=NOW - timedelta(hours=1), ips=("10.0.0.1",),
            containers=())
    obs = Observation(now=NOW, pods=(p,), schedulers={"s-0": UNPAIRED}, unpaired_jobs=("10.42.3.17",), queued=0)
    (d,) = diagnose(obs, Settings(components=()))
    assert d.rule == "misconfigured" and not d.restartable
    assert "cannot pair scheduler jobs (hostnames 10.42.3.17) with pods (s-0 (10.0.0.1))" in d.reason
    assert "get_host_ip_address" in d.reason
    # no live job elsewhere: the pod's scheduler has no job at all, a restart is the remedy
    lone = Observation(now=NOW, pods=(p,), schedulers={"s-0": UNPAIRED}, queued=0)
    assert [(x.rule, x.restartable) for x in diagnose(lone, Settings(components=()))] == [("stuck_scheduler", True)]


@pytest.mark.parametrize("text, want", [
    ("line one\nERROR forged: line two", "line one ERROR forged: line two"),
    ("<!channel> the node is gone", "‹!channel› the node is gone"),
    ("see <https://evil.example|here>", "see ‹https[:]//evil.example|here›"),
    ("@here and @channel", "@\u2060here and @\u2060channel"),
    ("x" * 1000, "x" * 397 + "..."),
    ("a\x1b[31mred\x00", "a [31mred"),
    ("[click](javascript:alert(1))", "[click] (javascript[:]alert(1))"),
    ("\uff20here \uff1c!channel\uff1e", "@\u2060here ‹!channel›"),  # fullwidth lookalikes fold first
])
def test_cluster_text_is_data(text, want):
    assert cluster_text(text) == want


def test_a_hostile_event_message_reaches_no_page_or_event_as_markup():
    e = to_event({"involvedObject": {"kind": "Pod", "name": "w", "uid": "u"}, "reason": "FailedMount",
                  "type": "Warning", "count": 1,
                  "message": "MountVolume failed\n2026-12-05 ERROR healer: forged <!channel> <http://x|click>"})
    assert "\n" not in e.message and "<" not in e.message and "://" not in e.message


def test_only_pods_a_rule_would_explain_need_the_event_list():
    young = Pod(name="w1", component="worker", phase="Pending", created=NOW - timedelta(seconds=10))
    old = Pod(name="w2", component="worker", phase="Pending", created=NOW - timedelta(minutes=10))
    told = Pod(name="w3", component="worker", phase="Pending", created=NOW - timedelta(minutes=10),
               unschedulable="0/6 nodes are available")
    running = Pod(name="s", component="scheduler", created=NOW - timedelta(hours=1))
    obs = Observation(now=NOW, pods=(young, old, told, running))
    assert [p.name for p in needs_events(obs, Settings())] == ["w2"]


def test_the_state_document_is_written_with_compare_and_swap_and_read_by_another_replica():
    from monitor.alerting.docstore import MemoryDoc
    from monitor.alerting.notice import Notice
    from monitor.heal.state import HealState

    backend = MemoryDoc()
    a, b = HealState(backend, "m"), HealState(backend, "m")
    n = Notice(alias="x", subject="scheduler", rule="healing_exhausted", message="m", priority="P1")
    assert a.open(n, ["opsgenie"]) and not a.open(n, ["opsgenie"])
    b.record("scheduler", "s-0", "stuck_scheduler", "evict pod s-0", "stuck", 100.0, uid="u1", before=("u1", "u2"))
    assert a.record("scheduler", "s-0", "stuck_scheduler", "evict pod s-0", "stuck", 100.0) == 2  # a conflict, retried
    b.refresh()
    assert set(b.alerts("open")) == {("scheduler", "healing_exhausted")} and len(b.actions()) == 2
    assert b.actions()[0].before == "u1,u2"
    (item,) = b.pending("opsgenie", now=float("inf"))
    b.delivered(item.id)
    a.refresh()
    assert a.backlog() == {}
    ro = HealState(backend, "m", read_only=True)
    from monitor.errors import StoreError

    with pytest.raises(StoreError, match="read-only"):
        ro.record("scheduler", "s-0", "r", "w", "r", 1.0)


def test_a_cycle_that_stops_completing_stops_the_lease_and_fails_health():
    from monitor.worker import STALLED_MIN, Schedule

    release = threading.Event()

    class Worker:
        class cfg:
            interval = 1.0

        state = None

        def cycle(self):
            release.wait(30)

        def deliver(self):
            pass

    s = Schedule(Worker(), "heal")
    assert s.stalled() == ""
    import time as _time

    s._created = s._done = _time.monotonic() - STALLED_MIN - 1  # as if the last cycle ended long ago
    t = threading.Thread(target=s._cycle, daemon=True)
    t.start()
    _time.sleep(0.1)
    assert "no cycle completed for" in s.stalled() and "the current one started" in s.stalled()
    release.set()
    t.join(5)
    assert s.stalled() == ""


def test_a_pod_held_by_scheduling_gates_is_named_as_such():
    gated = to_pod({"metadata": {"name": "w", "uid": "u", "labels": {"component": "worker"},
                                 "creationTimestamp": "2026-12-05T11:00:00Z"},
                    "spec": {"schedulingGates": [{"name": "example.com/quota"}], "containers": [{"name": "base"}]},
                    "status": {"phase": "Pending", "conditions": [
                        {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated",
                         "message": "Scheduling is blocked due to non-empty scheduling gates"}]}})
    assert gated.gated
    obs = Observation(now=NOW, pods=(gated,), queued=2)
    (d,) = diagnose(obs, Settings(components=()))
    assert d.rule == "queue_blocked" and "SchedulingGated: its scheduling gates were never removed" in d.reason


def test_a_restart_whose_pod_stays_terminating_says_its_successor_cannot_start(monkeypatch):
    """A StatefulSet keeps one pod per ordinal: while the evicted af-scheduler-0 is stuck Terminating (its
    node gone), no successor starts, and the failed check says so instead of "the queue did not move"."""
    from monitor.alerting.alerts import Alerts
    from monitor.alerting.docstore import MemoryDoc
    from monitor.heal.config import parse
    from monitor.heal.healer import Healer
    from monitor.heal.observe import DbView
    from monitor.heal.state import ActionRow, HealState

    monkeypatch.setenv("AIRFLOW_MONITOR_SQL_ALCHEMY_CONN", "postgresql://u:p@db/airflow")
    cfg = parse({"kubernetes": {"namespace": "airflow"}, "airflow": {"release": "af"}})
    h = Healer(cfg, kube=None, alerts=Alerts(HealState(MemoryDoc(), "m"), []))
    h.db_view = DbView(queued=3)
    old = Pod(name="af-scheduler-0", component="scheduler", uid="u-old", deleting=True,
              deleted_at=NOW - timedelta(minutes=6))
    act = ActionRow(1, "scheduler", "af-scheduler-0", "stuck_scheduler", "evict pod af-scheduler-0", "stuck",
                    NOW.timestamp() - 400, NOW.timestamp() - 100, "pending", "", None, uid="u-old", before="u-old")
    why, why_not = h._healed(Observation(now=NOW, pods=(old,)), act, final=True)
    assert why == "" and "stuck Terminating since" in why_not and "one pod per ordinal" in why_not
    # the successor, same name and a new uid, healthy, and the queue moving: healed
    new = Pod(name="af-scheduler-0", component="scheduler", uid="u-new", created=NOW)
    h.db_view = DbView(running=2)
    why, _ = h._healed(Observation(now=NOW, pods=(new,), schedulers={"af-scheduler-0": HEALTHY}), act, final=False)
    assert why.startswith("2 task(s) running; new scheduler pod af-scheduler-0 (uid u-new")


def test_heal_check_says_its_mistakes_in_json_when_asked(tmp_path):
    import subprocess
    import sys

    (tmp_path / "heal.yaml").write_text("healer: {mode: fix}\nairflow: {release: af}\nkubernetes: {namespace: a}\n")
    out = subprocess.run([sys.executable, "-m", "monitor.cli", "heal", "check", "--json", "--config",
                          str(tmp_path / "heal.yaml")], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "AIRFLOW_MONITOR_SQL_ALCHEMY_CONN": "postgresql://u:SeCrEt@db/a"},
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 2, out.stdout + out.stderr
    err = json.loads(out.stdout)
    assert err["exit"] == 2 and "healer.mode: one of observe, act, not 'fix'" in err["error"]
    assert "SeCrEt" not in out.stdout + out.stderr
