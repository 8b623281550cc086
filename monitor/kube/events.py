"""A list-and-watch cache of the namespace's Warning Events about pods, as client-go's informers keep one:
one paginated list, then a watch from its resourceVersion that applies each change; a 410 (the version
fell out of the server's window) means a fresh list. A cycle then reads Events from memory instead of
listing 50,000 of them every 30 s.

Only what the rules read is kept (monitor.kube.models.Event): the reasons they read, and of those only
the newest Event per pod and reason (a rule reads the last one; the kubelet writes a new Event for each
volume or secret that fails, so a pod in trouble may have many), so 50,000 Events of 10,000 pods stay
a few megabytes. The cache is `fresh` while its watch has been (re)established within
three watch periods; a cache that is not fresh is not used (the cycle lists instead), so a watch that hangs
silently cannot serve stale Events for long.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from monitor.kube.client import EVENT_SELECTOR, Kube, KubeError, api_error, to_event
from monitor.kube.models import Event, Pod

log = logging.getLogger(__name__)

WATCH_SECONDS = 60  # the server ends each watch after this long; reconnecting proves the watch is alive


class EventWatch:
    def __init__(self, kube: Kube, watch_seconds: int = WATCH_SECONDS, reasons: tuple[str, ...] | None = None):
        """reasons: the Event reasons kept (None: every Warning)."""
        self.kube, self.watch_seconds, self.reasons = kube, watch_seconds, reasons
        self._events: dict[str, Event] = {}  # Event name -> Event
        self._newest: dict[tuple[str, str], str] = {}  # (pod uid or name, reason) -> the name of its newest Event
        self._lock = threading.Lock()
        self._rv = ""
        self._alive_at = 0.0  # monotonic: the last (re)list or watch start
        self.relists = 0
        self.error = ""
        self._stop = threading.Event()
        self.synced = threading.Event()  # the first list is in
        self._thread: threading.Thread | None = None

    def ready(self, wait: float) -> bool:
        """Fresh, waiting up to `wait` seconds for the first list (a cycle that listed Events itself meanwhile
        would hold two copies of them)."""
        if not self.synced.is_set():
            self.synced.wait(wait)
        return self.fresh

    @property
    def fresh(self) -> bool:
        return bool(self._rv) and time.monotonic() - self._alive_at < 3 * self.watch_seconds

    def start(self) -> EventWatch:
        self._thread = threading.Thread(target=self._run, name="event-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def events(self, pods: list[Pod]) -> list[Event]:
        uids, names = {p.uid for p in pods if p.uid}, {p.name for p in pods}
        with self._lock:
            return [e for e in self._events.values()
                    if ((e.object_uid in uids) if e.object_uid else (e.object_name in names))]

    def __len__(self) -> int:
        return len(self._events)

    # ------------------------------------------------------------------ list, then watch
    def _keep(self, events: dict[str, Event], newest: dict[tuple[str, str], str], item: dict) -> None:
        """Add an Event (or its new version) if it is the newest of its pod and reason."""
        if self.reasons is not None and item.get("reason") not in self.reasons:
            return
        name = (item.get("metadata") or {}).get("name", "")
        ev = to_event(item)
        key = (ev.object_uid or f"name:{ev.object_name}", ev.reason)
        cur = newest.get(key)
        if cur is not None and cur != name:
            old = events.get(cur)
            if old is not None and old.last and ev.last and old.last > ev.last:
                return  # an older one of the pod's: the rules never read it
            events.pop(cur, None)
        events[name] = ev
        newest[key] = name

    def _drop(self, name: str) -> None:
        ev = self._events.pop(name, None)
        if ev is not None:
            key = (ev.object_uid or f"name:{ev.object_name}", ev.reason)
            if self._newest.get(key) == name:
                del self._newest[key]

    def relist(self) -> None:
        fresh: dict[str, Event] = {}
        newest: dict[tuple[str, str], str] = {}
        rv = ""
        for item, list_rv in self.kube.list_with_version(f"cannot list events in {self.kube.namespace}",
                                                         self.kube.core.list_namespaced_event,
                                                         field_selector=EVENT_SELECTOR):
            if item is not None:
                self._keep(fresh, newest, item)
            rv = list_rv
        with self._lock:
            self._events, self._newest, self._rv = fresh, newest, rv
        self._alive_at = time.monotonic()
        self.relists += 1
        self.synced.set()

    def _watch(self) -> None:
        """One watch from the current resourceVersion until the server ends it (WATCH_SECONDS)."""
        from kubernetes.client.exceptions import ApiException

        k = self.kube
        try:
            resp = k.core.list_namespaced_event(
                k.namespace, field_selector=EVENT_SELECTOR, watch=True, resource_version=self._rv,
                allow_watch_bookmarks=True, timeout_seconds=self.watch_seconds, _preload_content=False,
                _request_timeout=(min(k.timeout, 10.0), self.watch_seconds + 30))
        except ApiException as e:
            raise api_error("cannot watch events", e) from None
        except Exception as e:  # noqa: BLE001
            raise api_error("cannot watch events", e) from None
        self._alive_at = time.monotonic()
        buf = b""
        try:
            for chunk in resp.stream(65536, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._apply(json.loads(line))
        except KubeError:
            raise
        except Exception as e:  # noqa: BLE001 - the connection ended or timed out
            raise api_error("event watch ended", e) from None
        finally:
            resp.release_conn()

    def _apply(self, ev: dict) -> None:
        typ, obj = ev.get("type"), ev.get("object") or {}
        if typ == "ERROR":
            code = obj.get("code")
            raise KubeError(f"event watch: HTTP {code}: {obj.get('message', '')}", code)
        meta = obj.get("metadata") or {}
        if meta.get("resourceVersion"):
            self._rv = meta["resourceVersion"]
        if typ == "BOOKMARK":
            self._alive_at = time.monotonic()
            return
        with self._lock:
            if typ == "DELETED":
                self._drop(meta.get("name", ""))
            elif typ in ("ADDED", "MODIFIED"):
                self._keep(self._events, self._newest, obj)

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                if not self._rv:
                    self.relist()
                self._watch()
                backoff, self.error = 1.0, ""
            except KubeError as e:
                self.error = str(e)
                if e.status == 410:  # too old: the server's window moved on; list afresh
                    self._rv = ""
                    continue
                log.debug("event watch: %s (again in %.0fs)", e, backoff)
                self._stop.wait(backoff)
                backoff = min(30.0, backoff * 2)
            except Exception:  # a bug must not end the watch silently
                log.exception("event watch failed")
                self._stop.wait(backoff)
                backoff = min(30.0, backoff * 2)
