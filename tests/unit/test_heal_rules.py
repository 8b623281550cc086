"""Table tests of the healer's diagnosis rules, its budget and its config, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.heal import budget as b
from monitor.heal.rules import Observation, Settings, diagnose
from monitor.kube.models import Container, Event, Pod
from monitor.probe.rules import Verdict

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
S = Settings()
STUCK = Verdict("unhealthy", "stuck_queue", "3 task(s) queued over 300s (oldest 420s), none running, none finished "
                "in the last 300s")
HEALTHY = Verdict("healthy", "all", "fine")


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def pod(name, component="scheduler", age=3600, **kw) -> Pod:
    kw.setdefault("containers", (Container(name=component),))
    return Pod(name=name, component=component, created=ago(age), **kw)


def base(**kw) -> dict:
    """A healthy release: one pod of each component."""
    pods = [pod("af-scheduler-1"), pod("af-api-1", "api-server"), pod("af-trig-1", "triggerer"),
            pod("af-dp-1", "dag-processor")]
    return {"now": NOW, "pods": tuple(pods), "schedulers": {"af-scheduler-1": HEALTHY}, "queued": 0, **kw}


def rules(obs: Observation, s: Settings = S) -> list[tuple[str, str, bool]]:
    return [(d.rule, d.subject, d.restartable) for d in diagnose(obs, s)]


def test_a_healthy_release_has_no_diagnosis():
    assert rules(Observation(**base())) == []


def test_stuck_scheduler_is_the_one_restartable_diagnosis():
    obs = Observation(**base(schedulers={"af-scheduler-1": STUCK}, queued=3))
    ds = diagnose(obs, S)
    assert [(d.rule, d.subject, d.restartable) for d in ds] == [("stuck_scheduler", "af-scheduler-1", True)]
    assert ds[0].reason.startswith("scheduler pod af-scheduler-1: 3 task(s) queued over 300s")


@pytest.mark.parametrize("why, change", [
    ("a scheduler still starting", {"pods": (pod("af-scheduler-1", age=30),)}),
    ("a pod being deleted", {"pods": (pod("af-scheduler-1", deleting=True),)}),
    ("a pod not running", {"pods": (pod("af-scheduler-1", phase="Pending"),)}),
    ("no verdict (the database was not read)", {"schedulers": {}}),
    ("an unknown verdict (an outage)", {"schedulers": {"af-scheduler-1": Verdict("unknown", "source", "down")}}),
])
def test_stuck_scheduler_is_not_diagnosed_for(why, change):
    b_ = base(schedulers={"af-scheduler-1": STUCK}, queued=3)
    b_.update(change)
    assert "stuck_scheduler" not in [r for r, _, _ in rules(Observation(**b_), Settings(components=()))], why


def worker(name, age=600, **kw) -> Pod:
    kw.setdefault("containers", ())
    return pod(name, "worker", age=age, phase=kw.pop("phase", "Pending"), ready=False, **kw)


UNSCHED = "0/6 nodes are available: 6 Insufficient cpu."


@pytest.mark.parametrize("workers, events, want", [
    ([worker(f"w{i}", unschedulable=UNSCHED) for i in range(12)], [],
     f"12 worker pods Pending for 10m: {UNSCHED}"),
    ([worker("w1")], [Event("w1", "FailedMount", 'MountVolume.SetUp failed for volume "conn" : secret "af-conn" not '
                            'found', ago(10))],
     'Pending for 10m: MountVolume.SetUp failed for volume "conn" : secret "af-conn" not found'),
    ([worker("w1", phase="Pending", containers=(Container("base", ready=False, waiting_reason="ImagePullBackOff",
                                                          waiting_message='Back-off pulling image "x:1"'),))], [],
     'ImagePullBackOff: Back-off pulling image "x:1"'),
    ([worker("w1", phase="Pending", containers=(Container("base", ready=False,
                                                          waiting_reason="CreateContainerConfigError",
                                                          waiting_message='secret "db" not found'),))], [],
     'CreateContainerConfigError: secret "db" not found'),
])
def test_a_queue_blocked_outside_the_scheduler_is_paged_and_never_restarted(workers, events, want):
    obs = Observation(**base(pods=(*base()["pods"], *workers), events=tuple(events),
                             schedulers={"af-scheduler-1": STUCK}, queued=12))
    ds = diagnose(obs, S)
    assert [(d.rule, d.restartable) for d in ds] == [("queue_blocked", False)], ds
    assert want in ds[0].reason and "12 task(s) queued" in ds[0].reason


def test_young_pending_workers_and_an_empty_queue_block_nothing():
    young = Observation(**base(pods=(*base()["pods"], worker("w1", age=30, unschedulable=UNSCHED)), queued=2))
    assert rules(young) == []
    empty = Observation(**base(pods=(*base()["pods"], worker("w1", unschedulable=UNSCHED)), queued=0))
    assert rules(empty) == []


def crashing(restarts, **kw):
    return pod("af-trig-1", "triggerer", containers=(Container("triggerer", ready=False, restarts=restarts, **kw),),
               ready=False)


def test_restart_storm_counts_restarts_within_the_window_from_history():
    p = crashing(7, last_reason="Error", last_exit_code=1)
    hist = {("af-trig-1", "triggerer"): ((ago(2000), 2), (ago(1000), 3), (ago(600), 5))}
    obs = Observation(**base(pods=(base()["pods"][0], base()["pods"][1], p, base()["pods"][3]), restart_history=hist,
                             events=(Event("af-trig-1", "Unhealthy", "Liveness probe failed: timeout", ago(5)),)))
    ds = [d for d in diagnose(obs, S) if d.rule == "restart_storm"]
    # the count 1000 s ago (3) is the last one before the window: 7 - 3 = 4 restarts in 15m
    assert ds and ds[0].reason == ("triggerer pod af-trig-1 restarted 4 times in 15m; last termination: Error, exit 1; "
                                   "last probe: Liveness probe failed: timeout")
    calm = Observation(**base(pods=(base()["pods"][0], base()["pods"][1], crashing(7), base()["pods"][3]),
                              restart_history={("af-trig-1", "triggerer"): ((ago(2000), 6),)}))
    assert "restart_storm" not in [r for r, _, _ in rules(calm)]


def test_a_new_pod_counts_its_restarts_from_zero_and_unknown_history_counts_nothing():
    young = pod("af-trig-1", "triggerer", age=300, containers=(Container("triggerer", restarts=3),))
    assert "restart_storm" in [r for r, _, _ in rules(Observation(**base(pods=(young,)), ),
                                                      Settings(components=()))]
    old = pod("af-trig-1", "triggerer", containers=(Container("triggerer", restarts=30),))
    assert rules(Observation(**base(pods=(old,))), Settings(components=())) == []


def test_oom_killed_names_the_memory_limit_and_crash_loop_the_last_exit():
    p = crashing(2, last_reason="OOMKilled", last_exit_code=137, last_finished=ago(120), memory_limit="512Mi",
                 waiting_reason="CrashLoopBackOff", waiting_message="back-off 40s restarting failed container")
    ds = {d.rule: d for d in diagnose(Observation(**base(pods=(p,))), Settings(components=()))}
    assert ds["oom_killed"].reason == ("triggerer pod af-trig-1 was OOMKilled 2m ago (memory limit 512Mi): raise "
                                       "its memory or lower its load")
    assert ds["crash_loop"].reason == ("triggerer pod af-trig-1 is in CrashLoopBackOff (last termination: OOMKilled, "
                                       "exit 137): back-off 40s restarting failed container")
    old = crashing(2, last_reason="OOMKilled", last_finished=ago(7200))
    assert "oom_killed" not in [r for r, _, _ in rules(Observation(**base(pods=(old,))), Settings(components=()))]


def test_a_component_without_a_ready_pod_after_the_grace():
    pods = tuple(p for p in base()["pods"] if p.component != "triggerer")
    fresh = Observation(**base(pods=pods, unready_since={"triggerer": ago(60)}))
    assert rules(fresh) == []
    late = Observation(**base(pods=pods, unready_since={"triggerer": ago(900)}))
    ds = diagnose(late, S)
    assert [(d.rule, d.subject) for d in ds] == [("no_ready_pod", "triggerer")]
    assert ds[0].reason == "triggerer: no pod at all for 15m"


def test_tasks_failed_by_task_queued_timeout():
    obs = Observation(**base(queued_timeouts=(("etl", "load"), ("etl", "load"), ("ml", "train"))))
    ds = diagnose(obs, S)
    assert ds[0].rule == "queued_timeout" and ds[0].reason == (
        "3 task(s) failed by [scheduler] task_queued_timeout in the last 60m (never ran): etl.load, ml.train")


# ---------------------------------------------------------------------------- budget
B = b.Budget(per_component=2, window=3600, global_max=3, cooldown=300)


@pytest.mark.parametrize("actions, want", [
    ([], (True, "", 2, False)),
    ([b.Action("scheduler", 1000)],
     (False, "cooldown: last restart of scheduler tried 100s ago (cooldown 300s)", 1, False)),
    ([b.Action("scheduler", 500)], (True, "", 1, False)),
    ([b.Action("scheduler", 200), b.Action("scheduler", 700)],
     (False, "budget spent: 2 restart(s) of scheduler in the last 60m (limit 2)", 0, True)),
    ([b.Action("triggerer", 100), b.Action("dag-processor", 200), b.Action("worker", 300)],
     (False, "global cap reached: 3 restart(s) in the last 60m (limit 3)", 2, True)),
    ([b.Action("scheduler", 1100 - 3600), b.Action("scheduler", 1100 - 3700)], (True, "", 2, False)),
])
def test_budget(actions, want):
    a = b.allowance(actions, "scheduler", 1100, B)
    assert (a.allowed, a.why, a.left, a.exhausted) == want


def test_after_a_failed_check_the_budget_retries_or_stops():
    failed = [b.Action("scheduler", 100, "failed")]
    assert b.allowance(failed, "scheduler", 1100, B).allowed
    stop = b.allowance(failed, "scheduler", 1100, b.Budget(per_component=2, after_failed_check="stop"))
    assert (stop.allowed, stop.exhausted) == (False, True)
    assert stop.why == "the last restart of scheduler did not heal it (after_failed_check: stop)"
    healed = [b.Action("scheduler", 100, "healed")]
    assert b.allowance(healed, "scheduler", 1100, b.Budget(per_component=2, after_failed_check="stop")).allowed


# ---------------------------------------------------------------------------- config
def test_config_errors_name_their_place(monkeypatch, tmp_path):
    from monitor.heal.config import HealConfigError, parse

    monkeypatch.setenv("AIRFLOW_MONITOR_SQL_ALCHEMY_CONN", "postgresql://u:p@db/airflow")
    ok = {"kubernetes": {"namespace": "airflow"}, "airflow": {"release": "af"}}
    cfg = parse(ok)
    assert (cfg.mode, cfg.restart, cfg.budget.per_component, cfg.budget.window, cfg.namespace) == (
        "observe", "evict", 2, 3600.0, "airflow")
    assert "p@db" not in repr(cfg)
    for bad, msg in [
        ({"healer": {"mode": "fix"}}, "healer.mode: one of observe, act, not 'fix'"),
        ({"budget": {"per_component": 0}}, "budget.per_component: must be at least 1"),
        ({"budget": {"window": "soon"}}, "budget.window:"),
        ({"thresholds": {"storm_restart": 3}}, "thresholds: unknown setting 'storm_restart'"),
        ({"airflow": {"release": ""}}, "airflow.release: the Helm release name"),
        ({"airflow": {"release": "af", "sql_alchemy_conn": "x"}}, "airflow.sql_alchemy_conn: secrets are not read"),
        ({"healer": {"components": ["scheduler", "webserver"]}}, "healer.components:"),
        ({"notify": {"opsgenie": {"region": "mars"}}}, "notify.opsgenie.region"),
        ({"lease": {"duration": "0s"}}, "lease.duration: must be more than 0"),
    ]:
        with pytest.raises(HealConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            parse({**ok, **bad})
    monkeypatch.delenv("AIRFLOW_MONITOR_SQL_ALCHEMY_CONN")
    with pytest.raises(HealConfigError, match="metadata database URL is required"):
        parse(ok)


def test_the_example_config_is_one_the_healer_takes(monkeypatch, tmp_path):
    from pathlib import Path

    from monitor.config import read_yaml
    from monitor.heal.config import parse

    doc = read_yaml(Path(__file__).resolve().parents[2] / "examples" / "heal.yaml", "example")
    monkeypatch.setenv("AIRFLOW_MONITOR_SQL_ALCHEMY_CONN", "postgresql://airflow:pw@airflow-pgbouncer:6543/airflow")
    key = tmp_path / "opsgenie-key"
    key.write_text("genie")
    doc["notify"]["opsgenie"]["api_key_file"] = str(key)
    cfg = parse(doc)
    assert (cfg.mode, cfg.restart, cfg.budget.per_component, cfg.lease_name) == (
        "observe", "evict", 2, "airflow-monitor-heal-airflow")
    assert cfg.settings.components == ("scheduler", "api-server", "triggerer", "dag-processor")
