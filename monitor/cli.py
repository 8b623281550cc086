"""Command line: argument parsing and lazy dispatch. Imports nothing heavy until a command runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
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
        "datadog_hostname": "with --datadog api: the host every point carries (default: none; a pod's name "
                            "would change at every rollout); the agent sets its own host",
    }
    for f in dataclasses.fields(BridgeConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):  # a switch, as statsd_exporter's --web.enable-lifecycle
            p.add_argument(flag, dest=f.name, default=None, action="store_const", const="true",
                           help=help_.get(f.name, argparse.SUPPRESS))
        else:
            p.add_argument(flag, dest=f.name, default=None, help=help_.get(f.name, argparse.SUPPRESS))


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level(value: str) -> str:
    """--log-level: one of LOG_LEVELS, any case; anything else is refused by argparse in one line."""
    if str(value).upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{value!r} is not a log level ({', '.join(LOG_LEVELS)})")
    return str(value).upper()


def _level(p: argparse.ArgumentParser, default=argparse.SUPPRESS) -> None:
    p.add_argument("--log-level", type=log_level, default=default, help="DEBUG, INFO (default), WARNING, ERROR")


def _state_flags(p: argparse.ArgumentParser, lost: str) -> None:
    p.add_argument("--fresh-state", action="store_true", help=f"accept a state file that is empty ({lost})")


def _web_flags(p: argparse.ArgumentParser, listen: str) -> None:
    """The flags of `sla run` and `heal run`: their own HTTP port."""
    p.add_argument("--web-config-file", help="TLS and basic auth for the HTTP port, in the exporter-toolkit's web "
                   "config format (as serve's --web-config-file)")
    p.add_argument("--metrics-listen", help=f"HTTP address for /metrics and health ('' to disable; default {listen})")


def _sla(sub) -> None:
    sla = sub.add_parser("sla", help="SLA watcher: page when a key DAG has not succeeded within its window",
                         description="The SLA watcher. run: watch on a schedule; check: one dry look (exit 1 if "
                         "anything is breached); status: the watched DAGs, windows, last success and open alerts; "
                         "test-notify: one test alert through each notifier.")
    _level(sla)
    actions = sla.add_subparsers(dest="action", metavar="ACTION", required=True)
    lost = "it lost its open alerts; they are paged again"

    def common(p, airflow: bool = True) -> None:
        p.add_argument("--config", help="SLA YAML config (or $AIRFLOW_MONITOR_SLA_CONFIG)")
        if airflow:
            p.add_argument("--airflow-url", help="Airflow base URL, overriding the config")
            p.add_argument("--state-file", help="SQLite alert state, overriding the config")
        _level(p)

    run = actions.add_parser("run", help="watch on a schedule, with /metrics and health on its own port",
                             description="Watch on a schedule: judge every watched DAG, open and close alerts, "
                             "deliver the outbox; /metrics, /-/healthy and /-/ready on --metrics-listen.")
    common(run)
    _state_flags(run, lost)
    _web_flags(run, ":9103")
    check = actions.add_parser("check", help="one look; exit 1 if a DAG breaches a rule (pages nobody unless "
                               "--notify)", description="Evaluate once and print. Without --notify it changes "
                               "nothing: no page, no write to the state file (not even its directory).")
    common(check)
    check.add_argument("--notify", action="store_true", help="also open and close alerts and send their notices "
                       "(one cycle of `run`, for cron-style use)")
    check.add_argument("--json", action="store_true", help="print JSON")
    _state_flags(check, lost)
    status = actions.add_parser("status", help="a table: DAG, rule, window, last success, state, alert; the "
                                "outbox and dead letters", description="What the watcher sees now and what the "
                                "state file holds; with Airflow down, the state file alone (exit 1).")
    common(status)
    status.add_argument("--json", action="store_true", help="print JSON (notices go to stderr)")
    _state_flags(status, "it lost its open alerts")
    notify = actions.add_parser("test-notify", help="one test alert through each notifier, closed at once",
                                description="Send alert airflow-sla:test:<time> (P5) through every notifier and "
                                "close it, without touching the state file.")
    common(notify, airflow=False)


def _heal(sub) -> None:
    heal = sub.add_parser("heal", help="healer: diagnose a stuck Airflow from Kubernetes and the metadata DB, "
                          "restart what a restart fixes within a budget, page a person otherwise",
                          description="The healer. run: diagnose (and in mode act, heal) on a schedule; status: one "
                          "look, a table of diagnoses, actions and alerts; check: the same, exit 1 if anything is "
                          "diagnosed. status and check act on nothing.")
    _level(heal)
    actions = heal.add_subparsers(dest="action", metavar="ACTION", required=True)
    codes = ("exit codes: 0 nothing diagnosed, 1 something diagnosed (check), 2 a mistake in the command or the "
             "config, 3 blind (the Kubernetes API, the database or the healer's state cannot be read), 4 "
             "scheduler jobs and pods that cannot be paired")

    def common(p) -> None:
        p.add_argument("--config", help="healer YAML config (or $AIRFLOW_MONITOR_HEAL_CONFIG)")
        _level(p)

    run = actions.add_parser("run", help="diagnose (and in mode act, heal) on a schedule",
                             description="Diagnose on a schedule; in mode act, restart within the budget; page a "
                             "person otherwise. /metrics and health on --metrics-listen.")
    common(run)
    _state_flags(run, "its actions and open alerts are forgotten")
    _web_flags(run, ":9104")
    run.add_argument("--sla-config", help="also run the SLA watcher with this config, sharing the healer's Lease "
                     "(two replicas page once); its series join the healer's /metrics")
    for name, what in (("status", "one look as a table (acts on nothing)"),
                       ("check", "one look, exit 1 if anything is diagnosed (acts on nothing)")):
        p = actions.add_parser(name, help=what, description=f"{what[0].upper()}{what[1:]}. {codes}.")
        common(p)
        p.add_argument("--json", action="store_true", help="print JSON (a mistake too: {\"error\": ..., \"exit\": 2})")


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (the usage is one --help away); as JSON on stdout when the
    command line asks for JSON (`heal check --json --bogus`), as a command's own mistakes are."""

    JSON = {("heal", "check"), ("heal", "status"), ("sla", "check"), ("sla", "status")}  # they take --json

    def error(self, message: str):
        args = sys.argv[1:]
        if "--json" in args and any(pair in self.JSON for pair in zip(args, args[1:], strict=False)):
            print(json.dumps({"error": f"{self.prog}: {message}", "exit": 2}))
            self.exit(2)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="airflow-monitor",
        description="Observability and self-healing for Apache Airflow 3.x.",
    )
    parser.add_argument("--version", action="version", version=f"airflow-monitor {__version__}")
    _level(parser, default="INFO")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the statsd bridge (statsd :9125 -> Prometheus :9102, Datadog)")
    serve.add_argument("--config", help="YAML config file (section 'bridge:')")
    _level(serve)
    serve.add_argument("--fresh-state", action="store_true",
                       help="with --sla-config: accept an SLA state file that is empty (see sla run --fresh-state)")
    serve.add_argument("--sla-config", help="also run the SLA watcher with this YAML config "
                       "(or $AIRFLOW_MONITOR_SLA_CONFIG); its series join /metrics")
    serve.add_argument("--heal-config", help="also run the healer with this YAML config "
                       "(or $AIRFLOW_MONITOR_HEAL_CONFIG); its series join /metrics")
    _add_bridge_flags(serve)

    _sla(sub)
    _heal(sub)

    probe = sub.add_parser("probe", help="liveness probe: exit 1 when a component is stuck (for Kubernetes)")
    from monitor.probe.command import add_arguments as probe_arguments

    probe_arguments(probe)

    bridge = sub.add_parser("bridge", help="look inside the bridge: how a statsd line is read, mapped and exposed")
    _level(bridge)
    bactions = bridge.add_subparsers(dest="action", metavar="ACTION", required=True)
    explain = bactions.add_parser("explain", help="how one statsd line would be parsed, mapped, twinned and exposed",
                                  description="Print how one statsd line would be parsed, mapped (and by which rule), "
                                  "which of Airflow's twin forms it is, and what it would expose; with --config or "
                                  "--mapping-file, with that mapping.")
    explain.add_argument("line", nargs="+", help="a statsd line, e.g. 'airflow.ti.finish:1|c|#dag_id:d,task_id:t'")
    explain.add_argument("--config", help="YAML config file (section 'bridge:'), for its mapping and settings")
    explain.add_argument("--mapping-file", help="a statsd_exporter mapping file, as serve's")
    explain.add_argument("--statsd-prefix", help="Airflow's statsd_prefix (default airflow)")
    explain.add_argument("--airflow-tags", help="auto, on or off, as serve's")
    explain.add_argument("--json", action="store_true", help="print JSON")
    _level(explain)

    dash = sub.add_parser("dashboards", help="build the Grafana and Datadog dashboards from the catalog")
    dash.add_argument("action", choices=["build"], help="write the dashboards and monitors (or --check them)")
    _level(dash)
    dash.add_argument("--output", help="root directory for dashboards/ and alerts/datadog/ (default: the repository)")
    dash.add_argument("--check", action="store_true", help="exit 1 if the files there are stale, write nothing")

    cat = sub.add_parser("catalog", help="print the metric catalog (Airflow statsd -> Prometheus / Datadog)")
    cat.add_argument("--format", choices=["table", "markdown", "yaml"], default="table",
                     help="table (fitted to a terminal, paged when longer), markdown, or the catalog's YAML")
    cat.add_argument("--airflow-version", metavar="VERSION",
                     help="only what this Airflow (3.0 to 3.3, e.g. 3.1 or 3.1.8) sends, with its forms in that line")
    _level(cat)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries(args.log_level)
    redact.install()
    try:
        if args.command == "serve":
            from monitor.serve import serve

            return serve(args)
        if args.command == "probe":
            from monitor.probe.command import run

            return run(args)
        if args.command == "bridge":
            from monitor.bridge.explain import command as explain

            return explain(args)
        if args.command == "sla":
            if args.action == "run":
                from monitor.serve import sla_run

                return sla_run(args)
            from monitor.sla.command import run as sla

            return sla(args)
        if args.command == "heal":
            if args.action == "run":
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


# libraries whose INFO lines are noise at the default level: APScheduler's "Adding job tentatively" and
# "Job ... executed successfully" (the watcher's and healer's schedules), the datadog package's line per
# API request, urllib3's connection notes
NOISY = ("apscheduler", "urllib3", "kubernetes", "datadog")


def quiet_libraries(level: str) -> None:
    """At INFO and above, other libraries say only warnings; --log-level DEBUG shows everything."""
    if str(level).upper() != "DEBUG":
        for name in NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
