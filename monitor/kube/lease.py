"""Leader election with a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

- **Own clocks only.** A standby never compares the holder's `renewTime` with its own wall clock
  (two pods' clocks differ): it notes, on its own monotonic clock, when it last saw the Lease record
  change, and takes over only once a whole `leaseDurationSeconds` has passed without a change.
- **A renew deadline.** The holder counts itself leader only until `renew_deadline` (two thirds of
  the duration, as client-go's 10 s of 15 s) after the start of its last successful renewal: a holder
  that cannot renew stops acting well before a standby may take over.
- **Compare-and-swap.** Every write carries the resourceVersion it read, so two replicas racing for
  the Lease cannot both win: the API server answers the loser 409 Conflict.
- **A watchdog.** `healthy()` (the worker's: its cycle completes) is asked before each renewal; a hung
  cycle stops the renewals, so a standby takes over while the kubelet restarts the hung replica.

`leader` is cheap and is asked immediately before every side effect (a restart, an Event, a page).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from monitor.kube.client import KubeError, micro_time

log = logging.getLogger(__name__)


def identity() -> str:
    """This replica's name, as client-go's convention: <pod>_<uuid>."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4()}"


class Lease:
    def __init__(self, api_client, namespace: str, name: str, duration: float = 15.0, holder: str = "",
                 timeout: float = 5.0):
        from kubernetes import client

        self.api = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.duration = namespace, name, duration
        self.renew_deadline = duration * 2 / 3  # client-go: 10 s of 15 s
        self.retry_period = max(0.2, duration / 7.5)  # client-go: 2 s of 15 s
        self.timeout = min(timeout, self.renew_deadline / 2)
        self.holder = holder or identity()
        self.healthy: Callable[[], bool] = lambda: True
        self._renewed_at: float | None = None  # monotonic: start of our last successful renewal
        self._observed: tuple | None = None  # the Lease record as last read
        self._observed_at = 0.0  # monotonic: when it last changed, as seen here
        self.transitions = 0
        self.last_error = ""
        self.stopped_renewing = ""  # why renewals stopped (the watchdog), "" while they go on
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Try now, then every retry period in a thread of its own (a worker's cycle never delays it)."""
        self.tick()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.retry_period):
            try:
                self.tick()
            except Exception:  # a bug must not end the renewals silently
                log.exception("lease %s: renewal failed", self.name)

    @property
    def leader(self) -> bool:
        r = self._renewed_at
        return r is not None and time.monotonic() < r + self.renew_deadline

    def _body(self, acquire, transitions: int, rv: str | None, holder: str | None = None,
              duration: int | None = None) -> dict:
        now = datetime.now(UTC)
        meta: dict = {"name": self.name, "namespace": self.namespace,
                      "labels": {"app.kubernetes.io/managed-by": "airflow-monitor"}}
        if rv:
            meta["resourceVersion"] = rv
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": self.holder if holder is None else holder,
                         "leaseDurationSeconds": duration or max(1, int(round(self.duration))),
                         "acquireTime": micro_time(acquire or now), "renewTime": micro_time(now),
                         "leaseTransitions": transitions}}

    def _t(self) -> tuple[float, float]:
        return (self.timeout, self.timeout)

    def tick(self) -> bool:
        """Acquire or renew once; True while this replica holds the Lease."""
        from kubernetes.client.exceptions import ApiException

        with self._lock:
            if not self.healthy():
                if not self.stopped_renewing:
                    self.stopped_renewing = "the worker's cycle has not completed in time"
                    log.error("lease %s: not renewed any more (%s); a standby takes over", self.name,
                              self.stopped_renewing)
                return self.leader
            self.stopped_renewing = ""
            started = time.monotonic()
            try:
                try:
                    cur = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self._t())
                except ApiException as e:
                    if e.status != 404:
                        raise
                    self.api.create_namespaced_lease(self.namespace, self._body(None, 0, None),
                                                     _request_timeout=self._t())
                    return self._won(started, "created")
                spec, rv = cur.spec, cur.metadata.resource_version
                record = (spec.holder_identity, spec.renew_time, spec.acquire_time, spec.lease_transitions,
                          spec.lease_duration_seconds)
                if record != self._observed:
                    self._observed, self._observed_at = record, time.monotonic()
                holder = spec.holder_identity or ""
                duration = float(spec.lease_duration_seconds or self.duration)
                if holder and holder != self.holder and time.monotonic() < self._observed_at + duration:
                    self._lost(f"held by {holder}")
                    return False
                mine = holder == self.holder
                body = self._body(spec.acquire_time if mine else None,
                                  (spec.lease_transitions or 0) + (0 if mine else 1), rv)
                self.api.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=self._t())
                return self._won(started, "" if mine else (f"taken over from {holder}" if holder else "acquired"))
            except ApiException as e:
                if e.status == 409:  # another replica wrote first
                    self._lost("another replica won the race")
                    return False
                self.last_error = str(self._error(e))
            except Exception as e:  # noqa: BLE001 - the API server is unreachable or slow
                self.last_error = str(self._error(e))
            if self.leader:
                log.warning("cannot renew %s (leader for %.1fs more): %s", self.name,
                            self._renewed_at + self.renew_deadline - time.monotonic(), self.last_error)
            return self.leader

    def _error(self, e: Exception) -> KubeError:
        from monitor.kube.client import api_error

        return api_error(f"lease {self.namespace}/{self.name}", e)

    def _won(self, started: float, how: str) -> bool:
        if how or not self.leader:
            self.transitions += 1
            log.info("leader: %s holds lease %s/%s%s", self.holder, self.namespace, self.name,
                     f" ({how})" if how else "")
        self.last_error = ""
        self._renewed_at = started  # our hold counts from before the request, as client-go's does
        self._observed_at = time.monotonic()
        return True

    def _lost(self, why: str) -> None:
        if self.leader:
            log.warning("no longer leader of %s: %s", self.name, why)
        self._renewed_at = None
        self.last_error = ""

    def release(self) -> None:
        """On a clean stop: let a standby take over at once (an empty holder, as client-go's ReleaseOnCancel)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if not self.leader:
            return
        try:
            cur = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self._t())
            if cur.spec.holder_identity == self.holder:
                body = self._body(cur.spec.acquire_time, cur.spec.lease_transitions or 0,
                                  cur.metadata.resource_version, holder="", duration=1)
                self.api.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=self._t())
        except Exception as e:  # noqa: BLE001
            log.warning("could not release lease %s: %s", self.name, e)
        self._renewed_at = None


__all__ = ["Lease", "KubeError", "identity"]
