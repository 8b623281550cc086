"""What the watcher remembers of each DAG's runs between cycles (in memory).

The first cycle reads the finished runs of the look-back window; later cycles read only runs
finished since the previous cycle plus the runs still active, so a cycle's cost grows with
the number of DAGs / 1000, not with the history. Runs older than the look-back are
forgotten, except each DAG's latest success and latest run.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from monitor.sla.rules import History, Run

ACTIVE = ("queued", "running")
OVERLAP = timedelta(minutes=5)  # re-read before the previous cycle: a run's end_date can commit late


class RunHistory:
    def __init__(self):
        self._runs: dict[str, dict[str, Run]] = {}
        self._last_success: dict[str, datetime | None] = {}
        self._ever_ran: dict[str, bool] = {}
        self._tracked: set[str] = set()

    def known(self, dag_id: str) -> bool:
        """Its history was read in full once; from now on only changes are read."""
        return dag_id in self._tracked

    def track(self, dag_id: str) -> None:
        self._runs.setdefault(dag_id, {})
        self._tracked.add(dag_id)

    def forget(self, keep: set[str]) -> None:
        for dag_id in list(self._runs):
            if dag_id not in keep:
                self._runs.pop(dag_id, None)
                self._last_success.pop(dag_id, None)
                self._ever_ran.pop(dag_id, None)
                self._tracked.discard(dag_id)

    def add(self, run: Run) -> None:
        self._runs.setdefault(run.dag_id, {})[run.run_id] = run
        self._ever_ran[run.dag_id] = True
        if run.state == "success" and run.end_date is not None:
            prev = self._last_success.get(run.dag_id)
            if prev is None or run.end_date > prev:
                self._last_success[run.dag_id] = run.end_date

    def note_last_success(self, dag_id: str, end: datetime | None) -> None:
        if end is not None:
            self._ever_ran[dag_id] = True
            prev = self._last_success.get(dag_id)
            if prev is None or end > prev:
                self._last_success[dag_id] = end

    def note_ever_ran(self, dag_id: str, ran: bool) -> None:
        self._ever_ran[dag_id] = self._ever_ran.get(dag_id, False) or ran

    def has_success(self, dag_id: str) -> bool:
        return self._last_success.get(dag_id) is not None

    def has_runs(self, dag_id: str) -> bool:
        return bool(self._runs.get(dag_id))

    def settle_active(self, dag_ids: set[str], seen: set[tuple[str, str]]) -> None:
        """Runs we held as active that Airflow no longer lists at all were deleted: drop them."""
        for dag_id in dag_ids:
            runs = self._runs.get(dag_id, {})
            for run_id in [rid for rid, r in runs.items() if r.state in ACTIVE and (dag_id, rid) not in seen]:
                del runs[run_id]

    def prune(self, before: datetime) -> None:
        for runs in self._runs.values():
            if len(runs) < 2:
                continue
            latest = max(runs.values(), key=lambda r: r.run_after)
            for run_id in [rid for rid, r in runs.items()
                           if r is not latest and r.state not in ACTIVE and r.run_after < before]:
                del runs[run_id]

    def history(self, dag_id: str) -> History:
        return History(runs=tuple(self._runs.get(dag_id, {}).values()),
                       last_success_end=self._last_success.get(dag_id),
                       ever_ran=self._ever_ran.get(dag_id, False))

    def last_success(self, dag_id: str) -> datetime | None:
        return self._last_success.get(dag_id)
