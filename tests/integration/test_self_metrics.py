"""Our own series on /metrics, of all three services (`serve` with the watcher, the healer and both sinks,
`sla run`, `heal run`), pass `promtool check metrics` and read as the text format means them: a HELP for
every family, a counter's TYPE line naming its `_total` samples (issue 23 item 6)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from monitor.bridge import reasons
from testkit.airflow import free_port
from testkit.bridge import BridgeProcess

pytestmark = pytest.mark.integration
OURS = ("airflow_monitor_", "airflow_sla_")


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    from testkit.servers.kube_api import KubeApiServer

    tmp = tmp_path_factory.mktemp("self")
    (tmp / "pw").write_text("pw")
    (tmp / "hook").write_text("http://127.0.0.1:9/hook")
    sla = tmp / "sla.yaml"
    sla.write_text(json.dumps({
        "airflow": {"url": "http://127.0.0.1:9", "username": "admin", "password_file": str(tmp / "pw"),
                    "timeout": "1s"},
        "watcher": {"interval": "1s", "state_file": str(tmp / "sla.sqlite"), "blind_after": 1},
        "watch": [{"dag_id": "x", "rules": [{"max_age": "1h"}]}],
        "notify": {"webhook": {"url_file": str(tmp / "hook")}}}))
    kube = KubeApiServer(tmp)
    (tmp / "db").write_text(f"sqlite:///{tmp / 'none.db'}")
    heal = tmp / "heal.yaml"
    heal.write_text(json.dumps({
        "kubernetes": {"namespace": "airflow", "kubeconfig": str(kube.kubeconfig(tmp / "kubeconfig"))},
        "airflow": {"release": "r", "sql_alchemy_conn_file": str(tmp / "db")},
        "healer": {"mode": "observe", "interval": "1s", "state_file": str(tmp / "heal.sqlite")}}))
    yield tmp, sla, heal
    kube.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return r.read().decode()


def until(get, ready, timeout: float = 60.0) -> str:
    """get() again until ready(what it got)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            out = get()
            if ready(out):
                return out
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.3)


def check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith(OURS)]
    assert not problems, problems
    assert r.returncode == 0 or not any(x.startswith(OURS) for x in (r.stdout + r.stderr).split()), r.stderr
    helps = set(re.findall(r"^# HELP (\S+) \S", text, re.M))
    types = dict(re.findall(r"^# TYPE (\S+) (\w+)$", text, re.M))
    for name, kind in types.items():
        if not name.startswith(OURS):
            continue
        assert name in helps, f"{name} has no HELP"
        if kind == "counter":
            assert name.endswith("_total"), f"# TYPE {name} counter: the samples are {name}_total"
    for sample in set(re.findall(r"^((?:airflow_monitor_|airflow_sla_)\w+)[{ ]", text, re.M)):
        assert sample in types, f"{sample} has no TYPE line of its own name"


def test_serve_with_the_watcher_the_healer_and_both_sinks(configs):
    tmp, sla, heal = configs
    agent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    agent.bind(("127.0.0.1", 0))
    b = BridgeProcess(tmp, "--sla-config", str(sla), "--heal-config", str(heal), "--relay",
                      f"127.0.0.1:{agent.getsockname()[1]}", "--datadog", "agent", "--datadog-port",
                      str(agent.getsockname()[1]))
    try:
        b.send_udp("airflow.ti.finish:1|c|#dag_id:d,task_id:t,state:success", "bogus", "x,k=v:1|c|#a:b",
                   "app.y:1|c|#__name__:evil", "airflow.scheduler.scheduler_loop_duration:0.03|ms")
        text = until(lambda: b.get("/metrics")[1], lambda t: "airflow_monitor_sla_cycles_total" in t
                     and "airflow_monitor_heal_cycles_total" in t and "labels_dropped_total{" in t)
        check(text)
        for table, listed in reasons.TABLES.items():
            help_ = re.search(rf"# HELP airflow_monitor_bridge_{table}_total (.*)", text).group(1)
            assert all(r in help_ for r in listed), (table, help_)
    finally:
        b.stop()
        agent.close()
    # issue 23 item 12: libraries' chatter stays below the default level
    log = b.log.read_text()
    for noise in ("Adding job tentatively", "executed successfully", "form is authoritative", " INFO datadog"):
        assert noise not in log, (noise, log[-3000:])


@pytest.mark.parametrize("command", ["sla", "heal"])
def test_sla_run_and_heal_run(configs, command):
    tmp, sla, heal = configs
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", command, "run", "--config",
                             str(sla if command == "sla" else heal), "--metrics-listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        text = until(lambda: scrape(port), lambda t: f"airflow_monitor_{command}_cycles_total" in t)
        check(text)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
