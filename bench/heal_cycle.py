"""What the healer costs at the size of a shared Airflow: prints figures, asserts nothing.

The local Kubernetes API server of the tests (testkit/servers/kube_api.py) is filled with a release shaped
as a real cluster reports it (the objects of tests/fixtures/kubernetes: kubelet-written pods with their
managedFields, init containers and volumes, about 7 KB of JSON each; kube-scheduler's and the kubelet's
Events): the components, a few hundred other pods of the release, and KubernetesExecutor worker pods,
5 % of them Pending (half unschedulable, with kube-scheduler's FailedScheduling Event; half scheduled and
waiting for a volume, which only the kubelet's FailedMount Event explains, so the healer must read the
Events); Events five times the pods.

For each size it measures, in processes of their own (the server's work is in this process):
- `airflow-monitor heal check`: one look, as an operator or a cron job runs it: wall time and peak RSS;
- `airflow-monitor heal run` (mode observe): the steady cycle, from its own cycle-duration gauge, and the
  process's peak RSS after --cycles cycles.
With --before REV it measures the same for another revision of the repository (a temporary worktree),
side by side: `python bench/heal_cycle.py --sizes 2000 10000 --before fab676e`.

The metadata database is a real Airflow 3.3.2 schema (SQLite, made once with the test venv's
`airflow db migrate`); the scheduler pods' jobs are not in it (blind on nothing, no restart: mode observe).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testkit.airflow import airflow_venv, free_port  # noqa: E402
from testkit.servers.kube_api import KubeApiServer  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "kubernetes"
NS, RELEASE = "airflow", "airflow"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def fill(server: KubeApiServer, pods: int, events: int) -> dict:
    """A release of `pods` pods shaped as the fixtures: 8 components, 5 % others, the rest workers (5 %
    of them Pending), and `events` Events (a FailedScheduling per Pending worker, the rest kubelet's)."""
    c = server.cluster
    sched = load("pod-scheduler-statefulset-running.json")
    comps = [it for it in load("podlist-paginated-page1.json")["items"]]
    pending = load("pod-worker-pending-unschedulable.json")
    running = copy.deepcopy(pending)
    running["status"] = copy.deepcopy(sched["status"])
    running["status"]["containerStatuses"][0]["name"] = "base"
    running["spec"]["nodeName"] = "k8s-worker-02"
    mounting = copy.deepcopy(running)  # scheduled, its volume not mounted: only its Events say why
    mounting["status"]["phase"] = "Pending"
    mounting["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    mounting["status"]["containerStatuses"][0]["ready"] = False
    fs = load("events-k8s-io-failedscheduling.json")["items"][0]
    mount = load("event-core-failedmount.json")
    others = max(0, pods // 20 - 8)
    workers = pods - 8 - others
    n_pending = workers // 20
    counts = {"component": 0, "other": 0, "worker": 0, "pending": 0, "events": 0}

    def put_pod(template: dict, name: str, labels: dict) -> dict:
        p = copy.deepcopy(template)
        p.update(apiVersion="v1", kind="Pod")
        meta = p["metadata"]
        meta.update(name=name, namespace=NS, uid=str(uuid.uuid4()), labels={**meta.get("labels", {}), **labels})
        meta.pop("resourceVersion", None)
        c.put("Pod", p)
        return p

    with c.cond:
        for i in range(8):
            comp = ["scheduler", "scheduler", "api-server", "api-server", "triggerer", "triggerer", "dag-processor",
                    "dag-processor"][i]
            tpl = sched if comp == "scheduler" else (comps[i % len(comps)])
            put_pod(tpl, f"{RELEASE}-{comp}-{i}", {"component": comp, "release": RELEASE})
            counts["component"] += 1
        for i in range(others):
            put_pod(running, f"{RELEASE}-run-airflow-migrations-{i:04d}", {"component": "run-airflow-migrations",
                                                                           "release": RELEASE})
            counts["other"] += 1
        pending_pods = []
        for i in range(workers):
            tpl = (pending if i % 2 else mounting) if i < n_pending else running
            p = put_pod(tpl, f"etl-orders-task-{i:06d}-{uuid.uuid4().hex[:8]}", {"component": "worker",
                                                                                   "release": RELEASE})
            counts["worker"] += 1
            if i < n_pending:
                counts["pending"] += 1
                pending_pods.append(p)
        names = [p["metadata"] for p in pending_pods]
        all_pods = [o["metadata"] for o in c.items("Pod", NS)]
        for i in range(events):
            if i < len(names):
                e, meta = copy.deepcopy(fs if i % 2 else mount), names[i]
            else:
                e, meta = copy.deepcopy(mount), all_pods[i % len(all_pods)]
            e.update(apiVersion="v1", kind="Event")
            e["metadata"] = {**e["metadata"], "name": f"{meta['name']}.{i:016x}", "namespace": NS,
                             "uid": str(uuid.uuid4())}
            e["metadata"].pop("resourceVersion", None)
            e["involvedObject"] = {**e["involvedObject"], "name": meta["name"], "uid": meta["uid"]}
            c.put("Event", e)
            counts["events"] += 1
    return counts


def airflow_db(tmp: Path) -> str:
    """A migrated Airflow 3.3.2 metadata database (SQLite), made once and cached."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "airflow-monitor" / "bench-airflow.db"
    if not cache.exists():
        venv = airflow_venv()
        home = tmp / "airflow-home"
        home.mkdir(exist_ok=True)
        env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{cache}",
               "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
        subprocess.run([str(venv / "bin" / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True,
                       timeout=900)
    db = tmp / "airflow.db"
    shutil.copy(cache, db)
    return f"sqlite:///{db}"


# a small parent for the measured process: a child forked from this big one (the server holds the whole
# cluster) would count the parent's pages as its own until it execs
MEASURE = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
           "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
           "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)")


def run_check(python: str, cwd: Path, cfg: Path, env: dict) -> tuple[float, float, int]:
    """(wall s, peak RSS MiB, exit code) of one `heal check`."""
    out = subprocess.run([python, "-c", MEASURE, python, "-m", "monitor.cli", "heal", "check", "--config", str(cfg)],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=900).stdout.split()
    return float(out[0]), int(out[1]) / 1024, int(out[2])


def run_steady(python: str, cwd: Path, cfg: Path, env: dict, cycles: int) -> tuple[list[float], float]:
    """Cycle durations of a running `heal run` (from its gauge) and its peak RSS MiB (VmHWM)."""
    port = free_port()
    p = subprocess.Popen([python, "-m", "monitor.cli", "heal", "run", "--config", str(cfg), "--metrics-listen",
                          f"127.0.0.1:{port}"], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    seen: dict[float, float] = {}
    deadline = time.monotonic() + 60 + cycles * 30
    try:
        while len(seen) < cycles + 1 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.5)
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
            except OSError:
                continue
            n = re.search(r"^airflow_monitor_heal_cycles_total (\S+)", text, re.M)
            d = re.search(r"^airflow_monitor_heal_cycle_duration_seconds (\S+)", text, re.M)
            if n and d and float(n.group(1)) >= 1:
                seen[float(n.group(1))] = float(d.group(1))
        hwm = 0.0
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
        return [v for k, v in sorted(seen.items())][1:], hwm  # the first cycle starts cold
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def config(tmp: Path, server: KubeApiServer, db_url: str, name: str) -> tuple[Path, dict]:
    (tmp / "db-url").write_text(db_url)
    kc = server.kubeconfig(tmp / "kubeconfig")
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(json.dumps({
        "kubernetes": {"namespace": NS, "kubeconfig": str(kc), "timeout": "60s"},
        "airflow": {"release": RELEASE, "sql_alchemy_conn_file": str(tmp / "db-url")},
        "healer": {"mode": "observe", "interval": "5s", "state_file": str(tmp / f"{name}.sqlite")},
        "thresholds": {"pending_grace": "0s"}}))
    return cfg, {**os.environ, "POD_NAME": f"bench-{name}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000], help="pods in the release")
    ap.add_argument("--events-per-pod", type=float, default=5.0)
    ap.add_argument("--checks", type=int, default=3, help="heal check runs per size (median)")
    ap.add_argument("--cycles", type=int, default=5, help="steady cycles of heal run per size")
    ap.add_argument("--before", help="also measure this git revision (e.g. fab676e), side by side")
    args = ap.parse_args()
    load_avg = os.getloadavg()
    print(f"load average at start: {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        revs = [("now", str(REPO))]
        if args.before:
            wt = tmp / "before"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(wt), args.before], check=True,
                           capture_output=True)
            revs.insert(0, (args.before, str(wt)))
        try:
            db_url = airflow_db(tmp)
            print(f"{'pods':>6} {'events':>7} {'code':>8} | {'check s':>7} {'check MiB':>9} | {'cycle s':>7} "
                  f"{'run MiB':>8} | pending, listed")
            for size in args.sizes:
                server = KubeApiServer(tmp)
                try:
                    counts = fill(server, size, int(size * args.events_per_pod))
                    for rev, cwd in revs:
                        cfg, env = config(tmp, server, db_url, rev.replace("/", "_"))
                        checks = [run_check(sys.executable, Path(cwd), cfg, env) for _ in range(args.checks)]
                        wall = statistics.median(c[0] for c in checks)
                        rss = max(c[1] for c in checks)
                        cycles, hwm = run_steady(sys.executable, Path(cwd), cfg, env, args.cycles)
                        cyc = f"{statistics.median(cycles):7.2f}" if cycles else "     - "
                        print(f"{size:>6} {counts['events']:>7} {rev:>8} | {wall:7.2f} {rss:9.0f} | {cyc} "
                              f"{hwm:8.0f} | {counts['pending']}, exit {checks[0][2]}", flush=True)
                finally:
                    server.close()
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / "before")],
                               capture_output=True)
    load_avg = os.getloadavg()
    print(f"load average at end: {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
