"""Do no harm, cycle by cycle: the healer over a Kubernetes API that refuses, breaks off or is slow, pages
that flap, a state that cannot be read, clocks that disagree. The healer's own cycle runs for real; the
Kubernetes API is a stand-in object answering as the API server does (its errors are KubeErrors made
from the Status objects in tests/fixtures/kubernetes) and the database view is given."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path

import pytest

from monitor.alerting.alerts import Alerts
from monitor.alerting.docstore import MemoryDoc
from monitor.heal import healer as healer_mod
from monitor.heal.config import parse
from monitor.heal.healer import Healer
from monitor.heal.observe import DbView, HeartbeatWatch, watched
from monitor.heal.pairing import Job
from monitor.heal.state import HealState
from monitor.kube.client import ClusterClock, Kube, KubeError
from monitor.kube.models import Container, Pod
from monitor.probe.rules import Thresholds, Verdict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kubernetes"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
STUCK = Verdict("unhealthy", "stuck_queue", "3 task(s) queued over 5m, none running, none finished in 5m")
HEALTHY = Verdict("healthy", "all", "ok")


def status_error(name: str, what: str = "cannot evict pod af-scheduler-0") -> KubeError:
    """The KubeError monitor.kube.client.api_error makes of a Status the API server sent."""
    st = json.loads((FIXTURES / name).read_text())
    d = st.get("details") or {}
    return KubeError(f"{what}: HTTP {st['code']}: {st['message']}", st["code"], st["reason"],
                     tuple(c["message"] for c in d.get("causes") or []), d.get("retryAfterSeconds"))


class Notifier:
    name = "opsgenie"

    def __init__(self):
        self.sent: list[tuple[str, str, str]] = []

    def send(self, action, notice):
        self.sent.append((action, notice.rule, notice.subject))
        return ""

    def opened(self, rule=None):
        return [s for s in self.sent if s[0] == "open" and (rule is None or s[1] == rule)]


class FakeKube:
    """Pods as listed; evict() answers with the next of `answers` (None: accepted, the pod then replaced)."""

    def __init__(self, pods):
        self.pod_list = list(pods)
        self.answers: list = []
        self.evictions: list[str] = []
        self.events_written: list[tuple[str, str]] = []
        self.clock = ClusterClock()
        self.replaced_on_error = False

    def pods(self):
        return list(self.pod_list)

    def events(self, pods):
        return []

    def pod(self, name):
        p = next((p for p in self.pod_list if p.name == name), None)
        return None if p is None else {"metadata": {"name": p.name, "uid": p.uid,
                                                    **({"deletionTimestamp": "x"} if p.deleting else {})}}

    def evict(self, name, uid):
        self.evictions.append(name)
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None and not self.replaced_on_error:
            raise answer
        self.pod_list = [Pod(name=p.name, component=p.component, uid=p.uid, deleting=True) if p.name == name else p
                         for p in self.pod_list]
        if answer is not None:
            raise answer

    def event(self, pod, reason, message, action, warning=True):
        self.events_written.append((pod.name, reason))


def sched(name="af-scheduler-0", uid="u0", age=3600, **kw) -> Pod:
    return Pod(name=name, component="scheduler", uid=uid, created=NOW - timedelta(seconds=age), **kw)


def make(monkeypatch, pods, view: DbView, mode="act", **over) -> tuple[Healer, FakeKube, Notifier]:
    monkeypatch.setenv("AIRFLOW_MONITOR_SQL_ALCHEMY_CONN", "postgresql://u:p@db/airflow")
    doc = {"kubernetes": {"namespace": "airflow"}, "airflow": {"release": "af"},
           "healer": {"mode": mode, "components": ["scheduler"], **over.pop("healer", {})},
           "budget": {"cooldown": "0s", **over.pop("budget", {})}, **over}
    cfg = parse(doc)
    kube = FakeKube(pods)
    og = Notifier()
    h = Healer(cfg, kube, Alerts(HealState(MemoryDoc(), "m"), [og]))
    monkeypatch.setattr(healer_mod, "read_db", lambda *a, **k: view)
    return h, kube, og


def cycle(h: Healer, at: float) -> list:
    out = h.cycle(now=NOW + timedelta(seconds=at))
    h.deliver()
    return out


def stuck_view(pod="af-scheduler-0") -> DbView:
    return DbView(schedulers={pod: STUCK}, jobs={pod: Job(1, pod, NOW)}, queued=3)


# ---------------------------------------------------------------------- restarts the API server did not take
def test_one_transient_eviction_error_is_tried_again_and_costs_nothing(monkeypatch):
    h, kube, og = make(monkeypatch, [sched()], stuck_view())
    kube.answers = [KubeError("cannot evict pod af-scheduler-0: HTTP 503: etcdserver: request timed out", 503)]
    cycle(h, 0)
    assert kube.evictions == ["af-scheduler-0"] and og.opened() == []
    assert [a.outcome for a in h.state.actions()] == ["refused"]
    cycle(h, 30)  # tried again: accepted, a restart to verify
    assert kube.evictions == ["af-scheduler-0"] * 2
    assert [a.outcome for a in h.state.actions()] == ["refused", "pending"]
    assert og.opened("healing_exhausted") == []


@pytest.mark.parametrize("error, says", [
    (status_error("status-429-eviction-pdb.json"), "blocked by PodDisruptionBudget airflow-scheduler-pdb"),
    (KubeError("cannot evict pod af-scheduler-0: HTTP 500: This pod has more than one PodDisruptionBudget, which the "
               "eviction subresource does not support.", 500, "InternalError"), "more than one PodDisruptionBudget"),
    (KubeError("cannot evict pod af-scheduler-0: HTTP 403: pods \"af-scheduler-0\" is forbidden: "
               "ValidatingAdmissionPolicy 'x' denied request", 403, "Forbidden"), "refused by the API server (403"),
])
def test_a_refusal_only_a_person_can_lift_is_paged_once_and_costs_no_budget(monkeypatch, error, says):
    h, kube, og = make(monkeypatch, [sched()], stuck_view(), budget={"cooldown": "5m"})
    kube.answers = [error, error, error]
    for t in (0, 30, 60):
        cycle(h, t)
    assert kube.evictions == ["af-scheduler-0"], "asked again only after the cooldown, not every cycle"
    assert h.actions[("stuck_scheduler", "blocked")] == 1
    cycle(h, 301)  # the cooldown is over: asked again (a budget may allow it now), still one page
    assert kube.evictions == ["af-scheduler-0"] * 2 and h.actions[("stuck_scheduler", "blocked")] == 1
    assert [o[1] for o in og.opened()] == ["healing_blocked"]
    assert says in h.alerts.open_alerts()[("scheduler", "healing_blocked")].message
    assert {a.outcome for a in h.state.actions()} == {"blocked"} and len(h.state.actions()) == 1
    assert og.opened("healing_exhausted") == []


def test_a_busy_api_server_is_paged_after_three_refusals_in_a_row(monkeypatch):
    apf = KubeError("cannot evict pod af-scheduler-0: HTTP 429: Too many requests, please try again later.", 429,
                    "TooManyRequests", (), 1)
    h, kube, og = make(monkeypatch, [sched()], stuck_view())
    kube.answers = [apf, apf, apf]
    cycle(h, 0)
    cycle(h, 30)
    assert og.opened() == []
    cycle(h, 60)
    (page,) = og.opened()
    assert page[1] == "healing_blocked"
    assert "refused 3 restarts in a row" in h.alerts.open_alerts()[("scheduler", "healing_blocked")].message
    assert "PodDisruptionBudget" not in h.alerts.open_alerts()[("scheduler", "healing_blocked")].message


def test_an_error_after_which_the_pod_was_replaced_all_the_same_is_a_restart(monkeypatch):
    h, kube, og = make(monkeypatch, [sched()], stuck_view())
    kube.replaced_on_error = True
    kube.answers = [KubeError("cannot evict pod af-scheduler-0: ReadTimeoutError: read timed out")]
    cycle(h, 0)
    assert [a.outcome for a in h.state.actions()] == ["pending"]


# ---------------------------------------------------------------------- never a restart on a guess
def test_a_live_job_that_pairs_with_no_pod_stops_every_scheduler_restart(monkeypatch):
    a, b = sched("af-scheduler-a", "ua"), sched("af-scheduler-b", "ub")
    view = DbView(schedulers={"af-scheduler-a": STUCK, "af-scheduler-b": Verdict(
        "unhealthy", "heartbeat", "no running scheduler job pairs with pod af-scheduler-b", {"unpaired": True})},
        jobs={"af-scheduler-a": Job(1, "af-scheduler-a", NOW)}, unpaired_jobs=("10.0.0.9",), queued=3)
    h, kube, og = make(monkeypatch, [a, b], view)
    ds = cycle(h, 0)
    assert kube.evictions == []
    assert {d.rule for d in ds} == {"misconfigured", "stuck_scheduler"}
    assert not any(d.restartable for d in ds)


def test_a_scheduler_the_kubelet_just_restarted_is_not_judged(monkeypatch):
    restarted = sched(containers=(Container("scheduler", started=NOW - timedelta(seconds=8), restarts=1,
                                            last_reason="OOMKilled"),))
    h, kube, og = make(monkeypatch, [restarted], stuck_view())
    ds = cycle(h, 0)
    assert kube.evictions == [] and not [d for d in ds if d.rule == "stuck_scheduler"]


def test_no_pod_of_the_release_at_all_is_a_mistake_not_health(monkeypatch):
    h, kube, og = make(monkeypatch, [], DbView())
    (d,) = h.cycle(now=NOW, apply=False)
    assert d.rule == "misconfigured" and "check airflow.release and kubernetes.namespace" in d.reason


# ---------------------------------------------------------------------- heartbeats on another clock
def test_a_heartbeat_is_stale_only_once_watched_standing_still_for_the_threshold():
    th = Thresholds(heartbeat=30)
    stale = Verdict("unhealthy", "heartbeat", "last heartbeat 41s ago")
    watch = HeartbeatWatch()

    def look(hb: datetime, mono: float) -> Verdict:
        view = DbView(schedulers={"s": stale}, jobs={"s": Job(7, "s", hb)})
        watched(view, watch, mono, th)
        return view.schedulers["s"]

    # a live scheduler whose clock is 40 s behind: its heartbeat moves, so it is alive
    assert look(NOW, 0).status == "unknown"  # the first look judges nothing
    v = look(NOW + timedelta(seconds=5), 5)
    assert v.status == "healthy" and "clock is behind" in v.reason
    # a frozen one: stale once watched standing still for the whole threshold
    assert look(NOW + timedelta(seconds=5), 20).status == "healthy"
    assert look(NOW + timedelta(seconds=5), 36).status == "unhealthy"


# ---------------------------------------------------------------------- pages that flap
def test_a_crash_loop_that_runs_a_moment_between_back_offs_is_paged_once(monkeypatch):
    looping = sched(name="af-triggerer-0", containers=(Container("triggerer", ready=False, restarts=9,
                                                                waiting_reason="CrashLoopBackOff"),))
    running = sched(name="af-triggerer-0", containers=(Container("triggerer", restarts=10),))
    looping = Pod(**{**looping.__dict__, "component": "triggerer"})
    running = Pod(**{**running.__dict__, "component": "triggerer"})
    h, kube, og = make(monkeypatch, [looping], DbView(), mode="observe",
                       healer={"resolve_after": "10m", "components": ["triggerer"]})
    for i in range(12):  # back-off 40 s, then 5 s running, for 9 minutes
        kube.pod_list = [running if i % 2 else looping]
        cycle(h, i * 45)
    assert [o[1] for o in og.opened()] == ["crash_loop"]
    assert not [s for s in og.sent if s[0] == "close"]
    kube.pod_list = [running]
    cycle(h, 12 * 45)
    cycle(h, 12 * 45 + 601)  # healthy for resolve_after: closed
    assert [s[:2] for s in og.sent if s[0] == "close"] == [("close", "crash_loop")]


# ---------------------------------------------------------------------- a state that cannot be read
@pytest.mark.parametrize("doc", ["not json", {"alerts": [1, 2]}, {"actions": [{"id": 1}]}])
def test_a_corrupt_state_restarts_nothing_and_says_so_once(monkeypatch, doc):
    h, kube, og = make(monkeypatch, [sched()], stuck_view(), healer={"blind_after": 2})

    class Broken(MemoryDoc):
        def read(self):
            if doc == "not json":
                from monitor.errors import StoreError

                raise StoreError("ConfigMap s: state.json is not JSON (edited by hand?); fix or delete it")
            return doc, "7"

    h.state.backend = Broken()
    for t in (0, 30, 60):
        cycle(h, t)
    assert kube.evictions == []
    assert [o[1] for o in og.opened()] == ["state"]
    from monitor.heal import command

    assert command.rows(h)["scheduler_restarts_left"] is None and command.verdict(h, True) == "blind"
    from monitor.heal.exposition import HealCollector

    series = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for fam in HealCollector(h).collect() for s in fam.samples}
    assert series[("airflow_monitor_heal_blind", ())] == 1 and series[("airflow_monitor_heal_state_broken", ())] == 1
    assert not [k for k in series if k[0] == "airflow_monitor_heal_budget_remaining"], "unknown, not full"


# ---------------------------------------------------------------------- the API server's clock
def test_the_cluster_clock_is_the_api_servers_date():
    c = ClusterClock()
    skew = 360.0  # this node is 6 minutes behind the API server
    for _ in range(5):
        t = time.time()
        c.saw(formatdate(t + skew, usegmt=True), t - 0.01, t + 0.01)
    assert abs(c.time() - (time.time() + skew)) < 1.5
    c.saw("garbage", 0, 0)
    assert abs(c.offset - skew) < 1.5


# ---------------------------------------------------------------------- answers that trickle or break off
class Trickle:
    """An HTTP server that answers a pod list slowly (a byte every `every` seconds), or cuts it short."""

    def __init__(self, every: float = 0.2, cut: bool = False):
        self.every, self.cut = every, cut
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(c,), daemon=True).start()

    def _answer(self, c):
        try:
            c.recv(65536)
            self.requests += 1
            body = json.dumps({"kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": []}).encode()
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body) + 100}\r\n"
                    f"Date: {formatdate(usegmt=True)}\r\n\r\n").encode()
            c.sendall(head)
            if self.cut:
                c.sendall(body[:10])
                c.close()
                return
            for b in body:
                c.sendall(bytes([b]))
                time.sleep(self.every)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


def kube_at(url: str, timeout: float) -> Kube:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = url
    cfg.retries = False
    return Kube(client.ApiClient(cfg), "airflow", "af", timeout=timeout)


def test_an_answer_that_trickles_ends_the_call_at_its_timeout():
    srv = Trickle(every=0.2)
    try:
        k = kube_at(srv.url, 1.0)
        t = time.monotonic()
        with pytest.raises(KubeError, match=r"no whole answer within 1s"):
            k.pods()
        assert time.monotonic() - t < 5  # each byte came well within the read timeout; the call did not
    finally:
        srv.close()


def test_an_answer_cut_short_is_read_again_once_then_a_one_line_error():
    srv = Trickle(cut=True)
    try:
        k = kube_at(srv.url, 2.0)
        with pytest.raises(KubeError) as e:
            k.pods()
        assert "cannot list pods in airflow" in str(e.value) and "\n" not in str(e.value)
        assert srv.requests == 2
    finally:
        srv.close()


# ---------------------------------------------------------------------- the Event cache stays small
def test_the_event_cache_keeps_the_newest_event_of_each_pod_and_reason_it_reads():
    from monitor.kube.events import EventWatch
    from monitor.kube.models import Pod as P

    w = EventWatch(kube=None, reasons=("FailedMount", "FailedScheduling"))

    def event(name, reason, minute, message="m"):
        return {"type": "ADDED", "object": {
            "metadata": {"name": name, "resourceVersion": str(minute)}, "reason": reason, "type": "Warning",
            "involvedObject": {"kind": "Pod", "name": "w-1", "uid": "u1"}, "message": message,
            "lastTimestamp": f"2026-12-05T12:{minute:02d}:00Z"}}

    for i, m in enumerate((5, 9, 7)):  # three volumes that fail, the kubelet writes three Events
        w._apply(event(f"w-1.{i}", "FailedMount", m, f"secret s{i} not found"))
    w._apply(event("w-1.x", "BackOff", 10))  # a reason no rule reads
    w._apply(event("w-1.s", "FailedScheduling", 3))
    pod = P(name="w-1", component="worker", uid="u1")
    got = sorted((e.reason, e.message) for e in w.events([pod]))
    assert got == [("FailedMount", "secret s1 not found"), ("FailedScheduling", "m")]
    w._apply({"type": "DELETED", "object": {"metadata": {"name": "w-1.1", "resourceVersion": "11"}}})
    assert [e.reason for e in w.events([pod])] == ["FailedScheduling"]
    long = "x" * 2000
    w._apply(event("w-1.9", "FailedMount", 12, long))
    (m,) = [e.message for e in w.events([pod]) if e.reason == "FailedMount"]
    assert len(m) == 256 and m.isascii()
