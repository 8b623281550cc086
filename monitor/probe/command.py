"""`airflow-monitor probe scheduler|triggerer|dag-processor`: one line on stdout, exit 0 or 1."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

from monitor.probe import settings
from monitor.probe.db import SourceError
from monitor.probe.rules import APPLIES, CHECKS, Thresholds, Verdict, evaluate


def _log_level(value: str) -> str:
    if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a log level (DEBUG, INFO, WARNING, ERROR)")
    return value.upper()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The probe's flags: `airflow-monitor probe` and the standalone zipapp share them."""
    p.add_argument("component", choices=["scheduler", "triggerer", "dag-processor"],
                   help="the Airflow component this container runs")
    p.add_argument("--local", action="store_true", help="only this host's job (and, for the scheduler, "
                   "only tasks queued by it), like `airflow jobs check --local`")
    p.add_argument("--hostname", help="the job's host name (instead of --local)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of one line")
    p.add_argument("--log-level", type=_log_level, default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--on-unknown", choices=["ok", "fail"], default="ok",
                   help="exit code when the database/API cannot be read (default ok: no restart storm)")
    p.add_argument("--on-misconfigured", choices=["ok", "fail"], default="fail",
                   help="exit code when the probe's own settings are wrong: credentials refused, unknown "
                        "database, unsupported URL, missing driver (default fail: the startup probe says so)")
    p.add_argument("--checks", default="heartbeat,stuck_queue", help="comma separated: heartbeat,stuck_queue")
    p.add_argument("--heartbeat-threshold", type=float, default=None,
                   help="seconds (default: Airflow's *_health_check_threshold, 30)")
    p.add_argument("--queued-grace", type=float, default=300.0, help="seconds a task may wait queued (300)")
    p.add_argument("--finished-window", type=float, default=300.0,
                   help="a task finished within this many seconds means the queue moves (300)")
    p.add_argument("--source", choices=["db", "api"], default="db",
                   help="read the metadata database (default) or the Airflow REST API v2")
    p.add_argument("--sql-alchemy-conn", help="database URL (default: Airflow's own setting)")
    p.add_argument("--api-url", help="Airflow API base URL for --source api (or $AIRFLOW_MONITOR_AIRFLOW_URL)")
    p.add_argument("--api-user", help="API user (or $AIRFLOW_MONITOR_AIRFLOW_USERNAME); its password from "
                                      "$AIRFLOW_MONITOR_AIRFLOW_PASSWORD or --api-password-file")
    p.add_argument("--api-password-file", help="a file whose first line is the API user's password")
    p.add_argument("--api-token-file", help="a JWT to use instead of user and password "
                                            "(or $AIRFLOW_MONITOR_AIRFLOW_TOKEN)")
    p.add_argument("--timeout", type=float, default=0.8, help="connect and statement timeout, seconds")
    p.add_argument("--deadline", type=float, default=4.0,
                   help="the whole probe answers within this many seconds, unknown if the source has not "
                        "(default 4; keep it under the Kubernetes probe's timeoutSeconds)")


def _secret(env_names: tuple[str, ...], file: str | None) -> str | None:
    if file:
        try:
            with open(file) as f:
                return f.read().strip()
        except OSError as e:
            raise SourceError(f"cannot read {file}: {e.strerror}") from None
    return next((os.environ[n] for n in env_names if os.environ.get(n)), None)


