"""`airflow-monitor dashboards build [--check]`: write (or compare) dashboards/ from the catalog.

The Helm chart carries copies of the Grafana dashboards and the Prometheus rules (Helm reads only
files inside the chart), so they are written here too and checked for staleness alike.
"""

from __future__ import annotations

from pathlib import Path

from monitor.errors import UserError

DEFAULT_DIR = Path(__file__).resolve().parents[2]  # the repository: dashboards/, alerts/, helm/
RULES = "alerts/prometheus/airflow-rules.yaml"
CHART_FILES = "helm/airflow-monitor/files"


def rendered(root: Path = DEFAULT_DIR) -> dict[str, str]:
    try:
        from monitor.dashboards import datadog, grafana

        boards = grafana.render()
        files = {**{f"dashboards/grafana/{k}": v for k, v in boards.items()},
                 **{f"dashboards/datadog/{k}": v for k, v in datadog.render().items()},
                 **{f"alerts/datadog/{k}": v for k, v in datadog.render_monitors().items()},
                 **{f"{CHART_FILES}/dashboards/{k}": v for k, v in boards.items()}}
    except ImportError as e:
        raise UserError(f"building dashboards needs grafana-foundation-sdk ({e.name}): "
                        "pip install 'airflow-monitor[dashboards]'") from None
    rules = root / RULES
    if rules.exists():  # hand-written (promtool-tested); the chart gets a copy
        files[f"{CHART_FILES}/airflow-rules.yaml"] = rules.read_text()
    return files


def build(args) -> int:
    out = Path(args.output) if args.output else DEFAULT_DIR
    files = rendered()
    if args.check:
        stale = [name for name, text in files.items()
                 if not (out / name).exists() or (out / name).read_text() != text]
        if stale:
            print(f"stale generated files in {out}: {', '.join(stale)} (run: airflow-monitor dashboards build)")
            return 1
        print(f"{len(files)} generated files in {out} are up to date")
        return 0
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0
