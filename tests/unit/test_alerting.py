"""The alerting core every producer uses: alert state, the outbox, delivery and the notifiers, against
local servers implementing the documented OpsGenie, JSM, Datadog and webhook APIs."""

import json
import threading

import pytest

from monitor.alerting.datadog import DatadogNotifier
from monitor.alerting.delivery import Delivery
from monitor.alerting.notice import Notice
from monitor.alerting.opsgenie import OpsGenieNotifier
from monitor.alerting.store import AlertStore
from monitor.alerting.webhook import WebhookNotifier
from testkit.servers.datadog import DatadogServer
from testkit.servers.opsgenie import OpsGenieServer
from testkit.servers.webhook import WebhookServer


def notice(dag="sales", rule="fresh", **kw) -> Notice:
    return Notice(**{"alias": f"airflow-sla:{dag}:{rule}", "subject": dag, "rule": rule, "reason": "stale",
                     "message": "[SLA] " + "sales has not succeeded within 4h " * 6, "description": "d",
                     "priority": "P1", "responders": (("team", "name", "sales"),), "tags": ("airflow-sla",),
                     "entity": dag, "runbook": "https://wiki/x", "details": {"dag_id": dag, "n": 3}, **kw})


@pytest.fixture
def og():
    s = OpsGenieServer("genie-key")
    yield s
    s.close()


def drain_all(delivery, state, rounds=10):
    for _ in range(rounds):
        delivery.drain(now=float("inf"))
        if not state.backlog():
            return


def test_open_once_across_restarts_then_close(tmp_path, og):
    path = str(tmp_path / "state.sqlite")
    st = AlertStore(path)
    assert st.open(notice(), ["opsgenie"])
    assert not st.open(notice(), ["opsgenie"])
    st.close()
    st = AlertStore(path)  # a restart
    assert not st.open(notice(), ["opsgenie"])
    d = Delivery(st, [OpsGenieNotifier(og.url, "genie-key")])
    drain_all(d, st)
    assert len(og.pages) == 1
    page = og.pages[0]
    assert page["alias"] == "airflow-sla:sales:fresh" and page["priority"] == "P1"
    assert page["responders"] == [{"type": "team", "name": "sales"}]
    assert len(page["message"]) <= 130 and page["details"] == {"dag_id": "sales", "n": "3"}
    assert page["source"] == "airflow-monitor" and page["entity"] == "sales"
    assert st.resolve(notice(note="resolved: ok"), ["opsgenie"])
    assert not st.resolve(notice(note="resolved: ok"), ["opsgenie"])
    drain_all(d, st)
    assert og.closes == [("airflow-sla:sales:fresh", {"source": "airflow-monitor", "note": "resolved: ok"})]
    assert og.open_aliases() == set()


def test_429_and_500_then_delivered_once_in_order(tmp_path, og):
    st = AlertStore(str(tmp_path / "s.sqlite"))
    st.open(notice(), ["opsgenie"])
    st.resolve(notice(note="resolved"), ["opsgenie"])
    og.fail_next(2, 429)
    og.fail_next(1, 503)
    d = Delivery(st, [OpsGenieNotifier(og.url, "genie-key")])
    d.drain(now=float("inf"))
    assert og.pages == [] and st.backlog() == {"opsgenie": 2}
    assert st.pending("opsgenie") == [], "a failed notice waits for its backoff"
    drain_all(d, st)
    assert len(og.pages) == 1 and len(og.closes) == 1
    creates = [r for r in og.requests if r[1] == "/v2/alerts"]
    assert len(creates) == 4, "three refused attempts, one accepted"
    assert d.errors["opsgenie"] == 3 and d.sent[("opsgenie", "open")] == 1


def test_a_wrong_key_is_retried_not_dropped(tmp_path, og):
    st = AlertStore(str(tmp_path / "s.sqlite"))
    st.open(notice(), ["opsgenie"])
    Delivery(st, [OpsGenieNotifier(og.url, "wrong")]).drain(now=float("inf"))
    assert st.backlog() == {"opsgenie": 1}
    drain_all(Delivery(st, [OpsGenieNotifier(og.url, "genie-key")]), st)  # key fixed, process restarted
    assert len(og.pages) == 1


