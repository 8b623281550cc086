"""The one HTTP layer (monitor/http/server.py) as a client that half-closes sees it."""

from __future__ import annotations

import socket

import pytest

from monitor.http.app import Service
from monitor.http.server import Response, serve


@pytest.fixture
def server():
    def metrics(req):
        return Response(200, iter([b"x 1\n"]), content_type="text/plain; version=0.0.4")

    s = serve("127.0.0.1:0", Service(metrics), max_body=1024)
    yield s
    s.shutdown()


def half_closed(port: int, data: bytes) -> bytes:
    """Send, shut the sending side (as `nc -N` or a fuzzer does), read to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_a_request_then_a_half_close_is_answered_then_closed(server):
    answer = half_closed(server.port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"OK\n")


def test_pipelined_requests_then_a_half_close_are_all_answered(server):
    answer = half_closed(server.port, b"GET /-/healthy HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n"
                                      b"GET /-/ready HTTP/1.1\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3 and b"x 1\n" in answer


def test_a_bad_head_then_a_half_close_gets_its_400(server):
    assert half_closed(server.port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_an_incomplete_request_then_a_half_close_is_closed_unanswered(server):
    assert half_closed(server.port, b"POST /-/reload HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc") == b""
    assert half_closed(server.port, b"GET /metr") == b""
    # and the server still answers
    assert half_closed(server.port, b"GET /-/healthy HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 ")
