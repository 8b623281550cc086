"""Map a parsed statsd key to a Prometheus series: user rules first, then the Airflow catalog.

Pure: `Mapper.map(key)` depends only on the key and the loaded rules, so the ingest layer caches
its result per raw (name, type, rate, tags). User rules use statsd_exporter's mapping file format.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from monitor import catalog, durations
from monitor.bridge.parse import Key, label_name
from monitor.config import read_yaml

log = logging.getLogger(__name__)
# Airflow durations span milliseconds (scheduler loop) to hours (DAG runs).
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
                   1800, 3600, 7200, 14400, 43200, 86400)
KIND = {"c": "counter", "g": "gauge", "ms": "histogram", "h": "histogram", "d": "histogram", "s": "gauge"}
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_DASHES = re.compile(r"-{2,}")
_VAR = re.compile(r"\{([a-z_]+)\}")
_EXPAND = re.compile(r"\$\{(\d+)\}|\$(\d+)")


class MappingError(ValueError):
    """An invalid mapping file; the message is one line a person can act on."""


@dataclass(frozen=True, slots=True)
class Target:
    family: str  # Prometheus family (counters exposed with _total)
    kind: str  # counter | gauge | histogram | drop
    labels: tuple[tuple[str, str], ...] = ()
    help: str = ""
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    ttl: float | None = None  # None: the bridge default
    scale: float = 1.0  # multiplies values: 0.001 turns statsd milliseconds into seconds
    mult: float = 1.0  # a mapping rule's `scale`, on every value
    metric: catalog.Metric | None = None
    form: str = "plain"  # plain | modern | legacy | twin | user | unmapped
    reason: str = ""  # why a drop target drops


def sanitize_name(name: str) -> str:
    """statsd_exporter's escaping: invalid characters become `_`, but `--` is one `_` (web--server)."""
    name = _NAME_BAD.sub("_", _DASHES.sub("-", name))
    return "_" + name if name[:1].isdigit() else name


def parse_duration(v) -> float:
    """Go-style duration ('90s', '1h30m') or a number of seconds."""
    try:
        return durations.parse_duration(v)
    except ValueError as e:
        raise MappingError(str(e)) from None


# ---------------------------------------------------------------- built-in Airflow mapping
class AirflowMapping:
    """The catalog as a matcher: exact names, legacy dotted names, names with variables."""

    def __init__(self, prefix: str = "airflow", buckets: tuple[float, ...] = DEFAULT_BUCKETS):
        self.prefix = prefix + "." if prefix else ""
        self.buckets = buckets
        self.exact: dict[str, catalog.Metric] = {}
        self.patterns: list[tuple[re.Pattern, catalog.Metric, str]] = []
        for m in catalog.load():
            if m.name_vars:
                self.patterns.append((self._compile(m.name), m, "plain"))
            else:
                self.exact[m.name] = m
            if m.legacy:
                self.patterns.append((self._compile(m.legacy), m, "legacy"))

    @staticmethod
    def _compile(template: str) -> re.Pattern:
        out, pos = [], 0
        for v in _VAR.finditer(template):
            out.append(re.escape(template[pos : v.start()]))
            out.append(f"(?P<{v.group(1)}>[^.]+)")
            pos = v.end()
        out.append(re.escape(template[pos:]))
        return re.compile("".join(out) + r"\Z")

    def map(self, key: Key) -> Target | None:
        if not key.name.startswith(self.prefix):
            return None
        name = key.name[len(self.prefix) :]
        tags = dict(key.tags)
        m = self.exact.get(name)
        if m is not None:
            if m.legacy:
                form = "modern" if all(v in tags for v in m.tag_vars) else "twin"
            else:
                form = "plain"
            return self._target(m, key, tags, form)
        for rx, m, form in self.patterns:
            hit = rx.match(name)
            if hit:
                # ids from the name win over nothing, tags win over ids from the name
                return self._target(m, key, {**hit.groupdict(), **tags}, form)
        return None

    def _target(self, m: catalog.Metric, key: Key, values: dict[str, str], form: str) -> Target:
        labels = {m.prom_label(k): v for k, v in values.items()}
        labels.update(m.const_labels)
        kind = KIND[key.type]
        return Target(
            family=m.prometheus,
            kind=kind,
            labels=tuple(sorted(labels.items())),
            help=m.exposed_help,
            buckets=self.buckets,
            scale=0.001 if key.type == "ms" else 1.0,
            metric=m,
            form=form,
        )


# ---------------------------------------------------------------- user (statsd_exporter) rules
@dataclass(frozen=True)
class Rule:
    regex: re.Pattern
    name: str
    labels: dict[str, str]
    action: str
    metric_type: str | None  # counter | gauge | observer
    ttl: float | None
    buckets: tuple[float, ...]
    help: str
    observer_type: str
    glob: bool = True  # glob rules are tried before any regex rule, as statsd_exporter does
    scale: float = 1.0  # multiplies every value (after milliseconds become seconds)
    honor_labels: bool = False  # the line's tags win over the rule's labels
    specificity: tuple = ()  # for glob_disable_ordering: literal segments before wildcards


def _glob_regex(pattern: str) -> re.Pattern:
    return re.compile("".join("([^.]*)" if c == "*" else re.escape(c) for c in pattern) + r"\Z")


def _expand(template: str, m: re.Match) -> str:
    def sub(x: re.Match) -> str:
        i = int(x.group(1) or x.group(2))
        return (m.group(i) or "") if i <= (m.re.groups or 0) else ""

    return _EXPAND.sub(sub, template)


RULE_KEYS = {"match", "name", "labels", "action", "match_type", "match_metric_type", "ttl", "observer_type",
             "timer_type", "histogram_options", "summary_options", "help", "honor_labels", "scale", "buckets",
             "quantiles"}
DEFAULT_KEYS = {"match_type", "glob_disable_ordering", "ttl", "observer_type", "histogram_options",
                "summary_options", "buckets", "quantiles"}
IGNORED = {"quantiles": "quantiles apply to summaries; timers are histograms here",
           "summary_options": "timers are histograms here (aggregatable across pods)",
           "native_histogram_bucket_factor": "native histograms are not exposed yet",
           "native_histogram_max_buckets": "native histograms are not exposed yet"}


def _warn_keys(where: str, given: dict, known: set[str]) -> None:
    for key in given:
        if key in IGNORED:
            log.warning("%s: %r is accepted and ignored: %s", where, key, IGNORED[key])
        elif key not in known:
            log.warning("%s: unknown key %r is ignored", where, key)


def _buckets(where: str, r: dict) -> tuple[float, ...]:
    """`histogram_options.buckets` (or the legacy `buckets`): increasing numbers; () if not given."""
    opts = r.get("histogram_options") or {}
    if not isinstance(opts, dict):
        raise MappingError(f"{where}: histogram_options must be a mapping")
    given = opts.get("buckets") or r.get("buckets")
    if not given:
        return ()
    if not isinstance(given, list) or not all(isinstance(b, int | float) and not isinstance(b, bool)
                                              for b in given):
        raise MappingError(f"{where}: histogram buckets must be a list of numbers, not {given!r}")
    if given != sorted(given) or len(set(given)) != len(given) or any(b != b for b in given):
        raise MappingError(f"{where}: histogram buckets must be increasing")
    return tuple(float(b) for b in given)


def load_rules(path: str | Path, default_buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> list[Rule]:
    """Read a statsd_exporter mapping file; raises MappingError with a one-line reason.

    The rules come back in the order they are tried: glob rules first (in file order, or most
    specific first with `defaults.glob_disable_ordering: true`), then regex rules in file order.
    """
    doc = read_yaml(path, "mapping file", MappingError) or {}
    if not isinstance(doc, dict):
        raise MappingError(f"mapping file {path}: top level must be a mapping with 'mappings:'")
    unknown = set(doc) - {"defaults", "mappings"}
    if unknown:
        raise MappingError(f"mapping file {path}: unknown key {sorted(map(str, unknown))[0]!r}")
    d = doc.get("defaults") or {}
    if not isinstance(d, dict):
        raise MappingError(f"mapping file {path}: defaults must be a mapping")
    _warn_keys(f"mapping file {path}, defaults", d, DEFAULT_KEYS)
    d_match = d.get("match_type", "glob")
    d_ttl = parse_duration(d.get("ttl", 0))
    d_obs = d.get("observer_type", "histogram")
    d_buckets = _buckets(f"mapping file {path}, defaults", d) or tuple(default_buckets)
    unordered = bool(d.get("glob_disable_ordering", False))
    rules = []
    for i, r in enumerate(doc.get("mappings") or [], 1):
        where = f"mapping file {path}, mapping #{i}"
        if not isinstance(r, dict) or "match" not in r:
            raise MappingError(f"{where}: needs a 'match'")
        _warn_keys(where, r, RULE_KEYS)
        for key, sub in (("histogram_options", {"buckets"}), ("summary_options", None)):
            if isinstance(r.get(key), dict) and sub is not None:
                _warn_keys(f"{where}, {key}", r[key], sub)
        action = r.get("action", "map")
        if action not in ("map", "drop"):
            raise MappingError(f"{where}: action must be map or drop, not {action!r}")
        match_type = r.get("match_type", d_match)
        try:
            if match_type == "regex":  # searched anywhere in the name, as statsd_exporter does
                rx = re.compile(str(r["match"]))
            elif match_type == "glob":
                rx = _glob_regex(str(r["match"]))
            else:
                raise MappingError(f"{where}: match_type must be glob or regex, not {match_type!r}")
        except re.error as e:
            raise MappingError(f"{where}: invalid regex {r['match']!r}: {e}") from None
        name = r.get("name")
        if action == "map" and not name:
            raise MappingError(f"{where}: a mapping needs a 'name' (or action: drop)")
        mtype = r.get("match_metric_type")
        if mtype not in (None, "counter", "gauge", "observer", "timer"):
            raise MappingError(f"{where}: match_metric_type must be counter, gauge or observer")
        obs = r.get("observer_type", r.get("timer_type", d_obs))
        if obs not in ("histogram", "summary", "default", ""):
            raise MappingError(f"{where}: observer_type must be histogram or summary")
        buckets = _buckets(where, r) or d_buckets
        labels = r.get("labels") or {}
        if not isinstance(labels, dict):
            raise MappingError(f"{where}: labels must be a mapping")
        for k in labels:
            if label_name(str(k)) != str(k):
                raise MappingError(f"{where}: invalid label name {k!r}")
        scale = r.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise MappingError(f"{where}: scale must be a number, not {scale!r}")
        rules.append(
            Rule(
                regex=rx,
                name=str(name or ""),
                labels={str(k): str(v) for k, v in labels.items()},
                action=action,
                metric_type="observer" if mtype == "timer" else mtype,
                ttl=parse_duration(r["ttl"]) if "ttl" in r else (d_ttl or None),
                buckets=buckets,
                help=str(r.get("help", "")),
                observer_type=obs or "histogram",
                glob=match_type == "glob",
                scale=float(scale),
                honor_labels=bool(r.get("honor_labels", False)),
                specificity=tuple(seg == "*" for seg in str(r["match"]).split(".")) if unordered else (),
            )
        )
    globs = [x for x in rules if x.glob]
    if unordered:
        globs.sort(key=lambda x: x.specificity)  # stable: file order among equals
    return globs + [x for x in rules if not x.glob]


_METRIC_TYPE = {"c": "counter", "g": "gauge", "s": "gauge", "ms": "observer", "h": "observer", "d": "observer"}


def _user_target(rule: Rule, m: re.Match, key: Key) -> Target:
    if rule.action == "drop":
        return Target(family="", kind="drop", reason="drop_rule", form="user")
    mapped = {k: _expand(v, m) for k, v in rule.labels.items()}
    labels = {**mapped, **dict(key.tags)} if rule.honor_labels else {**dict(key.tags), **mapped}
    return Target(
        family=sanitize_name(_expand(rule.name, m)),  # as spelled: store.sample_name adds `_total`
        kind=KIND[key.type],
        labels=tuple(sorted(labels.items())),
        help=rule.help,
        buckets=rule.buckets,
        ttl=rule.ttl,
        scale=0.001 if key.type == "ms" else 1.0,
        mult=rule.scale,
        form="user",
    )


# Families that statsd input may not create: our own series (the bridge's, the SLA watcher's, the
# healer's) are served beside the store's, and a second family of the same name would make the
# whole scrape invalid or let anyone who can send a datagram hide or fake them.
RESERVED_PREFIXES = ("airflow_monitor_", "airflow_sla_")


class Mapper:
    """User rules (as load_rules orders them: globs, then regexes; first match wins), then the Airflow
    catalog, then unmapped."""

    def __init__(self, rules: list[Rule] | None = None, airflow: AirflowMapping | None = None,
                 unmapped: str = "export"):
        self.rules = rules or []
        self.airflow = airflow or AirflowMapping()
        self.unmapped = unmapped
        self.catalog_kinds = {m.prometheus: m.prometheus_type for m in catalog.load()}

    def map(self, key: Key) -> Target:
        t = self._map(key)
        if t.form in ("user", "unmapped") and t.kind != "drop" and (
                t.family.startswith(RESERVED_PREFIXES) or self.catalog_kinds.get(t.family, t.kind) != t.kind):
            return Target(family="", kind="drop", reason="reserved", form=t.form)
        if t.form == "user" and t.kind != "drop":
            # a rule that maps one of Airflow's twin forms (the official chart's maps the legacy
            # names) keeps the form, so that each event is still counted once
            ct = self.airflow.map(key)
            if ct is not None and ct.form in ("modern", "legacy", "twin"):
                return replace(t, form=ct.form, metric=ct.metric)
        return t

    def _map(self, key: Key) -> Target:
        mtype = _METRIC_TYPE[key.type]
        for rule in self.rules:
            if rule.metric_type and rule.metric_type != mtype:
                continue
            hit = rule.regex.match(key.name) if rule.glob else rule.regex.search(key.name)
            if hit:
                return _user_target(rule, hit, key)
        t = self.airflow.map(key)
        if t is not None:
            return t
        if self.unmapped == "drop":
            return Target(family="", kind="drop", reason="unmapped", form="unmapped")
        return Target(
            family=sanitize_name(key.name),
            kind=KIND[key.type],
            labels=key.tags,
            help=f"statsd metric {key.name} (not in the Airflow catalog)",
            buckets=self.airflow.buckets,
            scale=0.001 if key.type == "ms" else 1.0,
            form="unmapped",
        )
