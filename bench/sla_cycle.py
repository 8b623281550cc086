"""Requests per cycle and cycle time of the SLA watcher for N watched DAGs on a real Airflow API.

    python bench/sla_cycle.py [--dags 1000] [--files 10] [--cycles 5]

Generates N hourly DAGs (EmptyOperator, so the scheduler finishes their runs without a
worker) in --files DAG files, starts a real Airflow 3.3.2 (`airflow standalone`, SQLite,
LocalExecutor) on them, waits until every DAG is parsed and has a finished run, then runs the
watcher's cycle in this process: the first (bootstrap) cycle and --cycles steady cycles.
Each DAG has two rules (max_age 2h, from_schedule 15m). Prints HTTP requests per cycle
(counted at the client, token requests included) against the target ceil(N/100) + 2, the
cycle's wall time and this process's peak RSS. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monitor.sla.config import parse  # noqa: E402
from monitor.sla.service import build  # noqa: E402
from testkit.airflow import Airflow  # noqa: E402

DAG_FILE = '''
import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

for i in range({first}, {last}):
    with DAG(dag_id=f"bench_{{i:05d}}", schedule="@hourly", catchup=False, tags=["bench"],
             start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        EmptyOperator(task_id="noop")
    globals()[dag.dag_id] = dag
'''


def generate(folder: Path, n: int, files: int) -> None:
    per = math.ceil(n / files)
    for f in range(files):
        first, last = f * per, min(n, (f + 1) * per)
        if first < last:
            (folder / f"bench_dags_{f:02d}.py").write_text(DAG_FILE.format(first=first, last=last))


def wait_ready(af: Airflow, n: int, timeout: float = 900) -> None:
    t0, deadline, last = time.monotonic(), time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        dags = af.api("GET", "/dags?limit=1&tags=bench")["total_entries"]
        done = af.api("POST", "/dags/~/dagRuns/list", {"states": ["success", "failed"], "page_limit": 1})
        status = f"{dags}/{n} DAGs parsed, {done['total_entries']} runs finished"
        if status != last:
            print(f"  [{time.monotonic() - t0:5.0f}s] {status}", flush=True)
            last = status
        if dags >= n and done["total_entries"] >= n:
            return
        time.sleep(5)
    raise TimeoutError(f"Airflow not ready after {timeout}s: {last}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dags", type=int, default=1000)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--cycles", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sla-bench-") as tmp:
        home, dags = Path(tmp) / "home", Path(tmp) / "dags"
        dags.mkdir()
        generate(dags, args.dags, args.files)
        af = Airflow(home=home, dags_folder=dags, env_extra={
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "300",
            "AIRFLOW__SCHEDULER__MAX_DAGRUNS_TO_CREATE_PER_LOOP": "200",
            "AIRFLOW__SCHEDULER__MAX_DAGRUNS_PER_LOOP_TO_SCHEDULE": "200",
            "AIRFLOW__CORE__MAX_ACTIVE_RUNS_PER_DAG": "1",
        })
        print(f"starting Airflow 3.3.2 with {args.dags} generated DAGs in {args.files} files ...", flush=True)
        af.start()
        try:
            wait_ready(af, args.dags)
            (home / "pw").write_text("admin")
            cfg = parse({
                "airflow": {"url": af.api_url, "username": "admin", "password_file": str(home / "pw"),
                            "timeout": "60s"},
                "watcher": {"state_file": ":memory:"},
                "watch": [{"tag": "bench", "rules": [{"max_age": "2h"}, {"from_schedule": "15m"}]}],
            })
            w = build(cfg)
            target = math.ceil(args.dags / 100) + 2
            rows = []
            for i in range(args.cycles + 1):
                r0 = w.rest.requests + w.rest.token_requests
                t = time.perf_counter()
                judged = w.cycle()
                rows.append((i, w.rest.requests + w.rest.token_requests - r0, time.perf_counter() - t, len(judged)))
                time.sleep(1)
            breached = sum(j.verdict.breached for j in w.judgements.values())
        finally:
            af.stop()
    print(f"\nwatched DAGs: {args.dags}; rules judged per cycle: {rows[-1][3]}; breached at the end: {breached}")
    print(f"target requests per cycle: ceil(N/100) + 2 = {target}")
    print("| cycle | requests | wall time |\n| --- | --- | --- |")
    for i, req, wall, _ in rows:
        print(f"| {'bootstrap' if i == 0 else i} | {req} | {wall * 1000:.0f} ms |")
    steady = rows[1:]
    print(f"\nsteady cycles: max {max(r[1] for r in steady)} requests (target {target}), "
          f"median {statistics.median(r[2] for r in steady) * 1000:.0f} ms wall")
    print(f"peak RSS of the watcher process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
