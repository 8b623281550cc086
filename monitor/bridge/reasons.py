"""Why the bridge did not store what arrived: every reason a self-metric counts, said once, here.

The HELP of `airflow_monitor_bridge_{dropped,parse_errors,labels_dropped}_total`, the README's lists and
`/-/dropped` read these; a test holds the code, the README and the HELP to them.
"""

from __future__ import annotations

# airflow_monitor_bridge_dropped_total{reason}: a line that parsed, and whose sample is not stored
DROPPED = {
    "legacy_twin": "Airflow's legacy twin of a sample counted in its tagged form",
    "tagless_twin": "Airflow's tagless twin of a sample counted in its legacy form",
    "tagged_twin": "a tagged sample held while its metric's form was weighed, whose legacy twin counted it",
    "drop_rule": "a mapping rule with action: drop",
    "unmapped": "a non-Airflow name with unmapped: drop",
    "conflict": "a family whose names on /metrics another family holds, or the same family under another type",
    "invalid_name": "a mapping template that makes an empty or invalid name",
    "reserved": "a name that would create or shadow one of our own or Airflow's families",
    "reserved_label": "a series whose labels Prometheus reserves (when they cannot be removed from it)",
    "overflow": "a sample that would make its series +Inf or NaN",
    "series_cap": "a new series beyond max_series",
    "cardinality_cap": "a new series beyond max_series_per_family",
    "labels_too_long": "a new series whose label text is over max_series_label_bytes",
    "label_bytes_cap": "a new series beyond max_label_bytes of label text in all",
    "set_cap": "a statsd set member beyond 10,000 (or over 256 bytes)",
    "negative_counter": "an OTLP up-down counter the catalog calls a counter, when it went down (its rises count)",
    "otel_overflow": "an OTLP point the OpenTelemetry SDK folded past its cardinality limit (it has no ids)",
}

# airflow_monitor_bridge_parse_errors_total{reason}: a line (or packet) that could not be read
PARSE_ERRORS = {
    "malformed_line": "no name, no ':' or '|', or an unknown field",
    "malformed_tag": "a tag without key or '='",
    "mixed_tagging_styles": "InfluxDB, Librato or SignalFX tags in the name and DogStatsD tags after '|#'",
    "invalid_utf8": "bytes that are not UTF-8",
    "illegal_name": "an empty name or one with whitespace",
    "unknown_type": "a type other than c, g, ms, h, d, s",
    "invalid_value": "a value that is not a finite number",
    "invalid_sample_rate": "a sample rate outside (0, 1] or too small to invert",
    "negative_counter": "a counter increment below 0",
    "name_too_long": "a name over 1,024 characters",
    "too_many_tags": "more than 64 tags",
    "label_value_too_long": "a tag value over 1,024 characters",
    "oversized_packet": "a UDP datagram over max_packet bytes",
    "oversized_line": "a TCP line over 65,535 bytes (dropped whole, never its tail)",
}

# airflow_monitor_bridge_labels_dropped_total{reason}: a tag removed from a line whose sample is kept
LABELS_DROPPED = {
    "reserved_label": "a tag Prometheus reserves: `__` prefixed, `quantile`, or `le` on a timer",
}


def help_text(what: str, reasons: dict[str, str]) -> str:
    """A self-metric's HELP: what it counts, then every reason it can have."""
    return f"{what}, by reason: {', '.join(reasons)}."


TABLES = {"dropped": DROPPED, "parse_errors": PARSE_ERRORS, "labels_dropped": LABELS_DROPPED}


def markdown(table: str) -> str:
    """The README's table of a self-metric's reasons (tests/unit/test_self_metrics.py holds the README to it;
    `python -m monitor.bridge.reasons dropped` prints it)."""
    rows = [f"| `{r}` | {text} |" for r, text in TABLES[table].items()]
    return "\n".join(["| reason | what |", "| --- | --- |", *rows])


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or TABLES:
        print(f"<!-- reasons:{name} -->\n{markdown(name)}\n<!-- /reasons:{name} -->")
