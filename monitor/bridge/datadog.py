"""Datadog forwarding: every flush interval, read the store and send what changed.

Counters are sent as the increase since the last flush (type count), gauges as their value.
Timers (milliseconds for Airflow timers, as Datadog's Airflow integration has them) are never
made up from histogram buckets: ingest hands each timer sample to the sink (a deque it drains
every second), and
  agent: each sample goes to the agent as a DogStatsD timing (`|ms`), so the agent computes
         .count, .avg, .median, .95percentile and .max itself, as for every other client;
  api:   agentless, the sink computes them from the samples of the flush interval: .count and
         .avg exactly (from the store), .median, .95percentile and .max from the samples (exact
         up to SAMPLES_PER_SERIES samples a series per interval, a uniform reservoir beyond).
Both through the `datadog` package; the API target is batched (/api/v1/series), retried with
exponential backoff, and bounded in memory (oldest points dropped, counted) while Datadog is
unreachable.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque

from monitor import catalog
from monitor.bridge.store import COUNT, VALUE, Store

log = logging.getLogger(__name__)
BATCH = 500
SAMPLES_PER_SERIES = 2048  # timer samples kept per series per flush interval (agentless)
MAX_PENDING_SAMPLES = 1_000_000  # timer samples waiting for the sink at most; more are dropped, counted


def _quantile(q: float, ordered: list[float]) -> float:
    """The q-quantile of samples (sorted), as the Datadog agent's histogram reports it."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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
        self.timer_samples: deque = deque()  # (base, seconds, weight), appended by ingest
        self.where: dict[int, tuple[str, list[str], float]] = {}  # base -> Datadog name, tags, unit scale
        self.kept: dict[int, list] = {}  # agentless: base -> [seen, samples] of this flush interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if target == "agent":
            from datadog.dogstatsd import DogStatsd

            self.client = DogStatsd(host=host, port=port, socket_path=socket_path,
                                    disable_telemetry=True, constant_tags=self.constant_tags)
        else:
            from datadog import api, initialize

            # the host each agentless point carries: `hostname`, or none (the datadog package would attach
            # this machine's name, a pod name that changes at every rollout)
            initialize(api_key=api_key, api_host=api_host, mute=False, host_name=hostname or None)
            self.api = api
        self.hostname = hostname or ""

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
        where = {}  # the timer series' Datadog names, made afresh here (see _look)
        V = self.store.vals
        for fam, labels, b in self.store.items():
            key = (fam.name, labels)
            live.add(key)
            name, tags, ms = self._names(fam.name, dict(labels))
            if fam.kind == "histogram":
                where[b] = (name, tags, 1000.0 if ms else 1.0)
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
                cur = (V[b + COUNT], value)
                pc, ps = self.last.get(key, (0.0, 0.0))
                if cur[0] < pc:  # series was recreated
                    pc, ps = 0.0, 0.0
                self.last[key] = cur
                dc = cur[0] - pc
                if dc <= 0 or self.target == "agent":  # the agent aggregates the samples itself
                    continue
                scale = 1000.0 if ms else 1.0
                ordered = sorted(v for v, _ in (self.kept.pop(b, (0, []))[1]))
                points.append((name + ".count", "count", dc, tags))
                points.append((name + ".avg", "gauge", (cur[1] - ps) / dc * scale, tags))
                if ordered:
                    points.append((name + ".median", "gauge", _quantile(0.5, ordered) * scale, tags))
                    points.append((name + ".95percentile", "gauge", _quantile(0.95, ordered) * scale, tags))
                    points.append((name + ".max", "gauge", ordered[-1] * scale, tags))
        for k in [k for k in self.last if k not in live]:
            del self.last[k]
        self.kept.clear()  # samples of series that had no new count (gone since) are not kept
        self.where = where
        return points

    # --------------------------------------------------------------- timer samples
    def attach(self, ingest) -> None:
        """Ask ingest for every timer sample."""
        ingest.timer_samples = self.timer_samples

    def _look(self) -> None:
        """base -> (Datadog name, tags, unit scale) of every timer series; collect() makes it afresh
        at each flush (a freed base is reused only after 30 s, so it never maps to a stale series),
        and a drain that meets a series newer than that looks here once."""
        self.where = {}
        for fam, labels, b in self.store.items():
            if fam.kind == "histogram":
                name, tags, ms = self._names(fam.name, dict(labels))
                self.where[b] = (name, tags, 1000.0 if ms else 1.0)

    def drain(self) -> None:
        """Take the timer samples ingest handed over: to the agent as timings, or kept for the
        flush's percentiles (agentless)."""
        q = self.timer_samples
        n = len(q)
        if n > MAX_PENDING_SAMPLES:
            for _ in range(n - MAX_PENDING_SAMPLES):
                q.popleft()
            self.dropped["timer_samples_cap"] += n - MAX_PENDING_SAMPLES
            n = MAX_PENDING_SAMPLES
        looked = False
        for _ in range(n):
            base, v, w = q.popleft()
            where = self.where.get(base)
            if where is None and not looked:  # a series new since the last look
                self._look()
                looked = True
                where = self.where.get(base)
            if where is None:
                continue
            name, tags, scale = where
            if self.target == "agent":
                # the agent counts each timing once: a sampled timer (@0.5, weight 2) is sent
                # weight times (the datadog client's own sample_rate would drop samples)
                for _ in range(min(100, max(1, round(w)))):
                    self.client.timing(name, v * scale, tags=tags)
                    self.sent += 1
            else:
                slot = self.kept.setdefault(base, [0, []])
                slot[0] += 1
                if len(slot[1]) < SAMPLES_PER_SERIES:
                    slot[1].append((v, w))
                else:  # a uniform sample of the interval's values
                    j = random.randrange(slot[0])
                    if j < SAMPLES_PER_SERIES:
                        slot[1][j] = (v, w)

    # --------------------------------------------------------------- sending
    def flush(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.drain()
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
                self.api.Metric.send(metrics=series, attach_host_name=bool(self.hostname))
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
        next_flush = time.monotonic() + self.flush_interval
        while not self._stop.wait(min(1.0, self.flush_interval)):
            try:
                if time.monotonic() >= next_flush:
                    next_flush += self.flush_interval
                    self.flush()
                else:
                    self.drain()
                    if self.target == "agent":
                        self.client.flush()
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
