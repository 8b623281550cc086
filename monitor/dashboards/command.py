"""`airflow-monitor dashboards build [--check]`: write (or compare) dashboards/ from the catalog."""

from __future__ import annotations

from pathlib import Path

from monitor.errors import UserError

DEFAULT_DIR = Path(__file__).resolve().parents[2]  # the repository: dashboards/ and alerts/datadog/


def rendered() -> dict[str, str]:
    try:
        from monitor.dashboards import datadog, grafana

        return {**{f"dashboards/grafana/{k}": v for k, v in grafana.render().items()},
                **{f"dashboards/datadog/{k}": v for k, v in datadog.render().items()},
                **{f"alerts/datadog/{k}": v for k, v in datadog.render_monitors().items()}}
    except ImportError as e:
        raise UserError(f"building dashboards needs grafana-foundation-sdk ({e.name}): "
                        "pip install 'airflow-monitor[dashboards]'") from None


def build(args) -> int:
    out = Path(args.output) if args.output else DEFAULT_DIR
    files = rendered()
    if args.check:
        stale = [name for name, text in files.items()
                 if not (out / name).exists() or (out / name).read_text() != text]
        if stale:
            print(f"stale dashboards in {out}: {', '.join(stale)} (run: airflow-monitor dashboards build)")
            return 1
        print(f"{len(files)} dashboards in {out} are up to date")
        return 0
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0
