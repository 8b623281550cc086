"""Relay: forward raw statsd packets to another statsd address without ever blocking ingestion."""

from __future__ import annotations

import socket


class Relay:
    def __init__(self, address: str):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"relay address must be host:port, not {address!r}")
        info = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_DGRAM)[0]
        self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.addr = info[4]
        self.address = address
        self.sent = 0
        self.dropped = 0

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendto(data, self.addr)
            self.sent += 1
        except OSError:  # target down (ECONNREFUSED), buffer full (EAGAIN): drop, count, go on
            self.dropped += 1

    def self_metrics(self, family):
        yield family("relay_packets", "counter", "Packets relayed to the relay address.",
                     [({"target": self.address}, self.sent)])
        yield family("relay_dropped", "counter", "Packets the relay could not send.",
                     [({"target": self.address}, self.dropped)])

    def close(self) -> None:
        self.sock.close()
