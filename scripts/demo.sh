#!/usr/bin/env bash
# The demo: a real local Airflow 3.3.2, the bridge and the SLA watcher, narrated in the terminal
# (about 2 minutes; building the Airflow venv the first time adds a few). Options: --keep, --help.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import monitor, prometheus_client" 2>/dev/null || python3 -m pip install -q -e .
echo "Airflow venv: $(scripts/airflow-venv.sh)"
exec python3 -m demo "$@"
