"""A state file written by airflow-monitor 0.1.0 (tests/fixtures/state/, made with that version's code
before the alerting core moved) opens with today's code: its open alerts stay open, its queued
notices are delivered as they were decided, its dead letters and actions are still there."""

import shutil
from pathlib import Path

import pytest

from monitor.alerting.alerts import Alerts
from monitor.alerting.notice import Notice
from monitor.alerting.opsgenie import OpsGenieNotifier
from monitor.heal.state import HealState
from monitor.sla.state import SLAState
from testkit.servers.opsgenie import OpsGenieServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "state"


@pytest.fixture
def og():
    s = OpsGenieServer("genie-key")
    yield s
    s.close()


def test_an_sla_state_file_of_0_1_0_opens_and_its_outbox_is_delivered(tmp_path, og):
    path = tmp_path / "sla.sqlite"
    shutil.copy(FIXTURES / "sla-0.1.0.sqlite", path)
    st = SLAState(str(path))
    assert not st.broken
    assert set(st.alerts("open")) == {("etl_orders", "max_age"), ("reports", "max_age"), ("_watcher", "blind")}
    seen = st.first_seen(["etl_orders", "reports", "new_dag"], 1764990000.0)
    assert seen == {"etl_orders": 0.0, "reports": 0.0, "new_dag": 1764990000.0}  # 0: there at the first cycle
    (dead,) = st.dead_letters()
    assert dead[:4] == ("opsgenie", "open", "reports", "max_age") and "HTTP 422" in dead[4]
    alerts = Alerts(st, [OpsGenieNotifier(og.url, "genie-key")])
    for _ in range(5):
        alerts.delivery.drain(now=float("inf"))
    assert st.backlog() == {"webhook": 1}  # no webhook notifier any more: its notice waits, nothing is lost
    (page,) = og.pages
    assert page["alias"] == "airflow-sla:_watcher:blind" or page["alias"].startswith("airflow-sla:watcher-blind:")
    assert page["priority"] == "P2"
    # the alert opened by 0.1.0 is closed by today's code, by its alias
    closed = alerts.resolve(Notice(alias="airflow-sla:etl_orders:max_age", subject="etl_orders", rule="max_age",
                                   message="ok", note="resolved: ok"))
    assert closed
    for _ in range(5):
        alerts.delivery.drain(now=float("inf"))
    # (this OpsGenie never saw the 0.1.0 create, so it records the close as a request, not a closed alert)
    closes = [r for r in og.requests if r[1].startswith("/v2/alerts/airflow-sla%3Aetl_orders%3Amax_age/close")]
    assert len(closes) == 1 and st.backlog() == {"webhook": 1}


def test_a_healer_state_file_of_0_1_0_is_imported_once_into_the_cluster_state(tmp_path, monkeypatch):
    """The healer's state moved into the cluster (a ConfigMap): its 0.1.0 SQLite file is brought over
    once, into an empty state: the open alert (so no second page), the undelivered notice, the actions."""
    import time

    from monitor.alerting.docstore import MemoryDoc
    from monitor.heal.state import import_file

    path = tmp_path / "heal.sqlite"
    shutil.copy(FIXTURES / "heal-0.1.0.sqlite", path)
    monkeypatch.setattr(time, "time", lambda: 1764900000.0 + 3600)  # the file's actions are recent
    backend = MemoryDoc()
    st = HealState(backend, "memory")
    assert import_file(str(path), st, ["opsgenie"])
    assert not import_file(str(path), st, ["opsgenie"]), "once: a state that has content is left alone"
    acts = st.actions()
    assert [(a.pod, a.outcome) for a in acts] == [("af-scheduler-0", "pending"), ("af-scheduler-1", "failed")]
    assert ("af-scheduler-0", "stuck_scheduler") in st.alerts("open")
    (item,) = st.pending("opsgenie", now=float("inf"))
    assert item.notice.titles["open"] == "Airflow unhealthy" and item.notice.service_check == "airflow.heal"
    assert item.notice.subject == "af-scheduler-0" and item.notice.dd_tags[0] == "subject:af-scheduler-0"
    again = HealState(backend, "memory")  # another replica reads the same document
    assert again.alerts("open") == st.alerts("open") and len(again.actions()) == 2
