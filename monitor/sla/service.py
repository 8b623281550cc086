"""Build a watcher from config (monitor.worker runs it on a schedule; monitor.serve composes it)."""

from __future__ import annotations

from monitor.airflow.rest import AirflowRest
from monitor.alerting.alerts import Alerts
from monitor.alerting.config import build_notifiers
from monitor.sla.config import SLAConfig
from monitor.sla.state import SLAState
from monitor.sla.watcher import Watcher


def build(cfg: SLAConfig, fresh_state: bool = False, read_only: bool = False) -> Watcher:
    """Raises StateEmpty for a state file that lost its content (unless fresh_state). read_only: a look that
    changes nothing on disk (check without --notify, status, test-notify)."""
    a = cfg.airflow
    rest = AirflowRest(a.url, a.username, a.password, a.token, a.timeout, a.verify_tls)
    state = SLAState(cfg.state_file, fresh=fresh_state, read_only=read_only)
    return Watcher(cfg, rest, Alerts(state, build_notifiers(cfg.notify), source="airflow-sla"))
