"""Cost of `airflow-monitor probe scheduler` against `airflow jobs check --job-type SchedulerJob --local`.

    python bench/probe_cost.py [--runs 5] [--sql-alchemy-conn URL]

Both run as whole processes with the Airflow venv's Python (what the scheduler container has),
on the same database in the same run: a real Airflow 3.3.2 schema made by `airflow db migrate`
(SQLite by default) with a running-scheduler job row, so both commands find an alive job.
Prints median wall time, CPU time and peak RSS of each, and the ratios. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monitor.probe.settings import _getfqdn  # noqa: E402
from testkit.airflow import airflow_venv  # noqa: E402


def measure(cmd: list[str], env: dict) -> tuple[float, float, int, int]:
    """wall seconds, CPU seconds, peak RSS bytes, exit code of one child process."""
    t = time.perf_counter()
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over all children)
    pid = os.fork()
    if pid == 0:
        os.execve(cmd[0], cmd, env)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sql-alchemy-conn")
    args = ap.parse_args()
    venv = airflow_venv()
    home = Path(tempfile.mkdtemp(prefix="probe-bench-"))
    url = args.sql_alchemy_conn or f"sqlite:///{home / 'airflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=url, PYTHONPATH=str(REPO),
               AIRFLOW__CORE__LOAD_EXAMPLES="False")
    subprocess.run([str(venv / "bin" / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    if url.startswith("sqlite"):
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        with sqlite3.connect(url.split(":///", 1)[1]) as c:
            c.execute("INSERT INTO job (state, job_type, start_date, latest_heartbeat, hostname) "
                      "VALUES ('running', 'SchedulerJob', ?, ?, ?)", (now, now, _getfqdn()))
        env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD"] = "100000"  # the row ages during the bench
    py = str(venv / "bin" / "python")
    cmds = {
        "airflow jobs check --local": [str(venv / "bin" / "airflow"), "jobs", "check", "--job-type", "SchedulerJob",
                                       "--local"],
        "airflow-monitor probe scheduler --local": [py, "-m", "monitor.cli", "probe", "scheduler", "--local"],
    }
    results = {}
    for name, cmd in cmds.items():
        runs = [measure(cmd, env) for _ in range(args.runs)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        codes = sorted({r[3] for r in runs})
        results[name] = (wall, cpu, rss)
        print(f"{name:42} wall {wall * 1000:8.1f} ms   cpu {cpu * 1000:8.1f} ms   peak RSS {rss / 2**20:6.1f} MiB"
              f"   exit {codes}")
    (aw, ac, ar), (pw, pc, pr) = results.values()
    print(f"probe vs jobs check: {aw / pw:.0f}x less wall time, {ac / pc:.0f}x less CPU, "
          f"{pr / ar:.2f} of the peak RSS")


if __name__ == "__main__":
    main()