def test_a_key_echoed_by_the_service_is_neither_logged_nor_stored(tmp_path, og, caplog):
    from monitor import redact

    key = redact.secret("wrong-key-8f3a2c")  # as read_secret registers every secret it reads
    redact.install()
    og.echo_key = True
    st = AlertStore(str(tmp_path / "s.sqlite"))
    st.open(notice(), ["opsgenie"])
    Delivery(st, [OpsGenieNotifier(og.url, key)]).drain(now=float("inf"))
    stored = st.db.execute("SELECT last_error FROM outbox").fetchone()[0]
    assert "HTTP 401" in stored and key not in stored and "<redacted>" in stored
    assert "HTTP 401" in caplog.text and key not in caplog.text


def test_backoff_is_capped_after_any_number_of_attempts():
    from monitor.alerting.delivery import MAX_BACKOFF, backoff

    assert all(0 < backoff(n) <= MAX_BACKOFF for n in (0, 10, 1024, 10**6) for _ in range(200))  # jitter included


def test_a_refused_notice_is_kept_as_dead_letter_and_others_go_on(tmp_path, og):
    st = AlertStore(str(tmp_path / "s.sqlite"))
    st.open(notice("a", "r", message=""), ["opsgenie"])  # no message: 422
    st.open(notice("b", "r"), ["opsgenie"])
    drain_all(Delivery(st, [OpsGenieNotifier(og.url, "genie-key")]), st)
    assert [p["alias"] for p in og.pages] == ["airflow-sla:b:r"]
    (dead,) = st.dead_letters()
    assert dead[:4] == ("opsgenie", "open", "a", "r") and "HTTP 422" in dead[4]


def test_jsm_prefix(tmp_path, og):
    st = AlertStore(str(tmp_path / "s.sqlite"))
    st.open(notice(), ["opsgenie"])
    drain_all(Delivery(st, [OpsGenieNotifier(og.url + "/jsm/ops/integration", "genie-key")]), st)
    assert len(og.pages) == 1


def test_datadog_event_and_service_check(tmp_path):
    dd = DatadogServer("dd-key")
    try:
        st = AlertStore(str(tmp_path / "s.sqlite"))
        n = DatadogNotifier(dd.url, "dd-key")
        st.open(notice(), ["datadog"])
        st.resolve(notice(note="resolved: back"), ["datadog"])
        dd.fail_next(1, 500)
        drain_all(Delivery(st, [n]), st)
        assert [e["alert_type"] for e in dd.events] == ["error", "success"]
        assert {e["aggregation_key"] for e in dd.events} == {"airflow-sla:sales:fresh"}
        assert "dag_id:sales" in dd.events[0]["tags"] and "rule:fresh" in dd.events[0]["tags"]
        assert [c["status"] for c in dd.checks] == [2, 0] and dd.checks[0]["check"] == "airflow.sla"
        assert set(dd.keys) == {"dd-key"}
    finally:
        dd.close()


def test_a_healer_notice_reaches_datadog_as_its_own_check_with_its_own_tags():
    from monitor.heal.healer import TITLES

    dd = DatadogServer("dd-key")
    try:
        DatadogNotifier(dd.url, "dd-key").send("open", Notice(
            alias="airflow-heal:airflow/af:scheduler:healing_exhausted", subject="scheduler",
            rule="healing_exhausted", priority="P1", reason="stuck_scheduler",
            message="[airflow-heal] healing exhausted for scheduler", titles=TITLES,
            service_check="airflow.heal", entity_title="scheduler in airflow/af",
            dd_tags=("subject:scheduler", "rule:healing_exhausted", "kube_namespace:airflow", "release:af")))
        (event,), (check,) = dd.events, dd.checks
        assert event["title"] == "Airflow unhealthy: scheduler in airflow/af (healing_exhausted)"
        assert "subject:scheduler" in event["tags"] and not any(t.startswith("dag_id:") for t in event["tags"])
        assert check["check"] == "airflow.heal" and check["status"] == 2
    finally:
        dd.close()


def test_two_threads_draining_at_once_send_a_notice_once(tmp_path):
    """The cycle and the delivery loop drain from different threads; a slow service must not make
    both send the same notice (a second chat message, a second Datadog event)."""
    srv = WebhookServer()
    srv.hold()
    try:
        st = AlertStore(str(tmp_path / "s.sqlite"))
        st.open(notice(), ["webhook"])
        d = Delivery(st, [WebhookNotifier(srv.hook_url)])
        first = threading.Thread(target=d.drain)
        first.start()
        assert srv.entered.wait(10)      # the first pass is inside the request
        assert d.drain() == 0            # a second pass meanwhile sends nothing
        srv.release()
        first.join(10)
        drain_all(d, st)
        assert len(srv.messages) == 1 and st.backlog() == {}
    finally:
        srv.release()
        srv.close()


