"""Build the probe as one file: a zipapp of monitor/probe that an Airflow image's Python runs.

    python -m monitor.probe.zipapp helm/airflow-monitor/files/airflow-monitor-probe.pyz

The build is reproducible (sorted entries, fixed timestamps), so a test can hold the checked-in
file to the sources. The chart ships it in a ConfigMap; helm/airflow-values.yaml mounts it into
the official chart's scheduler, triggerer and dag processor.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent.parent
EPOCH = (2020, 1, 1, 0, 0, 0)
MAIN = "import sys\nfrom monitor.probe.__main__ import main\nsys.exit(main())\n"


def build() -> bytes:
    files = {"__main__.py": MAIN, "monitor/__init__.py": (ROOT / "monitor" / "__init__.py").read_text()}
    for p in sorted(PACKAGE.glob("*.py")):
        if p.name != "zipapp.py":
            files[f"monitor/probe/{p.name}"] = p.read_text()
    out = io.BytesIO()
    out.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, files[name])
    return out.getvalue()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m monitor.probe.zipapp OUTPUT.pyz", file=sys.stderr)
        return 2
    Path(argv[0]).write_bytes(build())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
