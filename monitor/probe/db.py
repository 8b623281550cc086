"""Read the probe's observation from Airflow's metadata database through a plain DB-API driver.

Drivers are those an Airflow image already has: psycopg2 or psycopg 3 (PostgreSQL), MySQLdb or
PyMySQL (MySQL), sqlite3. Every query is served by one of Airflow's indexes:
  job:            job_type_heart (job_type, latest_heartbeat)
  queued/running: ti_state (state)
  finished:       ti_heartbeat (last_heartbeat_at); a task that ended in the window heartbeat in it
and runs under a statement timeout, so a probe fits in Kubernetes' default 1 s timeout. The
timeout is set inside the probe's own read-only transaction (`SET LOCAL`), never in the startup
packet: PgBouncer (the official chart's `pgbouncer.enabled`) refuses startup parameters other
than those in `ignore_startup_parameters`, and in transaction pooling a session-level SET would
stay on a server connection that other clients then get.

Errors are of two kinds: an outage (cannot connect, timeout, the server is starting or shutting
down) that a restart cannot fix and that may pass (SourceError), and a mistake only a person can
fix (credentials refused, unknown database or user, unsupported scheme, missing driver, a URL
that cannot be read): SourceError with `misconfigured=True`.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, unquote

from monitor.probe.rules import Observation, Thresholds, needs_finished
from monitor.probe.settings import COMPONENTS


class SourceError(Exception):
    """The database could not be read; the message is safe to print (no credentials).
    `misconfigured`: a mistake only a person can fix, not an outage."""

    def __init__(self, message: str, misconfigured: bool = False):
        super().__init__(message)
        self.misconfigured = misconfigured


# Server and driver messages that mean a person must change something (PostgreSQL, PgBouncer,
# MySQL; servers answer in English unless lc_messages says otherwise). Anything else is an outage.
_MISTAKES = ("password authentication failed", "sasl authentication failed", "authentication failed",
             "no pg_hba.conf entry", "does not exist", "no such database", "no such user",
             "access denied for user", "unknown database", "not permitted to log in", "invalid password",
             "pg_hba.conf rejects", "(1045", "(1049", "(1044",
             # options of the URL the driver refuses (`?sslmode=bogus`), a file that is not SQLite
             "invalid sslmode", "invalid connection option", "invalid dsn", "invalid integer value",
             "invalid port", "invalid value for", "file is not a database", "no such table", "(1146")
# the database answers, but has no Airflow tables: the URL names another database, or it was never migrated
_NOT_AIRFLOW = re.compile(r'relation "(\w+)" does not exist|no such table: (\w+)|\(1146, "table \S+ doesn\'t exist',
                          re.I)


def _misconfigured(msg: str) -> bool:
    low = msg.lower()
    return any(m in low for m in _MISTAKES)


def _query_failed(msg: str) -> SourceError:
    """A query that failed, in words a person can act on."""
    if _NOT_AIRFLOW.search(msg):
        return SourceError("no Airflow tables here (wrong database, or not migrated: `airflow db migrate`): "
                           f"{msg[:200]}", True)
    if "file is not a database" in msg.lower():
        return SourceError("the SQLite file is not a database (is the URL's path Airflow's airflow.db?)", True)
    return SourceError(f"query failed: {msg}", _misconfigured(msg))


def _scrub(msg: str, secret: str | None) -> str:
    msg = " ".join(str(msg).split())
    return msg.replace(secret, "***") if secret else msg


# The grammar SQLAlchemy's make_url reads (and so Airflow's sql_alchemy_conn): the password is
# everything between the first ':' of the user part and the next '@', so `u:Pw/x@host/db` has the
# password `Pw/x` unencoded; user, password and database are then percent-decoded.
_URL = re.compile(r"""
    (?P<scheme>[\w+]+)://
    (?: (?P<user>[^:/]*) (?: :(?P<password>[^@]*) )? @ )?
    (?: (?: \[(?P<ipv6>[^/?]+)\] | (?P<host>[^/:?]+) )? (?: :(?P<port>[^/?]*) )? )?
    (?: /(?P<database>[^?]*) )?
    (?: \?(?P<query>.*) )?