def test_webhook_slack_compatible(tmp_path):
    srv = WebhookServer()
    try:
        st = AlertStore(str(tmp_path / "s.sqlite"))
        st.open(notice(), ["webhook"])
        drain_all(Delivery(st, [WebhookNotifier(srv.hook_url)]), st)
        (body,) = srv.messages
        assert body["text"].startswith(":red_circle: [P1] SLA breached: [SLA] sales has not succeeded")
        assert "runbook: https://wiki/x" in body["text"]
        assert body["airflow_monitor"]["action"] == "open" and body["airflow_monitor"]["dag_id"] == "sales"
        # at least once: a notice sent again (a crash before its delivery was recorded) carries the
        # same key for the receiver to dedupe on; another notice of the same alert does not
        (payload,) = st.db.execute("SELECT payload FROM outbox").fetchone()
        again = json.loads(payload)
        WebhookNotifier(srv.hook_url).send("open", Notice.from_payload(again))
        WebhookNotifier(srv.hook_url).send("close", Notice.from_payload({**again, "at": "later"}))
        assert srv.keys[0] == srv.keys[1] == srv.messages[1]["airflow_monitor"]["id"] != srv.keys[2]
        assert srv.keys[0].startswith("airflow-sla:sales:fresh/open/")
    finally:
        srv.close()


def test_a_healer_notice_names_itself_in_chat():
    from monitor.heal.healer import TITLES

    srv = WebhookServer()
    try:
        n = WebhookNotifier(srv.hook_url)
        alias = "airflow-heal:airflow/af:scheduler:healing_exhausted"
        n.send("open", Notice(alias=alias, subject="scheduler", rule="healing_exhausted", priority="P1",
                              message="[airflow-heal] healing exhausted for scheduler", titles=TITLES))
        n.send("close", Notice(alias=alias, subject="scheduler", rule="healing_exhausted", priority="P1",
                               message="[airflow-heal] scheduler is healthy again", titles=TITLES))
        assert [m["text"] for m in srv.messages] == [
            ":red_circle: [P1] Airflow unhealthy: [airflow-heal] healing exhausted for scheduler",
            ":large_green_circle: [P1] Airflow recovered: [airflow-heal] scheduler is healthy again"]
    finally:
        srv.close()


def test_jwt_expiry_is_read_from_the_token():
    import base64

    from monitor.airflow.rest import _jwt_expiry

    payload = base64.urlsafe_b64encode(json.dumps({"sub": "admin", "exp": 1790000000}).encode()).rstrip(b"=")
    assert _jwt_expiry(f"eyJhbGciOiJIUzUxMiJ9.{payload.decode()}.sig") == 1790000000
    assert _jwt_expiry("not-a-jwt") is None


# ---------------------------------------------------------------- JSM Operations REST API
JSM_CLOUD, JSM_EMAIL, JSM_TOKEN = "5b6c1d2e-0a1b-4c3d-9e8f-7a6b5c4d3e2f", "ops-bot@example.com", "jsm-api-token"


@pytest.fixture
def jsm():
    from testkit.servers.jsm_ops import JsmOpsServer

    s = JsmOpsServer(JSM_CLOUD, JSM_EMAIL, JSM_TOKEN, processing=0.3)
    yield s
    s.close()


def jsm_notifier(server, token=JSM_TOKEN):
    from monitor.alerting.jsm import JsmNotifier

    return JsmNotifier(server.url, JSM_CLOUD, JSM_EMAIL, token)


def drain_until_done(delivery, state, timeout=15.0):
    """Drain as the delivery loop does, for real time: JSM processes writes asynchronously."""
    import time

    deadline = time.monotonic() + timeout
    while state.backlog() and time.monotonic() < deadline:
        delivery.drain(now=float("inf"))
        time.sleep(0.1)
    assert not state.backlog(), state.backlog()