def _env(*names: str) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def _observe(args, th: Thresholds, checks: tuple[str, ...]):
    tasks = args.component == "scheduler" and "stuck_queue" in checks
    host = args.hostname or (settings.hostname() if args.local else None)
    if args.source == "api":
        from monitor.probe.api import Api

        # the SLA watcher's names for the same settings; the probe's first names still work
        url = args.api_url or _env("AIRFLOW_MONITOR_AIRFLOW_URL", "AIRFLOW_MONITOR_API_URL")
        if not url:
            raise SourceError("--source api needs --api-url (or AIRFLOW_MONITOR_AIRFLOW_URL)", True)
        token = _secret(("AIRFLOW_MONITOR_AIRFLOW_TOKEN", "AIRFLOW_MONITOR_API_TOKEN"), args.api_token_file)
        api = Api(url, token=token,
                  username=args.api_user or _env("AIRFLOW_MONITOR_AIRFLOW_USERNAME", "AIRFLOW_MONITOR_API_USER"),
                  password=_secret(("AIRFLOW_MONITOR_AIRFLOW_PASSWORD", "AIRFLOW_MONITOR_API_PASSWORD"),
                                   args.api_password_file),
                  timeout=args.timeout)
        return api.observe(args.component, th, hostname=host, tasks=tasks)
    from monitor.probe.db import connect, observe

    url = args.sql_alchemy_conn or settings.sql_alchemy_conn()
    conn, ph, dialect = connect(url, timeout=args.timeout)
    try:
        return observe(conn, ph, dialect, args.component, th, hostname=host, tasks=tasks,
                       local_tasks=args.local or bool(args.hostname))
    finally:
        conn.close()


_STUCK = threading.Event()  # the source did not answer in time: its thread may never end


def _judge(args, checks: tuple[str, ...]) -> Verdict:
    try:
        th = Thresholds(
            heartbeat=args.heartbeat_threshold or settings.heartbeat_threshold(args.component),
            queued_grace=args.queued_grace, finished_window=args.finished_window,
        )
        return evaluate(_observe(args, th, checks), th, checks)
    except SourceError as e:
        return Verdict("misconfigured" if e.misconfigured else "unknown", "source", str(e))
    except settings.SettingError as e:  # Airflow's settings as the probe reads them: a person's to fix
        return Verdict("misconfigured", "source", str(e))


def _within(deadline: float, judge) -> Verdict:
    """The verdict, or `unknown` when the source does not answer within the deadline: a query
    waiting for a pooled connection (PgBouncer with none free) blocks in the driver, beyond any
    statement timeout, and a probe killed by the kubelet's timeout counts as a failure."""
    out: list[Verdict] = []
    worker = threading.Thread(target=lambda: out.append(judge()), daemon=True)
    worker.start()
    worker.join(deadline)
    if out:
        return out[0]
    _STUCK.set()
    return Verdict("unknown", "source", f"the database or API did not answer within {deadline:g}s (no free "
                   "pooled connection, or a server that hangs)")


def run(args) -> int:
    checks = tuple(c.strip().replace("-", "_") for c in args.checks.split(",") if c.strip())
    bad = [c for c in checks if c not in CHECKS]
    if bad:
        print(f"airflow-monitor: error: unknown check {bad[0]!r} (known: {', '.join(CHECKS)})", file=sys.stderr)
        return 2
    checks = tuple(c for c in checks if c in APPLIES[args.component])
    if not checks:
        print(f"airflow-monitor: error: none of --checks applies to the {args.component} "
              f"(it has: {', '.join(APPLIES[args.component])})", file=sys.stderr)
        return 2
    verdict = _within(args.deadline, lambda: _judge(args, checks))
    code = verdict.exit_code(args.on_unknown, args.on_misconfigured)
    if args.json:
        print(json.dumps({"component": args.component, "status": verdict.status, "check": verdict.check,
                          "reason": verdict.reason, "exit_code": code, **verdict.details}, default=str))
    else:
        tail = ""
        if verdict.status == "unknown":
            tail = " (not failing: --on-unknown=ok)" if code == 0 else " (failing: --on-unknown=fail)"
        elif verdict.status == "misconfigured":
            tail = " (failing: a person must fix the probe's settings)" if code else " (--on-misconfigured=ok)"
        print(f"{verdict.status}: {verdict.reason}{tail}")
    if verdict.check == "source" and _STUCK.is_set():  # a worker still blocked in the driver
        sys.stdout.flush()
        os._exit(code)
    return code
