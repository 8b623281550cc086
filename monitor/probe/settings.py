"""Airflow's own settings, read the way Airflow reads them, without importing Airflow.

Order, as in Airflow: AIRFLOW__SECTION__KEY, then AIRFLOW__SECTION__KEY_CMD, then
AIRFLOW__SECTION__KEY_SECRET (unsupported here: it needs Airflow's secrets backend), then
$AIRFLOW_CONFIG or $AIRFLOW_HOME/airflow.cfg (also its `key_cmd`), then the default. An option Airflow
moved (`[core] sql_alchemy_conn` to `[database]`) is still read at its old place, after the new one.
"""

from __future__ import annotations

import configparser
import os
import socket
import subprocess
from pathlib import Path


class SettingError(ValueError):
    """A setting that cannot be read; the message never contains its value."""


def _cfg_file(env) -> configparser.ConfigParser | None:
    home = Path(env.get("AIRFLOW_HOME") or Path.home() / "airflow")
    path = Path(env.get("AIRFLOW_CONFIG") or home / "airflow.cfg")
    if not path.is_file():
        return None
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        cp.read(path)
    except configparser.Error:
        raise SettingError(f"cannot parse {path}") from None
    return cp


def _run_cmd(cmd: str, what: str) -> str:
    try:
        out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        raise SettingError(f"{what}: the _cmd command timed out") from None
    if out.returncode != 0:
        raise SettingError(f"{what}: the _cmd command exited {out.returncode}")
    return out.stdout.strip()


# options Airflow 3 still reads under their old place (airflow.configuration's deprecated_options), after
# the new one: the environment first (new, then old), then the config file (new, then old)
DEPRECATED = {("database", "sql_alchemy_conn"): ("core", "sql_alchemy_conn")}


def _from_env(env, section: str, key: str) -> str | None:
    name = f"AIRFLOW__{section.upper()}__{key.upper()}"
    if env.get(name):
        return env[name]
    if env.get(name + "_CMD"):
        return _run_cmd(env[name + "_CMD"], name + "_CMD")
    if env.get(name + "_SECRET"):
        raise SettingError(f"{name}_SECRET needs Airflow's secrets backend; give the probe {name} "
                           f"or {name}_CMD (or --sql-alchemy-conn / --api-url) instead")
    return None


def _from_file(cp: configparser.ConfigParser | None, section: str, key: str) -> str | None:
    if cp is None or not cp.has_section(section):
        return None
    if cp.has_option(section, key):
        return cp.get(section, key)
    if cp.has_option(section, key + "_cmd"):
        return _run_cmd(cp.get(section, key + "_cmd"), f"[{section}] {key}_cmd")
    return None


def get(section: str, key: str, default: str | None = None, env=None) -> str | None:
    env = os.environ if env is None else env
    places = [(section, key), *([DEPRECATED[(section, key)]] if (section, key) in DEPRECATED else [])]
    for sec, k in places:
        v = _from_env(env, sec, k)
        if v is not None:
            return v
    cp = _cfg_file(env)
    for sec, k in places:
        v = _from_file(cp, sec, k)
        if v is not None:
            return v
    return default


def get_float(section: str, key: str, default: float, env=None) -> float:
    raw = get(section, key, None, env)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingError(f"[{section}] {key} is not a number") from None


def sql_alchemy_conn(env=None) -> str:
    """Airflow's database URL as Airflow reads it; Airflow's default (SQLite in $AIRFLOW_HOME) only where
    that file exists: a probe that finds no setting is set up wrong, and says where it looked."""
    env = os.environ if env is None else env
    url = get("database", "sql_alchemy_conn", None, env)
    if url:
        return url
    home = Path(env.get("AIRFLOW_HOME") or Path.home() / "airflow")
    default = home / "airflow.db"
    if default.is_file():
        return f"sqlite:///{default}"
    cfg = Path(env.get("AIRFLOW_CONFIG") or home / "airflow.cfg")
    raise SettingError(f"no Airflow database setting found: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN (or _CMD) is not "
                       f"set, {cfg} {'has no [database] sql_alchemy_conn' if cfg.is_file() else 'does not exist'}, "
                       f"and there is no {default}; set the variable as Airflow's pods have it, or pass "
                       "--sql-alchemy-conn")


COMPONENTS = {
    # component: (job_type, threshold section, threshold key)
    "scheduler": ("SchedulerJob", "scheduler", "scheduler_health_check_threshold"),
    "triggerer": ("TriggererJob", "triggerer", "triggerer_health_check_threshold"),
    "dag-processor": ("DagProcessorJob", "dag_processor", "health_check_threshold"),
}


def heartbeat_threshold(component: str, env=None) -> float:
    _, section, key = COMPONENTS[component]
    return get_float(section, key, 30.0, env)


def _getfqdn() -> str:
    """airflow.utils.net.getfqdn, the default [core] hostname_callable."""
    name = socket.gethostname()
    try:
        addrs = socket.getaddrinfo(name, None, 0, socket.SOCK_DGRAM, 0, socket.AI_CANONNAME)
    except OSError:
        return name
    for addr in addrs:
        if addr[3]:
            return addr[3]
    return name


HOSTNAME_CALLABLES = {
    "airflow.utils.net.getfqdn": _getfqdn,
    "airflow.utils.net.get_host_ip_address": lambda: socket.gethostbyname(_getfqdn()),
    "socket.getfqdn": socket.getfqdn,
    "socket.gethostname": socket.gethostname,
}


def hostname(env=None) -> str:
    """This host's name as Airflow records it in job.hostname."""
    name = (get("core", "hostname_callable", None, env) or "airflow.utils.net.getfqdn").replace(":", ".")
    fn = HOSTNAME_CALLABLES.get(name)
    if fn is None:
        raise SettingError(f"[core] hostname_callable {name} is not known to the probe; pass --hostname")
    return fn()
