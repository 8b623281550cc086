#!/usr/bin/env bash
# Create (once) and cache the Airflow venv the integration tests run against.
# Prints the venv path on stdout. Cached by version in ~/.cache/airflow-monitor.
set -euo pipefail
AIRFLOW_VERSION="${AIRFLOW_VERSION:-3.3.2}"
CACHE="${AIRFLOW_MONITOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-monitor}"
VENV="$CACHE/airflow-$AIRFLOW_VERSION"
MARKER="$VENV/.airflow-monitor-complete"
if [ -f "$MARKER" ] && "$VENV/bin/airflow" version >/dev/null 2>&1; then
  echo "$VENV"; exit 0
fi
mkdir -p "$CACHE"
rm -rf "$VENV"
PKGS=("apache-airflow[statsd]==$AIRFLOW_VERSION" "datadog" "psycopg2-binary")
if command -v uv >/dev/null 2>&1; then
  uv venv -q --python "$(command -v python3)" "$VENV" >&2
  VIRTUAL_ENV="$VENV" uv pip install -q "${PKGS[@]}" >&2
else
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q "${PKGS[@]}" >&2
fi
"$VENV/bin/airflow" version >/dev/null
touch "$MARKER"
echo "$VENV"
