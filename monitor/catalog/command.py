"""`airflow-monitor catalog`: the metric table, generated from the catalog."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from monitor import catalog


def unit(m: catalog.Metric, version: str | None = None) -> str:
    """What a timer arrives in (ms; `s as ms`: seconds labelled ms; `ms, s dogstatsd`: Stats.timer(), seconds
    from the DogStatsD client) and what is exposed (seconds); '' for counters and gauges."""
    if m.type != "timer":
        return ""
    sent = m.sent.get(".".join(version.split(".")[:2])) if version and m.sent else None
    how = {"timer": "ms, s dogstatsd", "ms": "ms", "s": "s as ms"}.get(sent or "", m.unit_text)
    return f"{how} -> s"


def rows(version: str | None = None) -> list[tuple[str, ...]]:
    """One row a metric; with `version`, only what that Airflow line sends, in the forms it sends."""
    out = []
    for m in catalog.load():
        if version is not None and not catalog.sent_by(m, version):
            continue
        tagged = (version is None or m.tagged_since is None
                  or catalog.line_of(version) >= catalog.line_of(m.tagged_since))
        forms = " / ".join(([m.name] if tagged else []) + ([m.legacy] if m.legacy else []))
        if m.formerly:
            forms += f" (formerly {', '.join(m.formerly)})"
        labels = ",".join(list(m.labels) + [f"{k}?" for k in m.optional_labels] +
                          [f"{k}={v}" for k, v in m.const_labels.items()])
        out.append((forms, m.type, unit(m, version), f"{m.prometheus_series[0].rsplit('_bucket', 1)[0]}", labels,
                    m.datadog, catalog.versions_text(m)))
    return out


def show(args) -> int:
    if args.format == "yaml":
        sys.stdout.write(catalog.CATALOG_FILE.read_text())
        return 0
    version = getattr(args, "airflow_version", None)
    if version is not None and ".".join(version.split(".")[:2]) not in catalog.AIRFLOW_LINES:
        print(f"airflow-monitor catalog: error: --airflow-version {version!r} is not an Airflow line the catalog "
              f"knows ({', '.join(catalog.AIRFLOW_LINES)}, or a release of one such as 3.2.2)", file=sys.stderr)
        return 2
    head = ("statsd name / legacy name", "type", "unit", "prometheus", "labels", "datadog", "airflow")
    data = rows(version)
    if args.format == "markdown":
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in data:
            print("| " + " | ".join(f"`{c}`" if c else "" for c in r) + " |")
        return 0
    widths = [max(len(r[i]) for r in [head, *data]) for i in range(len(head))]
    size = shutil.get_terminal_size()
    tty = sys.stdout.isatty()
    if tty:  # fit the terminal's width: the widest columns give up characters first, cut with "…"
        widths = fit(widths, size.columns)
    text = "\n".join("  ".join(cut(c, w).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [head, *data]) + "\n"
    if tty and len(data) + 1 > size.lines:
        return _page(text)
    sys.stdout.write(text)
    return 0


def fit(widths: list[int], columns: int, floor: int = 6) -> list[int]:
    """Column widths whose row (two spaces between columns) fits `columns`, taken from the widest first."""
    widths = list(widths)
    while sum(widths) + 2 * (len(widths) - 1) > columns:
        i = max(range(len(widths)), key=widths.__getitem__)
        if widths[i] <= floor:
            break
        widths[i] -= 1
    return widths


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _page(text: str) -> int:
    """On a terminal, a table longer than it goes through $PAGER (default `less -S`), as git does."""
    cmd = os.environ.get("PAGER") or "less -S"
    try:
        proc = subprocess.Popen(shlex.split(cmd), stdin=subprocess.PIPE, text=True)
    except OSError:
        sys.stdout.write(text)
        return 0
    try:
        proc.stdin.write(text)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    proc.wait()
    return 0