""", re.X)


@dataclass(frozen=True)
class DbUrl:
    dialect: str
    driver: str | None
    user: str | None
    password: str | None
    host: str | None
    port: int | None
    database: str | None
    query: dict

    def __repr__(self) -> str:  # never shows the password
        return f"DbUrl({self.dialect}, host={self.host!r}, database={self.database!r})"


def parse_url(url: str) -> DbUrl:
    """A database URL as SQLAlchemy parses it; SourceError (never quoting the URL) otherwise."""
    m = _URL.match(url.strip())
    if m is None:
        raise SourceError("the database URL is not of the form dialect[+driver]://user:password@host/db", True)
    g = m.groupdict()
    port = None
    # `host:` with nothing after the colon is an error too, as in SQLAlchemy; the port part comes
    # right after the password, so it is never quoted
    if g["port"] is not None:
        if not g["port"].isascii() or not g["port"].isdigit():
            raise SourceError("the database URL's port is not a number (a password with '@' must be "
                              "URL-encoded as %40)", True)
        port = int(g["port"])
    if "@" in (g["host"] or ""):  # the rest of a password with an unencoded '@': never quote it
        raise SourceError("the database URL's host has an '@' in it (a password with '@' must be "
                          "URL-encoded as %40)", True)
    dialect, _, driver = g["scheme"].partition("+")
    return DbUrl(dialect=dialect, driver=driver or None,
                 user=unquote(g["user"]) if g["user"] is not None else None,
                 password=unquote(g["password"]) if g["password"] is not None else None,
                 host=g["ipv6"] or g["host"], port=port,
                 database=unquote(g["database"]) if g["database"] is not None else None,
                 query=dict(parse_qsl(g["query"] or "")))


def connect(url: str, timeout: float = 0.8):
    """(connection, placeholder, dialect) for a SQLAlchemy-style URL."""
    u = parse_url(url)
    dialect, driver, password = u.dialect, u.driver, u.password
    try:
        if dialect == "sqlite":
            import sqlite3

            path = u.database or ""
            if not path:
                raise SourceError("sqlite URL has no database file", True)
            if not os.path.isfile(path):  # the probe reads, never creates: a missing file is a wrong path
                raise SourceError(f"the SQLite database {path} does not exist (the probe never creates one; "
                                  "give the path Airflow uses)", True)
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
            return conn, "?", "sqlite"
        query = u.query
        common = {"host": u.host or "localhost", "user": u.user or ""}
        if password:
            common["password"] = password
        db = u.database or ""
        port = u.port
        if dialect in ("postgresql", "postgres"):
            mods = {"psycopg2": ["psycopg2"], "psycopg": ["psycopg"]}.get(driver or "", ["psycopg2", "psycopg"])
            mod = _import(mods, "PostgreSQL")
            conn = mod.connect(dbname=db, port=port or 5432, connect_timeout=max(1, round(timeout + 0.49)),
                               **common, **query)
            # one read-only transaction per probe (BEGIN READ ONLY); the timeout lives and dies with it
            if mod.__name__ == "psycopg2":
                conn.set_session(readonly=True, autocommit=False)
            else:
                conn.read_only = True
                conn.autocommit = False
            conn.cursor().execute(f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}")
            return conn, "%s", "postgresql"
        if dialect == "mysql":
            mods = {"mysqldb": ["MySQLdb"], "pymysql": ["pymysql"]}.get(driver or "", ["MySQLdb", "pymysql"])
            mod = _import(mods, "MySQL")
            t = max(1, round(timeout + 0.49))
            conn = mod.connect(database=db, port=port or 3306, connect_timeout=t, read_timeout=t, **common)
            cur = conn.cursor()
            cur.execute(f"SET SESSION MAX_EXECUTION_TIME={max(1, int(timeout * 1000))}")
            return conn, "%s", "mysql"
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001 - every driver has its own error classes
        msg = _scrub(e, password)
        if any(m in msg.lower() for m in ("invalid sslmode", "invalid connection option", "invalid dsn",
                                          "invalid integer value", "invalid port")):
            raise SourceError(f"the {dialect} driver refuses the database URL's options: {msg} (fix the "
                              "URL's query, e.g. ?sslmode=require)", True) from None
        raise SourceError(f"cannot connect to the {dialect} database: {msg}", _misconfigured(msg)) from None
    raise SourceError(f"unsupported database URL scheme {dialect + ('+' + driver if driver else '')!r} "
                      "(the probe reads postgresql, mysql and sqlite)", True)


def _import(names: list[str], what: str):
    for n in names:
        try:
            return importlib.import_module(n)
        except ImportError:
            continue
    raise SourceError(f"no {what} driver installed (tried {', '.join(names)})", True)


def parse_ts(v) -> datetime | None:
    """A timestamp as stored: aware (PostgreSQL), naive UTC (MySQL) or a string (SQLite)."""
    if v is None:
        return None
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    return v if v.tzinfo else v.replace(tzinfo=UTC)


def _param(t: datetime, dialect: str):
    if dialect == "postgresql":
        return t
    naive = t.astimezone(UTC).replace(tzinfo=None)
    return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if dialect == "sqlite" else naive


def observe(conn, ph: str, dialect: str, component: str, th: Thresholds, *, hostname: str | None = None,
            tasks: bool = True, local_tasks: bool = False, now: datetime | None = None) -> Observation:
    """Query the job and, for the scheduler, the task queue. Raises SourceError."""
    now = now or datetime.now(UTC)
    job_type = COMPONENTS[component][0]
    try:
        cur = conn.cursor()
        sql = (f"SELECT id, latest_heartbeat, hostname FROM job WHERE job_type = {ph} AND state = 'running'"
               + (f" AND hostname = {ph}" if hostname else "") + " ORDER BY latest_heartbeat DESC LIMIT 1")
        cur.execute(sql, (job_type, hostname) if hostname else (job_type,))
        row = cur.fetchone()
        job_id, hb, host = (row[0], parse_ts(row[1]), row[2]) if row else (None, None, hostname)
        obs = Observation(now=now, component=component, job_id=job_id, hostname=host, heartbeat=hb)
        if not tasks:
            return obs
        mine = local_tasks and job_id is not None
        cond = f" AND queued_by_job_id = {ph}" if mine else ""
        args = (job_id,) if mine else ()
        if local_tasks and job_id is None:  # no job of ours: nothing can be queued by it
            return replace(obs, queued_stuck=0, queued=0, running=0)
        grace = _param(now - timedelta(seconds=th.queued_grace), dialect)
        cur.execute(
            f"SELECT state, COUNT(*), MIN(queued_dttm), SUM(CASE WHEN queued_dttm < {ph} THEN 1 ELSE 0 END) "
            f"FROM task_instance WHERE state IN ('queued', 'running'){cond} GROUP BY state",
            (grace, *args),
        )
        counts = {r[0]: r for r in cur.fetchall()}
        q = counts.get("queued")
        obs = replace(obs, queued=int(q[1]) if q else 0, queued_stuck=int(q[3] or 0) if q else 0,
                      oldest_queued=parse_ts(q[2]) if q else None,
                      running=int(counts["running"][1]) if "running" in counts else 0)
        if needs_finished(obs):
            since = _param(now - timedelta(seconds=th.finished_window), dialect)
            cur.execute(
                f"SELECT COUNT(*) FROM task_instance WHERE last_heartbeat_at >= {ph} AND end_date >= {ph}{cond}",
                (since, since, *args),
            )
            obs = replace(obs, finished_recently=int(cur.fetchone()[0]))
        return obs
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _query_failed(_scrub(e, None)) from None
