"""Prometheus' own Go text parser (expfmt) as a check on our exposition: tests/tools/expfmtcheck,
built once with Debian's Go and Go Prometheus libraries (scripts/system-deps.sh installs them).
Missing under CI is a failure; elsewhere a skip that says how to get it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent / "tools" / "expfmtcheck" / "main.go"
GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages put their sources
CACHE_BIN = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "airflow-monitor" / "bin"


@cache
def _build() -> str | None:
    go = shutil.which("go")
    if go is None or not (Path(GOPATH) / "src/github.com/prometheus/common/expfmt").is_dir():
        return None
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    exe = CACHE_BIN / f"expfmtcheck-{digest}"
    if not exe.exists():
        CACHE_BIN.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOFLAGS": "",
               "GOCACHE": str(CACHE_BIN.parent / "go-build")}
        r = subprocess.run([go, "build", "-o", str(exe) + ".part", "."], cwd=SOURCE.parent, env=env,
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"building {SOURCE.parent}: {r.stderr.strip()}")
        os.replace(str(exe) + ".part", exe)
    return str(exe)


def checker() -> str:
    exe = _build()
    if exe is None:
        msg = "Go or Debian's golang-github-prometheus-common-dev is missing (scripts/system-deps.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def parse(text: str) -> str:
    """Feed the exposition to Prometheus' Go parser; AssertionError with its message if it refuses."""
    r = subprocess.run([checker()], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"Prometheus' parser refuses the exposition: {r.stderr.strip()}"
    return r.stdout
