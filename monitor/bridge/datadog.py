"""Datadog forwarding: every flush interval, read the store and send what changed.

Like the Datadog agent, the bridge aggregates per flush interval: counters are sent as the
increase since the last flush (type count), gauges as their value, timers as .count, .avg,
.median and .95percentile (milliseconds for Airflow timers, as Datadog's Airflow integration
has them). Two targets, both through the `datadog` package:
  agent: DogStatsD over UDP (host/port) or a Unix socket;
  api:   agentless, the HTTP API (/api/v1/series) with an API key; batched, retried with
         exponential backoff, and bounded in memory (oldest points dropped, counted) while
         Datadog is unreachable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque

from monitor import catalog
from monitor.bridge.store import BUCKETS, COUNT, VALUE, Store

log = logging.getLogger(__name__)
BATCH = 500


def _quantile(q: float, bounds: tuple[float, ...], counts: list[float]) -> float:
    """histogram_quantile over per-bucket (non-cumulative) counts; linear inside a bucket."""
    total = sum(counts)
    if total <= 0:
        return 0.0
    rank, acc = q * total, 0.0
    for i, c in enumerate(counts):
        if acc + c >= rank and c > 0:
            lo = bounds[i - 1] if i > 0 else 0.0
            if i >= len(bounds):
                return bounds[-1] if bounds else lo
            return lo + (bounds[i] - lo) * (rank - acc) / c
        acc += c
    return bounds[-1] if bounds else 0.0


class DatadogSink:
    def __init__(self, store: Store, *, target: str = "agent", host: str = "127.0.0.1",
                 port: int = 8125, socket_path: str | None = None, api_key: str | None = None,
                 api_host: str = "https://api.datadoghq.com", flush_interval: float = 10.0,
                 max_points: int = 100_000, constant_tags: list[str] | None = None,
                 hostname: str | None = None):
        if target not in ("agent", "api"):
            raise ValueError("datadog target must be agent or api")
        if target == "api" and not api_key:
            raise ValueError("agentless Datadog needs an API key (DD_API_KEY or --datadog-api-key-file)")
        self.store = store
        self.target = target
        self.flush_interval = flush_interval
        self.constant_tags = list(constant_tags or [])
        self.queue: deque = deque()
        self.max_points = max_points
        self.last: dict[tuple, object] = {}
        self.sent = 0
        self.dropped: Counter[str] = Counter()
        self.failures = 0
        self.backoff_until = 0.0
        self.backoff = 0.0
        self.by_family = catalog.families()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if target == "agent":
            from datadog.dogstatsd import DogStatsd

            self.client = DogStatsd(host=host, port=port, socket_path=socket_path,
                                    disable_telemetry=True, constant_tags=self.constant_tags)
        else:
            from datadog import api, initialize

            initialize(api_key=api_key, api_host=api_host, mute=False, hostname=hostname)
            self.api = api

    # --------------------------------------------------------------- store -> points
    def _names(self, family: str, labels: dict[str, str]) -> tuple[str, list[str], bool]:
        """Datadog name, tags and whether it is an Airflow (millisecond) timer."""
        metrics = self.by_family.get(family)
        if not metrics:
            return family, [f"{k}:{v}" for k, v in labels.items()], False
        m = metrics[0]
        for cand in metrics:
            if all(labels.get(k) == v for k, v in cand.const_labels.items()):
                m = cand
                break
        tags = []
        for k, v in labels.items():
            if k in m.const_labels:
                continue
            var = m.labels.get(k) or m.optional_labels.get(k) or k
            tags.append(f"{m.datadog_tag(var)}:{v}")
        return m.datadog, tags, m.type == "timer"

    def collect(self, now: float | None = None) -> list[tuple[str, str, float, list[str]]]:
        """Points (name, type, value, tags) for what changed since the last collect."""
        points = []
        live = set()
        V = self.store.vals
        for fam, labels, b in self.store.items():
            key = (fam.name, labels)
            live.add(key)
            name, tags, ms = self._names(fam.name, dict(labels))
            value = V[b + VALUE]
            if fam.kind == "gauge":
                points.append((name, "gauge", value, tags))
            elif fam.kind == "counter":
                prev = self.last.get(key, 0.0)
                delta = value - prev if value >= prev else value
                self.last[key] = value
                if delta:
                    points.append((name, "count", delta, tags))
            else:
                cur = (V[b + COUNT], value, V[b + BUCKETS : b + BUCKETS + len(fam.buckets) + 1].tolist())
                pc, ps, pb = self.last.get(key, (0.0, 0.0, [0.0] * len(cur[2])))
                if cur[0] < pc:  # series was recreated
                    pc, ps, pb = 0.0, 0.0, [0.0] * len(cur[2])
                self.last[key] = cur
                dc = cur[0] - pc
                if dc <= 0:
                    continue
                scale = 1000.0 if ms else 1.0
                db = [x - y for x, y in zip(cur[2], pb, strict=True)]
                points.append((name + ".count", "count", dc, tags))
                points.append((name + ".avg", "gauge", (cur[1] - ps) / dc * scale, tags))
                points.append((name + ".median", "gauge", _quantile(0.5, fam.buckets, db) * scale, tags))
                points.append((name + ".95percentile", "gauge",
                               _quantile(0.95, fam.buckets, db) * scale, tags))
        for k in [k for k in self.last if k not in live]:
            del self.last[k]
        return points

    # --------------------------------------------------------------- sending
    def flush(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        points = self.collect(now)
        if self.target == "agent":
            for name, kind, value, tags in points:
                if kind == "count":
                    self.client.increment(name, value, tags=tags)
                else:
                    self.client.gauge(name, value, tags=tags)
            self.client.flush()
            self.sent += len(points)
            return
        ts = int(now)
        for p in points:
            self.queue.append((ts, p))
        over = len(self.queue) - self.max_points
        for _ in range(max(0, over)):
            self.queue.popleft()
            self.dropped["queue_full"] += 1
        self._send_queue(time.monotonic())

    def _send_queue(self, mono: float) -> None:
        if mono < self.backoff_until:
            return
        while self.queue:
            batch = [self.queue[i] for i in range(min(BATCH, len(self.queue)))]
            series = [
                {"metric": name, "points": [(ts, value)], "type": kind, "tags": tags + self.constant_tags,
                 **({"interval": int(self.flush_interval)} if kind == "count" else {})}
                for ts, (name, kind, value, tags) in batch
            ]
            try:
                self.api.Metric.send(metrics=series)
            except Exception as e:  # noqa: BLE001 - any failure: keep the points, back off
                self.failures += 1
                self.backoff = min(60.0, max(1.0, self.backoff * 2))
                self.backoff_until = mono + self.backoff
                log.warning("Datadog API send failed (%s); %d points kept, retry in %.0fs",
                            type(e).__name__, len(self.queue), self.backoff)
                return
            for _ in batch:
                self.queue.popleft()
            self.sent += len(batch)
            self.backoff = 0.0

    def self_metrics(self, family):
        yield family("datadog_points", "counter", "Points sent to Datadog.", [({"target": self.target}, self.sent)])
        yield family("datadog_dropped", "counter", "Points dropped before reaching Datadog, by reason.",
                     [({"reason": r}, v) for r, v in list(self.dropped.items())])
        yield family("datadog_send_failures", "counter", "Failed sends to the Datadog API.", [({}, self.failures)])
        yield family("datadog_queue", "gauge", "Points waiting for the Datadog API.", [({}, len(self.queue))])

    # --------------------------------------------------------------- thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="datadog-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the flusher must survive anything
                log.exception("Datadog flush failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        try:
            self.flush()
        except Exception:  # noqa: BLE001
            log.warning("final Datadog flush failed")
