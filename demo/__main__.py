"""airflow-monitor demo: a real Airflow 3.3.2 on this machine sends statsd to the bridge, the SLA
watcher beside it pages a local chat webhook, and the probe judges the scheduler. Everything is
narrated in the terminal. Run `scripts/demo.sh` (it builds the Airflow venv on first use).

Story: three DAGs run (demo_ok succeeds, demo_fail fails, demo_late runs past its 10 s budget);
metrics arrive; the watcher pages for demo_fail and demo_late (and for demo_ok if it looks before
demo_ok's first run ends) and resolves each once it is met again; then the executor is frozen so
a task sits queued: the probe fails while `airflow jobs check` still says the scheduler is alive;
the executor thaws and the probe recovers.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from testkit.airflow import Airflow, airflow_venv, free_port, statsd_env  # noqa: E402
from testkit.bridge import BridgeProcess  # noqa: E402
from testkit.servers.webhook import WebhookServer  # noqa: E402

DAGS = ("demo_ok", "demo_fail", "demo_late")
EXPECTED_RUNS = {"demo_ok": "success", "demo_fail": "failed", "demo_late": "success"}
LATE_BUDGET = "10s"


class Narrator:
    def __init__(self):
        self.t0 = time.monotonic()

    def __call__(self, msg: str = "", *, indent: bool = False) -> None:
        stamp = " " * 8 if indent else f"[{time.monotonic() - self.t0:4.0f}s] "
        print(stamp + msg, flush=True)


def total(scrape: dict, family: str, **labels) -> float:
    """A counter's total, a histogram's count or a gauge's value, summed over matching series."""
    return sum(v for name in (family, family + "_total", family + "_count") for k, v in scrape.get(name, {}).items()
               if all(dict(k).get(lk) == lv for lk, lv in labels.items()))


def metrics_line(scrape: dict) -> str:
    airflow = {name: series for name, series in scrape.items() if name.startswith("airflow_")
               and not name.startswith(("airflow_monitor_", "airflow_sla_"))
               and not name.endswith(("_bucket", "_sum", "_created"))}
    families = {name.removesuffix("_total").removesuffix("_count") for name in airflow}
    return (f"metrics: {len(families)} Airflow families, {sum(map(len, airflow.values()))} series on /metrics; "
            f"scheduler heartbeats {total(scrape, 'airflow_scheduler_heartbeat'):.0f}, "
            f"tasks ok {total(scrape, 'airflow_ti_successes'):.0f}"
            f" / failed {total(scrape, 'airflow_ti_failures'):.0f}, "
            f"DAG runs timed {total(scrape, 'airflow_dagrun_duration'):.0f}")


def probe(airflow: Airflow, *extra: str) -> tuple[int, dict, float]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "monitor.cli", "probe", "scheduler", "--json",
                        "--sql-alchemy-conn", f"sqlite:///{airflow.home / 'airflow.db'}", *extra],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    return r.returncode, json.loads(r.stdout or "{}"), (time.perf_counter() - t) * 1000


def verdict(code: int, out: dict, ms: float) -> str:
    return f"exit {code}, {out.get('status')} ({out.get('check')}): {out.get('reason')}  [{ms:.0f} ms]"


def chat_line(msg: dict) -> str:
    a = msg["airflow_monitor"]
    word = {"open": "PAGE    ", "close": "RESOLVED", "remind": "REMINDER"}[a["action"]]
    return f"{word} {a['dag_id']}/{a['rule']} [{a['priority']}] {a['message'].removeprefix('[SLA] ')}"


def run(args) -> int:
    say = Narrator()
    tmp = Path(tempfile.mkdtemp(prefix="airflow-monitor-demo-"))
    venv = airflow_venv()
    chat = WebhookServer()   # where the SLA watcher's pages land in this demo
    (tmp / "airflow-password").write_text("admin")
    api_port = free_port()
    sla_config = tmp / "sla.yaml"
    sla_config.write_text(json.dumps({
        "airflow": {"url": f"http://127.0.0.1:{api_port}", "username": "admin",
                    "password_file": str(tmp / "airflow-password"), "timeout": "5s"},
        "watcher": {"interval": "3s", "state_file": str(tmp / "sla.sqlite"), "blind_after": 1000},
        "notify": {"webhook": {"url": chat.hook_url}},
        "watch": [
            {"dag_id": "demo_ok", "rules": [{"name": "fresh", "max_age": "1h"}]},
            {"dag_id": "demo_fail", "priority": "P2", "rules": [{"name": "fresh", "max_age": "1h"}]},
            {"dag_id": "demo_late", "rules": [{"name": "budget", "max_duration": LATE_BUDGET}]},
        ],
    }, indent=2))
    bridge = BridgeProcess(tmp, "--sla-config", str(sla_config))   # bridge and SLA watcher in one process
    airflow = Airflow(home=tmp / "airflow", venv=venv, dags_folder=REPO / "demo" / "dags", api_port=api_port,
                      env_extra={**statsd_env(bridge.udp, "datadog"), "DEMO_LATE_SECONDS": str(args.late_seconds)})
    print("airflow-monitor demo: real Airflow 3.3.2 -> statsd -> bridge (+ SLA watcher) -> /metrics and pages",
          flush=True)
    say(f"bridge + SLA watcher: statsd udp 127.0.0.1:{bridge.udp} -> http://127.0.0.1:{bridge.http}/metrics")
    say(f"SLA config {sla_config}; pages go to a local chat webhook")
    missing: list[str] = []
    try:
        say(f"starting Airflow 3.3.2 (airflow standalone, SQLite) from {venv}; about a minute ...")
        airflow.start()
        for dag in DAGS:
            airflow.wait_dag(dag)
        say(f"Airflow is up at {airflow.api_url} (admin/admin); DAGs {', '.join(DAGS)} parsed")
        say(metrics_line(bridge.scrape()))
        code, out, ms = probe(airflow)
        say(f"probe scheduler: {verdict(code, out, ms)}")
        runs = {dag: airflow.trigger(dag) for dag in DAGS}
        say(f"triggered {', '.join(DAGS)} (demo_late sleeps {args.late_seconds}s; its budget is {LATE_BUDGET})")
        missing = watch_runs(say, airflow, bridge, chat, runs, args.timeout)
        missing += stuck_queue(say, airflow, venv)
        for msg in chat.take():
            say(chat_line(msg))
        say("sla status:")
        status = subprocess.run([sys.executable, "-m", "monitor.cli", "sla", "status", "--config", str(sla_config)],
                                capture_output=True, text=True, cwd=REPO, timeout=60)
        for line in status.stdout.splitlines():
            say(line, indent=True)
        if args.keep:
            say(f"still running; Airflow {airflow.api_url}, metrics http://127.0.0.1:{bridge.http}/metrics. "
                "Ctrl-C stops everything.")
            stop = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop)   # sigwait takes them instead of a handler
            signal.sigwait(stop)
            print()
    except KeyboardInterrupt:
        missing.append("interrupted")
    finally:
        say("stopping Airflow and the bridge")
        airflow.stop()
        bridge.stop()
        chat.close()
    if missing:
        say(f"demo incomplete: {'; '.join(missing)} (logs in {tmp})")
        return 1
    say(f"demo complete (logs in {tmp})")
    return 0


