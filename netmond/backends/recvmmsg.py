"""recvmmsg(2) through ctypes: up to a few hundred datagrams per call.

Why: the TCP destroy-event reader is a Python thread. Python's socket
methods release the GIL around every recv, and while the sampler's thread
computes a tick the reader then waits up to the interpreter's switch interval
(5 ms) to get it back: one datagram per 5 ms, 200 events/s, far below a busy
host's close rate, and the kernel drops what overflows the socket's buffer
(ENOBUFS). A ctypes call releases the GIL once for the whole batch.

`MultiReceiver(fd).receive()` returns the datagrams waiting (without
blocking), or raises OSError (ENOBUFS included) like recv would. Unavailable
(no libc recvmmsg): `MultiReceiver.available()` is False and callers read one
datagram at a time.
"""

from __future__ import annotations

import ctypes
import errno
import os

_MSG_DONTWAIT = 0x40
_MSG_TRUNC = 0x20


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def _load():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_recvmmsg = _load()


class MultiReceiver:
    """Reads up to `count` datagrams of at most `size` bytes per call from `fd`."""

    def __init__(self, fd: int, count: int = 256, size: int = 2048) -> None:
        if _recvmmsg is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available")
        self._fd = fd
        self._count = count
        self._size = size
        self._buffer = ctypes.create_string_buffer(count * size)
        self._view = memoryview(self._buffer).cast("B")
        self._iovecs = (_IoVec * count)()
        self._headers = (_MMsgHdr * count)()
        base = ctypes.addressof(self._buffer)
        for i in range(count):
            self._iovecs[i].iov_base = base + i * size
            self._iovecs[i].iov_len = size
            hdr = self._headers[i].msg_hdr
            hdr.msg_iov = ctypes.pointer(self._iovecs[i])
            hdr.msg_iovlen = 1
        #: Datagrams cut short because they were longer than `size` (lost).
        self.truncated = 0

    @staticmethod
    def available() -> bool:
        return _recvmmsg is not None

    def receive(self) -> list[bytes]:
        """The datagrams waiting now (at most `count`; [] if none). Raises OSError."""
        n = _recvmmsg(self._fd, self._headers, self._count, _MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return []
            raise OSError(err, os.strerror(err))
        out = []
        view, size, headers = self._view, self._size, self._headers
        for i in range(n):
            header = headers[i]
            if header.msg_hdr.msg_flags & _MSG_TRUNC:
                self.truncated += 1
                header.msg_hdr.msg_flags = 0
                continue
            out.append(bytes(view[i * size:i * size + header.msg_len]))
        return out
