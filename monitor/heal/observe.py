"""One observation of an Airflow release: its pods and Events from the Kubernetes API, and from the
metadata database each scheduler's health through the probe's own queries (monitor.probe.db), for
the job paired with each scheduler pod (monitor.heal.pairing).

Text from the database (a job's hostname, a DAG or task id in the log table) is written by whoever can
write there: what is shown of it passes through `cluster_text`, as text from the cluster does.

A heartbeat's timestamp is written on the scheduler's clock; a healer on a node whose clock differs
would call a live scheduler stale. `HeartbeatWatch` judges it as client-go judges a Lease: stale only
once this process has watched the value not move for the whole threshold on its own monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from monitor.heal.pairing import Job, pair
from monitor.kube.models import Pod, cluster_text
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
    scheduled: int = 0  # tasks the scheduler has yet to queue
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
                        "task_instance WHERE state IN ('queued', 'running', 'scheduled') GROUP BY state", (grace,))
            counts = {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in cur.fetchall()}
            view.queued, view.queued_stuck = counts.get("queued", (0, 0))
            view.running = counts.get("running", (0, 0))[0]
            view.scheduled = counts.get("scheduled", (0, 0))[0]
            if since is not None:
                t = probe_db._param(since, dialect)
                cur.execute(f"SELECT COUNT(*) FROM task_instance WHERE last_heartbeat_at >= {ph} AND end_date >= {ph}",
                            (t, t))
                view.finished_since = int(cur.fetchone()[0])
            since = probe_db._param(now - timedelta(seconds=queued_timeout_window), dialect)
            cur.execute(f"SELECT dag_id, task_id FROM log WHERE event = 'stuck in queued tries exceeded' "
                        f"AND dttm >= {ph}", (since,))
            view.queued_timeouts = tuple((cluster_text(str(d), 250), cluster_text(str(t), 250))
                                         for d, t in cur.fetchall())
        except Exception as e:  # noqa: BLE001 - every driver has its own error classes
            raise probe_db.SourceError(f"query failed: {' '.join(str(e).split())}") from None
        paired, loose = pair(jobs, scheduler_pods)
        view.jobs = paired
        fresh = [j for j in loose if j.heartbeat is not None and (now - j.heartbeat).total_seconds() <= th.heartbeat]
        view.unpaired_jobs = tuple(sorted({cluster_text(j.hostname, 253) for j in fresh}))
        for pod in scheduler_pods:
            if pod.deleting:
                continue  # paired (its job is not a loose one), not judged
            job = paired.get(pod.name)
            if job is None:
                view.schedulers[pod.name] = Verdict(
                    "unhealthy", "heartbeat", f"no running scheduler job pairs with pod {pod.name} (by name, FQDN or "
                    f"IP {', '.join(pod.ips) or '-'})", {"unpaired": True})
                continue
            obs = probe_db.observe(conn, ph, dialect, "scheduler", th, hostname=job.hostname, local_tasks=True,
                                   now=now)
            v = evaluate(obs, th)
            view.schedulers[pod.name] = Verdict(v.status, v.check, cluster_text(v.reason, 600), v.details)
        return view
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass


class HeartbeatWatch:
    """How long this process has watched each scheduler job's heartbeat stand still (monotonic seconds),
    and whether it saw it move at all."""

    def __init__(self):
        self._seen: dict[int, tuple[datetime | None, float, bool]] = {}  # job id -> (heartbeat, since, moved)

    def still(self, job: Job, mono: float) -> tuple[float, bool]:
        """(seconds the job's heartbeat has stood still as watched, whether it was seen to move)."""
        cur = self._seen.get(job.id)
        if cur is None or cur[0] != job.heartbeat:
            cur = self._seen[job.id] = (job.heartbeat, mono, cur is not None)
        return mono - cur[1], cur[2]

    def keep(self, ids: set[int]) -> None:
        for gone in set(self._seen) - ids:
            del self._seen[gone]


def watched(view: DbView, watch: HeartbeatWatch, mono: float, th: Thresholds) -> None:
    """A stale heartbeat verdict stands only when the watch saw the heartbeat stand still for the whole
    threshold. Before that the scheduler is taken as alive when its heartbeat was seen to move (its
    clock is behind the healer's), and as not judged yet when it was not."""
    still = {pod: watch.still(job, mono) for pod, job in view.jobs.items()}
    watch.keep({j.id for j in view.jobs.values()})
    for pod, v in list(view.schedulers.items()):
        if v.status != "unhealthy" or v.check != "heartbeat" or v.details.get("unpaired") or pod not in still:
            continue
        f, moved = still[pod]
        if f >= th.heartbeat:
            continue
        if moved:
            view.schedulers[pod] = Verdict("healthy", "heartbeat", f"its heartbeat moved {f:.0f}s ago as watched, "
                                           f"though its timestamp says otherwise ({v.reason}): the scheduler's clock "
                                           "is behind this healer's", {**v.details, "watched": round(f, 1)})
        else:
            view.schedulers[pod] = Verdict("unknown", "heartbeat", f"{v.reason}; judged once watched for "
                                           f"{th.heartbeat:g}s ({f:.0f}s so far)",
                                           {**v.details, "watched": round(f, 1)})
