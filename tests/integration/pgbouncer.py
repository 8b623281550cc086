"""Debian's PgBouncer in front of the test PostgreSQL, configured as the official Airflow chart's
pgbouncer.ini is (chart/templates/secrets/pgbouncer-config-secret.yaml): a `<release>-metadata`
database alias, transaction pooling, `ignore_startup_parameters = extra_float_digits`,
scram-sha-256 against an auth file. scripts/system-deps.sh installs it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from testkit.airflow import free_port


class PgBouncer:
    def __init__(self, dbname: str, user: str, password: str, pool_mode: str = "transaction",
                 pool_size: int = 10):
        exe = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
        if exe is None:
            msg = "pgbouncer is missing (scripts/system-deps.sh installs Debian's)"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
        self.port = free_port()
        # PgBouncer runs as postgres, which cannot enter pytest's private tmp_path: a directory of its own
        tmp = self.dir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        (tmp / "users.txt").write_text(f'"{user}" "{password}"\n')
        (tmp / "pgbouncer.ini").write_text(f"""[databases]
airflow-metadata = host=127.0.0.1 dbname={dbname} port=5432 pool_size={pool_size}

[pgbouncer]
pool_mode = {pool_mode}
listen_port = {self.port}
listen_addr = 127.0.0.1
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {tmp / "users.txt"}
stats_users = {user}
ignore_startup_parameters = extra_float_digits
max_client_conn = 100
verbose = 0
log_disconnections = 0
log_connections = 0
server_tls_sslmode = prefer
server_tls_ciphers = normal
logfile = {tmp / "pgbouncer.log"}
pidfile = {tmp / "pgbouncer.pid"}
""")
        shutil.chown(tmp, "postgres")
        for f in tmp.iterdir():
            shutil.chown(f, "postgres")
        # PgBouncer refuses to run as root
        self.proc = subprocess.Popen(["runuser", "-u", "postgres", "--", exe, str(tmp / "pgbouncer.ini")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"pgbouncer exited: {self.log()}") from None
                time.sleep(0.2)
        self.url = f"postgresql://{user}:{password}@127.0.0.1:{self.port}/airflow-metadata"

    def log(self) -> str:
        p = self.dir / "pgbouncer.log"
        return p.read_text()[-2000:] if p.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
