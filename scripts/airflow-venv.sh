#!/usr/bin/env bash
# Create (once) and cache the Airflow venv the integration tests run against.
# Prints the venv path on stdout. Cached by version in ~/.cache/airflow-monitor.
set -euo pipefail
AIRFLOW_VERSION="${AIRFLOW_VERSION:-3.3.2}"
CACHE="${AIRFLOW_MONITOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-monitor}"
VENV="$CACHE/airflow-$AIRFLOW_VERSION"
MARKER="$VENV/.airflow-monitor-complete"
# what the tests need in the Airflow image: statsd clients, and the PostgreSQL drivers (sync + async)
PKGS=("apache-airflow[statsd]==$AIRFLOW_VERSION" "datadog" "psycopg2-binary" "asyncpg")
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "${PKGS[*]}" ] && "$VENV/bin/airflow" version >/dev/null 2>&1; then
  echo "$VENV"; exit 0
fi
mkdir -p "$CACHE"
if [ ! -x "$VENV/bin/python" ]; then
  rm -rf "$VENV"
  if command -v uv >/dev/null 2>&1; then uv venv -q --python "$(command -v python3)" "$VENV" >&2
  else python3 -m venv "$VENV" >&2; fi
fi
if command -v uv >/dev/null 2>&1; then
  VIRTUAL_ENV="$VENV" uv pip install -q "${PKGS[@]}" >&2
else
  "$VENV/bin/pip" install -q "${PKGS[@]}" >&2
fi
"$VENV/bin/airflow" version >/dev/null
echo "${PKGS[*]}" > "$MARKER"
echo "$VENV"
