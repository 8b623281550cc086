"""Command line: argument parsing and lazy dispatch. Imports nothing heavy until a command runs."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from monitor import __version__
from monitor.errors import UserError


def _add_bridge_flags(p: argparse.ArgumentParser) -> None:
    from monitor.config import BridgeConfig

    help_ = {
        "statsd_udp": "UDP statsd listen address ([host]:port, '' to disable; default :9125)",
        "statsd_tcp": "TCP statsd listen address (default :9125)",
        "statsd_unix": "Unix datagram socket path for statsd (default: off)",
        "web_listen": "HTTP address for /metrics and health (default :9102)",
        "mapping_file": "statsd_exporter mapping file; its rules win over the built-in Airflow mapping",
        "statsd_prefix": "Airflow's statsd_prefix (default airflow)",
        "airflow_tags": "which twin counts: auto (learned), on (tagged), off (legacy names)",
        "ttl": "expire series not updated for this long (default 24h; 0 = never)",
        "max_series_per_family": "cardinality cap per metric family (default 10000)",
        "buckets": "histogram buckets in seconds, comma separated",
        "unmapped": "what to do with non-Airflow metrics: export (default) or drop",
        "relay": "forward raw statsd packets to host:port",
        "datadog": "forward to Datadog: none (default), agent (DogStatsD) or api (agentless)",
        "datadog_api_key_file": "file holding the Datadog API key (else DD_API_KEY)",
    }
    for f in dataclasses.fields(BridgeConfig):
        flag = "--" + f.name.replace("_", "-")
        p.add_argument(flag, dest=f.name, default=None, help=help_.get(f.name, argparse.SUPPRESS))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airflow-monitor",
        description="Observability and self-healing for Apache Airflow 3.x.",
    )
    parser.add_argument("--version", action="version", version=f"airflow-monitor {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the statsd bridge (statsd :9125 -> Prometheus :9102, Datadog)")
    serve.add_argument("--config", help="YAML config file (section 'bridge:')")
    serve.add_argument("--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING, ERROR")
    _add_bridge_flags(serve)

    cat = sub.add_parser("catalog", help="print the metric catalog (Airflow statsd -> Prometheus / Datadog)")
    cat.add_argument("--format", choices=["table", "markdown", "yaml"], default="table")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            from monitor.bridge.command import serve

            return serve(args)
        if args.command == "catalog":
            from monitor.catalog.command import show

            return show(args)
    except UserError as e:
        print(f"airflow-monitor: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
