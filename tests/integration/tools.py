"""External tools the integration tests drive: found on PATH or where scripts/system-deps.sh put
them; missing under CI is a failure (CI must run them), elsewhere a skip that says how to get it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CACHE_BIN = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "airflow-monitor" / "bin"


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(CACHE_BIN))
    if path is None:
        msg = f"{name} is not installed (scripts/system-deps.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def run(*cmd: str, cwd: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)
    if ok:
        assert r.returncode == 0, r.stdout + r.stderr
    return r
