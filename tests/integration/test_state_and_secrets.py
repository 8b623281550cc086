"""Bad luck and leaks on the real `airflow-monitor sla run`: garbage inside one queued notice (the rest is
delivered, the bad one set aside and paged once, no traceback loop), and credentials in URLs and echoed
headers (never in a log line, the state file or a page)."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from testkit.airflow import REPO, free_port
from testkit.servers.opsgenie import OpsGenieServer
from testkit.servers.webhook import WebhookServer

pytestmark = pytest.mark.integration
KEY = "genie-state-key"


class Watcher:
    """`sla run` whose Airflow does not answer: after one cycle it opens its blind alert, a notice per notifier."""

    def __init__(self, tmp: Path, notify: dict, airflow_url: str, env: dict | None = None):
        (tmp / "token").write_text("jwt")
        cfg = tmp / "sla.yaml"
        cfg.write_text(yaml.safe_dump({
            "airflow": {"url": airflow_url, "token_file": str(tmp / "token"), "timeout": "2s"},
            "watcher": {"interval": "1s", "state_file": str(tmp / "sla.sqlite"), "blind_after": 1},
            "notify": notify, "watch": [{"dag_id": "d", "rules": [{"max_age": "1h"}]}]}))
        self.state = tmp / "sla.sqlite"
        self.log_path = tmp / "watcher.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "sla", "run", "--config", str(cfg),
                                      "--metrics-listen", f"127.0.0.1:{free_port()}"], cwd=REPO,
                                     env={**os.environ, "AIRFLOW_MONITOR_OPSGENIE_API_KEY": KEY, **(env or {})},
                                     stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := pred():
            return got
        time.sleep(0.2)
    raise TimeoutError(f"not within {timeout}s: {what}")


def test_garbage_inside_one_queued_notice_is_set_aside_and_the_rest_delivered(tmp_path):
    og, hook = OpsGenieServer(KEY), WebhookServer()
    og.fail_next(10_000, 503)  # OpsGenie's notice waits in the outbox while we damage it
    w = Watcher(tmp_path, {"opsgenie": {"url": og.url}, "webhook": {"url": hook.hook_url}},
                f"http://127.0.0.1:{free_port()}")
    try:
        def queued():
            if not w.state.exists():
                return []
            try:
                with sqlite3.connect(w.state) as db:
                    return db.execute("SELECT id, notifier, payload FROM outbox WHERE done_at IS NULL").fetchall()
            except sqlite3.OperationalError:  # not made yet
                return []

        rows = wait(lambda: [r for r in queued() if r[1] == "opsgenie"], 60, "the blind alert queued for OpsGenie")
        (og_id, _, payload), = [r for r in rows if r[1] == "opsgenie"]
        with sqlite3.connect(w.state) as db:  # same length, garbage inside: quick_check cannot see it
            db.execute("UPDATE outbox SET payload=? WHERE id=?", ("\x00" * len(payload), og_id))
        with og.lock:
            og._fail.clear()
        page = og.wait(lambda s: next((p for p in s.pages if p["alias"].endswith(":corrupt-record")), None), 60)
        assert "were unreadable and set aside" in page["message"] and page["priority"] == "P3"
        # the rest is delivered: the webhook has the blind page and the page about the damaged record
        wait(lambda: [m for m in hook.messages if "corrupt-record" in m["airflow_monitor"]["alias"]], 60,
             "the webhook told too")
        assert any(m["airflow_monitor"]["rule"] == "blind" for m in hook.messages)
        time.sleep(3)
        assert [p["alias"] for p in og.pages].count(page["alias"]) == 1, "paged once"
        with sqlite3.connect(w.state) as db:
            dead = db.execute("SELECT notifier, last_error FROM outbox WHERE dead=1").fetchall()
        assert dead == [("opsgenie", "corrupted record (JSONDecodeError): moved aside, not sent")]
        log = w.log()
        assert log.count("is corrupted; kept as a dead letter") == 1 and "Traceback" not in log
        status = subprocess.run([sys.executable, "-m", "monitor.cli", "sla", "status", "--config",
                                 str(tmp_path / "sla.yaml")], cwd=REPO, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "AIRFLOW_MONITOR_OPSGENIE_API_KEY": KEY})
        assert "refused by opsgenie: open _watcher/blind: corrupted record" in status.stdout, status.stdout
    finally:
        w.stop()
        og.close()
        hook.close()


def test_credentials_in_urls_and_echoed_headers_reach_no_log_state_or_page(tmp_path):
    """An Airflow URL with user:password in it, a webhook URL with userinfo, and a service that quotes our
    Authorization header back, across a 300-character cut: none of it in the log, the state or a page."""
    from testkit.servers.jsm_ops import JsmOpsServer

    cloud, email, token = "5b6c1d2e-0a1b-4c3d-9e8f-7a6b5c4d3e2f", "ops@example.com", "jsm-t0ken-secret-value"
    jsm = JsmOpsServer(cloud, email, "the-token-jsm-expects")
    jsm.echo_auth = True  # our (wrong) Basic credential quoted back
    basic = base64.b64encode(f"{email}:{token}".encode()).decode()
    (tmp_path / "jsm").write_text(token)
    airflow = f"http://admin:S3cretPw@127.0.0.1:{free_port()}"
    og = OpsGenieServer(KEY)
    og.echo_key = True  # a 401 quoting the Authorization header back, the key across the 300-character cut
    w = Watcher(tmp_path, {"opsgenie": {"url": og.url}, "jsm": {"cloud_id": cloud, "email": email,
                                                                "api_token_file": str(tmp_path / "jsm"),
                                                                "url": jsm.url},
                           "webhook": {"url": "http://hookuser:HookPassw0rd@127.0.0.1:9/hook"}},
                airflow, env={"AIRFLOW_MONITOR_OPSGENIE_API_KEY": "wrong-" + "k" * 290 + "-key-tail"})
    try:
        wait(lambda: "watcher blind" in w.log(), 60, "the watcher blind")
        wait(lambda: og.requests and jsm.requests, 60, "OpsGenie and JSM asked (and refusing the credentials)")
        time.sleep(4)
        with sqlite3.connect(w.state) as db:
            stored = json.dumps(db.execute("SELECT * FROM outbox").fetchall() + db.execute(
                "SELECT * FROM alert").fetchall())
        sent = json.dumps([b for _, _, b in og.requests] + [b for _, _, b in jsm.requests])
        for where, text in (("log", w.log()), ("state", stored), ("pages", sent)):
            for leak in ("S3cretPw", "HookPassw0rd", "hookuser:", token, basic, "wrong-kkkk"):
                assert leak not in text, f"{leak!r} in the {where}"
    finally:
        w.stop()
        og.close()
        jsm.close()
