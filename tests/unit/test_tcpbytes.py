"""tcpbytes.py: the SYN/FIN corrections, with the raw counters measured on
Linux 6.18 (see the module docstring), and which side opened a connection.
"""

from __future__ import annotations

import pytest

from netmond.backends.netlink import TcpCounters
from netmond.backends.tcpbytes import opened_actively, payload

from tests.linux_fakes import info


ESTABLISHED, SYN_SENT, FIN_WAIT1, FIN_WAIT2, CLOSE, CLOSE_WAIT, LAST_ACK = 1, 2, 4, 5, 7, 8, 9


def counters(acked, received, sent, retrans=0, segs_in=1):
    return TcpCounters(acked, received, segs_in, sent, retrans)


def old_kernel(acked, received):
    """< 4.19: no bytes_sent/bytes_retrans."""
    return TcpCounters(acked, received, 1, None, None)


# Raw values measured on Linux 6.18: client sent N=1000 bytes, server M=700.
@pytest.mark.parametrize(
    "case, raw, state, active_open, expected",
    [
        ("client established", counters(1001, 700, 1000), ESTABLISHED, True, (1000, 700)),
        ("server established", counters(700, 1000, 700), ESTABLISHED, False, (700, 1000)),
        ("client FIN acked", counters(1002, 700, 1000), FIN_WAIT2, True, (1000, 700)),
        ("client FIN sent, not acked", counters(1001, 700, 1000), FIN_WAIT1, True, (1000, 700)),
        ("server got FIN", counters(700, 1001, 700), CLOSE_WAIT, False, (700, 1000)),
        ("server FIN sent", counters(700, 1001, 700), LAST_ACK, False, (700, 1000)),
        ("client destroyed, graceful", counters(1002, 701, 1000), CLOSE, True, (1000, 700)),
        ("server destroyed, graceful", counters(701, 1001, 700), CLOSE, False, (700, 1000)),
        # active closer that closed before the peer's FIN: one byte short (documented)
        ("client closed first", counters(1002, 700, 1000), CLOSE, True, (1000, 699)),
        # close() with 10 unread bytes: RST instead of FIN on the server side
        ("server reset", counters(700, 1010, 700), CLOSE, False, (700, 1010)),
        ("client got reset", counters(1011, 700, 1010), CLOSE, True, (1010, 700)),
        ("connecting", counters(0, 0, 0, segs_in=0), SYN_SENT, True, (0, 0)),
        ("no payload, FIN only", counters(2, 1, 0, segs_in=0), CLOSE, True, (0, 0)),
        ("half acked in flight", counters(501, 0, 1000, segs_in=0), ESTABLISHED, True, (500, 0)),
        ("retransmissions not counted twice", counters(1001, 0, 1500, retrans=500), ESTABLISHED, True, (1000, 0)),
        # a wrong SYN-side guess is absorbed by the unique-payload cap
        ("client guessed passive", counters(1001, 700, 1000), ESTABLISHED, False, (1000, 700)),
        ("client guessed passive, closed", counters(1002, 701, 1000), CLOSE, False, (1000, 700)),
        ("old kernel client", old_kernel(1001, 700), ESTABLISHED, True, (1000, 700)),
        ("old kernel client destroyed", old_kernel(1002, 701), CLOSE, True, (1000, 700)),
        ("old kernel server destroyed", old_kernel(701, 1001), CLOSE, False, (700, 1000)),
    ],
)
def test_payload_corrections(case, raw, state, active_open, expected) -> None:
    assert payload(raw, state, active_open) == expected, case


def test_payload_never_negative() -> None:
    assert payload(counters(0, 0, 0, segs_in=0), CLOSE, True) == (0, 0)
    assert payload(old_kernel(0, 0), CLOSE, True) == (0, 0)


def test_payload_is_monotonic_over_a_client_life() -> None:
    """Counters of one socket tick by tick: bytes_sent must never go back."""
    life = [
        (SYN_SENT, counters(0, 0, 0, segs_in=0)),
        (ESTABLISHED, counters(1, 0, 0, segs_in=0)),
        (ESTABLISHED, counters(1, 0, 500, segs_in=0)),  # 500 in flight
        (ESTABLISHED, counters(301, 0, 1000, segs_in=0)),
        (ESTABLISHED, counters(1001, 700, 1000)),
        (FIN_WAIT1, counters(1001, 700, 1000)),
        (FIN_WAIT2, counters(1002, 700, 1000)),
        (CLOSE, counters(1002, 701, 1000)),
    ]
    previous = (0, 0)
    for state, raw in life:
        now = payload(raw, state, True)
        assert now[0] >= previous[0] and now[1] >= previous[1], (state, raw, previous, now)
        previous = now
    assert previous == (1000, 700)


# -- which side opened: from the socket's own counters


@pytest.mark.parametrize(
    "state, counters, expected",
    [
        (2, info(), True),  # SYN_SENT
        (3, info(), False),  # SYN_RECV
        (1, info(acked=1001, sent=1000), True),  # ESTABLISHED, idle: the SYN is the extra one
        (1, info(acked=1000, sent=1000), False),
        (1, info(acked=1, sent=0), True),  # nothing sent yet
        (1, info(acked=0, sent=0), False),
        (1, info(acked=900, sent=1000, unacked=2), None),  # data in flight: cannot tell yet
        (1, info(acked=1001, sent=1100, retrans=100), True),  # retransmissions are not payload
        (8, info(acked=10, sent=10), False),  # CLOSE_WAIT: our FIN not sent
        (5, info(acked=12, sent=10), True),  # FIN_WAIT2: SYN + our FIN
        (6, info(acked=11, sent=10), False),  # TIME_WAIT: our FIN only
        (7, info(acked=1002, sent=1000), True),  # CLOSE (destroy event), graceful
        (7, info(acked=1000, sent=1000), False),  # CLOSE, our FIN never acknowledged
        (7, info(acked=1001, sent=1000), None),  # CLOSE: passive graceful or active without FIN
        (1, TcpCounters(1001, 0, 0, None, None, 0), None),  # kernel < 4.19
    ],
)
def test_opened_actively_reads_the_syn_from_the_counters(state, counters, expected) -> None:
    assert opened_actively(counters, state) is expected
