"""`airflow-monitor probe scheduler|triggerer|dag-processor`: one line on stdout, exit 0 or 1."""

from __future__ import annotations

import json
import os
import sys

from monitor.probe import settings
from monitor.probe.db import SourceError
from monitor.probe.rules import CHECKS, Thresholds, Verdict, evaluate


def _secret(env_names: tuple[str, ...], file: str | None) -> str | None:
    if file:
        try:
            with open(file) as f:
                return f.read().strip()
        except OSError as e:
            raise SourceError(f"cannot read {file}: {e.strerror}") from None
    return next((os.environ[n] for n in env_names if os.environ.get(n)), None)


def _observe(args, th: Thresholds, checks: tuple[str, ...]):
    tasks = args.component == "scheduler" and "stuck_queue" in checks
    host = args.hostname or (settings.hostname() if args.local else None)
    if args.source == "api":
        from monitor.probe.api import Api

        url = args.api_url or os.environ.get("AIRFLOW_MONITOR_API_URL")
        if not url:
            raise SourceError("--source api needs --api-url (or AIRFLOW_MONITOR_API_URL)")
        api = Api(url, token=_secret(("AIRFLOW_MONITOR_API_TOKEN",), args.api_token_file),
                  username=args.api_user or os.environ.get("AIRFLOW_MONITOR_API_USER"),
                  password=_secret(("AIRFLOW_MONITOR_API_PASSWORD",), args.api_password_file),
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


def run(args) -> int:
    checks = tuple(c.strip().replace("-", "_") for c in args.checks.split(",") if c.strip())
    bad = [c for c in checks if c not in CHECKS]
    if bad:
        print(f"airflow-monitor: error: unknown check {bad[0]!r} (known: {', '.join(CHECKS)})", file=sys.stderr)
        return 2
    try:
        th = Thresholds(
            heartbeat=args.heartbeat_threshold or settings.heartbeat_threshold(args.component),
            queued_grace=args.queued_grace, finished_window=args.finished_window,
        )
        obs = _observe(args, th, checks)
        verdict = evaluate(obs, th, checks)
    except (SourceError, settings.SettingError) as e:
        verdict = Verdict("unknown", "source", str(e))
    code = verdict.exit_code(args.on_unknown)
    if args.json:
        print(json.dumps({"component": args.component, "status": verdict.status, "check": verdict.check,
                          "reason": verdict.reason, "exit_code": code, **verdict.details}, default=str))
    else:
        tail = ""
        if verdict.status == "unknown":
            tail = " (not failing: --on-unknown=ok)" if code == 0 else " (failing: --on-unknown=fail)"
        print(f"{verdict.status}: {verdict.reason}{tail}")
    return code
