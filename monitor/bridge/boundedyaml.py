"""Read a YAML file whose size, nesting and alias expansion are bounded, before anything is built.

A mapping file is read by a service that must not stop: a 424-byte file of nested aliases
(`a: &a [x, x, ...]`, `b: &b [*a, *a, ...]`, ...) expands to 10^8 elements that the code walking
it (or an error message showing it) would visit one by one, and a 20,000-deep `[[[...]]]`
exhausts the recursion of a YAML composer. So the event stream is read first (libyaml's parser,
iterative): the file's bytes, its nesting depth and the number of nodes it expands to (each alias
counted as the whole node it names) are held to limits, and only then is the document built.
A breach is a `ValueError` whose message is one line naming the limit.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

MAX_BYTES = 1 << 20  # ~8,000 regex rules, loaded in about a second (the official chart's file: 3 KB)
MAX_DEPTH = 64  # a mapping file needs about 5 levels
MAX_NODES = 1_000_000  # after aliases are expanded

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class GoLoader(_Loader):
    r"""A safe loader that reads plain numbers as statsd_exporter's Go YAML (gopkg.in/yaml.v2) does: its
    float syntax `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` takes `1e-6` and `2E3`, which
    YAML 1.1 (and so PyYAML) reads as strings; `scale: 1e-6` is a number in both."""


GoLoader.yaml_implicit_resolvers = {k: list(v) for k, v in _Loader.yaml_implicit_resolvers.items()}
GoLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                               re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
                               list("-+.0123456789"))


class LimitError(ValueError):
    """The document breaks one of the limits; the message is one line."""


def check(text: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Walk the event stream: depth, and nodes with every alias expanded. Linear in the text."""
    frames: list[list] = [[None, 0]]  # per open collection: [its anchor or None, expanded nodes inside]
    sizes: dict[str, int] = {}  # anchor -> expanded size of its finished node
    total = 0
    for ev in yaml.parse(text, Loader=_Loader):
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(frames) > max_depth:
                raise LimitError(f"nested more than {max_depth} levels deep")
            if ev.anchor is not None:
                sizes.pop(ev.anchor, None)  # (re)defined: not usable inside itself (a recursive alias)
            frames.append([ev.anchor, 1])
            total += 1
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, n = frames.pop()
            if anchor is not None:
                sizes[anchor] = n
            frames[-1][1] += n
            continue
        elif isinstance(ev, yaml.ScalarEvent):
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
            frames[-1][1] += 1
            total += 1
        elif isinstance(ev, yaml.AliasEvent):
            n = sizes.get(ev.anchor)
            if n is None:
                raise LimitError(f"alias *{ev.anchor[:40]} refers to a node that contains it, or to none")
            frames[-1][1] += n
            total += n
        else:
            continue
        if total > max_nodes:
            raise LimitError(f"expands to more than {max_nodes:,} nodes (an alias counts as all it repeats)")


def load(path: str | Path, max_bytes: int = MAX_BYTES):
    """Parse a YAML file within the limits. Raises OSError, UnicodeDecodeError, yaml.YAMLError or
    LimitError."""
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise LimitError(f"larger than {max_bytes:,} bytes")
    text = raw.decode("utf-8")
    check(text)
    return yaml.load(text, Loader=GoLoader)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)
