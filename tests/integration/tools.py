"""External tools the integration tests drive: found on PATH or where scripts/system-deps.sh put
them; missing under CI is a failure (CI must run them), elsewhere a skip that says how to get it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from testkit.airflow import free_port

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


class Prometheus:
    """A real Prometheus scraping one target every 2 s (`scrape` adds to its scrape config: scheme,
    basic_auth, tls_config...)."""

    def __init__(self, tmp: Path, target: str, rules: Path | None = None, scrape: dict | None = None,
                 flags: list[str] | None = None):
        """flags: more command-line flags (--enable-feature=native-histograms: it scrapes protobuf)."""
        binary = tool("prometheus")
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cfg = tmp / "prometheus.yml"
        cfg.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
            "rule_files": [str(rules)] if rules else [],
            "scrape_configs": [{"job_name": "airflow-monitor", "static_configs": [{"targets": [target]}],
                                **(scrape or {})}],
        }))
        self.log = tmp / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", *(flags or [])], stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.get("/-/ready"):
                    return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(self.log.read_text()[-2000:])

    def get(self, path: str, **params) -> dict | str:
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = r.read().decode()
        except urllib.error.HTTPError as e:
            body = e.read().decode()
        try:
            return json.loads(body)
        except ValueError:
            return body

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def web_config(tmp: Path, user: str, password: str) -> tuple[Path, Path]:
    """A --web-config-file with a certificate for 127.0.0.1 made here (openssl) and one bcrypt user,
    hashed as htpasswd does ($2y$). Returns (web config, certificate)."""
    import bcrypt

    crt, key = tmp / "server.crt", tmp / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode().replace("$2b$", "$2y$", 1)
    web = tmp / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n"
                   f"basic_auth_users:\n  {user}: '{hashed}'\n")
    return web, crt
