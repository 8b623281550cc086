"""A real `airflow-monitor serve` in a subprocess, for the integration tests and the demo."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from testkit.airflow import free_port


class BridgeProcess:
    """A real `airflow-monitor serve` on free ports (or, with `command`, given args and ports)."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None, max_files: int | None = None,
                 ca: Path | None = None):
        """ca: the certificate of a --web-config-file's TLS, to talk to the port over https."""
        self.max_files = max_files
        self.ca = ca
        self.udp = free_port(socket.SOCK_DGRAM)
        self.tcp = free_port()
        self.http = free_port()
        self.otlp = free_port()  # OTLP/HTTP (POST /v1/metrics)
        self.unix = str(tmp / f"statsd-{self.http}.sock")  # its own: a live socket is never taken over
        tmp.mkdir(parents=True, exist_ok=True)
        self._start(tmp, ["serve", "--statsd-udp", f"127.0.0.1:{self.udp}", "--statsd-tcp", f"127.0.0.1:{self.tcp}",
                          "--statsd-unix", self.unix, "--web-listen", f"127.0.0.1:{self.http}",
                          "--otlp-listen", f"127.0.0.1:{self.otlp}", *args], env)

    @classmethod
    def command(cls, tmp: Path, argv: list[str], *, udp: int, http: int, env: dict | None = None,
                ready: str = "/-/ready") -> BridgeProcess:
        """`airflow-monitor <argv>` exactly as given (say, a rendered container's args)."""
        self = cls.__new__(cls)
        self.udp, self.tcp, self.http, self.unix, self.otlp = udp, None, http, None, None
        self.max_files, self.ca = None, None
        self._start(tmp, argv, env, ready)
        return self

    def _start(self, tmp: Path, argv: list[str], env: dict | None, ready: str = "/-/ready") -> None:
        self.log = tmp / f"bridge-{self.http}.log"
        limit = self.max_files
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", *argv], stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
                                     if limit else None)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited: {self.log.read_text()}")
            try:
                if self.get(ready)[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(self.log.read_text())

    def get(self, path: str) -> tuple[int, str]:
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.ca)) if self.ca else None
        try:
            with urllib.request.urlopen(f"http{'s' if self.ca else ''}://127.0.0.1:{self.http}{path}", timeout=30,
                                        context=ctx) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path: str) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=b"", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def send_udp(self, *lines: str | bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for line in lines:
                s.sendto(line.encode() if isinstance(line, str) else line, ("127.0.0.1", self.udp))

    def scrape(self) -> dict[str, dict[tuple, float]]:
        """sample name -> {sorted label items: value}"""
        out: dict[str, dict[tuple, float]] = {}
        for fam in text_string_to_metric_families(self.get("/metrics")[1]):
            for s in fam.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out

    def wait_for(self, pred, timeout: float = 60.0):  # a busy machine: a deadline, not a reply within seconds
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline and self.proc.poll() is None:
            last = self.scrape()
            if pred(last):
                return last
            time.sleep(0.1)
        raise AssertionError(f"condition not met within {timeout}s (exit code {self.proc.poll()}); last scrape had "
                             f"{sorted(last or {})[:60]}; log:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
