#!/usr/bin/env bash
# A venv with airflow-monitor and the oldest `kubernetes` client it supports (pyproject: kubernetes>=30),
# for the test that every Kubernetes call ends within its timeout on the floor version too (before 36.0
# the client ignored a float _request_timeout). Prints the venv path; cached in ~/.cache/airflow-monitor.
set -euo pipefail
KUBE_VERSION="${KUBE_FLOOR_VERSION:-30.1.0}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${AIRFLOW_MONITOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-monitor}"
VENV="$CACHE/kubernetes-$KUBE_VERSION"
MARKER="$VENV/.airflow-monitor-complete"
WANT="kubernetes==$KUBE_VERSION $(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ] && "$VENV/bin/python" -c "import kubernetes" 2>/dev/null; then
  echo "$VENV"; exit 0
fi
mkdir -p "$CACHE"
rm -rf "$VENV"
if command -v uv >/dev/null 2>&1; then
  uv venv -q --python "$(command -v python3)" "$VENV" >&2
  VIRTUAL_ENV="$VENV" uv pip install -q "kubernetes==$KUBE_VERSION" "psycopg2-binary>=2.9" -e "$REPO" >&2
else
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q "kubernetes==$KUBE_VERSION" "psycopg2-binary>=2.9" -e "$REPO" >&2
fi
"$VENV/bin/python" -c "import kubernetes, monitor.kube.client; assert kubernetes.__version__ == '$KUBE_VERSION'"
echo "$WANT" > "$MARKER"
echo "$VENV"
