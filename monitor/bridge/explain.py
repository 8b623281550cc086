"""`airflow-monitor bridge explain LINE`: how the bridge reads one statsd line, step by step.

Parsed (name, type, tags and how they were written), mapped (and the rule or catalog entry that decided),
which of Airflow's twin forms it is and which form counts, the unit a timer is read in, and what it
exposes on /metrics: the line goes through the bridge's own code (a fresh store), not a description of it.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from monitor.bridge import reasons
from monitor.bridge.parse import TYPES, ParseError, parse_key, parse_values, split_line


def explain(line: str, mapper, airflow_tags: str = "auto", timer_unit: str = "auto") -> dict:
    """What happens to one line; a dict of steps (each a short sentence) and the exposed samples."""
    from monitor.bridge.exposition import StoreView
    from monitor.bridge.ingest import Ingest
    from monitor.bridge.store import Store

    raw = line.encode()
    out: dict = {"line": line, "steps": [], "exposed": [], "counted": {}}
    steps = out["steps"]
    try:
        head, vals, tail = split_line(raw)
        key = parse_key(head, tail)
        values = parse_values(vals, key.type) if key.type != "s" else []
    except ParseError as e:
        steps.append(f"parse: refused, parse_errors{{reason={e.reason!r}}}: {reasons.PARSE_ERRORS.get(e.reason, e)}")
        out["verdict"] = f"not stored (parse error {e.reason})"
        return out
    tags = ", ".join(f"{k}={v!r}" for k, v in key.tags) or "none"
    style = {"": "no tags", "dogstatsd": "DogStatsD tags (|#)", "influxdb": "InfluxDB tags (name,k=v)",
             "librato": "Librato tags (name#k=v)", "signalfx": "SignalFX tags (name[k=v])"}[key.style]
    steps.append(f"parse: name {key.name!r}, type {key.type} ({TYPES[key.type]}), sample rate {key.rate:g}, "
                 f"{style}: {tags}; value(s) {', '.join(f'{v:g}' for v, _ in values) or vals.decode()}")
    target = mapper.map(key)
    steps.append(f"map: by {mapper.decided_by(key)}")
    if target.kind == "drop":
        steps.append(f"map: dropped, dropped{{reason={target.reason!r}}}: {reasons.DROPPED.get(target.reason, '')}")
    else:
        labels = ", ".join(f"{k}={v!r}" for k, v in target.labels) or "none"
        steps.append(f"map: family {target.family} ({target.kind}), labels {labels}")
    m = target.metric
    if m is not None and target.form in ("modern", "legacy", "twin"):
        counted = {"on": "tagged", "off": "legacy"}.get(airflow_tags)
        form = {"modern": "tagged", "legacy": "legacy", "twin": "tagless"}[target.form]
        if counted:
            rule = f"airflow_tags={airflow_tags}: the {counted} form counts"
        else:
            rule = ("airflow_tags=auto: the form Airflow sends counts, learned per metric (a first legacy or "
                    "tagless sample waits up to 1 s for its twin; a form that comes alone counts)")
        steps.append(f"twin: Airflow sends {m.name} twice, tagged (or tagless) and as {m.legacy}; this is its "
                     f"{form} form; {rule}; the other is dropped as legacy_twin, tagless_twin or tagged_twin")
    if key.type == "ms" and target.kind == "histogram":
        if m is not None and m.sent_in_seconds:
            unit = "Airflow passes seconds to Stats.timing() and labels them ms: read as seconds"
        elif m is not None and m.timer_call and timer_unit == "auto":
            unit = ("a Stats.timer() metric: seconds if the line has DogStatsD tags or is written as the "
                    "DogStatsD client writes seconds, else milliseconds; exposed in seconds")
        else:
            unit = "milliseconds, exposed in seconds"
        steps.append(f"unit: {unit}")
    # the line through the bridge's own code, alone in a fresh store
    store = Store()
    ingest = Ingest(mapper, store, airflow_tags=airflow_tags, dogstatsd_timer_unit=timer_unit)
    ingest.handle(raw, "udp", 1000.0)
    ingest.housekeeping(1002.0)  # a lone twin form is released after 1 s
    view = StoreView(store.vals)
    view.apply(store.take_journal())
    out["exposed"] = [x for x in view.text().splitlines() if x and not x.startswith("#")]
    st = ingest.stats
    out["counted"] = {**{f"dropped{{reason={r!r}}}": v for r, v in st.dropped.items() if v},
                      **{f"parse_errors{{reason={r!r}}}": v for r, v in st.parse_errors.items() if v},
                      **{f"labels_dropped{{reason={r!r}}}": v for r, v in st.labels_dropped.items() if v}}
    out["verdict"] = "exposed" if out["exposed"] else "not stored"
    return out


def command(args) -> int:
    """`airflow-monitor bridge explain LINE...`, with the mapping and settings `serve` would use."""
    from monitor.bridge.mapper import AirflowMapping, Mapper, MappingError, load_rules
    from monitor.config import BridgeConfig, ConfigError, load
    from monitor.errors import UserError

    flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(BridgeConfig)}
    try:
        cfg = load(BridgeConfig, "bridge", getattr(args, "config", None), flags)
        rules = load_rules(cfg.mapping_file) if cfg.mapping_file else []
    except (ConfigError, MappingError) as e:
        raise UserError(str(e)) from None
    if cfg.airflow_tags not in ("auto", "on", "off"):
        raise UserError(f"airflow_tags must be one of auto, on, off, not {cfg.airflow_tags!r}")
    mapper = Mapper(rules, AirflowMapping(cfg.statsd_prefix), cfg.unmapped)
    if logging.getLogger().level > logging.DEBUG:  # what ingest decides is in the output, not its log lines
        logging.getLogger("monitor.bridge.ingest").setLevel(logging.WARNING)
    results = [explain(line, mapper, cfg.airflow_tags, cfg.dogstatsd_timer_unit) for line in args.line]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(r["line"])
        for step in r["steps"]:
            print(f"  {step}")
        for sample in r["exposed"]:
            print(f"  exposed: {sample}")
        for what, n in r["counted"].items():
            print(f"  counted: airflow_monitor_bridge_{what} +{n:g}")
        if not r["exposed"]:
            print(f"  result: {r['verdict']}")
    return 0
