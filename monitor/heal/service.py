"""Build a healer from its config: the Kubernetes client, the Lease, the state file, the notifiers."""

from __future__ import annotations

from monitor.alerting.alerts import Alerts
from monitor.alerting.config import build_notifiers
from monitor.heal.config import HealConfig
from monitor.heal.healer import Healer
from monitor.heal.state import HealState
from monitor.kube.client import Kube, load_api_client
from monitor.kube.lease import Lease, identity


def build(cfg: HealConfig, fresh_state: bool = False, lease: bool = True) -> Healer:
    """Raises KubeError (credentials), StateEmpty and sqlite3/OS errors for the state file."""
    api = load_api_client(cfg.kubeconfig, cfg.context)
    me = identity()
    kube = Kube(api, cfg.namespace, cfg.release, cfg.kube_timeout, identity=me)
    elector = Lease(api, cfg.namespace, cfg.lease_name, cfg.lease_duration, me) if (cfg.lease and lease) else None
    healer = Healer(cfg, kube, Alerts(HealState(cfg.state_file, fresh=fresh_state), build_notifiers(cfg.notify)),
                    elector)
    if elector is not None:
        elector.start()
    return healer
