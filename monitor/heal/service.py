"""Build a healer from its config: the Kubernetes client, the Lease, its state in the cluster (a
ConfigMap beside the Lease), the notifiers."""

from __future__ import annotations

import logging
from pathlib import Path

from monitor.alerting.alerts import Alerts
from monitor.alerting.config import build_notifiers
from monitor.heal.config import HealConfig
from monitor.heal.healer import Healer
from monitor.heal.state import HealState
from monitor.kube.client import COMPONENTS, Kube, load_api_client
from monitor.kube.configmap import ConfigMapDoc
from monitor.kube.lease import Lease, identity

log = logging.getLogger(__name__)
OLD_STATE = "airflow-monitor-heal.sqlite"  # 0.1.0's default state file


def state_name(cfg: HealConfig) -> str:
    return f"{cfg.lease_name}-state"


def build(cfg: HealConfig, lease: bool = True, read_only: bool = False) -> Healer:
    """read_only (heal status, heal check): no Lease, no notifier, nothing written. Raises KubeError
    (credentials)."""
    api = load_api_client(cfg.kubeconfig, cfg.context)
    me = identity()
    comps = tuple(dict.fromkeys((*COMPONENTS, *cfg.settings.components)))
    kube = Kube(api, cfg.namespace, cfg.release, cfg.kube_timeout, identity=me, components=comps)
    name = state_name(cfg)
    state = HealState(ConfigMapDoc(kube, name), f"ConfigMap {cfg.namespace}/{name}", read_only=read_only)
    state.clock = kube.clock.time  # every replica judges the times it keeps on the API server's clock
    notifiers = [] if read_only else build_notifiers(cfg.notify)
    elector = None
    if cfg.lease and lease and not read_only:
        elector = Lease(api, cfg.namespace, cfg.lease_name, cfg.lease_duration, me, timeout=cfg.kube_timeout)
    healer = Healer(cfg, kube, Alerts(state, notifiers, source=f"airflow-heal:{cfg.namespace}/{cfg.release}"), elector)
    healer.watching = not read_only  # a one-time look judges heartbeats by their timestamps alone
    if not read_only:
        # 0.1.0's SQLite state, imported once by the first leader (only a leader writes the state)
        healer.import_from = cfg.state_file or (OLD_STATE if Path(OLD_STATE).is_file() else "")
    if not read_only:  # a running healer keeps the Warning Events in a list-and-watch cache; a look lists them
        from monitor.heal.rules import EVENT_REASONS
        from monitor.kube.events import EventWatch

        healer.event_watch = EventWatch(kube, reasons=EVENT_REASONS).start()
    if elector is not None:
        elector.start()
    return healer
