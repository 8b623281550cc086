"""Statsd line parsing: plain statsd, DogStatsD, InfluxDB, Librato and SignalFX tag styles.

A line is `name[tags]:value[:value...]|type[|@rate][|#tags][|c:container][|Tts]`.
The ingest hot path splits a line into (head, values, tail) itself and calls parse_key() only
when (head, tail) is not cached, so this module may be thorough rather than fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Bounds on one line's key (a legacy Airflow name embeds a dag_id and a task_id of up to 250
# characters each): what is longer is refused with a reason, so no line can make a huge series.
MAX_NAME = 1024
MAX_TAGS = 64
MAX_LABEL_VALUE = 1024
TYPES = {"c": "counter", "g": "gauge", "ms": "timer", "h": "histogram", "d": "distribution", "s": "set"}
INF = float("inf")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")
_SPACE = re.compile(r"\s")


class ParseError(ValueError):
    """A line that cannot be accepted; `reason` names it in the parse_errors self-metric."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Key:
    """Everything about a line except its value(s): what the mapper cache is keyed on."""

    name: str
    type: str  # one of TYPES' keys
    rate: float
    tags: tuple[tuple[str, str], ...]
    # how the line carried its tags: "" (none), dogstatsd (`|#k:v`), influxdb (`name,k=v`), librato
    # (`name#k=v`) or signalfx (`name[k=v]`); not part of the key's identity
    style: str = field(default="", compare=False)


def split_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    """Split into (head, values, tail): name and name-embedded tags, the value(s), the rest."""
    i = line.find(b":")
    if i <= 0:
        raise ParseError("malformed_line", "no ':' after the name")
    j = line.find(b"|", i)
    if j < 0:
        raise ParseError("malformed_line", "no '|' before the type")
    return line[:i], line[i + 1 : j], line[j + 1 :]


def _decode(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("invalid_utf8") from None


def label_name(key: str) -> str:
    """A tag key as a valid Prometheus label name."""
    key = _LABEL_BAD.sub("_", key)
    return "_" + key if key[:1].isdigit() else key


def _kv_tags(s: str, sep: str, eq: str, tags: dict[str, str]) -> None:
    for part in s.split(sep):
        if not part:
            continue
        k, found, v = part.partition(eq)
        if not found or not k:
            raise ParseError("malformed_tag", part)
        tags[label_name(k)] = v


def parse_key(head: bytes, tail: bytes) -> Key:
    name = _decode(head)
    rest = _decode(tail)
    tags: dict[str, str] = {}
    style = ""
    # tags embedded in the name
    if "[" in name:  # SignalFX: name[k=v,k2=v2]rest
        a, b = name.index("["), name.find("]")
        if b < a:
            raise ParseError("malformed_tag", "unclosed '['")
        _kv_tags(name[a + 1 : b], ",", "=", tags)
        name = name[:a] + name[b + 1 :]
        style = "signalfx"
    elif "#" in name:  # Librato: name#k=v,k2=v2
        name, _, t = name.partition("#")
        _kv_tags(t, ",", "=", tags)
        style = "librato"
    elif "," in name:  # InfluxDB: name,k=v,k2=v2
        name, _, t = name.partition(",")
        _kv_tags(t, ",", "=", tags)
        style = "influxdb"
    if not name or _SPACE.search(name):
        raise ParseError("illegal_name", repr(name))
    if len(name) > MAX_NAME:
        raise ParseError("name_too_long", f"{len(name)} characters")
    parts = rest.split("|")
    mtype = parts[0]
    if mtype not in TYPES:
        raise ParseError("unknown_type", repr(mtype))
    rate = 1.0
    for p in parts[1:]:
        if p.startswith("@"):
            try:
                rate = float(p[1:])
            except ValueError:
                raise ParseError("invalid_sample_rate", p) from None
            if not 0 < rate <= 1 or not 1.0 / rate < INF:  # nan, out of range, or too small to invert
                raise ParseError("invalid_sample_rate", p)
        elif p.startswith("#"):  # DogStatsD: |#k:v,k2:v2 (a tag without value is kept with "")
            if tags and style:  # as statsd_exporter: one line, one tagging style
                raise ParseError("mixed_tagging_styles", f"{style} tags in the name and DogStatsD tags after '|#'")
            style = "dogstatsd"
            for t in p[1:].split(","):
                if t:
                    k, _, v = t.partition(":")
                    if not k:
                        raise ParseError("malformed_tag", t)
                    tags[label_name(k)] = v
        elif p.startswith("c:") or p.startswith("T") or p == "":
            continue  # DogStatsD container id / timestamp: accepted, not used
        else:
            raise ParseError("malformed_line", f"unknown field {p!r}")
    if len(tags) > MAX_TAGS:
        raise ParseError("too_many_tags", str(len(tags)))
    if any(len(v) > MAX_LABEL_VALUE for v in tags.values()):
        raise ParseError("label_value_too_long")
    return Key(name, mtype, rate, tuple(sorted(tags.items())), style)


def parse_values(values: bytes, mtype: str) -> list[tuple[float, bool]]:
    """The value(s) of a line as (value, is_delta). Multi-value (DogStatsD 1.1) is `1:2:3`."""
    out = []
    for v in values.split(b":"):
        try:
            f = float(v)
        except ValueError:
            raise ParseError("invalid_value", repr(v)) from None
        if f != f or f in (float("inf"), float("-inf")):
            raise ParseError("invalid_value", repr(v))
        out.append((f, mtype == "g" and v[:1] in (b"+", b"-")))
    return out
