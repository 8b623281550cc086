"""Coverage-guided fuzzing of the one HTTP layer (monitor/http) with arbitrary request heads and bodies.

    pip install atheris
    python bench/fuzz_http.py [--seconds 300]

A real HttpServer (the bridge's, sla run's and heal run's) listens on loopback with the routes every port
has (/metrics, the probes, POST /-/reload behind the lifecycle gate, basic auth on); each input is sent
as the bytes of one connection (a request head, maybe a body, maybe several pipelined requests, maybe
cut short), and the answer read. A finding is any of: an exception the server logs (its handlers must
answer every input, never fail), a reactor or worker thread that died, an answer that is not HTTP/1.1
status lines, or a connection neither answered nor closed within the head deadline and a margin (a
slot held for ever). Seeds: ordinary requests, and the heads of the attacks of the hostile-input issue
(trickled headers, oversize heads, chunked bodies, bad Content-Length, pipelining, a Basic scheme in
odd case). It prints inputs tried and findings; figures, not assertions.
"""

from __future__ import annotations

import argparse
import base64
import logging
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["monitor.http"]):
    from monitor.http import server as http
    from monitor.http.app import Service
    from monitor.http.server import HEAD_TIMEOUT, Response, text

AUTH = "Basic " + base64.b64encode(b"prom:pw").decode()
SEEDS = [
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\nGET /-/ready HTTP/1.1\r\n\r\n",
    f"GET /metrics HTTP/1.1\r\nAuthorization: {AUTH}\r\nAccept-Encoding: gzip\r\n\r\n".encode(),
    f"GET /metrics HTTP/1.1\r\nauthorization: bAsIc {AUTH[6:]}\r\n\r\n".encode(),
    b"POST /-/reload HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"POST /-/reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /-/reload HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /-/reload HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\n" + b"X-Slow: 1\r\n" * 40,
    b"GET " + b"/" * 20000 + b" HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
    b"GET /metrics HTTP/1.1\r\n Folded: header\r\n\r\n",
]


class Harness:
    def __init__(self, tmp: Path):
        import bcrypt

        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
        (tmp / "web.yml").write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
        self.errors: list[str] = []
        harness = self

        class Catch(logging.Handler):
            def emit(self, record):
                if record.levelno >= logging.ERROR or record.exc_info:
                    harness.errors.append(record.getMessage())

        logging.getLogger("airflow_monitor.http").addHandler(Catch())

        def metrics(req):
            return Response(200, iter([b"# TYPE x gauge\n", b"x 1\n"]), content_type="text/plain; version=0.0.4")

        service = Service(metrics, reload=lambda: (True, "reloaded"), lifecycle=True,
                          probes={"/-/ready/sla": lambda r: text(200, "OK")})
        self.server = http.serve("127.0.0.1:0", service, str(tmp / "web.yml"), probe_paths=service.probe_paths,
                                 max_body=1 << 16, workers=4)
        self.tried = self.findings = 0
        # answers by status: that the inputs reach the server's handlers, not only its socket (a server
        # that closed at the client's half-close answered nothing, and a fuzzer sending that way tested nothing)
        self.statuses: Counter[str] = Counter()

    def one(self, data: bytes) -> None:
        self.tried += 1
        s = socket.create_connection(("127.0.0.1", self.server.port), timeout=HEAD_TIMEOUT + 5)
        answer = b""
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                answer += chunk
        except TimeoutError:
            self.finding(f"neither answered nor closed within {HEAD_TIMEOUT + 5:.0f}s: {data[:80]!r}")
        except OSError:
            pass  # reset by the server (a refused head): an answer too
        finally:
            s.close()
        if answer and not answer.startswith(b"HTTP/1.1 "):
            self.finding(f"not an HTTP answer: {answer[:80]!r} for {data[:80]!r}")
        self.statuses[answer[9:12].decode("latin-1") if answer else "none"] += 1
        if b"\r\n\r\n" in data[:1024] and not answer and not data[:data.find(b"\r\n\r\n")].lower().count(
                b"content-length"):  # a whole head with no body to wait for: some answer is owed
            self.finding(f"a whole request head, no answer: {data[:80]!r}")
        if self.errors:
            self.finding(f"the server logged: {self.errors[:3]} for {data[:80]!r}")
            self.errors.clear()
        if not self.server._reactor.is_alive() or not all(t.is_alive() for t in self.server._threads):
            self.finding("a thread of the server died")

    def finding(self, what: str) -> None:
        self.findings += 1
        print(f"FINDING: {what}", flush=True)
        raise RuntimeError(what)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=300)
    args, rest = ap.parse_known_args()
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    corpus = tmp / "corpus"
    corpus.mkdir()
    for i, s in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(s)
    h = Harness(tmp)
    start = time.monotonic()

    def report() -> None:
        print(f"{h.tried} inputs in {time.monotonic() - start:.0f}s, {h.findings} findings, answers by status: "
              f"{dict(h.statuses.most_common())}, refusals counted by the server: {dict(h.server.stats.refused)}",
              flush=True)

    threading.Thread(target=lambda: (time.sleep(args.seconds), report()), daemon=True).start()
    atheris.Setup([sys.argv[0], *rest, f"-max_total_time={int(args.seconds)}", "-max_len=20000",
                   "-timeout=30", str(corpus)], h.one)
    try:
        atheris.Fuzz()
    finally:
        report()


if __name__ == "__main__":
    main()
