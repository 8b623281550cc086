"""One observation of an Airflow release: its pods and Events from the Kubernetes API, and from the
metadata database each scheduler's health through the probe's own queries (monitor.probe.db).

A scheduler job is matched to its pod by hostname: Airflow records the pod's hostname in
job.hostname, which is the pod name (a StatefulSet pod's may carry its DNS domain after a dot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from monitor.kube.models import Event, Pod
from monitor.probe import db as probe_db
from monitor.probe.rules import Thresholds, Verdict, evaluate


@dataclass
class DbView:
    schedulers: dict[str, Verdict] = field(default_factory=dict)  # pod name -> verdict
    queued: int = 0
    queued_stuck: int = 0  # queued longer than the probe's grace, by any scheduler
    running: int = 0
    finished_since: int | None = None  # tasks that ended since `since` (None: not asked)
    queued_timeouts: tuple[tuple[str, str], ...] = ()


def _pod_of(hostname: str, pods: list[str]) -> str | None:
    for p in pods:
        if hostname == p or hostname.startswith(p + "."):
            return p
    return None


def read_db(url: str, scheduler_pods: list[str], th: Thresholds, queued_timeout_window: float,
            now: datetime | None = None, timeout: float = 5.0, since: datetime | None = None) -> DbView:
    """Raises probe.db.SourceError when the database cannot be read. With `since`, also counts the
    tasks that ended since then (did the queue move after a restart?)."""
    now = now or datetime.now(UTC)
    conn, ph, dialect = probe_db.connect(url, timeout)
    try:
        view = DbView()
        try:
            cur = conn.cursor()
            cur.execute("SELECT hostname FROM job WHERE job_type = 'SchedulerJob' AND state = 'running'")
            hosts = [r[0] for r in cur.fetchall() if r[0]]
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
        by_pod = {}
        for h in hosts:
            pod = _pod_of(h, scheduler_pods)
            if pod is not None:
                by_pod[pod] = h
        for pod in scheduler_pods:
            obs = probe_db.observe(conn, ph, dialect, "scheduler", th, hostname=by_pod.get(pod, pod),
                                   local_tasks=True, now=now)
            view.schedulers[pod] = evaluate(obs, th)
        return view
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass


@dataclass
class KubeView:
    pods: list[Pod]
    events: list[Event]


def read_kube(kube) -> KubeView:
    """Raises monitor.kube.client.KubeError."""
    return KubeView(kube.pods(), kube.events())
