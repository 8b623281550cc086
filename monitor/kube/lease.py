"""Leader election with a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

The holder renews `renewTime` every cycle; another replica takes the Lease over only once
`renewTime + leaseDurationSeconds` has passed. Every write carries the resourceVersion it read,
so two replicas racing for an expired Lease cannot both win: the API server answers the loser
409 Conflict. A replica that cannot reach the API server stops acting as leader once its own
lease would have expired, so two leaders never act at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime

from monitor.kube.client import KubeError, api_error, micro_time

log = logging.getLogger(__name__)


def identity() -> str:
    """This replica's name: the pod's (its hostname) and the process id."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


class Lease:
    def __init__(self, api_client, namespace: str, name: str, duration: float = 15.0, holder: str = ""):
        from kubernetes import client

        self.api = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.duration = namespace, name, duration
        self.holder = holder or identity()
        self._leader_until = 0.0  # monotonic: when our own hold runs out if we cannot renew
        self.transitions = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Acquire or renew now, then every third of the lease duration in a thread of its own, so the
        hold never depends on how long a worker's cycle takes."""
        self.tick()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(max(0.5, self.duration / 3)):
            try:
                self.tick()
            except Exception:  # a bug must not end the renewals silently
                log.exception("lease %s: renewal failed", self.name)

    @property
    def leader(self) -> bool:
        return time.monotonic() < self._leader_until

    def _body(self, acquire: datetime | None, transitions: int, rv: str | None) -> dict:
        now = datetime.now(UTC)
        meta: dict = {"name": self.name, "namespace": self.namespace,
                      "labels": {"app.kubernetes.io/managed-by": "airflow-monitor"}}
        if rv:
            meta["resourceVersion"] = rv
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": self.holder, "leaseDurationSeconds": max(1, int(round(self.duration))),
                         "acquireTime": micro_time(acquire or now), "renewTime": micro_time(now),
                         "leaseTransitions": transitions}}

    def tick(self) -> bool:
        """Acquire or renew; True while this replica holds the Lease."""
        from kubernetes.client.exceptions import ApiException

        started = time.monotonic()
        try:
            try:
                cur = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=5)
            except ApiException as e:
                if e.status != 404:
                    raise
                self.api.create_namespaced_lease(self.namespace, self._body(None, 0, None), _request_timeout=5)
                return self._won(started, "created")
            spec = cur.spec
            rv = cur.metadata.resource_version
            if spec.holder_identity == self.holder:
                self.api.replace_namespaced_lease(self.name, self.namespace,
                                                  self._body(spec.acquire_time, spec.lease_transitions or 0, rv),
                                                  _request_timeout=5)
                return self._won(started, "")
            renewed = spec.renew_time or spec.acquire_time
            expired = (renewed is None or spec.holder_identity in (None, "")
                       or (datetime.now(UTC) - renewed).total_seconds() > (spec.lease_duration_seconds or 0))
            if not expired:
                self._lost(f"held by {spec.holder_identity}")
                return False
            self.api.replace_namespaced_lease(self.name, self.namespace,
                                              self._body(None, (spec.lease_transitions or 0) + 1, rv),
                                              _request_timeout=5)
            return self._won(started, f"taken over from {spec.holder_identity}")
        except ApiException as e:
            if e.status == 409:  # another replica wrote first
                self._lost("another replica won the race")
                return False
            self.last_error = str(api_error(f"lease {self.namespace}/{self.name}", e))
        except Exception as e:  # noqa: BLE001 - the API server is unreachable
            self.last_error = str(api_error(f"lease {self.namespace}/{self.name}", e))
        if self.leader:
            log.warning("cannot renew %s (still leader for %.0fs): %s", self.name,
                        self._leader_until - time.monotonic(), self.last_error)
        return self.leader

    def _won(self, started: float, how: str) -> bool:
        if how or not self.leader:
            self.transitions += 1
            log.info("leader: %s holds lease %s/%s%s", self.holder, self.namespace, self.name,
                     f" ({how})" if how else "")
        self.last_error = ""
        # our hold counts from before the request, as client-go's does
        self._leader_until = started + self.duration
        return True

    def _lost(self, why: str) -> None:
        if self.leader:
            log.warning("no longer leader of %s: %s", self.name, why)
        self._leader_until = 0.0
        self.last_error = ""

    def release(self) -> None:
        """On a clean stop: let a standby take over at once (renewTime in the past)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if not self.leader:
            return
        try:
            cur = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=5)
            if cur.spec.holder_identity == self.holder:
                body = self._body(cur.spec.acquire_time, cur.spec.lease_transitions or 0, cur.metadata.resource_version)
                body["spec"]["holderIdentity"] = ""
                body["spec"]["leaseDurationSeconds"] = 1
                self.api.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=5)
        except Exception as e:  # noqa: BLE001
            log.warning("could not release lease %s: %s", self.name, e)
        self._leader_until = 0.0


__all__ = ["Lease", "KubeError", "identity"]
