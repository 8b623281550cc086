#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q uv >/dev/null 2>&1 || true     # speeds up the Airflow venv; optional
python3 -m pip install -q -e ".[test]"
scripts/system-deps.sh                                   # prometheus, promtool, alertmanager, amtool
echo "Airflow venv: $(scripts/airflow-venv.sh)"          # cached in ~/.cache/airflow-monitor
ruff check monitor testkit tests bench demo
set +e
python3 -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
