"""What one healer cycle costs at the size of a shared Airflow: prints figures, asserts nothing.

The Kubernetes side runs against the local API server of the tests (tests/servers/kube_api.py) filled
with a release's pods (schedulers, API servers, triggerers, DAG processors and N KubernetesExecutor
worker pods, some Pending) and M Events; the database side is the probe's queries on a PostgreSQL
metadata database with T task instances (optional: --db-url, e.g. the probe bench's database).

    python bench/heal_cycle.py --workers 2000 --events 20000
    python bench/heal_cycle.py --workers 2000 --events 20000 --db-url postgresql://u:p@127.0.0.1/airflow

For each size it prints the wall time and CPU of: listing the pods, listing the Events, the pure
diagnosis rules, and (with --db-url) the database read, as the median of --cycles cycles.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.heal.rules import Observation, Settings, diagnose  # noqa: E402
from monitor.kube.client import Kube, load_api_client  # noqa: E402
from testkit.servers.kube_api import KubeApiServer, now_ts  # noqa: E402


def fill(server: KubeApiServer, workers: int, events: int, pending_every: int) -> None:
    c = server.cluster
    comps = ["scheduler"] * 2 + ["api-server"] * 2 + ["triggerer"] * 2 + ["dag-processor"] * 2
    pods = [(f"af-{comp}-{i}", comp) for i, comp in enumerate(comps)]
    pods += [(f"etl-task-{i:05d}", "worker") for i in range(workers)]
    with c.cond:
        for name, comp in pods:
            pending = comp == "worker" and pending_every and int(name.rsplit("-", 1)[1]) % pending_every == 0
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": "airflow",
                                "labels": {"release": "af", "component": comp, "tier": "airflow"}},
                   "spec": {"containers": [{"name": "base", "image": "apache/airflow:3.3.2",
                                            "resources": {"limits": {"memory": "1Gi"}}}]},
                   "status": {"phase": "Pending" if pending else "Running", "conditions": [
                       {"type": "PodScheduled", "status": "False" if pending else "True",
                        **({"reason": "Unschedulable", "message": "0/6 nodes are available: 6 Insufficient cpu."}
                           if pending else {}), "lastTransitionTime": now_ts()},
                       {"type": "Ready", "status": "False" if pending else "True", "lastTransitionTime": now_ts()}],
                       "containerStatuses": [] if pending else [
                           {"name": "base", "ready": True, "restartCount": 0, "image": "apache/airflow:3.3.2",
                            "imageID": "", "state": {"running": {"startedAt": now_ts()}}}]}}
            c.put("Pod", pod)
        for i in range(events):
            name = pods[i % len(pods)][0]
            c.put("Event", {"apiVersion": "v1", "kind": "Event",
                            "metadata": {"name": f"{name}.{i:08x}", "namespace": "airflow"},
                            "involvedObject": {"kind": "Pod", "name": name, "namespace": "airflow"},
                            "reason": "FailedScheduling" if i % 3 == 0 else "Pulled", "message": "message " * 8,
                            "type": "Warning" if i % 3 == 0 else "Normal", "count": 1,
                            "firstTimestamp": now_ts(), "lastTimestamp": now_ts()})


def timed(fn):
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
    out = fn()
    return out, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_utime - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--pending-every", type=int, default=10, help="every Nth worker pod is Pending")
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--db-url", help="also time the database read (the probe's queries per scheduler pod)")
    args = ap.parse_args()
    print(f"{'worker pods':>11} {'events':>7} | {'pods s':>7} {'events s':>8} {'rules s':>8}"
          f"{'  db s' if args.db_url else ''} | {'cycle s':>7} {'CPU s':>6} | diagnoses")
    for n in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            server = KubeApiServer(Path(tmp))
            try:
                fill(server, n, args.events, args.pending_every)
                kube = Kube(load_api_client(str(server.kubeconfig(Path(tmp) / "kc"))), "airflow", "af", timeout=60)
                rows = []
                for _ in range(args.cycles):
                    pods, tp, cp = timed(kube.pods)
                    evs, te, ce = timed(kube.events)
                    obs = Observation(now=datetime.now(UTC), pods=tuple(pods), events=tuple(evs), queued=50)
                    found, tr, cr = timed(lambda obs=obs: diagnose(obs, Settings(pending_grace=0)))
                    td = cd = 0.0
                    if args.db_url:
                        from monitor.heal.observe import read_db
                        from monitor.probe.rules import Thresholds

                        sched = [p.name for p in pods if p.component == "scheduler"]
                        _, td, cd = timed(lambda sched=sched: read_db(args.db_url, sched, Thresholds(), 3600))
                    rows.append((tp, te, tr, td, tp + te + tr + td, cp + ce + cr + cd, len(found)))
                med = [statistics.median(r[i] for r in rows) for i in range(6)]
                db = f" {med[3]:6.2f}" if args.db_url else ""
                print(f"{n:>11} {args.events:>7} | {med[0]:7.2f} {med[1]:8.2f} {med[2]:8.3f}{db} | {med[4]:7.2f} "
                      f"{med[5]:6.2f} | {rows[-1][6]}")
            finally:
                server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
