"""The bridge's side of the web process: spawn it, ship it the store's journal, answer its questions.

Data flows one way: ingest writes values into the shared array and appends journal records;
`pump()` (called from the ingest loop) ships the records through a pipe without ever blocking
(what the pipe cannot take waits in a backlog); the web process renders from both. A control
thread answers the web process's questions (the bridge's own metrics, readiness, reload). If the
web process dies it is started again and sent the whole store afresh.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections import Counter

from monitor.bridge.web import CONTROL, HEADER, REPLY, SYNCED, recv_exact

log = logging.getLogger(__name__)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
BATCH = 20_000  # journal records per pickled frame


class WebProcess:
    def __init__(self, store, http_sock: socket.socket, *, metrics, ready, reload, sla_ready=lambda: None,
                 log_level: str = "INFO", lifecycle: bool = False, web_config: str = "",
                 otlp_sock: socket.socket | None = None, otlp=None, otlp_args: tuple[str, ...] = (),
                 dropped=lambda: "[]"):
        """otlp_sock: the OTLP port's listening socket (served by the web process); otlp: the
        OtlpIngest that applies what it receives (monitor/bridge/otlpmap.py); otlp_args: its limits."""
        self.otlp_sock, self.otlp, self.otlp_args = otlp_sock, otlp, otlp_args
        self.otlp_pump = None  # the OTLP channel's ingest end (otlpmap.Pump), one per web process
        self.lifecycle = lifecycle
        self.web_config = web_config
        self.store = store
        self.http_sock = http_sock
        self.reload = reload
        # s: the SLA watcher's readiness: "-" none here, "" ready, else why not
        self.answers = {b"m": lambda: metrics().encode(), b"y": lambda: b"1" if ready() else b"0",
                        b"r": self._reload, b"s": lambda: ("-" if (why := sla_ready()) is None else why).encode(),
                        b"d": lambda: dropped().encode()}  # d: /-/dropped, as JSON
        self.log_level = log_level
        self.proc: subprocess.Popen | None = None
        self.journal_w = -1
        self.backlog = bytearray()
        self.restarts = 0
        self.start_failures: Counter[str] = Counter()  # by errno name (emfile, enfile, enomem...)
        self._failing = 0  # failed starts in a row
        self._closing = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Spawn the web process. Raises OSError (EMFILE...) with nothing left open."""
        opened: list = []
        try:
            r, w = os.pipe()
            opened += [r, w]
            try:
                fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
            os.set_blocking(w, False)
            mine, theirs = socket.socketpair()
            opened += [mine, theirs]
            fds = [theirs.fileno(), self.http_sock.fileno()]
            otlp_args: list[str] = []
            if self.otlp_sock is not None:
                data_mine, data_theirs = socket.socketpair()
                opened += [data_mine, data_theirs]
                fds += [self.otlp_sock.fileno(), data_theirs.fileno()]
                otlp_args = ["--otlp-http-fd", str(self.otlp_sock.fileno()), "--otlp-data-fd",
                             str(data_theirs.fileno()), *self.otlp_args]
            slots = self.store.slots
            cmd = [sys.executable, "-m", "monitor.bridge.web", "--slots-fd", str(slots.fd),
                   "--slots-bytes", str(len(slots.map)), "--journal-fd", str(r), "--control-fd",
                   str(theirs.fileno()), "--http-fd", str(self.http_sock.fileno()), "--log-level", self.log_level,
                   *(["--enable-lifecycle"] if self.lifecycle else []),
                   *(["--web-config-file", self.web_config] if self.web_config else []), *otlp_args]
            self.proc = subprocess.Popen(cmd, pass_fds=(slots.fd, r, *fds), stdin=subprocess.DEVNULL)
        except BaseException:
            for x in opened:
                x.close() if isinstance(x, socket.socket) else os.close(x)
            raise
        os.close(r)
        theirs.close()
        if self.otlp_sock is not None:
            from monitor.bridge.otlpmap import Pump

            data_theirs.close()
            if self.otlp_pump is not None:
                self.otlp_pump.sock.close()
            self.otlp_pump = Pump(data_mine, self.otlp)
        if self.journal_w >= 0:
            os.close(self.journal_w)
        self.journal_w = w
        self.backlog = bytearray()
        self._frame([("reset",)] + self.store.snapshot_journal() + [SYNCED])  # SYNCED: the web process may answer
        self.store.take_journal()  # already in the snapshot
        threading.Thread(target=self._answer, args=(mine,), name="web-control", daemon=True).start()
        self.pump()

    def check(self) -> None:
        """Start the web process again if it died (called from the ingest loop's housekeeping, once a
        second). A start that fails (no file descriptor left: EMFILE) is counted and tried again at
        the next call; it never stops the bridge."""
        if self.proc is None or self.proc.poll() is None or self._closing:
            return
        if not self._failing:
            log.error("the web process exited with %s; starting it again", self.proc.returncode)
        try:
            self.start()
        except OSError as e:
            reason = errno.errorcode.get(e.errno, "oserror").lower() if e.errno else "oserror"
            if not self._failing:
                log.error("cannot start the web process (%s); trying again every second", e.strerror or e)
            self._failing += 1
            self.start_failures[reason] += 1
            return
        if self._failing:
            log.warning("the web process started again after %d failed attempts", self._failing)
        self._failing = 0
        self.restarts += 1

    def close(self) -> None:
        self._closing = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.journal_w >= 0:
            os.close(self.journal_w)
            self.journal_w = -1

    # ------------------------------------------------------------------ journal
    def _frame(self, records: list) -> None:
        for i in range(0, len(records), BATCH):
            data = pickle.dumps(records[i : i + BATCH], protocol=pickle.HIGHEST_PROTOCOL)
            self.backlog += HEADER.pack(len(data))
            self.backlog += data

    def pump(self) -> None:
        """Ship new journal records; never blocks (the rest waits for the next call)."""
        records = self.store.take_journal()
        if records:
            self._frame(records)
        if self.backlog and self.journal_w >= 0:
            try:
                n = os.write(self.journal_w, self.backlog)
            except BlockingIOError:
                return
            except OSError:  # the web process is gone; check() starts a new one
                return
            del self.backlog[:n]

    def otlp_step(self) -> bool:
        """Apply what the web process received on the OTLP port (one frame); True if more is waiting."""
        return self.otlp_pump.step() if self.otlp_pump is not None else False

    # ------------------------------------------------------------------ control
    def _reload(self) -> bytes:
        try:
            ok, msg = self.reload()
        except Exception as e:  # reload() says its failures itself; this is a defect
            log.exception("mapping reload")
            ok, msg = False, f"mapping reload failed: {type(e).__name__}"
        return (b"1" if ok else b"0") + msg.encode()

    def _answer(self, sock: socket.socket) -> None:
        with sock:
            while True:
                try:
                    req = recv_exact(sock, CONTROL.size)
                except (OSError, EOFError):
                    return
                op, seq = CONTROL.unpack(req)
                try:
                    body = self.answers[op]() if op in self.answers else b""
                except Exception:
                    log.exception("answering the web process (%r)", op)
                    body = b""
                try:
                    sock.sendall(REPLY.pack(seq, len(body)) + body)
                except OSError:
                    return


