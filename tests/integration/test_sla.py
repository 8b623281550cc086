"""The SLA watcher as a user runs it: real Airflow 3.3 (API server + scheduler), the real CLI
in a subprocess, and a local server implementing OpsGenie's documented Alert API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor import catalog
from testkit.airflow import free_port
from testkit.servers.opsgenie import OpsGenieServer

pytestmark = pytest.mark.integration

KEY = "genie-test-key"


@pytest.fixture
def og():
    s = OpsGenieServer(KEY)
    yield s
    s.close()


def config(tmp: Path, airflow, og: OpsGenieServer, watch: list, **watcher) -> Path:
    doc = {
        "airflow": {"url": airflow.api_url, "username": "admin", "timeout": "3s"},
        "watcher": {"state_file": str(tmp / "sla-state.sqlite"), "interval": "1s", **watcher},
        "notify": {"opsgenie": {"url": og.url, "heartbeat": "airflow-sla-test"}},
        "watch": watch,
    }
    path = tmp / "sla.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def env() -> dict:
    return {**os.environ, "AIRFLOW_MONITOR_AIRFLOW_PASSWORD": "admin", "AIRFLOW_MONITOR_OPSGENIE_API_KEY": KEY}


def sla(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monitor.cli", "sla", *args], capture_output=True, text=True,
                          env=env(), timeout=120)


def alias(dag: str, rule: str) -> str:
    return f"airflow-sla:{dag}:{rule}"


def test_lifecycle_open_no_repeat_resolve(airflow, og, tmp_path):
    slow = airflow.trigger("sla_slow")  # sleeps 25 s
    runs = {d: airflow.trigger(d) for d in ("sla_ok", "sla_fail")}
    assert airflow.wait_run("sla_ok", runs["sla_ok"]) == "success"
    assert airflow.wait_run("sla_fail", runs["sla_fail"]) == "failed"
    cfg = config(tmp_path, airflow, og, [
        {"tag": "sla", "priority": "P2", "responders": ["data-platform"], "runbook": "https://runbooks/sla",
         "rules": [{"max_age": "1h", "name": "fresh"}]},
        {"dag_id": "sla_slow", "rules": [{"max_duration": "5s"}]},
    ])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and airflow.api("GET", f"/dags/sla_slow/dagRuns/{slow}")["state"] != "running":
        time.sleep(0.5)
    time.sleep(6)

    first = sla("check", "--notify", "--config", str(cfg))
    assert first.returncode == 1, first.stderr
    assert {p["alias"] for p in og.pages} == {alias("sla_fail", "fresh"), alias("sla_never", "fresh"),
                                             alias("sla_slow", "max_duration")}, first.stdout
    fail = next(p for p in og.pages if p["alias"] == alias("sla_fail", "fresh"))
    assert fail["priority"] == "P2" and fail["responders"] == [{"type": "team", "name": "data-platform"}]
    assert fail["message"].startswith("[SLA] latest run of sla_fail failed")
    assert fail["details"]["reason"] == "failed" and fail["details"]["runbook"] == "https://runbooks/sla"
    assert fail["entity"] == "sla_fail" and fail["source"] == "airflow-monitor"
    never = next(p for p in og.pages if p["alias"] == alias("sla_never", "fresh"))
    assert never["details"]["reason"] == "never_run"
    ok_row = next(line for line in first.stdout.splitlines() if line.startswith("sla_ok "))
    assert ok_row.split()[2:4] == ["P2", "ok"], first.stdout
    assert og.heartbeats == ["airflow-sla-test"]

    # a second process on the same state (a restart, or cron): nobody is paged twice
    again = sla("check", "--notify", "--config", str(cfg))
    assert again.returncode == 1
    assert len(og.pages) == 3
    assert len([r for r in og.requests if r[1] == "/v2/alerts"]) == 3

    # fix the upstream problem and rerun: the alert is closed by alias
    (airflow.home / "sla_fixed").write_text("yes")
    assert airflow.wait_run("sla_fail", airflow.trigger("sla_fail")) == "success"
    assert airflow.wait_run("sla_slow", slow, timeout=120) == "success"
    third = sla("check", "--notify", "--config", str(cfg))
    assert third.returncode == 1, "sla_never is still breached"
    assert {a for a, _ in og.closes} == {alias("sla_fail", "fresh"), alias("sla_slow", "max_duration")}
    assert og.open_aliases() == {alias("sla_never", "fresh")}

    status = sla("status", "--config", str(cfg), "--json")
    assert status.returncode == 0, status.stderr
    rows = {(r["dag_id"], r["rule"]): r for r in json.loads(status.stdout)}
    assert rows[("sla_fail", "fresh")]["state"] == "ok" and rows[("sla_fail", "fresh")]["alert"] == "-"
    assert rows[("sla_never", "fresh")]["state"] == "BREACHED"
    assert rows[("sla_never", "fresh")]["alert"].startswith("open since")
    assert rows[("sla_ok", "fresh")]["last_success"] != "never"
    assert len(og.pages) == 3
    (airflow.home / "sla_fixed").unlink()


class Watcher:
    """A long-running `airflow-monitor serve --sla-config` (or `sla run`) process."""

    def __init__(self, tmp: Path, cfg: Path, serve: bool):
        self.http = free_port()
        self.log = tmp / f"watcher-{self.http}.log"
        if serve:
            cmd = ["serve", "--sla-config", str(cfg), "--statsd-udp", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
                   "--statsd-tcp", "", "--web-listen", f"127.0.0.1:{self.http}", "--otlp-listen", ""]
        else:
            cmd = ["sla", "run", "--config", str(cfg), "--metrics-listen", f"127.0.0.1:{self.http}"]
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", *cmd], env=env(),
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)

    def metrics(self) -> dict:
        out = {}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
            for fam in text_string_to_metric_families(r.read().decode()):
                for s in fam.samples:
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def wait_metrics(self, pred, timeout=60.0):
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                last = self.metrics()
                if pred(last):
                    return last
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"metrics condition not met; log: {self.log.read_text()[-3000:]}")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        log = self.log.read_text()
        assert "Traceback" not in log, log[-3000:]
        return log


def test_outage_retry_blind_and_restart(airflow, og, tmp_path):
    cfg = config(tmp_path, airflow, og, [{"dag_id": "sla_never", "rules": [{"max_age": "1h", "name": "hourly",
                                                                            "priority": "P1"}]}], blind_after=2)
    og.fail_next(4, 429)
    og.fail_next(2, 500)
    w = Watcher(tmp_path, cfg, serve=True)
    try:
        og.wait(lambda s: s.pages, timeout=90)
        m = w.wait_metrics(lambda m: m.get(("airflow_sla_breached", (
            ("dag_id", "sla_never"), ("priority", "P1"), ("reason", "never_run"), ("rule", "hourly")))) == 1)
        assert ("airflow_monitor_bridge_lines", ()) in m or any(k[0].startswith("airflow_monitor_bridge") for k in m)
        assert m[("airflow_monitor_sla_blind", ())] == 0
        # the service's own series are exactly those monitor/catalog/service.yaml declares
        # (a labelled family shows samples only once something happened: those may be absent)
        families = [f for f in catalog.service_families() if f.get("only") in (None, "sla")]
        seen = {name for name, _ in m if name.startswith(("airflow_monitor_", "airflow_sla_"))}
        assert seen <= catalog.service_series_names(), seen - catalog.service_series_names()
        assert {f["name"] + ("_total" if f["type"] == "counter" else "") for f in families
                if not f.get("labels")} <= seen
        assert m[("airflow_monitor_sla_cycle_requests", ())] <= 3 + 1, "one DAG page, two run batches, token"
        time.sleep(3)
        assert [p["alias"] for p in og.pages] == [alias("sla_never", "hourly")], "paged once despite 429s and 500s"
        assert og.pages[0]["priority"] == "P1"

        # the API server stops answering: one "watcher blind" alert, DAG alerts untouched
        pids = airflow.signal("airflow api_server", signal.SIGSTOP)
        assert pids, "no API server process found"
        try:
            og.wait(lambda s: any("watcher-blind" in p["alias"] for p in s.pages), timeout=90)
            time.sleep(4)
            blind = [p for p in og.pages if "watcher-blind" in p["alias"]]
            assert len(blind) == 1 and blind[0]["message"].startswith("[SLA] watcher blind")
            assert og.closes == []
            assert w.metrics()[("airflow_monitor_sla_blind", ())] == 1
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        og.wait(lambda s: any("watcher-blind" in a for a, _ in s.closes), timeout=90)
        assert og.open_aliases() == {alias("sla_never", "hourly")}
    finally:
        log = w.stop()
    assert KEY not in log

    # restart mid-breach, now as `sla run`: no second page
    w = Watcher(tmp_path, cfg, serve=False)
    try:
        w.wait_metrics(lambda m: m.get(("airflow_monitor_sla_cycles_total", ()), 0) >= 3)
    finally:
        w.stop()
    assert len([p for p in og.pages if p["alias"] == alias("sla_never", "hourly")]) == 1


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_broken_state_file_is_said_and_paged_and_an_empty_one_refused(airflow, og, tmp_path):
    cfg = config(tmp_path, airflow, og, [{"dag_id": "sla_never", "rules": [{"max_age": "1h", "name": "hourly"}]}])
    state = tmp_path / "sla-state.sqlite"
    w = Watcher(tmp_path, cfg, serve=False)
    try:
        og.wait(lambda s: s.pages, timeout=90)
    finally:
        w.stop()
    import sqlite3

    db = sqlite3.connect(state)  # where the alert table lives, with everything in the main file
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'alert'").fetchone()
    (size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    with open(state, "r+b") as f:  # a corrupted page: the alert table's
        f.seek((root - 1) * size)
        f.write(b"\xa5" * size)

    # `sla run`: says so on /metrics and /-/ready, and pages once without the state's outbox
    w = Watcher(tmp_path, cfg, serve=False)
    try:
        og.wait(lambda s: any("watcher-state" in p["alias"] for p in s.pages), timeout=90)
        m = w.wait_metrics(lambda m: m.get(("airflow_monitor_sla_state_errors_total", ()), 0) >= 2)
        assert m[("airflow_monitor_sla_state_broken", ())] == 1
        status, body = _get(w.http, "/-/ready")
        assert status == 503 and "SLA state file cannot be used" in body and "malformed" in body, body
        assert _get(w.http, "/-/healthy")[0] == 200
        assert [p["alias"] for p in og.pages].count(alias("sla_never", "hourly")) == 1, "not paged again"
        assert len([p for p in og.pages if "watcher-state" in p["alias"]]) == 1
    finally:
        log = w.stop()
    assert log.count("SLA state file cannot be used") == 1, log

    # beside the bridge: the bridge stays ready (the statsd Service keeps its endpoint); the
    # watcher's own readiness is apart. The operator removes the file: the state page is closed.
    w = Watcher(tmp_path, cfg, serve=True)
    try:
        w.wait_metrics(lambda m: m.get(("airflow_monitor_sla_state_broken", ())) == 1)
        assert _get(w.http, "/-/ready")[0] == 200
        assert _get(w.http, "/-/ready/sla")[0] == 503
        state.unlink()
        og.wait(lambda s: any("watcher-state" in a for a, _ in s.closes), timeout=90)
        w.wait_metrics(lambda m: m.get(("airflow_monitor_sla_state_broken", ())) == 0)
        assert _get(w.http, "/-/ready/sla") == (200, "OK\n")
    finally:
        w.stop()

    # a state file that lost its content is refused, unless told to start fresh
    state.write_bytes(b"")
    refused = sla("status", "--config", str(cfg))
    assert refused.returncode == 2 and "is empty" in refused.stderr and "--fresh-state" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    fresh = sla("status", "--config", str(cfg), "--fresh-state")
    assert fresh.returncode == 0, fresh.stderr


def test_check_is_a_dry_look_test_notify_pages_and_closes_and_status_reads_the_disk(airflow, og, tmp_path):
    cfg = config(tmp_path, airflow, og, [{"dag_id": "sla_never", "rules": [{"max_age": "1h", "name": "dry"}]}])
    look = sla("check", "--config", str(cfg))  # from a laptop, against production: nobody is paged
    assert look.returncode == 1 and "BREACHED" in look.stdout, look.stdout + look.stderr
    assert og.requests == [] and og.pages == []
    status = sla("status", "--config", str(cfg), "--json")
    assert [r["alert"] for r in json.loads(status.stdout)] == ["-"], "check opened no alert"

    sent = sla("test-notify", "--config", str(cfg))
    assert sent.returncode == 0 and "opsgenie: ok" in sent.stdout, sent.stdout + sent.stderr
    assert [p["alias"] for p in og.pages] == [a for a, _ in og.closes] and og.open_aliases() == set()
    assert og.pages[0]["alias"].startswith("airflow-sla:test:") and og.pages[0]["priority"] == "P5"

    acted = sla("check", "--notify", "--config", str(cfg))
    assert acted.returncode == 1 and og.open_aliases() == {alias("sla_never", "dry")}

    # Airflow down: what is on disk is shown, with a line saying Airflow could not be read
    down = dict(yaml.safe_load(cfg.read_text()))
    down["airflow"] = {**down["airflow"], "url": "http://127.0.0.1:1"}
    cfg.write_text(yaml.safe_dump(down))
    shown = sla("status", "--config", str(cfg))
    assert shown.returncode == 1, shown.stderr
    assert "Airflow could not be read" in shown.stdout and "sla_never" in shown.stdout, shown.stdout
    assert "BREACHED (stored)" in shown.stdout and "open since" in shown.stdout


def test_a_new_dag_has_a_grace_and_a_mute_pages_nobody_until_it_ends(airflow, og, tmp_path):
    run = airflow.trigger("sla_ok")
    assert airflow.wait_run("sla_ok", run) == "success"
    first = config(tmp_path, airflow, og, [{"dag_id": "sla_ok", "rules": [{"max_age": "1h", "name": "fresh"}]}])
    assert sla("check", "--notify", "--config", str(first)).returncode == 0  # the watcher's first cycle
    # a DAG the watcher has not seen before is deployed and watched: no page for new_dag_grace
    cfg = config(tmp_path, airflow, og, [{"dag_id": d, "rules": [{"max_age": "1h", "name": "fresh"}]}
                                         for d in ("sla_ok", "sla_never")], new_dag_grace="1h")
    graced = sla("check", "--notify", "--config", str(cfg), "--json")
    assert graced.returncode == 0, graced.stdout + graced.stderr
    rows = {r["dag_id"]: r for r in json.loads(graced.stdout)}
    assert rows["sla_never"]["state"] == "grace (new DAG)" and "has never run" in rows["sla_never"]["message"]
    assert og.pages == []
    # a mute with an end: shown as muted, paged to nobody; once it has ended, paged
    doc = yaml.safe_load(cfg.read_text())
    doc["watcher"]["new_dag_grace"] = "0s"
    doc["mutes"] = [{"dag_id": "sla_never", "until": "2099-01-01", "reason": "being rebuilt"}]
    cfg.write_text(yaml.safe_dump(doc))
    muted = sla("status", "--config", str(cfg))
    assert "MUTED until 2099-01-01 00:00Z (being rebuilt)" in muted.stdout, muted.stdout
    assert sla("check", "--notify", "--config", str(cfg)).returncode == 1 and og.pages == []
    doc["mutes"] = [{"dag_id": "sla_never", "until": "2020-01-01"}]
    cfg.write_text(yaml.safe_dump(doc))
    assert sla("check", "--notify", "--config", str(cfg)).returncode == 1
    assert [p["alias"] for p in og.pages] == [alias("sla_never", "fresh")]



def first_parsed(airflow, dag_id: str) -> float:
    """When Airflow first parsed a DAG (its first version's creation), as a UTC timestamp."""
    from datetime import datetime

    versions = airflow.api("GET", f"/dags/{dag_id}/dagVersions?version_number=1")["dag_versions"]
    return datetime.fromisoformat(versions[0]["created_at"].replace("Z", "+00:00")).timestamp()


def test_grace_is_for_dags_airflow_just_parsed_not_for_dags_new_to_the_watcher(airflow, og, tmp_path):
    """Issue 23 item 8: an existing, failing DAG added to a running watcher's config is judged at once (it
    had an hour of "new DAG" grace); a dag_id Airflow does not know is not_found and fails `sla check`
    once the watcher has looked for it for one DAG-processor interval (it had the same hour, and exit 0)."""
    run = airflow.trigger("sla_fail")
    assert airflow.wait_run("sla_fail", run) == "failed"
    deadline = time.monotonic() + 120  # Airflow has known sla_fail for longer than the grace below
    while time.time() - first_parsed(airflow, "sla_fail") < 20 and time.monotonic() < deadline:
        time.sleep(1)
    watch = [{"dag_id": "sla_ok", "rules": [{"max_age": "1h", "name": "fresh"}]}]
    first = config(tmp_path, airflow, og, watch, new_dag_grace="20s", not_found_grace="5s")
    ok = airflow.trigger("sla_ok")
    assert airflow.wait_run("sla_ok", ok) == "success"
    assert sla("check", "--notify", "--config", str(first)).returncode == 0  # the watcher's first cycle
    # the config grows: an old DAG that fails, and a typo
    cfg = config(tmp_path, airflow, og, watch + [{"dag_id": d, "rules": [{"max_age": "1h", "name": "fresh"}]}
                                                 for d in ("sla_fail", "sla_fial")],
                 new_dag_grace="20s", not_found_grace="5s")
    added = sla("check", "--notify", "--config", str(cfg), "--json")
    assert added.returncode == 1, added.stdout + added.stderr
    rows = {r["dag_id"]: r for r in json.loads(added.stdout)}
    assert rows["sla_fail"]["state"] == "BREACHED" and rows["sla_fail"]["reason"] == "failed", rows
    assert rows["sla_fial"]["state"] == "grace (not in Airflow yet)", rows  # the watcher just began to look
    assert [p["alias"] for p in og.pages] == [alias("sla_fail", "fresh")]
    time.sleep(6)  # one "DAG-processor interval" (5 s here) later: not_found
    later = sla("check", "--config", str(cfg), "--json")
    assert later.returncode == 1
    rows = {r["dag_id"]: r for r in json.loads(later.stdout)}
    assert rows["sla_fial"]["state"] == "BREACHED" and rows["sla_fial"]["reason"] == "not_found", rows


def test_sla_run_serves_over_tls_with_basic_auth(airflow, og, tmp_path):
    import base64
    import ssl

    from tests.integration.tools import web_config

    cfg = config(tmp_path, airflow, og, [{"dag_id": "sla_ok", "rules": [{"max_age": "1h"}]}])
    web, crt = web_config(tmp_path, "prom", "s3cret-pw")
    http = free_port()
    log = tmp_path / "sla-run.log"
    proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "sla", "run", "--config", str(cfg),
                             "--metrics-listen", f"127.0.0.1:{http}", "--web-config-file", str(web)],
                            env=env(), stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    ctx = ssl.create_default_context(cafile=str(crt))

    def get(path, auth=True):
        req = urllib.request.Request(f"https://127.0.0.1:{http}{path}")
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(b"prom:s3cret-pw").decode())
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get("/-/healthy")[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        code, body = get("/metrics")
        assert code == 200 and "airflow_monitor_sla_cycles_total" in body, log.read_text()[-2000:]
        assert get("/metrics", auth=False)[0] == 401
        # the kubelet's probe has no credentials: it gets the status and a bare word, never the reason
        assert get("/-/healthy", auth=False) == (200, "OK\n")
        assert get("/-/ready", auth=False) in ((200, "OK\n"), (503, "not ready\n"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_jsm_operations_api_pages_once_and_closes(airflow, tmp_path):
    """The watcher against the real Airflow, paging through a local JSM Operations REST API (Basic
    auth, asynchronous writes, alerts addressed by id only): test-notify opens and closes, a
    breach pages once across two processes, and the token never reaches the output."""
    from testkit.servers.jsm_ops import JsmOpsServer

    cloud, email, token = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b", "sla-bot@example.com", "atl-api-token-x1"
    jsm = JsmOpsServer(cloud, email, token, processing=0.5)
    try:
        doc = {"airflow": {"url": airflow.api_url, "username": "admin", "timeout": "3s"},
               "watcher": {"state_file": str(tmp_path / "sla-state.sqlite"), "interval": "1s"},
               "notify": {"jsm": {"url": jsm.url, "cloud_id": cloud, "email": email}},
               "watch": [{"dag_id": "sla_never", "priority": "P2", "rules": [{"max_age": "1h", "name": "jsm"}]}]}
        cfg = tmp_path / "sla.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        run_env = {**env(), "AIRFLOW_MONITOR_JSM_API_TOKEN": token}

        def jsm_sla(*args):
            return subprocess.run([sys.executable, "-m", "monitor.cli", "sla", *args, "--config", str(cfg)],
                                  capture_output=True, text=True, env=run_env, timeout=120)

        sent = jsm_sla("test-notify")
        assert sent.returncode == 0 and "jsm: ok" in sent.stdout, sent.stdout + sent.stderr
        jsm.wait(lambda s: len(s.closes) == 1)
        assert jsm.open_aliases() == set()
        for _ in range(2):  # a second process on the same state pages nobody again
            acted = jsm_sla("check", "--notify")
            assert acted.returncode == 1, acted.stdout + acted.stderr
        jsm.wait(lambda s: s.open_aliases() == {alias("sla_never", "jsm")})
        page = next(p for p in jsm.pages if p["alias"] == alias("sla_never", "jsm"))
        assert page["priority"] == "P2" and page["extraProperties"]["reason"] == "never_run"
        assert len([r for r in jsm.requests if r[0] == "POST" and r[1].endswith("/v1/alerts")]) == 2
        assert token not in sent.stdout + sent.stderr + acted.stdout + acted.stderr
    finally:
        jsm.close()


def test_every_message_says_what_and_a_dry_look_changes_nothing(airflow, tmp_path):
    """Issue 23 item 9: a chat resolve names the DAG; the watcher-blind page is titled as such, gives the
    cause in words and closes without contradicting itself; `sla status --json` stays JSON with Airflow
    down, and says when there is nothing open; config typos name the key; a URL without a scheme is a
    config error; `sla check` creates nothing on disk."""
    from testkit.servers.webhook import WebhookServer

    hook = WebhookServer()
    (tmp_path / "hook").write_text(hook.hook_url)
    ok = airflow.trigger("sla_ok")
    assert airflow.wait_run("sla_ok", ok) == "success"

    def cfg(max_age: str, url: str | None = None, **watcher) -> Path:
        doc = {"airflow": {"url": url or airflow.api_url, "username": "admin", "timeout": "3s"},
               "watcher": {"state_file": str(tmp_path / "state.sqlite"), "interval": "1s", "blind_after": 1,
                           "new_dag_grace": "0s", **watcher},
               "notify": {"webhook": {"url_file": str(tmp_path / "hook")}},
               "watch": [{"dag_id": "sla_ok", "rules": [{"max_age": max_age, "name": "fresh"}]}]}
        path = tmp_path / f"sla-{len(list(tmp_path.glob('sla-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    try:
        time.sleep(2)
        assert sla("check", "--notify", "--config", str(cfg("1s"))).returncode == 1  # stale: paged
        assert sla("check", "--notify", "--config", str(cfg("1h"))).returncode == 0  # fresh again: resolved
        texts = [m["text"] for m in hook.take()]
        assert len(texts) == 2 and "SLA breached" in texts[0], texts
        assert "SLA resolved" in texts[1] and "sla_ok" in texts[1] and "last success" in texts[1], texts

        # blind: the title says so, the cause is words, the close does not say "blind"
        down = cfg("1h", url="http://127.0.0.1:1")
        assert sla("check", "--notify", "--config", str(down)).returncode == 2
        opened = hook.take()
        assert len(opened) == 1 and "SLA watcher blind" in opened[0]["text"], opened
        assert "cannot reach Airflow at http://127.0.0.1:1: connection refused" in opened[0]["text"], opened
        assert sla("check", "--notify", "--config", str(cfg("1h"))).returncode == 0
        closed = [m["text"] for m in hook.take()]
        assert len(closed) == 1 and "SLA watcher sees Airflow again" in closed[0], closed
        assert "blind" not in closed[0].split(":", 1)[1], closed

        # status --json with Airflow down: JSON on stdout, the notice on stderr; nothing open: said so
        shown = sla("status", "--json", "--config", str(down))
        assert shown.returncode == 1 and json.loads(shown.stdout) == [], shown.stdout
        assert "Airflow could not be read" in shown.stderr
        plain = sla("status", "--config", str(down))
        assert "no open alerts in the state file" in plain.stdout and "no DAG matches" not in plain.stdout
    finally:
        hook.close()

    # config mistakes: the key, the URL
    bad = yaml.safe_load(cfg("1h").read_text())
    bad["watch"][0]["rules"] = [{"max_agee": "1h"}]
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(bad))
    typo = sla("check", "--config", str(tmp_path / "typo.yaml"))
    assert typo.returncode == 2 and "unknown setting 'max_agee'" in typo.stderr and "max_age" in typo.stderr, typo
    noscheme = sla("check", "--config", str(cfg("1h", url="airflow-api-server:8080")))
    assert noscheme.returncode == 2 and "airflow.url must be the API server's http(s) URL" in noscheme.stderr, noscheme

    # a dry look creates nothing: not the state file, not its directories
    nowhere = tmp_path / "not" / "there" / "state.sqlite"
    dry = sla("check", "--config", str(cfg("1h", state_file=str(nowhere))))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert not (tmp_path / "not").exists()