def test_jsm_opens_once_then_closes_by_looking_the_alias_up(tmp_path, jsm):
    """Resolved right after the breach: the close comes while JSM still processes the create, so it
    finds no alert yet and is retried until the alert exists; then closed by its id."""
    st = AlertStore(str(tmp_path / "s.sqlite"))
    assert st.open(notice(), ["jsm"])
    st.resolve(notice(note="resolved: ok"), ["jsm"])
    d = Delivery(st, [jsm_notifier(jsm)])
    drain_until_done(d, st)
    assert len(jsm.pages) == 1
    page = jsm.pages[0]
    assert page["alias"] == "airflow-sla:sales:fresh" and page["priority"] == "P1"
    assert page["extraProperties"] == {"dag_id": "sales", "n": "3"} and "details" not in page
    jsm.wait(lambda s: s.closes)
    assert jsm.closes == [("airflow-sla:sales:fresh", {"note": "resolved: ok", "source": "airflow-monitor"})]
    assert jsm.open_aliases() == set()
    assert d.errors["jsm"] >= 1, "the close waited for the create to be processed"
    statuses = [s["action"] for s in jsm.statuses.values() if s["isSuccess"]]
    assert sorted(statuses) == ["Close", "Create"]


def test_jsm_dedupes_on_alias_and_a_person_closing_the_alert_needs_nothing_more(tmp_path, jsm):
    st = AlertStore(str(tmp_path / "s.sqlite"))
    n = jsm_notifier(jsm)
    n.send("open", notice())
    n.send("open", notice())  # a second create for the same breach (say, state lost): deduplicated
    jsm.wait(lambda s: s.alerts and s.alerts[0].count == 2)
    assert len(jsm.pages) == 1
    with jsm.lock:
        jsm.alerts[0].status = "closed"  # someone closed it in JSM
    assert n.send("remind", notice(note="still stale")) == ""
    assert n.send("close", notice(note="resolved")) == ""
    assert jsm.closes == [] and jsm.alerts[0].notes == []
    st.close()


def test_jsm_reminder_is_a_note_on_the_open_alert(jsm):
    n = jsm_notifier(jsm)
    n.send("open", notice())
    jsm.wait(lambda s: s.alerts)
    assert n.send("remind", notice(note="still stale after 8h"))
    jsm.wait(lambda s: s.alerts[0].notes == ["still stale after 8h"])


def test_jsm_wrong_token_is_retried_and_aliases_with_quotes_are_searched_exactly(tmp_path, jsm):
    from monitor.alerting import Retry
    from monitor.alerting.jsm import alias_query
    from testkit.servers.jsm_ops import parse_query

    with pytest.raises(Retry, match="HTTP 401"):
        jsm_notifier(jsm, token="wrong").send("open", notice())
    odd = 'airflow-sla:team "x" \\ y:fresh'
    assert parse_query(alias_query(odd, True)) == [("alias", odd), ("status", "open")]
    n = jsm_notifier(jsm)
    n.send("open", notice(alias=odd))
    jsm.wait(lambda s: s.alerts)
    n.send("close", notice(alias=odd, note="ok"))
    jsm.wait(lambda s: s.closes == [(odd, {"note": "ok", "source": "airflow-monitor"})])


def test_jsm_config(tmp_path, monkeypatch):
    from monitor.sla.config import SLAConfigError, parse

    base = {"airflow": {"url": "http://af", "token_file": str(tmp_path / "t")},
            "watch": [{"dag_id": "d", "rules": [{"max_age": "1h"}]}]}
    (tmp_path / "t").write_text("jwt")
    (tmp_path / "jsm").write_text(JSM_TOKEN + "\n")
    cfg = parse({**base, "notify": {"jsm": {"cloud_id": JSM_CLOUD, "email": JSM_EMAIL,
                                            "api_token_file": str(tmp_path / "jsm")}}})
    assert (cfg.notify.jsm.cloud_id, cfg.notify.jsm.api_token, cfg.notify.jsm.url) == (JSM_CLOUD, JSM_TOKEN, "https://api.atlassian.com")
    assert JSM_TOKEN not in repr(cfg.notify.jsm)
    monkeypatch.setenv("AIRFLOW_MONITOR_JSM_API_TOKEN", "from-env")
    env_cfg = parse({**base, "notify": {"jsm": {"cloud_id": JSM_CLOUD, "email": JSM_EMAIL}}})
    assert env_cfg.notify.jsm.api_token == "from-env"
    for bad, msg in [({"cloud_id": JSM_CLOUD, "email": JSM_EMAIL, "api_token": "x"}, "notify.jsm.api_token"),
                     ({"email": JSM_EMAIL}, "needs cloud_id"),
                     ({"cloud_id": "../x", "email": JSM_EMAIL}, "cloud_id"),
                     ({"cloud_id": JSM_CLOUD, "email": JSM_EMAIL, "site": "x"}, "site")]:
        with pytest.raises(SLAConfigError, match=msg):
            parse({**base, "notify": {"jsm": bad}})
