"""Durations as people write them ('90s', '1h30m', '2d') and back."""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(v) -> float:
    """Go-style duration ('90s', '1h30m') or a number of seconds; ValueError otherwise."""
    if isinstance(v, bool):
        raise ValueError(f"invalid duration {v!r} (use e.g. 30s, 5m, 1h)")
    if isinstance(v, int | float):
        return float(v)
    s = str(v).strip()
    if s in ("", "0"):
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"invalid duration {v!r} (use e.g. 30s, 5m, 1h)")
    return total


def format_duration(seconds: float) -> str:
    """3725 -> '1h2m5s'; the inverse of parse_duration for whole seconds."""
    s = int(round(seconds))
    if s <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out.append(f"{s // size}{unit}")
            s %= size
    return "".join(out)
