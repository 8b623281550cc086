"""The metric catalog: every Airflow metric, its statsd forms, and its Prometheus and Datadog shapes.

The data lives in airflow.yaml beside this module; this module only reads it. Everything that
names a metric (the bridge's built-in mapping, dashboards, alert rules, docs, tests) reads it here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

CATALOG_FILE = Path(__file__).with_name("airflow.yaml")
TYPES = ("counter", "gauge", "timer")
# Datadog gets a timer as per-flush aggregates, named like the Datadog agent's histogram aggregates
DATADOG_TIMER_SUFFIXES = (".count", ".avg", ".median", ".95percentile", ".max")
_VAR = re.compile(r"\{([a-z_]+)\}")
_MS = re.compile(r"\b[Mm]illiseconds\b")


@dataclass(frozen=True)
class Metric:
    name: str  # statsd name without prefix; may hold {var} parts
    type: str  # counter | gauge | timer
    prometheus: str  # family name (without _total)
    help: str
    datadog: str
    legacy: str | None = None
    labels: dict[str, str] = field(default_factory=dict)  # prom label -> airflow var/tag
    optional_labels: dict[str, str] = field(default_factory=dict)
    const_labels: dict[str, str] = field(default_factory=dict)
    datadog_tags: dict[str, str] = field(default_factory=dict)  # dd tag -> airflow var
    family_help: str | None = None  # HELP of the Prometheus family, where `help` does not fit it
    # a timer's unit as each Airflow line sends it: line -> timer (Stats.timer(): milliseconds, but seconds
    # labelled |ms from the DogStatsD client), ms (Stats.timing(): milliseconds) or s (Stats.timing() with
    # seconds, labelled |ms in every mode); {} where the audit does not reach (provider code): milliseconds
    sent: dict[str, str] = field(default_factory=dict)
    since: str = "3.0"  # first Airflow 3.x line that sends it
    until: str | None = None  # last line that sends it; None: still sent
    tagged_since: str | None = None  # before this line only the legacy form (ids in the name) is sent
    formerly: tuple[str, ...] = ()  # names it had in earlier Airflow (e.g. Airflow 2)

    @property
    def exposed_help(self) -> str:
        """HELP on /metrics, for what is exposed: timers are histograms in seconds, and a family
        that folds several Airflow metrics says so (`family_help`)."""
        if self.family_help:
            return self.family_help
        if self.type == "timer":
            return _MS.sub(lambda m: "Seconds" if m.group(0)[0] == "M" else "seconds", self.help)
        return self.help

    @property
    def timer_call(self) -> bool:
        """Timed with Stats.timer() (in some line): Airflow's DogStatsD client sends it in seconds labelled |ms."""
        return "timer" in self.sent.values()

    @property
    def sent_in_seconds(self) -> bool:
        """Every line that sends it passes seconds to Stats.timing(), labelled |ms in every mode."""
        return bool(self.sent) and set(self.sent.values()) == {"s"}

    @property
    def unit_text(self) -> str:
        """How Airflow sends a timer, for the catalog table: ms, s (sent as ms), or ms|s (DogStatsD)."""
        if self.type != "timer":
            return ""
        units = set(self.sent.values())
        if units == {"s"}:
            return "s as ms"
        return "ms, s dogstatsd" if "timer" in units else "ms"

    @property
    def name_vars(self) -> list[str]:
        """Variables that are part of the (non-legacy) name itself, like {job_name}_start."""
        return _VAR.findall(self.name)

    @property
    def tag_vars(self) -> list[str]:
        """Airflow tags that carry the ids when the name is sent tagged (DogStatsD/InfluxDB)."""
        return [v for v in self.labels.values() if v not in self.name_vars]

    @property
    def prometheus_series(self) -> list[str]:
        """The sample names this metric appears under on /metrics."""
        base = self.prometheus
        if self.type == "counter":
            return [base + "_total"]
        if self.type == "timer":
            return [base + "_bucket", base + "_sum", base + "_count"]
        return [base]

    @property
    def prometheus_type(self) -> str:
        return {"counter": "counter", "gauge": "gauge", "timer": "histogram"}[self.type]

    def prom_label(self, airflow_var: str) -> str:
        for d in (self.labels, self.optional_labels):
            for k, v in d.items():
                if v == airflow_var:
                    return k
        return airflow_var

    def datadog_tag(self, airflow_var: str) -> str:
        for k, v in self.datadog_tags.items():
            if v == airflow_var:
                return k
        return airflow_var


