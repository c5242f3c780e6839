"""sockdiag.DestroyListener with a fake netlink socket: ENOBUFS and buffer
overflow accounting, the reader thread's life.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time

from netmond.backends import netlink
from netmond.backends.sockdiag import DestroyListener

from tests.helpers import wait_until
from tests.linux_fakes import diag_msg, nlmsg, rtattr, tcp_info


def destroy_event(sport: int, acked: int = 1002, received: int = 701, sent: int = 1000) -> bytes:
    info = tcp_info(acked=acked, received=received, data_segs_in=1, sent=sent)
    return nlmsg(netlink.SOCK_DIAG_BY_FAMILY, diag_msg(state=7, sport=sport, inode=0,
                                                        attrs=rtattr(netlink.INET_DIAG_INFO, info)), seq=0, flags=0)


class FakeNetlinkSocket:
    """Replays a script of recv outcomes: bytes, or an exception to raise.

    Readiness for select() comes from a real socketpair, made readable while
    the script has something left.
    """

    def __init__(self, script, kernel_drops: int | None = None) -> None:
        self.script = list(script)
        self.kernel_drops = kernel_drops
        self._ready, self._signal = socket.socketpair()
        self.closed = False
        if self.script:
            self._signal.send(b"!")

    def fileno(self) -> int:
        return self._ready.fileno()

    def setblocking(self, flag: bool) -> None:
        pass

    def recv_into(self, buf, nbytes: int = 0) -> int:
        if not self.script:
            try:
                self._ready.recv(64, socket.MSG_DONTWAIT)  # no longer readable
            except BlockingIOError:
                pass
            raise BlockingIOError(errno.EAGAIN, "would block")
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        buf[: len(item)] = item
        return len(item)

    def getsockopt(self, level: int, option: int, size: int = 0) -> bytes:
        if self.kernel_drops is None:
            raise OSError(errno.ENOPROTOOPT, "no SO_MEMINFO")
        return struct.pack("=9I", 0, 0, 0, 0, 0, 0, 0, 0, self.kernel_drops)

    def close(self) -> None:
        self.closed = True
        self._ready.close()
        self._signal.close()


def test_enobufs_is_counted_and_reading_goes_on() -> None:
    fake = FakeNetlinkSocket(
        [destroy_event(1), OSError(errno.ENOBUFS, "No buffer space available"), destroy_event(2)],
        kernel_drops=17,
    )
    listener = DestroyListener(sock=fake)
    assert listener.drain() == 2  # no exception
    assert [e.local_port for e in listener.take()] == [1, 2]
    assert listener.events_lost == 17  # the kernel's own count (SO_MEMINFO)
    assert listener.take() == []


def test_enobufs_without_drop_count_counts_at_least_one_each() -> None:
    enobufs = OSError(errno.ENOBUFS, "No buffer space available")
    listener = DestroyListener(sock=FakeNetlinkSocket([enobufs, enobufs, destroy_event(3)]))
    assert listener.drain() == 1
    assert listener.events_lost == 2


def test_enobufs_in_the_reader_thread_does_not_kill_it() -> None:
    fake = FakeNetlinkSocket([OSError(errno.ENOBUFS, "lost"), destroy_event(4)], kernel_drops=3)
    listener = DestroyListener(sock=fake)
    listener.start()
    try:
        events = wait_until(listener.take, 5, 0.01, what="the reader thread's first event")
        assert [e.local_port for e in events] == [4]
        assert listener.events_lost == 3
        assert listener.running
    finally:
        listener.close()
    assert not listener.running and fake.closed


def test_close_stops_an_idle_reader_promptly() -> None:
    listener = DestroyListener(sock=FakeNetlinkSocket([]))
    listener.start()
    before = threading.active_count()
    t0 = time.monotonic()
    listener.close()
    assert time.monotonic() - t0 < 1.0
    assert threading.active_count() == before - 1
    listener.close()  # twice is fine


def test_unexpected_recv_error_stops_the_reader_and_says_why() -> None:
    fake = FakeNetlinkSocket([destroy_event(1), OSError(errno.EBADF, "Bad file descriptor"), destroy_event(2)])
    listener = DestroyListener(sock=fake)
    assert listener.drain() == 1
    assert listener.failure is not None and "Bad file descriptor" in listener.failure


def test_pending_events_are_bounded() -> None:
    fake = FakeNetlinkSocket([destroy_event(p) for p in range(1, 6)])
    listener = DestroyListener(max_pending=2, sock=fake)
    listener.drain()
    assert [e.local_port for e in listener.take()] == [1, 2]
    assert listener.events_lost == 3


def test_malformed_event_is_skipped() -> None:
    fake = FakeNetlinkSocket([b"\x05\x00\x00\x00garbage", destroy_event(9)])
    listener = DestroyListener(sock=fake)
    listener.drain()
    assert [e.local_port for e in listener.take()] == [9]
    assert listener.events_lost == 0
