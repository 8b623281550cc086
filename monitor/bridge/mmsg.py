"""Batched datagram receive: recvmmsg(2) through ctypes, one system call for up to VLEN datagrams.

Python's socket module has no recvmmsg; a recv() per datagram costs a system call and a
64 KiB allocation for a 100-byte statsd line, which was half of the bridge's ingest CPU. Each
message slot gets a buffer of the largest datagram accepted (+1, to see what is longer), so
nothing is truncated; only the pages a datagram touches become resident. Where recvmmsg or
ctypes is unavailable, `Receiver` falls back to recv() in a loop with the same interface.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import socket

VLEN = 256  # datagrams per system call
MSG_DONTWAIT = 0x40


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IOVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_recvmmsg = _libc()


class Receiver:
    """`read()` returns the datagrams waiting on a non-blocking socket (at most VLEN), [] when none."""

    def __init__(self, sock: socket.socket, max_size: int = 65535, vlen: int = VLEN):
        self.sock = sock
        self.size = max_size + 1
        self.vlen = vlen
        self.fd = sock.fileno()
        self.batched = _recvmmsg is not None
        if self.batched:
            # an anonymous mapping: its pages stay unallocated until a datagram is written there
            # (ctypes' own buffers are zero-filled, so all 16 MiB would be resident at once)
            self.buf = mmap.mmap(-1, self.size * vlen)
            self.view = memoryview(self.buf)
            self.iov = (_IOVec * vlen)()
            self.msgs = (_MMsgHdr * vlen)()
            base = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
            for i in range(vlen):
                self.iov[i].iov_base = base + i * self.size
                self.iov[i].iov_len = self.size
                self.msgs[i].msg_hdr.msg_iov = ctypes.pointer(self.iov[i])
                self.msgs[i].msg_hdr.msg_iovlen = 1
            stride = ctypes.sizeof(_MMsgHdr)
            assert stride % 4 == 0
            self.lens = memoryview(self.msgs).cast("B").cast("I")
            self.len_at = _MMsgHdr.msg_len.offset // 4
            self.len_stride = stride // 4

    def read(self) -> list[bytes]:
        if not self.batched:
            return self._read_loop()
        n = _recvmmsg(self.fd, self.msgs, self.vlen, MSG_DONTWAIT, None)
        if n <= 0:
            if n < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                raise OSError(ctypes.get_errno(), "recvmmsg failed")
            return []
        view, lens, size, at, stride = self.view, self.lens, self.size, self.len_at, self.len_stride
        return [view[i * size : i * size + lens[at + i * stride]].tobytes() for i in range(n)]

    def _read_loop(self) -> list[bytes]:
        out = []
        recv = self.sock.recv
        for _ in range(self.vlen):
            try:
                out.append(recv(self.size))
            except (BlockingIOError, InterruptedError):
                break
        return out