class CatalogError(ValueError):
    pass


AIRFLOW_LINES = ("3.0", "3.1", "3.2", "3.3")  # the 3.x lines the catalog is held against


def line_of(version: str) -> tuple[int, int]:
    """'3.2.2' or '3.2' -> (3, 2)."""
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        raise CatalogError(f"not an Airflow version: {version!r} (expected e.g. 3.2 or 3.2.2)") from None


def sent_by(m: Metric, version: str) -> bool:
    """Does Airflow `version` send metric m (in some form)?"""
    v = line_of(version)
    return line_of(m.since) <= v and (m.until is None or v <= line_of(m.until))


def versions_text(m: Metric) -> str:
    """'3.0+', '3.2+', '3.0-3.2'; with '(tagged 3.3+)' where older lines send only the legacy form."""
    out = f"{m.since}+" if m.until is None else f"{m.since}-{m.until}"
    if m.tagged_since:
        out += f" (tagged {m.tagged_since}+)"
    return out


def _metric(raw: dict) -> Metric:
    try:
        m = Metric(**{**raw, "formerly": tuple(raw.get("formerly", ())),
                      "sent": {str(k): str(v) for k, v in (raw.get("sent") or {}).items()}})
    except TypeError as e:
        raise CatalogError(f"catalog entry {raw.get('name')!r}: {e}") from None
    if m.type not in TYPES:
        raise CatalogError(f"catalog entry {m.name!r}: unknown type {m.type!r}")
    if m.sent and (m.type != "timer" or not set(m.sent) <= set(AIRFLOW_LINES)
                   or not set(m.sent.values()) <= {"timer", "ms", "s"}):
        raise CatalogError(f"catalog entry {m.name!r}: sent must map Airflow lines to timer, ms or s (timers only)")
    if "s" in m.sent.values() and set(m.sent.values()) != {"s"}:
        raise CatalogError(f"catalog entry {m.name!r}: lines that disagree on seconds cannot be told apart on the "
                           "wire; the bridge reads a metric in one unit")
    for v in (m.since, m.until, m.tagged_since):
        if v is not None and v not in AIRFLOW_LINES:
            raise CatalogError(f"catalog entry {m.name!r}: {v!r} is not one of the Airflow lines {AIRFLOW_LINES}")
    return m


@cache
def load(path: Path = CATALOG_FILE) -> tuple[Metric, ...]:
    data = yaml.safe_load(Path(path).read_text())
    metrics = tuple(_metric(raw) for raw in data["metrics"])
    seen: dict[str, Metric] = {}
    for m in metrics:
        other = seen.setdefault(m.prometheus, m)
        if other is not m and (other.type != m.type or set(other.labels) != set(m.labels)):
            raise CatalogError(f"{m.prometheus}: {other.name} and {m.name} disagree on type or labels")
    return metrics


def families() -> dict[str, list[Metric]]:
    """Prometheus family name -> the catalog metrics that feed it."""
    out: dict[str, list[Metric]] = {}
    for m in load():
        out.setdefault(m.prometheus, []).append(m)
    return out


def prometheus_series_names() -> set[str]:
    """Every sample name the bridge can expose for Airflow metrics."""
    return {s for m in load() for s in m.prometheus_series}


def datadog_names() -> set[str]:
    """Every Datadog metric name the bridge can forward (timers add aggregate suffixes)."""
    out = set()
    for m in load():
        if m.type == "timer":
            out.update(m.datadog + s for s in DATADOG_TIMER_SUFFIXES)
        else:
            out.add(m.datadog)
    return out


SERVICE_FILE = Path(__file__).with_name("service.yaml")


def service_families() -> list[dict]:
    """The service's own families (bridge and SLA watcher), from service.yaml."""
    return yaml.safe_load(SERVICE_FILE.read_text())


def service_series_names() -> set[str]:
    """Every sample name of the service's own families (counters end in _total)."""
    return {f["name"] + ("_total" if f["type"] == "counter" else "") for f in service_families()}


def all_series_names() -> set[str]:
    """What a dashboard or rule may name: Airflow's series through the bridge, and the service's own."""
    return prometheus_series_names() | service_series_names()
