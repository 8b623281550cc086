"""Command line: argument parsing and lazy dispatch. Imports nothing heavy until a command runs."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from monitor import __version__, redact
from monitor.errors import UserError


def _add_bridge_flags(p: argparse.ArgumentParser) -> None:
    from monitor.config import BridgeConfig

    help_ = {
        "statsd_udp": "UDP statsd listen address ([host]:port, '' to disable; default :9125)",
        "statsd_tcp": "TCP statsd listen address (default :9125)",
        "statsd_unix": "Unix datagram socket path for statsd (default: off)",
        "statsd_unix_mode": "permissions of the --statsd-unix socket, octal (default 755, as statsd_exporter's "
                            "--statsd.unixsocket-mode; 775 or 777 let a group or everyone send)",
        "statsd_tcp_idle_timeout": "close a statsd TCP connection silent for this long (default 5m; 0 = never)",
        "web_listen": "HTTP address for /metrics and health (default :9102)",
        "web_config_file": "TLS and basic auth for every HTTP endpoint, in the exporter-toolkit's web config "
                           "format (as statsd_exporter's --web.config.file)",
        "web_enable_lifecycle": "allow POST /-/reload (off by default; SIGHUP always reloads the mapping)",
        "mapping_file": "statsd_exporter mapping file; its rules win over the built-in Airflow mapping",
        "statsd_prefix": "Airflow's statsd_prefix (default airflow)",
        "airflow_tags": "which twin counts: auto (learned), on (tagged), off (legacy names)",
        "dogstatsd_timer_unit": "unit of Airflow's timer() metrics in DogStatsD mode: auto (seconds once DogStatsD "
                                "tags are seen; Airflow 3.x sends seconds labelled ms), s, or ms (a fixed Airflow)",
        "ttl": "expire series not updated for this long (default 24h; 0 = never)",
        "max_series_per_family": "cardinality cap per metric family (default 500000)",
        "max_series": "cap on all series together (default 1000000: 10,000 DAGs x 10 tasks make ~670k)",
        "max_label_bytes": "cap on the label text of all series together, bytes (default 268435456)",
        "max_series_label_bytes": "cap on the label text of one series, bytes (default 4096)",
        "cache_bytes": "memory budget of the mapper cache in bytes (default 268435456)",
        "buckets": "histogram buckets in seconds, comma separated",
        "classic_histograms": "on (default) or off: the classic buckets (le) beside a native histogram; off "
                              "leaves only _sum, _count and the +Inf bucket in the text format",
        "native_histograms": "on (default) or off: timers are also native histograms, served in the protobuf "
                             "exposition (Prometheus with native histograms asks for it)",
        "native_histogram_schema": "schema of statsd timers' native histograms, -4..8 (default 3: buckets 9 %% wide)",
        "native_histogram_max_buckets": "consecutive buckets a native histogram keeps (default 20); wider, its "
                                        "schema goes down (each step halves the resolution)",
        "otlp_listen": "OTLP/HTTP metrics address, POST /v1/metrics ([host]:port, '' to disable; default :4318)",
        "otlp_max_body": "largest OTLP request body, bytes, before and after gzip (default 67108864)",
        "otlp_max_points": "data points in one OTLP request at most; more are rejected (default 1000000)",
        "otlp_max_attributes": "attributes on one OTLP data point at most; a point with more is rejected (default 64)",
        "otlp_stream_ttl": "forget a cumulative OTLP stream without a point for this long (default 15m)",
        "unmapped": "what to do with non-Airflow metrics: export (default) or drop",
        "relay": "forward raw statsd packets to host:port",
        "datadog": "forward to Datadog: none (default), agent (DogStatsD) or api (agentless)",
        "datadog_api_key_file": "file holding the Datadog API key (else DD_API_KEY)",
        "max_packet": "largest UDP datagram accepted, bytes (default 65535); larger ones are counted and dropped",
        "udp_rcvbuf": "UDP receive buffer to ask for, bytes (default 8 MiB; the kernel caps it at rmem_max)",
        "datadog_host": "DogStatsD agent host for --datadog agent (default 127.0.0.1)",
        "datadog_port": "DogStatsD agent port (default 8125)",
        "datadog_socket": "DogStatsD agent Unix socket, instead of host and port",
        "datadog_site": "Datadog site for --datadog api (default datadoghq.com)",
        "datadog_api_url": "Datadog API URL, instead of https://api.<site>",
        "datadog_flush_interval": "seconds between sends to Datadog (default 10)",
        "datadog_tags": "tags added to every Datadog point, comma separated (env:prod,team:data)",
    }
    for f in dataclasses.fields(BridgeConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):  # a switch, as statsd_exporter's --web.enable-lifecycle
            p.add_argument(flag, dest=f.name, default=None, action="store_const", const="true",
                           help=help_.get(f.name, argparse.SUPPRESS))
        else:
            p.add_argument(flag, dest=f.name, default=None, help=help_.get(f.name, argparse.SUPPRESS))


def _worker_flags(p: argparse.ArgumentParser, lost: str, listen: str) -> None:
    """The flags the SLA watcher and the healer share: their state file, HTTP port and output."""
    p.add_argument("--fresh-state", action="store_true", help=f"accept a state file that is empty ({lost})")
    p.add_argument("--web-config-file", help="with run: TLS and basic auth for its HTTP port, in the "
                   "exporter-toolkit's web config format (as serve's --web-config-file)")
    p.add_argument("--metrics-listen", help=f"with run: HTTP address for /metrics ('' to disable; default {listen})")
    p.add_argument("--json", action="store_true", help="with check and status: print JSON")
    p.add_argument("--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING, ERROR")


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
    serve.add_argument("--fresh-state", action="store_true",
                       help="with --sla-config: accept an SLA state file that is empty (see sla --fresh-state)")
    serve.add_argument("--sla-config", help="also run the SLA watcher with this YAML config "
                       "(or $AIRFLOW_MONITOR_SLA_CONFIG); its series join /metrics")
    serve.add_argument("--heal-config", help="also run the healer with this YAML config "
                       "(or $AIRFLOW_MONITOR_HEAL_CONFIG); its series join /metrics")
    _add_bridge_flags(serve)

    sla = sub.add_parser("sla", help="SLA watcher: page when a key DAG has not succeeded within its window",
                         description="run: watch on a schedule (default); check: evaluate once, exit 1 if "
                         "anything is breached; status: print watched DAGs, windows, last success and alerts")
    sla.add_argument("action", nargs="?", choices=["run", "check", "status", "test-notify"], default="run",
                     help="run: watch on a schedule; check: one dry look (exit 1 if breached); status: a table "
                          "with the open alerts and the outbox; test-notify: one test alert through each notifier")
    sla.add_argument("--config", help="SLA YAML config (or $AIRFLOW_MONITOR_SLA_CONFIG)")
    sla.add_argument("--once", action="store_true", help="with check: evaluate once and exit (the default)")
    sla.add_argument("--notify", action="store_true",
                     help="with check: also open and close alerts and send their notices (default: print only)")
    sla.add_argument("--airflow-url", help="Airflow base URL, overriding the config")
    sla.add_argument("--state-file", help="SQLite alert state, overriding the config")
    _worker_flags(sla, "it lost its open alerts; they are paged again", ":9103")

    heal = sub.add_parser("heal", help="healer: diagnose a stuck Airflow from Kubernetes and the metadata DB, "
                          "restart what a restart fixes within a budget, page a person otherwise",
                          description="run: diagnose (and in mode act, heal) on a schedule (default); status: "
                          "one look, a table of diagnoses, actions and alerts; check: the same, exit 1 if anything "
                          "is diagnosed. status and check act on nothing.")
    heal.add_argument("action", nargs="?", choices=["run", "status", "check"], default="run",
                      help="run: on a schedule; status: one look as a table; check: one look, exit 1 if diagnosed")
    heal.add_argument("--config", help="healer YAML config (or $AIRFLOW_MONITOR_HEAL_CONFIG)")
    _worker_flags(heal, "its actions and open alerts are forgotten", ":9104")
    heal.add_argument("--sla-config", help="with run: also run the SLA watcher with this config, sharing the "
                      "healer's Lease (two replicas page once); its series join the healer's /metrics")

    probe = sub.add_parser("probe", help="liveness probe: exit 1 when a component is stuck (for Kubernetes)")
    from monitor.probe.command import add_arguments as probe_arguments

    probe_arguments(probe)

    dash = sub.add_parser("dashboards", help="build the Grafana and Datadog dashboards from the catalog")
    dash.add_argument("action", choices=["build"], help="write the dashboards and monitors (or --check them)")
    dash.add_argument("--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING, ERROR")
    dash.add_argument("--output", help="root directory for dashboards/ and alerts/datadog/ (default: the repository)")
    dash.add_argument("--check", action="store_true", help="exit 1 if the files there are stale, write nothing")

    cat = sub.add_parser("catalog", help="print the metric catalog (Airflow statsd -> Prometheus / Datadog)")
    cat.add_argument("--format", choices=["table", "markdown", "yaml"], default="table",
                     help="table (paged on a terminal), markdown, or the catalog's YAML")
    cat.add_argument("--airflow-version", metavar="VERSION",
                     help="only what this Airflow (3.0 to 3.3, e.g. 3.1 or 3.1.8) sends, with its forms in that line")
    cat.add_argument("--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING, ERROR")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact.install()
    try:
        if args.command == "serve":
            from monitor.serve import serve

            return serve(args)
        if args.command == "probe":
            from monitor.probe.command import run

            return run(args)
        if args.command == "sla":
            if (args.action or "run") == "run":
                from monitor.serve import sla_run

                return sla_run(args)
            from monitor.sla.command import run as sla

            return sla(args)
        if args.command == "heal":
            if (args.action or "run") == "run":
                from monitor.serve import heal_run

                return heal_run(args)
            from monitor.heal.command import run as heal

            return heal(args)
        if args.command == "dashboards":
            from monitor.dashboards.command import build

            return build(args)
        if args.command == "catalog":
            from monitor.catalog.command import show

            return show(args)
    except UserError as e:
        print(f"airflow-monitor: error: {redact.redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `airflow-monitor catalog | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
