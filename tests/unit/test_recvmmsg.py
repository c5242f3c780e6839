"""recvmmsg.MultiReceiver on a datagram socketpair: batches, truncation, nothing waiting."""

from __future__ import annotations

import socket

import pytest

from netmond.backends.recvmmsg import MultiReceiver

pytestmark = pytest.mark.skipif(not MultiReceiver.available(), reason="no recvmmsg in this libc")


def test_reads_every_waiting_datagram_in_batches_and_counts_the_cut_ones() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        receiver = MultiReceiver(b.fileno(), count=4, size=64)
        assert receiver.receive() == []  # nothing waiting: no wait either
        sent = [bytes([i]) * (10 + i) for i in range(6)]
        for datagram in sent[:3]:
            a.send(datagram)
        a.send(b"x" * 100)  # longer than a slot: cut, so lost
        for datagram in sent[3:]:
            a.send(datagram)
        got = receiver.receive() + receiver.receive()
        assert got == sent and receiver.truncated == 1
        assert receiver.receive() == []


def test_a_closed_descriptor_raises_like_recv() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver = MultiReceiver(b.fileno())
    a.close()
    b.close()
    with pytest.raises(OSError):
        receiver.receive()
