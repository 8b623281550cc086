"""One observation of an Airflow release: its pods and Events from the Kubernetes API, and from the
metadata database each scheduler's health through the probe's own queries (monitor.probe.db), for
the job paired with each scheduler pod (monitor.heal.pairing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from monitor.heal.pairing import Job, pair
from monitor.kube.models import Pod
from monitor.probe import db as probe_db
from monitor.probe.rules import Thresholds, Verdict, evaluate


@dataclass
class DbView:
    schedulers: dict[str, Verdict] = field(default_factory=dict)  # pod name -> verdict
    unpaired_jobs: tuple[str, ...] = ()  # hostnames of live scheduler jobs that pair with no pod
    jobs: dict[str, Job] = field(default_factory=dict)  # pod name -> its job
    queued: int = 0
    queued_stuck: int = 0  # queued longer than the probe's grace, by any scheduler
    running: int = 0
    finished_since: int | None = None  # tasks that ended since `since` (None: not asked)
    queued_timeouts: tuple[tuple[str, str], ...] = ()


def read_db(url: str, scheduler_pods: list[Pod], th: Thresholds, queued_timeout_window: float,
            now: datetime | None = None, timeout: float = 5.0, since: datetime | None = None) -> DbView:
    """Raises probe.db.SourceError when the database cannot be read. With `since`, also counts the
    tasks that ended since then (did the queue move after a restart?)."""
    now = now or datetime.now(UTC)
    conn, ph, dialect = probe_db.connect(url, timeout)
    try:
        view = DbView()
        try:
            cur = conn.cursor()
            cur.execute("SELECT id, hostname, latest_heartbeat FROM job WHERE job_type = 'SchedulerJob' "
                        "AND state = 'running'")
            jobs = [Job(int(r[0]), str(r[1] or ""), probe_db.parse_ts(r[2])) for r in cur.fetchall()]
            grace = probe_db._param(now - timedelta(seconds=th.queued_grace), dialect)
            cur.execute(f"SELECT state, COUNT(*), SUM(CASE WHEN queued_dttm < {ph} THEN 1 ELSE 0 END) FROM "
                        "task_instance WHERE state IN ('queued', 'running') GROUP BY state", (grace,))
            counts = {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in cur.fetchall()}
            view.queued, view.queued_stuck = counts.get("queued", (0, 0))
            view.running = counts.get("running", (0, 0))[0]
            if since is not None:
                t = probe_db._param(since, dialect)
                cur.execute(f"SELECT COUNT(*) FROM task_instance WHERE last_heartbeat_at >= {ph} AND end_date >= {ph}",
                            (t, t))
                view.finished_since = int(cur.fetchone()[0])
            since = probe_db._param(now - timedelta(seconds=queued_timeout_window), dialect)
            cur.execute(f"SELECT dag_id, task_id FROM log WHERE event = 'stuck in queued tries exceeded' "
                        f"AND dttm >= {ph}", (since,))
            view.queued_timeouts = tuple((str(d), str(t)) for d, t in cur.fetchall())
        except Exception as e:  # noqa: BLE001 - every driver has its own error classes
            raise probe_db.SourceError(f"query failed: {' '.join(str(e).split())}") from None
        paired, loose = pair(jobs, scheduler_pods)
        view.jobs = paired
        fresh = [j for j in loose if j.heartbeat is not None and (now - j.heartbeat).total_seconds() <= th.heartbeat]
        view.unpaired_jobs = tuple(sorted({j.hostname for j in fresh}))
        for pod in scheduler_pods:
            job = paired.get(pod.name)
            if job is None:
                view.schedulers[pod.name] = Verdict(
                    "unhealthy", "heartbeat", f"no running scheduler job pairs with pod {pod.name} (by name, FQDN or "
                    f"IP {', '.join(pod.ips) or '-'})", {"unpaired": True})
                continue
            obs = probe_db.observe(conn, ph, dialect, "scheduler", th, hostname=job.hostname, local_tasks=True,
                                   now=now)
            view.schedulers[pod.name] = evaluate(obs, th)
        return view
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass
