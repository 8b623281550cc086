"""Map a parsed statsd key to a Prometheus series: user rules first, then the Airflow catalog.

Pure: `Mapper.map(key)` depends only on the key and the loaded rules, so the ingest layer caches
its result per raw (name, type, rate, tags). User rules use statsd_exporter's mapping file format.
"""

from __future__ import annotations

import logging
import math
import re
import reprlib
from dataclasses import dataclass, replace
from pathlib import Path

import re2
import yaml

from monitor import catalog, durations
from monitor.bridge import boundedyaml
from monitor.bridge.parse import Key, label_name
from monitor.bridge.store import exposed_names

log = logging.getLogger(__name__)
# Airflow durations span milliseconds (scheduler loop) to hours (DAG runs).
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
                   1800, 3600, 7200, 14400, 43200, 86400)
# native histograms of timers: (schema, positive window, negative window) of the native block
# (monitor/bridge/native.py); schema 3 is client_golang's bucket factor 1.1 (buckets 9 % wide)
DEFAULT_NATIVE_SCHEMA, DEFAULT_NATIVE_MAX_BUCKETS = 3, 20
KIND = {"c": "counter", "g": "gauge", "ms": "histogram", "h": "histogram", "d": "histogram", "s": "gauge"}
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_DASHES = re.compile(r"-{2,}")
_VAR = re.compile(r"\{([a-z_]+)\}")
_REPEAT = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")
MAX_REPEAT = 1000  # RE2's and Go's limit on a counted repetition {n,m}
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error comes back as an exception, said in one line
_show = reprlib.Repr()
_show.maxstring = _show.maxother = 80
_show.maxlist = _show.maxdict = 6
_show.maxlevel = 2


class MappingError(ValueError):
    """An invalid mapping file; the message is one line a person can act on."""


def native_spec(schema: int, max_buckets: int) -> tuple[int, int, int]:
    """(schema, positive slots, negative slots) of a native histogram of at most `max_buckets`
    consecutive positive buckets (negative ones, rare for durations, get an eighth of them)."""
    return (max(-4, min(8, int(schema))), max(2, int(max_buckets)), max(2, int(max_buckets) // 8))


def schema_of_factor(factor: float) -> int:
    """client_golang's schema for a bucket factor: the largest growth per bucket at most `factor`."""
    return max(-4, min(8, -math.floor(math.log2(math.log2(factor)))))


DEFAULT_NATIVE = native_spec(DEFAULT_NATIVE_SCHEMA, DEFAULT_NATIVE_MAX_BUCKETS)


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
    native: tuple[int, int, int] | None = None  # a histogram's native block (native_spec), or None


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

    def __init__(self, prefix: str = "airflow", buckets: tuple[float, ...] = DEFAULT_BUCKETS,
                 native: tuple[int, int, int] | None = DEFAULT_NATIVE):
        self.prefix = prefix + "." if prefix else ""
        self.buckets = buckets
        self.native = native
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
            native=self.native if kind == "histogram" else None,
        )


# ---------------------------------------------------------------- user (statsd_exporter) rules
Template = tuple  # pieces: a str is literal text, an int a capture group (statsd_exporter's $1 / ${1})


@dataclass(frozen=True)
class Rule:
    regex: re2._Regexp  # RE2, as statsd_exporter's Go regexp: linear in the name, whatever the pattern
    name: Template
    labels: dict[str, Template]
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
    index: int = 0  # its place in the file (mapping #index), for `bridge explain`
    match: str = ""  # its match as written
    native: tuple[int, int, int] | None = None  # native histogram (native_spec), None: classic only


def _literal(c: str) -> str:
    return c if c.isascii() and (c.isalnum() or c == "_") else f"\\x{{{ord(c):x}}}"


def _glob_regex(pattern: str) -> re2._Regexp:
    """A glob as RE2 (whole name; `*` is any run without a dot), tried with fullmatch."""
    return re2.compile("".join("([^.]*)" if c == "*" else _literal(c) for c in pattern), _RE2_OPTIONS)


def _regex(where: str, pattern: str) -> re2._Regexp:
    """A `match_type: regex` pattern in RE2's syntax (Go's, as statsd_exporter's); a pattern RE2 cannot
    run in linear time, or that breaks its limits, is refused at load naming the rule it breaks."""
    for m in _REPEAT.finditer(pattern):
        if any(g and (len(g) > 4 or int(g) > MAX_REPEAT) for g in m.groups()):
            raise MappingError(f"{where}: invalid regex {_show.repr(pattern)}: repetition "
                               f"{_show.repr(m.group(0))[1:-1]} is over {MAX_REPEAT} (RE2's and Go's limit)")
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as e:
        why = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
    if re.search(r"\\[1-9]|\(\?P=", pattern):
        rule = "backreferences need backtracking; RE2, like statsd_exporter's Go regexp, has none"
    elif re.search(r"\(\?(<?[=!]|>)", pattern):
        rule = "lookaround and atomic groups need backtracking; RE2, like statsd_exporter's Go regexp, has none"
    elif "too large" in why or "too big" in why:
        rule = "it compiles to more than RE2's memory limit"
    else:
        rule = f"{why[:120]} (RE2 syntax, as statsd_exporter's Go regexp)"
    raise MappingError(f"{where}: invalid regex {_show.repr(pattern)}: {rule}")


def _template(where: str, what: str, text: str, groups: int, warn, glob: bool = False,
              names: dict[str, int] | None = None) -> Template:
    """Compile a template into pieces (literal text, or a capture group's number), read as statsd_exporter
    0.27 reads it: a regex rule's with Go's regexp.Expand, a glob rule's with its own formatter (fsm). A
    reference to a group the match does not have expands to nothing there, so here too (and is said at
    load, as is a `$` Go keeps as text)."""
    pieces = _glob_pieces(text, groups) if glob else _regex_pieces(text, groups, names or {})
    out: list = []
    for p in pieces:
        if isinstance(p, tuple):  # (reference as written, None): expands to nothing
            ref = p[0]
            why = (f"{groups} groups" if glob or ref.strip("${}").isdigit() else "no group of that name")
            hint = ""
            split = re.fullmatch(r"\$\{?(\d+)(\w+)\}?", ref)
            if split:  # `$1_foo`: the whole word is the reference, in Go and in statsd_exporter's globs
                hint = (f"; statsd_exporter reads {ref} as one reference: write ${{{split.group(1)}}}"
                        f"{split.group(2)} for group {split.group(1)} followed by {split.group(2)!r}")
            warn(f"{where}: {what} refers to {_show.repr(ref)[1:-1]}, which its match does not capture ({why}); "
                 f"it expands to nothing, as in statsd_exporter{hint}")
            continue
        if out and isinstance(p, str) and isinstance(out[-1], str):
            out[-1] += p
        else:
            out.append(p)
    return tuple(out)


_GLOB_REF = re.compile(r"\$\{?([a-zA-Z0-9_$]+)\}?")  # statsd_exporter's fsm formatter (pkg/mapper/fsm)


def _glob_pieces(text: str, groups: int) -> list:
    """A glob rule's template as statsd_exporter's formatter reads it: each match of `$` or `${`, the longest
    run of [a-zA-Z0-9_$], an optional `}` is replaced, in order and every occurrence of it at once, by its
    capture if its word is a number from 1 to the number of `*`, else by nothing (`$0`, `$1_foo`, `$1$2`);
    the captures then fill the slots in the order they were made."""
    refs = list(_GLOB_REF.finditer(text))
    if not refs:
        return [text] if text else []
    SLOT = "\x00"
    fmt, order, gone = text.replace(SLOT, ""), [], []
    for x in refs:
        word = x.group(1)
        i = int(word) if word.isascii() and word.isdigit() and len(word) <= 9 else 0
        if 1 <= i <= groups:
            fmt = fmt.replace(x.group(0), SLOT)
            order.append(i)
        else:
            if x.group(0) in fmt:
                gone.append((x.group(0), None))
            fmt = fmt.replace(x.group(0), "")
    parts = fmt.split(SLOT)
    out: list = list(gone)  # said at load (nothing in their place)
    if len(parts) - 1 != len(order):  # Go's Sprintf would print %!s(MISSING) or %!(EXTRA ...)
        out.append((f"{text} (its references overlap: statsd_exporter prints %!s(MISSING) or %!(EXTRA) here)",
                    None))
    for k, part in enumerate(parts):
        if part:
            out.append(part)
        if k < len(parts) - 1 and k < len(order):
            out.append(order[k])
    return out


def _regex_pieces(text: str, groups: int, names: dict[str, int]) -> list:
    """A regex rule's template as Go's regexp.Expand reads it: `$$` is a `$`; `$name` or `${name}` takes the
    longest run of letters, digits and `_` (so `$1_foo` is the name `1_foo`, not group 1 then `_foo`); a
    number without a leading zero is a group, a name a named group; a malformed `$` is kept as text."""
    out: list = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "$":
            buf.append(c)
            i += 1
            continue
        if i + 1 < n and text[i + 1] == "$":
            buf.append("$")
            i += 2
            continue
        j = i + 1
        brace = j < n and text[j] == "{"
        if brace:
            j += 1
        k = j
        while k < n and (text[k].isalpha() or text[k].isdecimal() or text[k] == "_"):
            k += 1
        if k == j or (brace and (k >= n or text[k] != "}")):  # malformed: the `$` is text
            buf.append("$")
            i += 1
            continue
        name = text[j:k]
        end = k + 1 if brace else k
        if buf:
            out.append("".join(buf))
            buf = []
        if name.isascii() and name.isdigit() and (name == "0" or name[0] != "0") and len(name) <= 8:
            num = int(name)
            out.append(num if num <= groups else (text[i:end], None))
        else:
            out.append(names[name] if name in names else (text[i:end], None))
        i = end
    if buf:
        out.append("".join(buf))
    return out


def _expand(template: Template, m) -> str:
    return "".join(p if p.__class__ is str else (m.group(p) or "") for p in template)


RULE_KEYS = {"match", "name", "labels", "action", "match_type", "match_metric_type", "ttl", "observer_type",
             "timer_type", "histogram_options", "summary_options", "help", "honor_labels", "scale", "buckets",
             "quantiles"}
DEFAULT_KEYS = {"match_type", "glob_disable_ordering", "ttl", "observer_type", "histogram_options",
                "summary_options", "buckets", "quantiles"}
IGNORED = {"quantiles": "quantiles apply to summaries; timers are histograms here",
           "summary_options": "timers are histograms here (aggregatable across pods)"}
HISTOGRAM_OPTIONS = {"buckets", "native_histogram_bucket_factor", "native_histogram_max_buckets"}


MAX_WARNINGS = 20  # warning lines one load may log; the rest are counted in one more line


class _Warnings:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, msg: str) -> None:
        self.n += 1
        if self.n <= MAX_WARNINGS:
            log.warning("%s", msg)

    def close(self, path) -> None:
        if self.n > MAX_WARNINGS:
            log.warning("mapping file %s: %d more warnings not shown", path, self.n - MAX_WARNINGS)


def _warn_keys(where: str, given: dict, known: set[str], warn) -> None:
    for key in given:
        if key in IGNORED:
            warn(f"{where}: {key!r} is accepted and ignored: {IGNORED[key]}")
        elif key not in known:
            warn(f"{where}: unknown key {_show.repr(key)} is ignored")


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
        raise MappingError(f"{where}: histogram buckets must be a list of numbers, not {_show.repr(given)}")
    if any(not math.isfinite(b) for b in given):
        raise MappingError(f"{where}: histogram buckets must be finite numbers (+Inf is always the last)")
    if given != sorted(given) or len(set(given)) != len(given):
        raise MappingError(f"{where}: histogram buckets must be increasing")
    return tuple(float(b) for b in given)


def _read(path) -> object:
    """The file's YAML within boundedyaml's limits; anything wrong is a one-line MappingError."""
    try:
        return boundedyaml.load(path)
    except OSError as e:
        raise MappingError(f"cannot read mapping file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise MappingError(f"mapping file {path} is not UTF-8 text (byte {e.start})") from None
    except boundedyaml.LimitError as e:
        raise MappingError(f"mapping file {path} is refused: it is {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise MappingError(f"mapping file {path} is not valid YAML{at}") from None


def _native(where: str, r: dict, default: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
    """statsd_exporter's `histogram_options.native_histogram_bucket_factor` (over 1: a native
    histogram of that growth per bucket; 1 or less: none) and `native_histogram_max_buckets`."""
    opts = r.get("histogram_options") or {}
    factor, most = opts.get("native_histogram_bucket_factor"), opts.get("native_histogram_max_buckets")
    most = most or None  # 0: the default, as in statsd_exporter
    for what, v in (("native_histogram_bucket_factor", factor), ("native_histogram_max_buckets", most)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0):
            raise MappingError(f"{where}: {what} must be a number of at least 0, not {_show.repr(v)}")
    if factor is None and most is None:
        return default
    if factor is not None and factor <= 1:
        return None
    if most is not None and not 2 <= most <= 1000:
        raise MappingError(f"{where}: native_histogram_max_buckets must be within 2..1000, not {most}")
    schema = schema_of_factor(factor) if factor is not None else (default or DEFAULT_NATIVE)[0]
    return native_spec(schema, most if most is not None else (default or DEFAULT_NATIVE)[1])


def load_rules(path: str | Path, default_buckets: tuple[float, ...] = DEFAULT_BUCKETS,
               default_native: tuple[int, int, int] | None = DEFAULT_NATIVE) -> list[Rule]:
    """Read a statsd_exporter mapping file; raises MappingError with a one-line reason, whatever
    is wrong with the file (RecursionError, MemoryError and the like included).

    The rules come back in the order they are tried: glob rules first (in file order, or most
    specific first with `defaults.glob_disable_ordering: true`), then regex rules in file order.
    """
    warn = _Warnings()
    try:
        return _load_rules(path, default_buckets, warn, default_native)
    except MappingError:
        raise
    except Exception as e:  # RecursionError, MemoryError, a defect: it must not stop the bridge
        raise MappingError(f"mapping file {path} cannot be loaded: {type(e).__name__}: "
                           f"{_show.repr(str(e))[1:-1]}") from None
    finally:
        warn.close(path)


def _load_rules(path, default_buckets, warn, default_native=DEFAULT_NATIVE) -> list[Rule]:
    doc = _read(path) or {}
    if not isinstance(doc, dict):
        raise MappingError(f"mapping file {path}: top level must be a mapping with 'mappings:'")
    unknown = set(doc) - {"defaults", "mappings"}
    if unknown:
        raise MappingError(f"mapping file {path}: unknown key {_show.repr(sorted(map(str, unknown))[0])}")
    d = doc.get("defaults") or {}
    if not isinstance(d, dict):
        raise MappingError(f"mapping file {path}: defaults must be a mapping")
    _warn_keys(f"mapping file {path}, defaults", d, DEFAULT_KEYS, warn)
    d_match = d.get("match_type", "glob")
    d_ttl = parse_duration(d.get("ttl", 0))
    d_obs = d.get("observer_type", "histogram")
    d_buckets = _buckets(f"mapping file {path}, defaults", d) or tuple(default_buckets)
    d_native = _native(f"mapping file {path}, defaults", d, default_native)
    unordered = bool(d.get("glob_disable_ordering", False))
    mappings = doc.get("mappings") or []
    if not isinstance(mappings, list):
        raise MappingError(f"mapping file {path}: mappings must be a list")
    rules = []
    for i, r in enumerate(mappings, 1):
        where = f"mapping file {path}, mapping #{i}"
        if not isinstance(r, dict) or "match" not in r:
            raise MappingError(f"{where}: needs a 'match'")
        _warn_keys(where, r, RULE_KEYS, warn)
        for key, sub in (("histogram_options", HISTOGRAM_OPTIONS), ("summary_options", None)):
            if isinstance(r.get(key), dict) and sub is not None:
                _warn_keys(f"{where}, {key}", r[key], sub, warn)
        action = r.get("action", "map")
        if action not in ("map", "drop"):
            raise MappingError(f"{where}: action must be map or drop, not {_show.repr(action)}")
        match_type = r.get("match_type", d_match)
        if not isinstance(r["match"], str | int | float):
            raise MappingError(f"{where}: match must be a string, not {_show.repr(r['match'])}")
        if match_type == "regex":  # searched anywhere in the name, as statsd_exporter does
            rx = _regex(where, str(r["match"]))
        elif match_type == "glob":
            rx = _glob_regex(str(r["match"]))
        else:
            raise MappingError(f"{where}: match_type must be glob or regex, not {_show.repr(match_type)}")
        name = r.get("name")
        if action == "map" and not name:
            raise MappingError(f"{where}: a mapping needs a 'name' (or action: drop)")
        if not isinstance(name, str | int | float | None):
            raise MappingError(f"{where}: name must be a string, not {_show.repr(name)}")
        mtype = r.get("match_metric_type")
        if mtype not in (None, "counter", "gauge", "observer", "timer"):
            raise MappingError(f"{where}: match_metric_type must be counter, gauge or observer")
        obs = r.get("observer_type", r.get("timer_type", d_obs))
        if obs not in ("histogram", "summary", "default", ""):
            raise MappingError(f"{where}: observer_type must be histogram or summary")
        buckets = _buckets(where, r) or d_buckets
        native = _native(where, r, d_native)
        labels = r.get("labels") or {}
        if not isinstance(labels, dict):
            raise MappingError(f"{where}: labels must be a mapping")
        for k, v in labels.items():
            if label_name(str(k)) != str(k):
                raise MappingError(f"{where}: invalid label name {_show.repr(k)}")
            if not isinstance(v, str | int | float | bool | None):
                raise MappingError(f"{where}: label {k} must be a string, not {_show.repr(v)}")
        scale = r.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise MappingError(f"{where}: scale must be a finite number, not {_show.repr(scale)}")
        groups = rx.groups
        glob = match_type == "glob"
        names = dict(getattr(rx, "groupindex", None) or {})
        rules.append(
            Rule(
                regex=rx,
                name=_template(where, "name", str(name or ""), groups, warn, glob, names),
                labels={str(k): _template(where, f"label {k}", str(v), groups, warn, glob, names)
                        for k, v in labels.items()},
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
                index=i,
                match=str(r["match"]),
                native=native,
            )
        )
    globs = [x for x in rules if x.glob]
    if unordered:
        globs.sort(key=lambda x: x.specificity)  # stable: file order among equals
    return globs + [x for x in rules if not x.glob]


_METRIC_TYPE = {"c": "counter", "g": "gauge", "s": "gauge", "ms": "observer", "h": "observer", "d": "observer"}


def _user_target(rule: Rule, m, key: Key) -> Target:
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
        native=rule.native if KIND[key.type] == "histogram" else None,
    )


# Families that statsd input may not create: our own series (the bridge's, the SLA watcher's, the
# healer's) are served beside the store's, and a second family of the same name would make the
# whole scrape invalid or let anyone who can send a datagram hide or fake them.
RESERVED_PREFIXES = ("airflow_monitor_", "airflow_sla_")
# The names a catalog family may take on /metrics, in the text format and in OpenMetrics: a family
# of statsd input that takes one (`airflow_ti_finish_total` as a gauge, `airflow_dagrun_duration_count`)
# would own it before Airflow's first sample and have Airflow's samples dropped as conflicts.
CATALOG_SUFFIXES = {"counter": ("", "_total", "_created"), "gauge": ("",),
                    "histogram": ("", "_bucket", "_sum", "_count", "_created")}


def catalog_names() -> dict[str, str]:
    """Every name a catalog family takes on /metrics -> that family."""
    out = {}
    for m in catalog.load():
        for suffix in CATALOG_SUFFIXES[m.prometheus_type]:
            out[m.prometheus + suffix] = m.prometheus
    return out


class Mapper:
    """User rules (as load_rules orders them: globs, then regexes; first match wins), then the Airflow
    catalog, then unmapped."""

    def __init__(self, rules: list[Rule] | None = None, airflow: AirflowMapping | None = None,
                 unmapped: str = "export"):
        self.rules = rules or []
        self.airflow = airflow or AirflowMapping()
        self.unmapped = unmapped
        self.catalog_kinds = {m.prometheus: m.prometheus_type for m in catalog.load()}
        self.catalog_names = catalog_names()

    def reserved(self, family: str, kind: str) -> bool:
        """May statsd input (a user rule, an unmapped name) not create this family?"""
        if family.startswith(RESERVED_PREFIXES):
            return True
        own = self.catalog_kinds.get(family)
        if own is not None:  # a catalog family itself: under its own type only
            return own != kind
        names = self.catalog_names  # what it exposes, its family name (OpenMetrics) and its _created
        return (family in names or any(n in names for n in exposed_names(family, kind))
                or (kind != "gauge" and family + "_created" in names))

    def map(self, key: Key) -> Target:
        t = self._map(key)
        if t.form in ("user", "unmapped") and t.kind != "drop":
            if t.kind == "counter" and t.family.endswith("_total") and \
                    self.catalog_kinds.get(t.family[:-6]) == "counter":
                # `airflow_ti_finish_total` as a counter (how statsd_exporter files often spell
                # it) is the catalog family airflow_ti_finish: the same name on /metrics
                t = replace(t, family=t.family[:-6])
            if self.reserved(t.family, t.kind):
                return Target(family="", kind="drop", reason="reserved", form=t.form)
        if t.form == "user" and t.kind != "drop":
            # a rule that maps one of Airflow's twin forms (the official chart's maps the legacy
            # names) keeps the form, so that each event is still counted once
            ct = self.airflow.map(key)
            if ct is not None and ct.form in ("modern", "legacy", "twin"):
                return replace(t, form=ct.form, metric=ct.metric)
        return t

    def decided_by(self, key: Key) -> str:
        """Which rule maps a key, in words (for `airflow-monitor bridge explain`)."""
        mtype = _METRIC_TYPE[key.type]
        for rule in self.rules:
            if rule.metric_type and rule.metric_type != mtype:
                continue
            if (rule.regex.fullmatch(key.name) if rule.glob else rule.regex.search(key.name)):
                return (f"mapping file rule #{rule.index} (match '{rule.match}', {'glob' if rule.glob else 'regex'}"
                        f"{', action: drop' if rule.action == 'drop' else ''}): the first rule that matches")
        t = self.airflow.map(key)
        if t is not None:
            m = t.metric
            form = {"modern": f"its tagged form ({m.name} with the ids as tags)", "twin": f"its tagless form "
                    f"({m.name} without the ids)", "legacy": f"its legacy form ({m.legacy})",
                    "plain": "its only form"}[t.form]
            return f"the Airflow catalog: {m.name}, {form}"
        return (f"no mapping rule and no Airflow metric (statsd_prefix {self.airflow.prefix.rstrip('.')!r}): "
                f"unmapped, {'dropped' if self.unmapped == 'drop' else 'exported under a sanitized name'}")

    def _map(self, key: Key) -> Target:
        mtype = _METRIC_TYPE[key.type]
        for rule in self.rules:
            if rule.metric_type and rule.metric_type != mtype:
                continue
            hit = rule.regex.fullmatch(key.name) if rule.glob else rule.regex.search(key.name)
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
            native=self.airflow.native if KIND[key.type] == "histogram" else None,
        )