def watch_runs(say, airflow: Airflow, bridge: BridgeProcess, chat: WebhookServer, runs: dict[str, str],
               timeout: float) -> list[str]:
    """Narrate until every run ended and the pages it should cause arrived (open + close for
    demo_late, open for demo_fail); return what did not happen in time."""
    states: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + timeout
    last_metrics = 0.0
    want = {("open", "demo_fail"), ("open", "demo_late"), ("close", "demo_late")}
    while time.monotonic() < deadline:
        for dag, run_id in runs.items():
            if dag in states:
                continue
            state = airflow.api("GET", f"/dags/{dag}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                states[dag] = state
                say(f"run {dag}: {state}")
        for msg in chat.take():
            seen.add((msg["airflow_monitor"]["action"], msg["airflow_monitor"]["dag_id"]))
            say(chat_line(msg))
        if time.monotonic() - last_metrics >= 10:
            last_metrics = time.monotonic()
            say(metrics_line(bridge.scrape()))
        if len(states) == len(runs) and want <= seen:
            break
        time.sleep(1)
    fams = bridge.scrape()
    for dag, state in sorted(states.items()):
        n = total(fams, "airflow_dagrun_duration", dag_id=dag, state=state)
        say(f'airflow_dagrun_duration_count{{dag_id="{dag}",state="{state}"}} = {n:.0f}', indent=True)
    wrong = [f"{d} ended {states.get(d, 'not yet')} (expected {s})" for d, s in EXPECTED_RUNS.items()
             if states.get(d) != s]
    return wrong + [f"no {a} page for {d}" for a, d in sorted(want - seen)]


def stuck_queue(say, airflow: Airflow, venv: Path) -> list[str]:
    """Freeze the executor's workers: a task sits queued. The probe fails; `airflow jobs check` does not."""
    fast = ("--queued-grace", "5", "--finished-window", "10")
    say("freezing the LocalExecutor workers (SIGSTOP): the scheduler keeps heartbeating, tasks stay queued")
    if not airflow.signal("LocalExecutor", signal.SIGSTOP):
        return ["no LocalExecutor worker found to freeze"]
    missing = []
    try:
        run_id = airflow.trigger("demo_ok")
        deadline = time.monotonic() + 90
        code, out, ms = 0, {}, 0.0
        while time.monotonic() < deadline and code != 1:
            time.sleep(3)
            code, out, ms = probe(airflow, *fast)
        say(f"probe scheduler {' '.join(fast)}: {verdict(code, out, ms)}")
        if code != 1:
            missing.append("the probe did not catch the stuck queue")
        t = time.perf_counter()
        jobs = subprocess.run([str(venv / "bin" / "airflow"), "jobs", "check", "--job-type", "SchedulerJob"],
                              env=airflow.env(), capture_output=True, text=True, timeout=120)
        say(f"airflow jobs check: exit {jobs.returncode}, {jobs.stdout.strip()}  "
            f"[{(time.perf_counter() - t) * 1000:.0f} ms]  <- the usual liveness probe sees nothing wrong")
    finally:
        airflow.signal("LocalExecutor", signal.SIGCONT)
    say("executor thawed (SIGCONT)")
    state = airflow.wait_run("demo_ok", run_id)
    code, out, ms = probe(airflow, *fast)
    say(f"run demo_ok: {state}; probe scheduler: {verdict(code, out, ms)}")
    if code != 0:
        missing.append("the probe did not recover")
    return missing


def main() -> int:
    p = argparse.ArgumentParser(prog="scripts/demo.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", action="store_true", help="leave everything running at the end until Ctrl-C")
    p.add_argument("--late-seconds", type=int, default=35, help="how long demo_late runs (its budget is 10s)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the runs and pages")
    return run(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
